"""Everything the report shows, computed from run directories: tables with bootstrap 95% intervals.

A run's query responses (responses/<target>/responses.jsonl) are joined with their scores
(scores/<target>/scores.jsonl) into one long table, one row per response x metric. Every group of
that table reports n, the null count and the mean of the non-null values with a percentile
bootstrap 95% confidence interval; nulls are never dropped silently. The `method` of a response is
"none" for a benchmark sample (the condition alone), the attack's method for a replayed attack, and
"control:blank" / "control:noise" for the image-reliance controls.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medattack.records import CONDITIONS, HARMFUL_CONDITIONS
from medattack.rundir import RunDir, read_jsonl

__all__ = ["CONDITIONS", "HARMFUL_CONDITIONS", "RunData", "build_tables", "load_run"]
KEY_METRIC = "keyword_asr"  # the success metric of tables that show one number
RESAMPLES = 1000
MIN_INTERVAL_N = 5  # below this many values a cell shows no interval (it would only look precise)
Z95 = 1.959963984540054
GROUP_COLUMNS = ["n", "nulls", "mean", "ci_low", "ci_high"]


def bootstrap_ci(values: np.ndarray, resamples: int = RESAMPLES, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (N,), resampled in blocks to bound memory."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    if n == 1 or np.all(values == values[0]):
        return float(values[0]), float(values[0])
    rng = np.random.default_rng(seed)
    block = max(1, min(resamples, 4_000_000 // n))
    means = np.concatenate([values[rng.integers(0, n, (min(block, resamples - start), n))].mean(axis=1)
                            for start in range(0, resamples, block)])
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def wilson_ci(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default): honest at small n and at 0 or 1, where a
    bootstrap of 0/1 values collapses to a point (`1.00 [1.00, 1.00] n=1`)."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def interval(values: np.ndarray) -> tuple[float, float]:
    """95% interval of the mean: Wilson for 0/1 values (rates), a percentile bootstrap otherwise."""
    if len(values) and np.isin(values, (0.0, 1.0)).all():
        return wilson_ci(int(values.sum()), len(values))
    return bootstrap_ci(values)


def summarise_groups(table: pd.DataFrame, keys: Sequence[str], value: str = "value") -> pd.DataFrame:
    """One row per group: keys + n (rows), nulls, mean and 95% interval of the non-null `value`s (Wilson
    for rates, bootstrap otherwise; see `interval`)."""
    rows = []
    if table.empty:
        return pd.DataFrame(columns=[*keys, *GROUP_COLUMNS])
    for group, members in table.groupby(list(keys), sort=True, dropna=False):
        values = members[value].dropna().to_numpy(dtype=float)
        low, high = interval(values)
        rows.append({**dict(zip(keys, group if isinstance(group, tuple) else (group,), strict=True)),
                     "n": len(members), "nulls": int(members[value].isna().sum()),
                     "mean": float(values.mean()) if len(values) else float("nan"), "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows, columns=[*keys, *GROUP_COLUMNS])


@dataclass
class RunData:
    """What one run directory holds, read once."""

    name: str
    root: Path
    manifest: dict[str, Any]
    scores: pd.DataFrame  # one row per response x metric, with the response's columns
    metrics: dict[str, dict[str, Any]]  # metric name -> spec (range, direction, is_proxy)
    attacks: pd.DataFrame  # one row per attacked sample (attack stage results)
    steps: pd.DataFrame  # one row per attack step: method, model, sample_id, step, success
    failures: dict[str, int] = field(default_factory=dict)  # where -> count of recorded failures


def _method(row: pd.Series) -> str:
    if row["kind"] == "attack":
        return str(row["attack_method"])
    return "none" if row["kind"] == "benchmark" else str(row["source"])


def load_run(root: Path, name: str | None = None) -> RunData:
    """Read a run's manifest, query responses joined with their scores, and attack results and steps."""
    run = RunDir(root)
    manifest = run.read_manifest()
    current = {s.sample_id for s in run.samples()} if run.has_samples() else None
    frames, metrics, failures = [], {}, {}
    for folder in run.responses_folders():  # answers to samples a rebuilt benchmark no longer has are not shown
        scores_folder = run.scores_folder(folder.target)
        responses = pd.DataFrame([r.to_json() for r in folder.responses()
                                  if current is None or r.sample_id in current])
        scores = pd.DataFrame([r.to_json() for r in scores_folder.scores()])
        if scores_folder.summary_path.exists():
            metrics.update(json.loads(scores_folder.summary_path.read_text(encoding="utf-8"))["metrics"])
        failures[run.relative(folder.path)] = len(read_jsonl(folder.failures_path))
        if responses.empty:
            continue
        responses["method"] = responses.apply(_method, axis=1)
        if scores.empty:
            scores = pd.DataFrame(columns=["response_id", "metric", "value", "null_reason"])
        joined = responses.merge(scores[["response_id", "metric", "value", "null_reason"]], on="response_id",
                                 how="inner")
        frames.append(joined)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["response_id", "target", "method", "kind", "condition", "task", "modality", "metric", "value"])
    table["value"] = pd.to_numeric(table["value"], errors="coerce")
    table["run"] = name or root.name

    attack_rows, step_rows = [], []
    for folder in run.attack_folders():
        for row in folder.results():
            if current is not None and row.sample_id not in current:
                continue
            attack_rows.append({"sample_id": row.sample_id, "condition": row.condition, "task": row.task,
                                "method": row.method, "model": row.model, "success": row.success,
                                "keyword_success": row.keyword_success, "n_steps": row.n_steps,
                                "seconds": row.seconds, "best_loss": row.best_loss, "linf": row.linf,
                                "run": name or root.name})
            for step in read_jsonl(folder.steps_path(row.sample_id)):
                step_rows.append({"method": row.method, "model": row.model, "sample_id": row.sample_id,
                                  "step": step["step"], "success": step["success"], "run": name or root.name})
        failures[run.relative(folder.path)] = len(read_jsonl(folder.failures_path))
    return RunData(name or root.name, root, manifest, table, metrics, pd.DataFrame(attack_rows),
                   pd.DataFrame(step_rows), failures)


