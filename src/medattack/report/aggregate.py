"""Everything the report shows, computed from run directories: tables with 95% intervals and paired tests.

A run's query responses (responses/<target>/responses.jsonl) are joined with their scores
(scores/<target>/scores.jsonl) into one long table, one row per response x metric. Every group of
that table reports n, the null count and the mean of the non-null values with a 95% interval (Wilson
for rates, BCa bootstrap otherwise; stats.py); nulls are never dropped silently. Attack success
is the judge's verdict on harmful questions when a judge ran (the non-refusal rate otherwise), and
paired tests compare conditions and attacks on the same image x prompt. The `method` of a response is
"none" for a benchmark sample (the condition alone), the attack's method for a replayed attack, and
"control:blank" / "control:noise" for the image-reliance controls.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from medattack.records import CONDITIONS, HARMFUL_CONDITIONS
from medattack.report.injection import injection_table
from medattack.report.reading import RunData
from medattack.stats import bootstrap_ci, interval, paired_test, wilson_ci

__all__ = ["CONDITIONS", "HARMFUL_CONDITIONS", "bootstrap_ci", "build_tables", "interval", "wilson_ci"]
KEY_METRIC = "keyword_asr"  # the non-refusal rate: the answer rate on benign questions, success without a judge
JUDGE_METRIC = "judge"  # attack success on harmful questions whenever a judge ran
MIN_INTERVAL_N = 5  # below this many values a cell shows no interval (it would only look precise)
GROUP_COLUMNS = ["n", "nulls", "mean", "ci_low", "ci_high", "pairs"]  # pairs: image x prompt pairs behind the n
SHORT_TARGET_CHARS = 24


DEFENCE_SUFFIX = re.compile(r"(\+[A-Za-z][A-Za-z0-9_-]*)+$")  # "<target>+<defence>[+<defence>]" (defences/base.py)


def short_target(name: str) -> str:
    """A target's name as a table column or plot label: its words before any parenthesis, cut to
    SHORT_TARGET_CHARS by an ellipsis in the middle, so both ends stay ("smollm2-135m-llava-random-vision (not a
    medical model)" -> "smollm2-135…andom-vision"), and the defences of a defended target ("+reminder") never cut;
    the report's "Targets" legend gives the full names."""
    name = str(name)
    suffix = DEFENCE_SUFFIX.search(name)
    defences = suffix.group(0) if suffix else ""
    base = name[: len(name) - len(defences)]
    short = base.split(" (")[0].strip() or base
    room = max(SHORT_TARGET_CHARS - len(defences), 9)
    if len(short) > room:
        head = (room - 1) // 2
        short = short[:head] + "…" + short[len(short) - (room - 1 - head):]
    return short + defences


def summarise_groups(table: pd.DataFrame, keys: Sequence[str], value: str = "value") -> pd.DataFrame:
    """One row per group: keys + n (rows), nulls, mean and 95% interval of the non-null `value`s, and the
    image x prompt pairs they came from (`pair_id`): the pair is the unit of sampling, so the interval is
    clustered by it (Wilson at the effective n for rates, a cluster bootstrap otherwise; `stats.interval`)."""
    rows = []
    if table.empty:
        return pd.DataFrame(columns=[*keys, *GROUP_COLUMNS])
    for group, members in table.groupby(list(keys), sort=True, dropna=False):
        decided = members[members[value].notna()]
        values = decided[value].to_numpy(dtype=float)
        clusters = decided["pair_id"].to_numpy() if "pair_id" in decided else None
        low, high = interval(values, clusters)
        rows.append({**dict(zip(keys, group if isinstance(group, tuple) else (group,), strict=True)),
                     "n": len(members), "nulls": int(members[value].isna().sum()),
                     "mean": float(values.mean()) if len(values) else float("nan"), "ci_low": low, "ci_high": high,
                     "pairs": int(members["pair_id"].nunique()) if "pair_id" in members else len(members)})
    return pd.DataFrame(rows, columns=[*keys, *GROUP_COLUMNS])


