"""Reports: aggregation with bootstrap intervals, figures, and HTML / Markdown / LaTeX output."""

from medattack.report.builder import ReportConfig, ReportResult, build_report

__all__ = ["ReportConfig", "ReportResult", "build_report"]
