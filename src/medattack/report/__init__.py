"""Reports: aggregation with bootstrap intervals, figures, and HTML / Markdown / LaTeX output."""

from medattack.report.analysis import ReportConfig
from medattack.report.builder import ReportResult, build_report

__all__ = ["ReportConfig", "ReportResult", "build_report"]
