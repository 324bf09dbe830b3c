"""A run directory read once for the report: its answers joined with their scores in one long table (one row
per response x metric), its answers' long texts beside it, its attacks, steps, searches and labels.

Reading is built for 3MAD's size (`benchmarks/scale.py`): records are read one at a time into columns, the long
texts are kept once per answer instead of on every metric's row, fields no analysis reads are left out, and the
few-valued text columns are categories.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from medattack.folders import ResponsesFolder
from medattack.labelling.design import standing
from medattack.records import Label, ScoreRecord, method_of
from medattack.rundir import RunDir, read_jsonl
from medattack.storage import each_record, read_state, readable


@dataclass
class RunData:
    """What one run directory holds, read once."""

    name: str
    root: Path
    manifest: dict[str, Any]
    scores: pd.DataFrame  # one row per response x metric, with the response's columns
    metrics: dict[str, dict[str, Any]]  # metric name -> spec (range, direction, is_proxy)
    attacks: pd.DataFrame  # one row per attacked sample (attack stage results)
    steps: pd.DataFrame  # one row per attack step: method, model, sample_id, step, success, seconds (wall)
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


def _failure_counts(where: str, path: Path) -> dict[str, int]:
    """Recorded failures of one folder by kind ("responses/t (ProviderFilterError)": 2); an empty log counts 0."""
    kinds = Counter(str(row.get("error") or "failure") for row in read_jsonl(path, "failure"))
    return {f"{where} ({kind})": count for kind, count in sorted(kinds.items())} or {where: 0}


INJECTION_FIELDS = ("template", "placement", "size", "contrast")  # an inject attack's point of its grid (info)

SCORE_COLUMNS = {"response_id": str, "metric": str, "value": float, "null_reason": object, "reason": object}
# a score row as the report reads it, with each column's dtype; `reason` is a judge's reason from the row's detail


def _score_columns(scores: Iterable[ScoreRecord], columns: dict[str, Any] = SCORE_COLUMNS) -> pd.DataFrame:
    """The score rows' `columns`, read column by column in one pass (no dict per row: at 3MAD's size those were
    the peak of reading a run); `reason` None where the detail gives none, `value` NaN where null."""
    values: dict[str, list[Any]] = {name: [] for name in columns}
    for score in scores:
        for name, found in values.items():
            found.append((score.detail.get("reason") if isinstance(score.detail, dict) else None)
                         if name == "reason" else getattr(score, name))
    return pd.DataFrame({name: pd.Series(values[name], dtype=dtype) for name, dtype in columns.items()})


TEXT_FRAME = ("response_id", "question", "response")
# a response's long texts: kept once per answer in RunData.texts, never repeated on every metric's row of `scores`
# (at 3MAD's size that repetition was most of the report's memory)
LONG_TEXTS = ("question", "response", "prompt", "shown_attribute", "true_attribute", "description", "key_phrase",
              "input_hash")
UNREAD_FIELDS = ("seconds", "task_group", "category", "body_part", "truncated_from", "attack_success",
                 "attack_method")
# a response's fields no analysis reads (attack_method is read once, into `method`): not carried on every score row
FEW_VALUES = ("run", "target", "source", "kind", "method", "condition", "task", "modality", "metric", "image_file",
              "attack_model", "null_reason", "reason")
# columns with a few distinct values over many rows: held as categories (codes into one list of values), which at
# 3MAD's size is most of the table's memory saved; the ids (response, sample, pair) stay strings


def answer_key(text: Any) -> str | None:
    """A short key of an answer's words (whitespace ignored): two answers with one key say the same; no answer
    (None) has no key."""
    if not isinstance(text, str):
        return None
    return hashlib.blake2b(" ".join(text.split()).encode("utf-8", "replace"), digest_size=8).hexdigest()


def compact(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with its few-valued text columns held as categories (the values and their order unchanged)."""
    return table.astype({column: "category" for column in FEW_VALUES if column in table})


