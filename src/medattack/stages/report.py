"""The report stage: report.html, report.md, figures and tables from one run, or several compared.

The report's contents are assembled in `report/` (aggregate: tables with bootstrap intervals; figures;
render: HTML, Markdown, LaTeX; builder: the sections); this stage is its entry point over run directories.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from medattack.executor import ExecutorConfig
from medattack.report.analysis import ReportConfig
from medattack.report.builder import ReportResult, build_report
from medattack.rundir import Progress, RunDir
from medattack.stages.base import as_run_dir

__all__ = ["ReportConfig", "ReportResult", "run"]


def run(run_dir: RunDir | str | Path, config: ReportConfig | None = None, *, executor: ExecutorConfig | None = None,
        progress: Progress | None = None, force: bool = False, compare: Sequence[RunDir | str | Path] = (),
        out_dir: str | Path | None = None) -> ReportResult:
    """Write the report of `run_dir` (compared with the runs in `compare`) into `out_dir` (default:
    RUN/report). It runs in this process and always rewrites the report (`executor`, `progress` and
    `force` are accepted for the common stage signature)."""
    roots = [as_run_dir(r).root for r in (run_dir, *compare)]
    return build_report(roots, out_dir, config)
