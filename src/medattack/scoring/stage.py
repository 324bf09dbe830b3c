"""The score stage: score responses from a run (attack results) or from any file.

    runs/<name>/scores/<target>/scores.jsonl   one row per response x metric (value or null + reason)
    runs/<name>/scores/<target>/summary.json   mean, n and null count per metric x condition
    runs/<name>/scores/cache.jsonl             content-hash cache shared by every target of the run

Inputs are scored in batches (each distinct text and image encoded once per batch); rows are appended
batch by batch, and a re-run skips every (response, metric) already written, so a killed run resumes
without losing or duplicating rows.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from medattack.config import option
from medattack.data.sources.tables import cell, read_table, require_columns
from medattack.errors import SourceError
from medattack.executor import ExecutorConfig, open_pool
from medattack.rundir import JsonlCache, Progress, append_jsonl, read_jsonl, write_json_atomic
from medattack.scoring import keyword_scorer, relevance  # noqa: F401 (registers the scorers)
from medattack.scoring.base import SCORERS, MetricSpec, Score, ScoreInput
from medattack.scoring.composite import SPEC as COMPOSITE_SPEC
from medattack.scoring.composite import CompositeConfig, composite
from medattack.scoring.judge import JudgeConfig, LLMJudge  # noqa: F401 (registers "judge")
from medattack.scoring.moderation import Moderation, ModerationConfig  # noqa: F401 (registers "moderation")

log = logging.getLogger(__name__)

QUESTION = "This image is about {attribute}. {prompt}"
WIDE_CONDITIONS = {  # condition -> (response column(s), attribute column, prompt column)
    "normal": (("normal_response",), "original_attribute", "normal_prompt"),
    "mismatch": (("unmatch_response", "mismatch_response"), "unmatch_attribute", "normal_prompt"),
    "malicious": (("malicious_response", "harmful_response"), "original_attribute", "harmful_prompt"),
    "both": (("both_response", "both_responses"), "unmatch_attribute", "harmful_prompt"),
}


@dataclass(frozen=True)
class ScoreConfig:
    metrics: tuple[str, ...] = option(("keyword_asr", "tto", "tio", "tii", "composite"), "Metrics to compute.")
    keyword_mode: Literal["prefix", "anywhere"] = option("prefix", "Keyword judge: opening only, or anywhere.")
    text_embedder: str = option("minilm", "Text embedder for TTO (minilm offline, bge-m3 when installed).")
    image_text: str = option("proxy", "Image-text backend for TIO/TII (proxy offline, biomedclip, clip).")
    device: str = option("cpu", "torch device of the scoring encoders (cpu, cuda, cuda:1).")
    text_model: str | None = option(None, "Hub id or local folder of the text embedder; None = its default "
                                    "(the embedded MiniLM, BAAI/bge-m3).")
    memo_mib: float | None = option(None, "Encodings kept per encoder for reuse across metrics, batches and "
                                    "targets (MiB); None = each encoder's default, 0 = none.")
    batch_size: int = option(256, "Responses per scoring batch.")
    w_tto: float = option(CompositeConfig.w_tto, "Composite: weight of TTO.")
    w_tio: float = option(CompositeConfig.w_tio, "Composite: weight of TIO.")
    tii_threshold: float = option(CompositeConfig.tii_threshold, "Composite: normalised TII below which the "
                                  "input counts as mismatched.")
    judge: JudgeConfig = option(JudgeConfig(), "LLM judge (add 'judge' to metrics): model and api settings.")
    moderation: ModerationConfig = option(ModerationConfig(), "Moderation (add 'moderation' to metrics).")

    def __post_init__(self) -> None:
        for name in self.metrics:
            if name != "composite":
                SCORERS[name]  # "did you mean" on a typo

    def composite(self) -> CompositeConfig:
        return CompositeConfig(w_tto=self.w_tto, w_tio=self.w_tio, tii_threshold=self.tii_threshold)


def build_scorers(config: ScoreConfig) -> dict[str, Any]:
    encoders = {"text_embedder": config.text_embedder, "device": config.device, "text_model": config.text_model,
                "memo_mib": config.memo_mib}
    image = {"image_text": config.image_text, **encoders}
    options = {"keyword_asr": {"mode": config.keyword_mode}, "tto": encoders, "tio": image, "tii": image,
               "judge": {"config": config.judge}, "moderation": {"config": config.moderation}}
    return {name: SCORERS[name](**options.get(name, {})) for name in config.metrics if name != "composite"}


# --- reading responses ----------------------------------------------------------------------------


def _image(root: Path | None, name: str) -> str | None:
    if not name:
        return None
    path = Path(name) if Path(name).is_absolute() or root is None else root / name
    return str(path)  # existence is checked by the image metrics, which count the missing ones


def read_responses_file(path: Path, images_root: Path | None = None) -> list[ScoreInput]:
    """Long format (one response per row) or wide format (3MAD columns + one response column per
    condition); the format is told from the columns."""
    rows = read_table(path)
    if not rows:
        raise SourceError(str(path), "the file holds no rows.")
    columns = set(rows[0])
    root = images_root or path.parent
    wide = [c for c, (names, _, _) in WIDE_CONDITIONS.items() if columns & set(names)]
    inputs: list[ScoreInput] = []
    if wide:
        require_columns(path, rows, [("original_attribute",), ("unmatch_attribute",), ("normal_prompt",),
                                     ("harmful_prompt",)])
        for number, row in enumerate(rows, start=1):
            row_id = cell(row, "id") or str(number)
            for condition in wide:
                names, attribute_key, prompt_key = WIDE_CONDITIONS[condition]
                column = next(n for n in names if n in columns)
                prompt = cell(row, prompt_key)
                inputs.append(ScoreInput(
                    response_id=f"{row_id}:{condition}", condition=condition, prompt=prompt,
                    question=QUESTION.format(attribute=cell(row, attribute_key), prompt=prompt),
                    response=cell(row, column), shown_attribute=cell(row, attribute_key),
                    true_attribute=cell(row, "original_attribute"),
                    image_path=_image(root, cell(row, "file_name") or cell(row, "image")),
                ))
        return inputs
    require_columns(path, rows, [("response",), ("question", "prompt")])
    for number, row in enumerate(rows, start=1):
        question = cell(row, "question")
        if not question:
            attribute = cell(row, "attribute") or cell(row, "shown_attribute")
            question = QUESTION.format(attribute=attribute, prompt=cell(row, "prompt")) if attribute else cell(
                row, "prompt")
        inputs.append(ScoreInput(
            response_id=cell(row, "response_id") or cell(row, "id") or str(number),
            question=question, response=cell(row, "response"), condition=cell(row, "condition"),
            prompt=cell(row, "prompt"), shown_attribute=cell(row, "attribute"),
            true_attribute=cell(row, "true_attribute"), description=cell(row, "description"),
            image_path=_image(root, cell(row, "image") or cell(row, "image_path") or cell(row, "file_name")),
        ))
    ids = [i.response_id for i in inputs]
    if len(set(ids)) != len(ids):
        raise SourceError(str(path), "response ids repeat.", "give each row a unique response_id (or none).")
    return inputs


def read_run_responses(run_dir: Path) -> dict[str, list[ScoreInput]]:
    """Every response a run holds, by target: the query stage's (responses/<target>) and the attack
    stage's own (attacks/<method>/<model>, as target "attack__<method>__<model>")."""
    samples = {s["sample_id"]: s for s in read_jsonl(run_dir / "benchmark" / "samples.jsonl")}
    targets: dict[str, list[ScoreInput]] = {}
    for responses in sorted((run_dir / "responses").glob("*/responses.jsonl")):
        targets[responses.parent.name] = [_run_input(run_dir, row, row, run_dir / row["image_file"])
                                          for row in read_jsonl(responses)]
    for results in sorted((run_dir / "attacks").glob("*/*/results.jsonl")):
        folder = results.parent
        targets[f"attack__{folder.parent.name}__{folder.name}"] = [
            _run_input(run_dir, row | {"response_id": row["sample_id"]}, samples.get(row["sample_id"], {}),
                       folder / row["image_file"]) for row in read_jsonl(results)]
    return targets