@dataclass
class ReportTables:
    """The report's tables (long format: one row per group x metric)."""

    by_condition: pd.DataFrame  # run, method, target, condition, metric
    by_task: pd.DataFrame  # run, target, task, metric (benchmark samples)
    by_modality: pd.DataFrame  # run, target, modality, metric (benchmark samples)
    task_modality: pd.DataFrame  # run, target, task, modality: key metric on harmful conditions
    transfer: pd.DataFrame  # run, method, attack_model, target: key metric of replayed attacks
    controls: pd.DataFrame  # run, target, image (real / blank / noise), metric
    image_reliance: pd.DataFrame  # run, target, control: share of answers that change with the image
    whitebox: pd.DataFrame  # run, method, model: teacher-forced and keyword success of the attack stage
    survival: pd.DataFrame  # run, method, model, step, surviving (share not yet jailbroken)


def _image_kind(row: pd.Series) -> str:
    return row["source"].removeprefix("control:") if row["kind"] == "control" else "real"


def _reliance(table: pd.DataFrame) -> pd.DataFrame:
    """Share of prompts whose answer with a control image differs from the answer with the real one."""
    rows = []
    answers = table.drop_duplicates("response_id")
    for (run, target), group in answers.groupby(["run", "target"], sort=True):
        real = group[group["kind"] == "benchmark"].set_index("sample_id")["response"]
        for control, members in group[group["kind"] == "control"].groupby("source"):
            pairs = members.set_index("sample_id")["response"].dropna()
            shared = pairs.index.intersection(real.index)
            if shared.empty:
                continue
            changed = np.array([" ".join(str(pairs[s]).split()) != " ".join(str(real[s]).split()) for s in shared],
                               dtype=float)
            low, high = bootstrap_ci(changed)
            rows.append({"run": run, "target": target, "control": control.removeprefix("control:"), "n": len(shared),
                         "changed": float(changed.mean()), "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows, columns=["run", "target", "control", "n", "changed", "ci_low", "ci_high"])


def _survival(steps: pd.DataFrame) -> pd.DataFrame:
    """Per method: share of attacked samples not yet successful after each step (Kaplan-Meier without
    censoring: a sample that never succeeds survives to the end)."""
    columns = ["run", "method", "model", "step", "surviving", "n"]
    if steps.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for (run, method, model), group in steps.groupby(["run", "method", "model"], sort=True):
        first = {}
        for sample_id, sample_steps in group.groupby("sample_id"):
            hits = sample_steps.loc[sample_steps["success"].astype(bool), "step"]
            first[sample_id] = int(hits.min()) if len(hits) else None
        horizon = int(group["step"].max())
        n = len(first)
        for step in range(0, horizon + 1):
            alive = sum(1 for s in first.values() if s is None or s > step)
            rows.append({"run": run, "method": method, "model": model, "step": step, "surviving": alive / n, "n": n})
    return pd.DataFrame(rows, columns=columns)


def build_tables(runs: Sequence[RunData]) -> ReportTables:
    table = pd.concat([r.scores for r in runs], ignore_index=True)
    benchmark = table[table["kind"] == "benchmark"]
    harmful = benchmark[benchmark["condition"].isin(HARMFUL_CONDITIONS) & (benchmark["metric"] == KEY_METRIC)]
    replayed = table[(table["kind"] == "attack") & (table["metric"] == KEY_METRIC)]
    with_image = table[table["kind"].isin(["benchmark", "control"])].copy()
    with_image["image"] = with_image.apply(_image_kind, axis=1) if not with_image.empty else []
    attacks = pd.concat([r.attacks for r in runs], ignore_index=True)
    whitebox = pd.DataFrame()
    if not attacks.empty:
        attacks["success"] = attacks["success"].astype(float)
        attacks["keyword_success"] = attacks["keyword_success"].astype(float)
        whitebox = summarise_groups(attacks, ["run", "method", "model"], "success").rename(
            columns={"mean": "success", "ci_low": "success_ci_low", "ci_high": "success_ci_high"})
        extra = attacks.groupby(["run", "method", "model"], sort=True).agg(
            keyword_success=("keyword_success", "mean"), mean_steps=("n_steps", "mean"),
            mean_seconds=("seconds", "mean"), max_linf=("linf", "max")).reset_index()
        whitebox = whitebox.merge(extra, on=["run", "method", "model"])
    return ReportTables(
        by_condition=summarise_groups(table, ["run", "method", "target", "condition", "metric"]),
        by_task=summarise_groups(benchmark, ["run", "target", "task", "metric"]),
        by_modality=summarise_groups(benchmark, ["run", "target", "modality", "metric"]),
        task_modality=summarise_groups(harmful, ["run", "target", "task", "modality"]),
        transfer=summarise_groups(replayed, ["run", "method", "attack_model", "target"]),
        controls=summarise_groups(with_image, ["run", "target", "image", "metric"]),
        image_reliance=_reliance(table[table["kind"].isin(["benchmark", "control"])]),
        whitebox=whitebox,
        survival=_survival(pd.concat([r.steps for r in runs], ignore_index=True)),
    )
