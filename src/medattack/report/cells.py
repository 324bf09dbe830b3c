"""How a report table shows a cell and where it links: a rate with its interval and counts, pivots of long tables
into method x condition grids, drill-down links to the answers behind a cell, names as tables show them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from medattack.report.aggregate import (
    MIN_INTERVAL_N,
    short_target,
)
from medattack.report.render import Table
from medattack.report.samples import link, target_page
from medattack.storage import readable

if TYPE_CHECKING:
    pass


def cell_text(row: Any, digits: int = 2) -> str:
    """'mean [low, high]' + counts, 'mean' alone below MIN_INTERVAL_N values, or 'null' when nothing
    could be scored."""
    mean = row["mean"]
    pairs = row.get("pairs")
    clustered = pairs is not None and not pd.isna(pairs) and int(pairs) < int(row["n"])
    counts = (f" n={int(row['n'])}" + (f" from {int(pairs)} pairs" if clustered else "")
              + (f", {int(row['nulls'])} null" if row["nulls"] else ""))
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "null" + counts
    if int(row["n"]) - int(row["nulls"]) < MIN_INTERVAL_N or math.isnan(row["ci_low"]):
        return f"{mean:.{digits}f} (too few for an interval)" + counts
    return f"{mean:.{digits}f} [{row['ci_low']:.{digits}f}, {row['ci_high']:.{digits}f}]" + counts


def pivot(frame: pd.DataFrame, index: list[str], column: str, order: Sequence[str] | None = None,
           title: str = "", note: str = "", name: str = "") -> Table:
    if frame.empty:
        return Table(title, [*index, "-"], [], note or "no data", name)
    columns = [c for c in (order or sorted(frame[column].dropna().unique())) if c in set(frame[column])]
    cells: dict[tuple, dict[str, str]] = {}
    hrefs: dict[tuple, dict[str, str | None]] = {}
    for _, row in frame.iterrows():
        key = tuple(shown_label(k, row[k]) for k in index)
        cells.setdefault(key, {})[str(row[column])] = cell_text(row)
        hrefs.setdefault(key, {})[str(row[column])] = drill({k: row[k] for k in [*index, column]})
    ordered = sorted(cells)
    rows = [[*key, *(cells[key].get(c, "-") for c in columns)] for key in ordered]
    links = [[None] * len(index) + [hrefs[key].get(c) for c in columns] for key in ordered]
    return Table(title, [*index, *(shown_label(column, c) for c in columns)], rows, note, name, links=links)


def drill(keys: dict[str, Any]) -> str | None:
    """The drill-down link of a cell grouped by `keys` (run and target, and any of method, condition, task,
    modality, image): its target's page filtered to those answers; None without a run and target."""
    if "run" not in keys or "target" not in keys:
        return None
    filters = {k: str(v) for k, v in keys.items() if k in ("method", "condition", "task", "modality")}
    if "image" in keys:  # the controls table: real image = the benchmark's own answers
        filters["method"] = "none" if keys["image"] == "real" else f"control:{keys['image']}"
    if "method" not in filters and ("task" in keys or "modality" in keys):  # tables of benchmark samples
        filters["method"] = "none"
    return link(target_page(str(keys["run"]), str(keys["target"])), **filters)


def answers_from(n: Any, pairs: Any) -> str:
    """'n' answers, with the image x prompt pairs they came from when fewer ('18 from 9 pairs')."""
    if pairs is None or pd.isna(pairs) or int(pairs) >= int(n):
        return str(int(n))
    return f"{int(n)} from {int(pairs)} pairs"


def proxy_marked(name: str, is_proxy: Any) -> str:
    """A defence's name, marked when it decided by a proxy (report/defences.py)."""
    return f"{name} (proxy)" if not pd.isna(is_proxy) and bool(is_proxy) else name


def shown_label(key: str, value: Any) -> str:
    """A table's value as shown: target and model names short (the "Targets" table lists them in full)."""
    return short_target(value) if key in ("target", "model", "attack_model") else str(value)


def utf8(text: str) -> bytes:
    """A page or table as UTF-8; a lone surrogate in a stored answer shows as U+FFFD."""
    return readable(text).encode("utf-8")