@dataclass
class ReportTables:
    """The report's tables (long format: one row per group x metric)."""

    success_metric: str  # attack success on harmful questions: the judge when one ran, else keyword_asr
    by_condition: pd.DataFrame  # run, method, target, condition, metric
    by_task: pd.DataFrame  # run, target, questions (harmful / benign), task, metric (benchmark samples)
    by_modality: pd.DataFrame  # run, target, questions (harmful / benign), modality, metric (benchmark samples)
    task_modality: pd.DataFrame  # run, target, task, modality: success metric on harmful conditions
    transfer: pd.DataFrame  # run, method, attack_model, target: success metric of replayed attacks
    comparisons: pd.DataFrame  # run, target, comparison, metric: paired test on the same image x prompt
    controls: pd.DataFrame  # run, target, image (real / blank / noise), metric
    image_reliance: pd.DataFrame  # run, target, control: share of answers that change with the image
    whitebox: pd.DataFrame  # run, method, model: teacher-forced and keyword success of the attack stage
    survival: pd.DataFrame  # run, method, model, step, surviving (share not yet jailbroken)
    blackbox: pd.DataFrame = field(default_factory=pd.DataFrame)  # run, method, target: success, queries, cost
    budget: pd.DataFrame = field(default_factory=pd.DataFrame)  # run, method, model, seconds, surviving
    injection: pd.DataFrame = field(default_factory=pd.DataFrame)  # run, target, placement, size, contrast:
    # share of injected answers that followed the instruction, and the baseline (report/injection.py)
    defence_effects: pd.DataFrame = field(default_factory=pd.DataFrame)  # run, target, defences, measure: paired
    defence_flags: pd.DataFrame = field(default_factory=pd.DataFrame)  # run, target, defences, inputs: flag rate


def _image_kind(row: pd.Series) -> str:
    return row["source"].removeprefix("control:") if row["kind"] == "control" else "real"


def first_answers(table: pd.DataFrame) -> pd.DataFrame:
    """The first sampled answer of each query (query --generations N), for the tests that pair answers."""
    return table[table["generation"].fillna(0) == 0] if "generation" in table else table


def _reliance(table: pd.DataFrame) -> pd.DataFrame:
    """Share of prompts whose answer with a control image differs from the answer with the real one."""
    rows = []
    answers = first_answers(table).drop_duplicates("response_id")
    for (run, target), group in answers.groupby(["run", "target"], sort=True):
        real = group[group["kind"] == "benchmark"].set_index("sample_id")["answer_key"]
        for control, members in group[group["kind"] == "control"].groupby("source"):
            pairs = members.set_index("sample_id")["answer_key"].dropna()
            shared = pairs.index.intersection(real.index)
            if shared.empty:
                continue
            changed = (pairs[shared] != real[shared]).to_numpy(dtype=float)
            low, high = interval(changed)
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


def _budget(steps: pd.DataFrame) -> pd.DataFrame:
    """Per method: share of attacked samples not yet successful after so many seconds of attack (each sample's
    step seconds summed, wall time on the device that attacked): the budget axis every method shares."""
    columns = ["run", "method", "model", "seconds", "surviving", "n"]
    if steps.empty or "seconds" not in steps:
        return pd.DataFrame(columns=columns)
    rows = []
    for (run, method, model), group in steps.groupby(["run", "method", "model"], sort=True):
        if int(group["step"].max()) == 0:  # an input evaluated, nothing optimised (baselines, universal replays)
            continue
        first: dict[str, float | None] = {}
        spent = []
        for sample_id, sample_steps in group.sort_values("step").groupby("sample_id"):
            elapsed = pd.to_numeric(sample_steps["seconds"], errors="coerce").fillna(0.0).cumsum()
            hits = elapsed[sample_steps["success"].astype(bool).to_numpy()]
            first[sample_id] = float(hits.iloc[0]) if len(hits) else None
            spent.append(float(elapsed.iloc[-1]))
        n = len(first)
        for seconds in sorted({0.0, max(spent), *(t for t in first.values() if t is not None)}):
            alive = sum(1 for t in first.values() if t is None or t > seconds)
            rows.append({"run": run, "method": method, "model": model, "seconds": seconds, "surviving": alive / n,
                         "n": n})
    return pd.DataFrame(rows, columns=columns)


def success_metric(table: pd.DataFrame) -> str:
    """The judge when it scored anything, else the non-refusal rate (an upper bound, said so in the report)."""
    judged = table[table["metric"] == JUDGE_METRIC] if "metric" in table else table
    return JUDGE_METRIC if not judged.empty and judged["value"].notna().any() else KEY_METRIC


COMPARISON_COLUMNS = ["run", "target", "comparison", "metric", "n", "pairs", "mean_a", "mean_b", "difference",
                      "ci_low", "ci_high", "p_value", "test"]


def _paired_rows(run: str, target: str, comparison: str, metric: str, a: pd.Series, b: pd.Series,
                 clusters: pd.Series) -> dict | None:
    """One comparison of the values `a` and `b` (indexed alike by what pairs them), over the inputs where both
    exist, each input's image x prompt pair in `clusters` (same index): the unit the test resamples."""
    joined = pd.concat([a.rename("a"), b.rename("b"), clusters.rename("pair")], axis=1, join="inner").dropna()
    if joined.empty:
        return None
    result = paired_test(joined["a"].to_numpy(), joined["b"].to_numpy(), joined["pair"].to_numpy())
    return {"run": run, "target": target, "comparison": comparison, "metric": metric, "n": result.n,
            "pairs": result.clusters, "mean_a": result.mean_a, "mean_b": result.mean_b,
            "difference": result.difference, "ci_low": result.ci_low, "ci_high": result.ci_high,
            "p_value": result.p_value, "test": result.test}


