"""The report's figures, each a PNG (bytes) drawn with matplotlib's Agg backend (no display needed).

    radar           per target: key metric, composite and TTO over the four conditions
    heatmap         per target: attack success (judge, else keyword ASR) on harmful questions, task x modality
    survival        per attack method: share of samples not yet jailbroken vs attack step
    distributions   per metric: values by condition (box plots), nulls counted in the labels
    controls        per target: metric means with the real image vs blank and noise controls

A figure whose data is absent is drawn as a labelled empty panel, so the report always holds all five.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd

from medattack.report.aggregate import CONDITIONS, KEY_METRIC, ReportTables

RADAR_METRICS = (KEY_METRIC, "judge", "composite", "tto")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(figure)
    return buffer.getvalue()


def _empty(title: str, message: str) -> bytes:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 2.5))
    axis.axis("off")
    axis.set_title(title)
    axis.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    return _png(figure)


def _series(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(label, rows) per run x target; the run is named only when several runs are compared."""
    several = frame["run"].nunique() > 1
    return [(f"{run} / {target}" if several else str(target), rows)
            for (run, target), rows in frame.groupby(["run", "target"], sort=True)]


def _normalise(metric: str, values: np.ndarray, specs: dict[str, dict[str, Any]]) -> np.ndarray:
    spec = specs.get(metric, {"low": 0.0, "high": 1.0})
    return (values - spec["low"]) / ((spec["high"] - spec["low"]) or 1.0)


def radar(tables: ReportTables, specs: dict[str, dict[str, Any]]) -> bytes:
    frame = tables.by_condition[(tables.by_condition["method"] == "none")
                                & tables.by_condition["metric"].isin(RADAR_METRICS)]
    if frame.empty:
        return _empty("Conditions (radar)", "no scored benchmark responses")
    plt = _pyplot()
    groups = _series(frame)
    figure, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 4.2), subplot_kw={"polar": True},
                                squeeze=False)
    angles = np.linspace(0, 2 * np.pi, len(CONDITIONS), endpoint=False)
    for axis, (label, rows) in zip(axes[0], groups, strict=True):
        for metric in RADAR_METRICS:
            means = rows[rows["metric"] == metric].set_index("condition")["mean"]
            values = np.array([means.get(c, np.nan) for c in CONDITIONS], dtype=float)
            if np.all(np.isnan(values)):
                continue
            values = np.nan_to_num(_normalise(metric, values, specs))
            axis.plot(np.append(angles, angles[0]), np.append(values, values[0]), marker="o", label=metric)
            axis.fill(np.append(angles, angles[0]), np.append(values, values[0]), alpha=0.1)
        axis.set_xticks(angles, CONDITIONS)
        axis.set_ylim(0, 1)
        axis.set_title(label, pad=14)
    axes[0][-1].legend(loc="upper right", bbox_to_anchor=(1.35, 1.1), fontsize=8)
    return _png(figure)


def heatmap(tables: ReportTables) -> bytes:
    frame = tables.task_modality
    if frame.empty:
        return _empty("Task x modality", "no scored harmful benchmark responses")
    plt = _pyplot()
    groups = _series(frame)
    tasks = sorted(frame["task"].dropna().unique())
    modalities = sorted(frame["modality"].dropna().unique())
    figure, axes = plt.subplots(1, len(groups), figsize=(1.2 + 0.9 * len(modalities) * len(groups),
                                                         1.5 + 0.32 * len(tasks)), squeeze=False)
    image = None
    colours = plt.get_cmap("Reds").with_extremes(bad="#9e9e9e")  # no data is grey, never the near-white of 0
    for axis, (label, rows) in zip(axes[0], groups, strict=True):
        grid = rows.pivot_table(index="task", columns="modality", values="mean").reindex(index=tasks,
                                                                                          columns=modalities)
        image = axis.imshow(grid.to_numpy(dtype=float), vmin=0, vmax=1, cmap=colours, aspect="auto")
        axis.set_xticks(range(len(modalities)), modalities, rotation=45, ha="right")
        axis.set_yticks(range(len(tasks)), tasks if axis is axes[0][0] else [""] * len(tasks))
        axis.set_title(label)
    figure.colorbar(image, ax=axes[0].tolist(), label=f"{tables.success_metric} (malicious + both); grey: no data")
    return _png(figure)


