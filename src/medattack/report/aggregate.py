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

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medattack.labelling.design import standing
from medattack.records import CONDITIONS, HARMFUL_CONDITIONS, Label, method_of
from medattack.rundir import RunDir, read_jsonl
from medattack.stats import bootstrap_ci, interval, paired_test, wilson_ci
from medattack.storage import read_records, read_state, readable

__all__ = ["CONDITIONS", "HARMFUL_CONDITIONS", "RunData", "bootstrap_ci", "build_tables", "interval", "load_run",
           "wilson_ci"]
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
    calibration: dict[str, dict[str, Any]] = field(default_factory=dict)  # target -> derived metric -> calibration
    searches: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per black-box searched sample
    labels: dict[str, dict[str, Label]] = field(default_factory=dict)  # target -> response id -> its standing
    # label (`medattack label`; labelling.design.standing)
    texts: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(TEXT_FRAME)))  # one row per
    # answer: response_id, question, response (kept out of `scores`, whose rows repeat each answer per metric)

    def texts_of(self, response_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """(question, response) of each answer asked for that the run holds."""
        wanted = set(response_ids)
        found = self.texts[self.texts["response_id"].isin(wanted)]
        return {str(r): (str(q or ""), str(a or "")) for r, q, a in
                zip(found["response_id"], found["question"], found["response"], strict=True)}


def _method(row: pd.Series) -> str:
    return method_of(row["kind"], str(row["source"]), row["attack_method"])


def _failure_counts(where: str, path: Path) -> dict[str, int]:
    """Recorded failures of one folder by kind ("responses/t (ProviderFilterError)": 2); an empty log counts 0."""
    kinds = Counter(str(row.get("error") or "failure") for row in read_jsonl(path, "failure"))
    return {f"{where} ({kind})": count for kind, count in sorted(kinds.items())} or {where: 0}


def _reasons(details: pd.Series) -> list[str | None]:
    """Each score's reason (a judge's "reason" in its detail), None where it gave none."""
    return [d.get("reason") if isinstance(d, dict) else None for d in details]


TEXT_FRAME = ("response_id", "question", "response")
# a response's long texts: kept once per answer in RunData.texts, never repeated on every metric's row of `scores`
# (at 3MAD's size that repetition was most of the report's memory)
LONG_TEXTS = ("question", "response", "prompt", "shown_attribute", "true_attribute", "description", "key_phrase",
              "input_hash")


def answer_key(text: Any) -> str | None:
    """A short key of an answer's words (whitespace ignored): two answers with one key say the same; no answer
    (None) has no key."""
    if not isinstance(text, str):
        return None
    return hashlib.blake2b(" ".join(text.split()).encode("utf-8", "replace"), digest_size=8).hexdigest()


def _shown(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row as the report shows it: its texts without lone surrogates (pandas refuses them)."""
    return {key: readable(value) if isinstance(value, str) else value for key, value in row.items()}


def load_run(root: Path, name: str | None = None) -> RunData:
    """Read a run's manifest, query responses joined with their scores, and attack results and steps."""
    run = RunDir(root)
    run.settle()
    run.repair_build_record()
    run.require_benchmark()
    manifest = run.read_manifest()
    current = {s.sample_id for s in run.samples()} if run.has_samples() else None
    frames, texts, metrics, failures, calibration = [], [], {}, {}, {}
    for log in sorted((run.root / "responses").glob("*/failures.jsonl")):  # a target that never answered too
        failures.update(_failure_counts(run.relative(log.parent), log))
    for folder in run.responses_folders():  # answers to samples a rebuilt benchmark no longer has are not shown
        scores_folder = run.scores_folder(folder.target)
        responses = pd.DataFrame([_shown(r.to_json()) for r in folder.responses()
                                  if current is None or r.sample_id in current])
        scores = pd.DataFrame([r.to_json() for r in scores_folder.scores()])
        if scores_folder.summary_path.exists():
            summary = read_state(scores_folder.summary_path, "score the run again (`medattack score RUN`)",
                                 "score-summary")
            metrics.update(summary["metrics"])
            calibration[folder.target] = summary.get("calibration", {})
        if responses.empty:
            continue
        responses["method"] = responses.apply(_method, axis=1)
        texts.append(responses[list(TEXT_FRAME)])
        responses["answer_key"] = responses["response"].map(answer_key)
        responses = responses.drop(columns=[c for c in LONG_TEXTS if c in responses])
        traits = folder.about().get("defences")
        if traits:
            responses["defence_traits"] = [traits] * len(responses)
        if scores.empty:
            scores = pd.DataFrame(columns=["response_id", "metric", "value", "null_reason", "detail"])
        scores["reason"] = _reasons(scores["detail"])
        joined = responses.merge(scores[["response_id", "metric", "value", "null_reason", "reason"]],
                                 on="response_id", how="inner")
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
            for step in read_jsonl(folder.steps_path(row.sample_id), "attack-step"):
                step_rows.append({"method": row.method, "model": row.model, "sample_id": row.sample_id,
                                  "step": step["step"], "success": step["success"], "run": name or root.name})
        failures.update(_failure_counts(run.relative(folder.path), folder.failures_path))
    search_rows = []
    for search in run.search_folders():
        search_rows += [{"run": name or root.name, "method": r.method, "target": r.target, "judge": r.judge,
                         "attacker": r.attacker, "sample_id": r.sample_id,
                         "success": float("nan") if r.success is None else float(r.success),
                         "queries": r.queries, "queries_to_success": r.queries_to_success,
                         "tokens": sum(r.tokens.values()), "cost_usd": r.cost_usd,
                         "attacker_written": r.proposals_parsed, "attempts": r.nodes}
                        for r in search.results() if current is None or r.sample_id in current]
        failures.update(_failure_counts(run.relative(search.path), search.failures_path))
    labels = {str(target): standing(run.labels(str(target))) for target in table["target"].dropna().unique()}
    return RunData(name or root.name, root, manifest, table, metrics, pd.DataFrame(attack_rows),
                   pd.DataFrame(step_rows), failures, calibration, pd.DataFrame(search_rows),
                   {target: found for target, found in labels.items() if found},
                   pd.concat(texts, ignore_index=True) if texts else pd.DataFrame(columns=list(TEXT_FRAME)))


def is_scores_folder(root: Path) -> bool:
    """A folder `medattack score --responses FILE` wrote (scores.jsonl and summary.json, no run)."""
    return (root / "scores.jsonl").is_file() and (root / "summary.json").is_file() and not RunDir(root).has_samples()


def load_scores_folder(root: Path, name: str | None = None) -> RunData:
    """A scored responses file as a run of one target (the file's name, without `.scores`): every row a
    benchmark response whose condition the file gave; rows of one file row (wide files: `ROW:condition`)
    share a pair id, so the paired comparisons work. No texts, tasks or modalities: the file's scores only."""
    from medattack.records import ScoreRecord

    target = root.name.removesuffix(".scores")
    name = (name or target).removesuffix(".scores")
    summary = read_state(root / "summary.json", "score the file again (`medattack score --responses FILE`)",
                         "score-summary")
    rows = [r.to_json() for r in read_records(root / "scores.jsonl", ScoreRecord)]
    table = pd.DataFrame(rows, columns=["response_id", "condition", "metric", "value", "null_reason", "detail"])
    table["reason"] = _reasons(table.pop("detail"))
    table["value"] = pd.to_numeric(table["value"], errors="coerce")
    table = table.assign(target=target, method="none", kind="benchmark", source="benchmark", run=name,
                         sample_id=table["response_id"], pair_id=table["response_id"].str.rsplit(":", n=1).str[0],
                         task="-", modality="-", answer_key=None, attack_model=None)
    return RunData(name, root, {}, table, summary.get("metrics", {}), pd.DataFrame(), pd.DataFrame(), {},
                   {target: summary.get("calibration", {})})


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
        blackbox=_blackbox(pd.concat([r.searches for r in runs], ignore_index=True)),
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