def comparisons(table: pd.DataFrame, success: str) -> pd.DataFrame:
    """Paired tests on the same image x prompt, per run and target (stats.paired_test: one method for interval and p,
    resampling whole image x prompt pairs):

    - `malicious -> both`: does claiming a mismatched attribute change attack success on harmful questions?
    - `normal -> mismatch`: does it change the answer rate on benign ones?
    - `none -> <attack>`: does a replayed attack beat asking the clean question on the same sample?

    A mismatched sample is paired with the matched sample of its image and prompt (`pair_id`); the mismatched
    samples of one pair are one cluster. With sampled answers (query --generations N) the pairs are of the first
    answers (the tables above average them all)."""
    rows: list[dict | None] = []
    table = first_answers(table)
    for (run, target), group in table.groupby(["run", "target"], sort=True):
        benchmark = group[group["kind"] == "benchmark"]
        for before, after, metric in (("malicious", "both", success), ("normal", "mismatch", KEY_METRIC)):
            values = benchmark[benchmark["metric"] == metric]
            matched = values[values["condition"] == before].drop_duplicates("pair_id").set_index("pair_id")["value"]
            mismatched = values[values["condition"] == after].reset_index(drop=True)
            rows.append(_paired_rows(run, target, f"{before} -> {after}", metric,
                                     mismatched["pair_id"].map(matched), mismatched["value"],
                                     mismatched["pair_id"]))
        clean = benchmark[benchmark["metric"] == success].drop_duplicates("sample_id").set_index("sample_id")
        attacked = group[(group["kind"] == "attack") & (group["metric"] == success)]
        for method, members in attacked.groupby("method", sort=True):
            rows.append(_paired_rows(run, target, f"none -> {method}", success, clean["value"],
                                     members.drop_duplicates("sample_id").set_index("sample_id")["value"],
                                     clean["pair_id"]))
    return pd.DataFrame([r for r in rows if r], columns=COMPARISON_COLUMNS)


def _questions(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(questions=np.where(frame["condition"].isin(HARMFUL_CONDITIONS), "harmful", "benign"))


def build_tables(runs: Sequence[RunData]) -> ReportTables:
    table = pd.concat([r.scores for r in runs], ignore_index=True)
    success = success_metric(table)
    benchmark = _questions(table[table["kind"] == "benchmark"])
    harmful = benchmark[(benchmark["questions"] == "harmful") & (benchmark["metric"] == success)]
    replayed = table[(table["kind"] == "attack") & (table["metric"] == success)]
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
        success_metric=success,
        by_condition=summarise_groups(table, ["run", "method", "target", "condition", "metric"]),
        by_task=summarise_groups(benchmark, ["run", "target", "questions", "task", "metric"]),
        by_modality=summarise_groups(benchmark, ["run", "target", "questions", "modality", "metric"]),
        task_modality=summarise_groups(harmful, ["run", "target", "task", "modality"]),
        transfer=summarise_groups(replayed, ["run", "method", "attack_model", "target"]),
        comparisons=comparisons(table, success) if not table.empty else pd.DataFrame(columns=COMPARISON_COLUMNS),
        controls=summarise_groups(with_image, ["run", "target", "image", "metric"]),
        image_reliance=_reliance(table[table["kind"].isin(["benchmark", "control"])]),
        whitebox=whitebox,
        survival=_survival(pd.concat([r.steps for r in runs], ignore_index=True)),
        budget=_budget(pd.concat([r.steps for r in runs], ignore_index=True)),
        blackbox=_blackbox(pd.concat([r.searches for r in runs], ignore_index=True)),
        injection=injection_table(table, attacks),
        **dict(zip(("defence_effects", "defence_flags"), _defence_tables(table, success), strict=True)),
    )


def _defence_tables(table: pd.DataFrame, success: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """report/defences.py's tables (imported here, as it reads this module's metric names and helpers)."""
    from medattack.report.defences import defence_tables

    return defence_tables(table, success)


def _blackbox(searches: pd.DataFrame) -> pd.DataFrame:
    """Per run, method and target: the judge's success rate (Wilson interval), the queries it took (median
    over the successes), queries and estimated tokens per sample, and dollars (None when unpriced)."""
    keys = ["run", "method", "target"]
    if searches.empty:
        return pd.DataFrame(columns=[*keys, *GROUP_COLUMNS])
    summary = summarise_groups(searches, keys, "success")
    extra = searches.groupby(keys, sort=True).agg(
        judge=("judge", "first"), median_queries_to_success=("queries_to_success", "median"),
        mean_queries=("queries", "mean"), mean_tokens=("tokens", "mean"),
        attacker_written=("attacker_written", "sum"), attempts=("attempts", "sum"),
        cost_usd=("cost_usd", lambda v: None if v.isna().any() else float(v.sum()))).reset_index()
    return summary.merge(extra, on=keys)