def _run_input(run_dir: Path, row: dict[str, Any], sample: dict[str, Any], image: Path) -> ScoreInput:
    """A response row of a run as ScoreInput. A control image has no known attribute: the controls'
    own description stands in (so a metadata proxy gives null, and a pixel backend scores it)."""
    from medattack.query import CONTROL_DESCRIPTIONS

    control = row.get("source", "").removeprefix("control:")
    is_control = control in CONTROL_DESCRIPTIONS and row.get("kind") == "control"
    return ScoreInput(
        response_id=row["response_id"], question=row["question"], response=row.get("response") or "",
        condition=row.get("condition") or "", prompt=sample.get("prompt") or "",
        shown_attribute=sample.get("shown_attribute") or "",
        true_attribute="" if is_control else sample.get("true_attribute") or "",
        description=CONTROL_DESCRIPTIONS[control] if is_control else sample.get("description") or "",
        image_path=str(image),
    )


# --- scoring --------------------------------------------------------------------------------------


class ScoreCache:
    """(metric identity, inputs the metric reads) -> Score, on a JsonlCache. Each image file is read
    and hashed once per stage, however many metrics and responses use it."""

    def __init__(self, path: Path | None) -> None:
        self.store = JsonlCache(path)
        self._image_digests: dict[str, str] = {}

    @property
    def hits(self) -> int:
        return self.store.hits

    def _image_digest(self, image_path: str | None) -> str:
        if not image_path:
            return ""
        if image_path not in self._image_digests:
            path = Path(image_path)
            self._image_digests[image_path] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        return self._image_digests[image_path]

    def key(self, spec: MetricSpec, item: ScoreInput) -> str:
        return JsonlCache.key(spec.name, spec.description, item.question, item.response, item.true_attribute,
                              item.description, self._image_digest(item.image_path))

    def get(self, key: str) -> Score | None:
        entry = self.store.get(key)
        return None if entry is None else Score(entry["value"], entry["null_reason"], entry.get("detail", {}))

    def put_many(self, items: list[tuple[str, Score]]) -> None:
        self.store.put_many([(k, {"value": s.value, "null_reason": s.null_reason, "detail": s.detail})
                             for k, s in items])


