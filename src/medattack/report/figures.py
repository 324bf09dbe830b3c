"""The report's figures, each a PNG (bytes) drawn with matplotlib's Agg backend (no display needed).

    rates           per target: attack success (judge) and the non-refusal rate per condition, dots with 95%
                    intervals on one 0-1 scale
    heatmap         per target: attack success (judge, else keyword ASR) on harmful questions, task x modality
    survival        per attack method: share of samples whose target is not yet forced vs attack step and vs
                    attack seconds (the budget), and the judge's verdict on the attack's final answers at the end
    distributions   per metric: values by condition (box plots), nulls counted in the labels
    controls        per target: metric means with the real image vs blank and noise controls

A figure whose data is absent is drawn as a labelled empty panel, so the report always holds all five.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd

from medattack.report.aggregate import (
    CONDITIONS,
    HARMFUL_CONDITIONS,
    JUDGE_METRIC,
    KEY_METRIC,
    ReportTables,
    short_target,
)

RATE_METRICS = (JUDGE_METRIC, KEY_METRIC)  # 0/1 metrics: rates on one scale


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
    return [(f"{run} / {short_target(target)}" if several else short_target(target), rows)
            for (run, target), rows in frame.groupby(["run", "target"], sort=True)]


def rates(tables: ReportTables) -> bytes:
    """Dots with 95% intervals, one panel per target: the judge's attack success on harmful conditions and the
    non-refusal rate on every condition (benchmark samples), all rates on one 0-1 scale."""
    frame = tables.by_condition[(tables.by_condition["method"] == "none")
                                & tables.by_condition["metric"].isin(RATE_METRICS)]
    frame = frame[(frame["metric"] != JUDGE_METRIC) | frame["condition"].isin(HARMFUL_CONDITIONS)]
    if frame.empty:
        return _empty("Rates by condition", "no scored benchmark responses")
    plt = _pyplot()
    groups = _series(frame)
    figure, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 3.4), squeeze=False, sharey=True)
    labels = {JUDGE_METRIC: "attack success (judge)", KEY_METRIC: "non-refusal rate"}
    for axis, (label, rows) in zip(axes[0], groups, strict=True):
        for k, metric in enumerate(RATE_METRICS):
            part = rows[rows["metric"] == metric].set_index("condition")
            positions = [c for c in CONDITIONS if c in part.index]
            if not positions:
                continue
            x = np.array([CONDITIONS.index(c) for c in positions]) + (k - 0.5) * 0.25
            means = part.loc[positions, "mean"].to_numpy(dtype=float)
            low = np.nan_to_num(means - part.loc[positions, "ci_low"].to_numpy(dtype=float)).clip(min=0)
            high = np.nan_to_num(part.loc[positions, "ci_high"].to_numpy(dtype=float) - means).clip(min=0)
            axis.errorbar(x, means, yerr=[low, high], fmt="o", capsize=3, label=labels[metric])
        axis.set_xticks(range(len(CONDITIONS)), CONDITIONS)
        axis.set_ylim(-0.03, 1.03)
        axis.grid(axis="y", alpha=0.3)
        axis.set_title(label, fontsize=9)
    axes[0][0].set_ylabel("rate [95% interval]")
    axes[0][0].legend(fontsize=8, loc="upper left")
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
    """Per attack: the share of samples whose target string is not yet forced after each step (teacher-forced,
    what the attack optimises), and at the last step the share of its inputs, replayed on the attacked model,
    that the judge did not call jailbroken (the transfer table's diagonal), with its 95% interval."""
    frame = tables.survival
    if frame.empty:
        return _empty("Survival", "no white-box attack steps in the run(s)")
    plt = _pyplot()
    figure, (axis, budget_axis) = plt.subplots(1, 2, figsize=(10.4, 4.2))
    several = frame["run"].nunique() > 1
    budget = tables.budget
    for (run, method, model), rows in frame.groupby(["run", "method", "model"], sort=True):
        label = f"{method} on {short_target(model)}" + (f" ({run})" if several else "")
        line = axis.step(rows["step"], rows["surviving"], where="post",
                         label=f"{label}: target not forced, n={int(rows['n'].iloc[0])}")[0]
        spent = budget[(budget["run"] == run) & (budget["method"] == method) & (budget["model"] == model)] \
            if not budget.empty else budget
        if not spent.empty:
            budget_axis.step(spent["seconds"], spent["surviving"], where="post", color=line.get_color())
        transfer = tables.transfer
        replayed = transfer[(transfer["run"] == run) & (transfer["method"] == method)
                            & (transfer["attack_model"] == model) & (transfer["target"] == model)] \
            if not transfer.empty else transfer
        for r in replayed.itertuples():
            if pd.isna(r.mean):
                continue
            share = 1 - r.mean
            error = [[0.0], [0.0]] if pd.isna(r.ci_low) else [[max(0.0, share - (1 - r.ci_high))],
                                                               [max(0.0, (1 - r.ci_low) - share)]]
            axis.errorbar([rows["step"].max()], [share], yerr=error, fmt="D", color=line.get_color(), capsize=3,
                          label=f"{label}: not jailbroken by the {tables.success_metric} (its inputs replayed on "
                          f"it, as in the transfer table), n={int(r.n) - int(r.nulls)}")
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("attack step")
    axis.set_ylabel("share of samples")
    axis.set_ylim(-0.03, 1.08)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=1)
    axis.set_title("Survival: samples the attack has not yet won", fontsize=10)
    budget_axis.set_xlabel("attack seconds per sample (wall, on the attacking device)")
    budget_axis.set_ylim(-0.03, 1.08)
    budget_axis.grid(alpha=0.3)
    budget_axis.set_title("The same against the compute spent", fontsize=10)
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


def draw_all(tables: ReportTables, scores: pd.DataFrame) -> dict[str, bytes]:
    """Every figure as PNG bytes, by name (the five always; the injection figure where answers were scored for it)."""
    from medattack.report.injection import injection_figure

    drawn = {"rates": rates(tables), "heatmap": heatmap(tables), "survival": survival(tables),
             "distributions": distributions(scores), "controls": controls(tables)}
    if not tables.injection.empty:
        drawn["injection"] = injection_figure(tables.injection)
    return drawn