def concat_compact(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """pd.concat of compact frames that stays compact: each category column takes the union of the frames'
    values first (concat turns categories that differ into full text columns, the memory compact saves)."""
    frames = list(frames)
    for column in FEW_VALUES:
        held = [column in f and isinstance(f[column].dtype, pd.CategoricalDtype) for f in frames]
        values = sorted({v for f, h in zip(frames, held, strict=True) if h for v in f[column].cat.categories}, key=str)
        frames = [f.assign(**{column: f[column].cat.set_categories(values)}) if h else f
                  for f, h in zip(frames, held, strict=True)]
    return pd.concat(frames, ignore_index=True)


def _read_answers(folder: ResponsesFolder, current: set[str] | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A target's answers to the benchmark's current samples, read one at a time: (one row per answer without its
    long texts, its method named and its words keyed; the long texts of each answer, TEXT_FRAME)."""
    rows, texts = [], []
    for response in folder.each_response():
        if current is not None and response.sample_id not in current:
            continue
        row = _shown(response.to_json())
        texts.append(tuple(row.get(column) for column in TEXT_FRAME))
        row["method"] = method_of(row["kind"], str(row["source"]), row.get("attack_method"))
        row["answer_key"] = answer_key(row.get("response"))
        for column in LONG_TEXTS + UNREAD_FIELDS:
            row.pop(column, None)
        rows.append(row)
    return pd.DataFrame(rows), pd.DataFrame(texts, columns=list(TEXT_FRAME))


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
        responses, answer_texts = _read_answers(folder, current)
        scores = _score_columns(scores_folder.each_score())
        if scores_folder.summary_path.exists():
            summary = read_state(scores_folder.summary_path, "score the run again (`medattack score RUN`)",
                                 "score-summary")
            metrics.update(summary["metrics"])
            calibration[folder.target] = summary.get("calibration", {})
        if responses.empty:
            continue
        texts.append(answer_texts)
        traits = folder.about().get("defences")
        if traits:
            responses["defence_traits"] = [traits] * len(responses)
        frames.append(compact(responses.merge(scores, on="response_id", how="inner").assign(run=name or root.name)))
    table = concat_compact(frames) if frames else pd.DataFrame(
        columns=["response_id", "target", "method", "kind", "condition", "task", "modality", "metric", "value",
                 "run"])
    table["value"] = pd.to_numeric(table["value"], errors="coerce")

    attack_rows, step_rows = [], []
    for folder in run.attack_folders():
        for row in folder.results():
            if current is not None and row.sample_id not in current:
                continue
            attack_rows.append({"sample_id": row.sample_id, "condition": row.condition, "task": row.task,
                                "method": row.method, "model": row.model, "success": row.success,
                                "keyword_success": row.keyword_success, "n_steps": row.n_steps,
                                "seconds": row.seconds, "best_loss": row.best_loss, "linf": row.linf,
                                "run": name or root.name,
                                **{key: row.info.get(key) for key in INJECTION_FIELDS}})
            for step in read_jsonl(folder.steps_path(row.sample_id), "attack-step"):
                step_rows.append({"method": row.method, "model": row.model, "sample_id": row.sample_id,
                                  "step": step["step"], "success": step["success"],
                                  "seconds": step.get("seconds"), "run": name or root.name})
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
    target = root.name.removesuffix(".scores")
    name = (name or target).removesuffix(".scores")
    summary = read_state(root / "summary.json", "score the file again (`medattack score --responses FILE`)",
                         "score-summary")
    table = _score_columns(each_record(root / "scores.jsonl", ScoreRecord), {**SCORE_COLUMNS, "condition": str})
    table = table.assign(target=target, method="none", kind="benchmark", source="benchmark", run=name,
                         sample_id=table["response_id"], pair_id=table["response_id"].str.rsplit(":", n=1).str[0],
                         task="-", modality="-", answer_key=None, attack_model=None)
    return RunData(name, root, {}, table, summary.get("metrics", {}), pd.DataFrame(), pd.DataFrame(), {},
                   {target: summary.get("calibration", {})})