@dataclass
class ScoreStageResult:
    out_dir: Path
    rows: list[dict[str, Any]]
    specs: dict[str, MetricSpec]
    summary: dict[str, Any]
    computed: int  # (response, metric) values computed now
    cache_hits: int


class ScoreWorker:
    """Builds the scorers once and scores one request per call (a local or a Ray worker):
    metric name -> inputs the cache did not have, answered with metric name -> scores."""

    def __init__(self, config: ScoreConfig, scorers: dict[str, Any] | None = None) -> None:
        self.scorers = scorers if scorers is not None else build_scorers(config)

    def specs(self) -> dict[str, MetricSpec]:
        return {name: scorer.spec for name, scorer in self.scorers.items()}

    def score(self, request: dict[str, list[ScoreInput]]) -> dict[str, list[Score]]:
        return {name: self.scorers[name].score(items) if items else [] for name, items in request.items()}


def score_inputs(
    inputs: Sequence[ScoreInput], config: ScoreConfig, out_dir: Path, *, cache_path: Path | None = None,
    scorers: dict[str, Any] | None = None, progress: Progress | None = None, executor: ExecutorConfig | None = None,
) -> ScoreStageResult:
    """Score every input with every configured metric; resumable and cached (module docstring).
    With a ray executor the batches the cache cannot answer are scored on actors."""
    local = executor is None or executor.kind == "local"
    pool = open_pool(executor, partial(ScoreWorker, config, scorers if local else None))
    try:
        specs = dict(pool.call_any("specs"))
        metrics = list(specs)
        if "composite" in config.metrics:
            specs["composite"] = COMPOSITE_SPEC
        out_dir.mkdir(parents=True, exist_ok=True)
        scores_path = out_dir / "scores.jsonl"
        done = {(r["response_id"], r["metric"]) for r in read_jsonl(scores_path)}
        cache = ScoreCache(cache_path)
        todo = [i for i in inputs if any((i.response_id, m) not in done for m in specs)]
        batches, plans = [], []
        for start in range(0, len(todo), config.batch_size):
            batch = todo[start:start + config.batch_size]
            keys = {name: [cache.key(specs[name], i) for i in batch] for name in metrics}
            cached = {name: [cache.get(k) for k in keys[name]] for name in metrics}
            missing = {name: [k for k, c in enumerate(cached[name]) if c is None] for name in metrics}
            batches.append({name: [batch[k] for k in missing[name]] for name in metrics})
            plans.append((batch, keys, cached, missing))
        computed, finished = 0, 0
        for index, fresh in pool.map("score", batches):
            if progress:
                progress("scoring", finished, len(todo))
            batch, keys, cached, missing = plans[index]
            finished += len(batch)
            if isinstance(fresh, Exception):  # the worker was lost for good: these rows wait for a re-run
                log.warning("a scoring batch of %d responses failed (%s); a re-run scores it", len(batch), fresh)
                continue
            per_metric: dict[str, list[Score]] = {}
            for name in metrics:
                for k, score in zip(missing[name], fresh[name], strict=True):
                    cached[name][k] = score
                cache.put_many([(keys[name][k], cached[name][k]) for k in missing[name]])  # type: ignore[misc]
                per_metric[name] = cached[name]  # type: ignore[assignment]
                computed += len(missing[name])
            if "composite" in specs:
                per_metric["composite"] = [composite({n: per_metric[n][k] for n in metrics}, specs, config.composite())
                                           for k in range(len(batch))]
            rows = [
                {"response_id": item.response_id, "condition": item.condition, "metric": name,
                 "value": per_metric[name][k].value, "null_reason": per_metric[name][k].null_reason,
                 "detail": per_metric[name][k].detail}
                for k, item in enumerate(batch) for name in specs if (item.response_id, name) not in done
            ]
            append_jsonl(scores_path, *rows)
    finally:
        pool.close()
    if progress:
        progress("scoring", len(todo), len(todo))
    rows = read_jsonl(scores_path)
    summary = summarise(rows, specs)
    write_json_atomic(out_dir / "summary.json", summary)
    return ScoreStageResult(out_dir, rows, specs, summary, computed, cache.hits)


def summarise(rows: list[dict[str, Any]], specs: dict[str, MetricSpec]) -> dict[str, Any]:
    """Per metric and condition: n, null count (with reasons), mean of the non-null values."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["metric"], row.get("condition") or "-")].append(row)
        groups[(row["metric"], "all")].append(row)
    table = []
    for (metric, condition), members in sorted(groups.items()):
        values = [m["value"] for m in members if m["value"] is not None]
        reasons: dict[str, int] = defaultdict(int)
        for m in members:
            if m["value"] is None:
                reasons[m["null_reason"] or "unknown"] += 1
        spec = specs.get(metric)
        table.append({"metric": metric, "condition": condition, "n": len(members), "nulls": len(members) - len(values),
                      "null_reasons": dict(reasons), "mean": sum(values) / len(values) if values else None,
                      "is_proxy": bool(spec and spec.is_proxy)})
    return {"metrics": {n: vars(s) for n, s in specs.items()}, "table": table}