def survival(tables: ReportTables) -> bytes:
    frame = tables.survival
    if frame.empty:
        return _empty("Survival", "no white-box attack steps in the run(s)")
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 3.6))
    several = frame["run"].nunique() > 1
    for (run, method, model), rows in frame.groupby(["run", "method", "model"], sort=True):
        label = f"{method} on {model}" + (f" ({run})" if several else "") + f", n={int(rows['n'].iloc[0])}"
        axis.step(rows["step"], rows["surviving"], where="post", label=label)
    axis.set_xlabel("attack step")
    axis.set_ylabel("share not yet jailbroken")
    axis.set_ylim(-0.02, 1.02)
    axis.legend(fontsize=8)
    axis.set_title("Survival: samples whose target is not yet forced (teacher-forced success)")
    return _png(figure)


def distributions(scores: pd.DataFrame) -> bytes:
    frame = scores[scores["kind"] == "benchmark"] if not scores.empty else scores
    metrics = sorted(frame["metric"].dropna().unique()) if not frame.empty else []
    if not metrics:
        return _empty("Score distributions", "no scored benchmark responses")
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.4), squeeze=False)
    for axis, metric in zip(axes[0], metrics, strict=True):
        rows = frame[frame["metric"] == metric]
        data, labels = [], []
        for condition in CONDITIONS:
            values = rows.loc[rows["condition"] == condition, "value"]
            data.append(values.dropna().to_numpy(dtype=float))
            labels.append(f"{condition}\nnull {int(values.isna().sum())}")
        axis.boxplot([d if len(d) else [np.nan] for d in data], tick_labels=labels)
        axis.tick_params(axis="x", labelsize=7)
        axis.set_title(metric)
    figure.suptitle("Score distributions by condition (benchmark samples)", y=1.03)
    return _png(figure)


def controls(tables: ReportTables) -> bytes:
    frame = tables.controls[tables.controls["metric"].isin([KEY_METRIC, tables.success_metric, "tio", "tto"])]
    reliance = tables.image_reliance
    if frame.empty or frame["image"].nunique() < 2:
        return _empty("Image reliance", "no control-image responses (query with controls blank, noise)")
    plt = _pyplot()
    groups = _series(frame)
    figure, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.6), squeeze=False)
    images = ["real", "blank", "noise"]
    for axis, (label, rows) in zip(axes[0], groups, strict=True):
        metrics = sorted(rows["metric"].unique())
        width = 0.8 / len(images)
        for k, image in enumerate(images):
            part = rows[rows["image"] == image].set_index("metric")
            means = [part["mean"].get(m, np.nan) for m in metrics]
            axis.bar(np.arange(len(metrics)) + k * width, np.nan_to_num(means), width, label=image)
        changed = reliance[(reliance["target"] == rows["target"].iloc[0]) & (reliance["run"] == rows["run"].iloc[0])]
        note = ", ".join(f"{r.control}: {r.changed:.0%} answers change" for r in changed.itertuples())
        axis.set_xticks(np.arange(len(metrics)) + width, metrics)
        axis.set_title(f"{label}\n{note}", fontsize=9)
        axis.legend(fontsize=8)
    figure.suptitle("Real image vs controls (mean per metric)", y=1.04)
    return _png(figure)


def draw_all(tables: ReportTables, scores: pd.DataFrame, specs: dict[str, dict[str, Any]]) -> dict[str, bytes]:
    """Every figure as PNG bytes, by name."""
    return {"radar": radar(tables, specs), "heatmap": heatmap(tables), "survival": survival(tables),
            "distributions": distributions(scores), "controls": controls(tables)}
