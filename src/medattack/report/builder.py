"""`medattack report RUN [RUN...]`: the report people read, from one run or several compared.

    <out>/report.html      self-contained (figures embedded, no scripts, every model output escaped)
    <out>/report.md        the same sections in Markdown, figures linked from figures/
    <out>/figures/*.png    rates, heatmap, survival, distributions, controls
    <out>/tables/*.csv     every table in long form (one row per group x metric, with n, nulls, CI)
    <out>/tables/*.tex     the headline tables as booktabs LaTeX
    <out>/summary.json     what the report found, for programs (summary.py)
    <out>/samples/*.html   the answers behind each cell, linked from it (samples.py)

Order: the headline (per target: attack success judged and the rate that stands (report/estimates.py), the answer
rate, the largest paired effects), then success by method x target x condition, paired comparisons,
white-box attacks and survival, transfer, defences (when any target was asked behind one), tasks and
modalities, image reliance, score distributions and
example responses, and last the run manifest (versions, seeds, models, which metrics are proxies,
failure counts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from medattack.report.render import to_html, to_latex, to_markdown
from medattack.report.samples import write_sample_pages
from medattack.rundir import RunDir, write_bytes_atomic, write_json_atomic
from medattack.storage import write_csv_atomic

if TYPE_CHECKING:
    pass
from medattack.report.analysis import Analysis, ReportConfig, analyse
from medattack.report.cells import utf8
from medattack.report.sections import SECTIONS


@dataclass
class ReportResult:
    out_dir: Path
    html: Path
    markdown: Path
    figures: dict[str, Path]
    tables: dict[str, Path]
    n_responses: int


def _long_tables(a: Analysis) -> dict[str, pd.DataFrame]:
    """Every table in long form, written as tables/<name>.csv."""
    t = a.tables
    return {"by_condition": t.by_condition, "by_task": t.by_task, "by_modality": t.by_modality,
            "task_modality": t.task_modality, "transfer": t.transfer, "comparisons": t.comparisons,
            "controls": t.controls, "image_reliance": t.image_reliance, "whitebox": t.whitebox,
            "survival": t.survival, "budget": t.budget, "blackbox": t.blackbox, "injection": t.injection,
            "attack_success_estimates": a.standing,
            "defence_effects": t.defence_effects, "defence_flags": t.defence_flags}


def build_report(run_dirs: Sequence[str | Path], out_dir: str | Path | None = None,
                 config: ReportConfig | None = None) -> ReportResult:
    """Write report.html, report.md, figures and tables for one or more runs."""
    a = analyse(run_dirs, config or ReportConfig())
    out = Path(out_dir) if out_dir else RunDir(a.runs[0].root).report
    sections = [section for make in SECTIONS if (section := make(a)) is not None]
    title = f"{a.config.title}: {', '.join(r.name for r in a.runs)}"

    figure_paths = {name: out / "figures" / f"{name}.png" for name in a.figures}
    for name, png in a.figures.items():
        write_bytes_atomic(figure_paths[name], png)
    table_paths = {}
    for name, frame in _long_tables(a).items():
        table_paths[name] = out / "tables" / f"{name}.csv"
        write_csv_atomic(table_paths[name], frame.astype(object).where(frame.notna(), None).to_dict("records"),
                         [str(c) for c in frame.columns])
    for section in sections:
        for table in section.tables:
            if table.name:
                write_bytes_atomic(out / "tables" / f"{table.name}.tex", utf8(to_latex(table)))
    write_json_atomic(out / "summary.json", a.summary)
    pages = set(write_sample_pages(a.runs, out, a.config.title))
    for old_page in (out / "samples").glob("*.html"):  # a page of an earlier report's target
        if old_page not in pages:
            old_page.unlink()
    html_path, md_path = out / "report.html", out / "report.md"
    write_bytes_atomic(html_path, utf8(to_html(title, sections)))
    write_bytes_atomic(md_path, utf8(to_markdown(title, sections)))
    return ReportResult(out, html_path, md_path, figure_paths, table_paths, int(a.scores["response_id"].nunique()))
