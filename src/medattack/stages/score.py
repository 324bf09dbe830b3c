"""The score stage: score responses from a run (query answers and attack results) or from any file.

    runs/<name>/scores/<target>/scores.jsonl   one ScoreRecord per response x metric (value or null + reason)
    runs/<name>/scores/<target>/summary.json   mean, n and null count per metric x condition
    runs/<name>/scores/cache.sqlite            content-hash cache shared by every target of the run

Inputs are scored in batches (each distinct text and image encoded once per batch); rows are appended
batch by batch, and a re-run skips every (response, metric) already written, so a killed run resumes
without losing or duplicating rows. Metrics are plugins (`scoring/`, one per file); the config holds
`metrics: {name: options}` and the encoders they share.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from medattack.config import from_mapping, option
from medattack.errors import ConfigError, SourceError
from medattack.executor import ExecutorConfig, open_pool, runs_here
from medattack.models.base import require_device
from medattack.records import ScoreRecord
from medattack.rundir import (
    Progress,
    RunDir,
    ScoresFolder,
    append_records,
    content_hash,
    write_json_atomic,
    write_jsonl_atomic,
)
from medattack.scoring.base import (
    DERIVED,
    IMAGE_TEXT_MODEL_HELP,
    SCORERS,
    DerivedMetric,
    Encoders,
    MetricSpec,
    Score,
    ScoreInput,
    Scorer,
)
from medattack.scoring.cache import ScoreCache
from medattack.scoring.inputs import read_responses_file, read_run_responses
from medattack.stages.base import as_run_dir, failure, one_writer, resumable_map, set_aside_stale

log = logging.getLogger(__name__)

DEFAULT_METRICS = ("keyword_asr", "judge", "tto", "tio", "tii", "composite")  # judge: the embedded one offline


def _metric_class(name: str) -> type:
    return DERIVED[name] if name in DERIVED else SCORERS[name]  # SCORERS says "did you mean" on a typo


@dataclass(frozen=True)
class ScoreConfig:
    preset_stage: ClassVar[str] = "score"  # which settings of a preset apply (presets.py)
    metrics: dict[str, Any] = field(
        default_factory=lambda: {name: {} for name in DEFAULT_METRICS},
        metadata={"help": "Metrics and their settings: {keyword_asr: {mode: anywhere}, judge: {model: ...}} "
                          "(a list of names takes each one's defaults; see `medattack list metrics`)."})
    text_embedder: str = option(Encoders.text_embedder, "Text embedder for TTO (minilm offline, bge-m3 when "
                                "installed).")
    image_text: str = option(Encoders.image_text, "Image-text backend for TIO/TII (proxy offline, biomedclip, clip).")
    device: str = option(Encoders.device, "torch device of the scoring encoders (cpu, cuda, cuda:1).")
    text_model: str | None = option(Encoders.text_model, "Hub id or local folder of the text embedder; None = its "
                                    "default (the embedded MiniLM, BAAI/bge-m3).")
    memo_mib: float | None = option(Encoders.memo_mib, "Encodings kept per encoder for reuse across metrics, "
                                    "batches and targets (MiB); None = each encoder's default, 0 = none.", low=0.0)
    image_text_model: str | None = option(Encoders.image_text_model, IMAGE_TEXT_MODEL_HELP)
    batch_size: int = option(256, "Responses per scoring batch.", low=1)

    def __post_init__(self) -> None:
        metrics = self.metrics
        if isinstance(metrics, str | list | tuple):
            metrics = {name: {} for name in ([metrics] if isinstance(metrics, str) else metrics)}
        if not isinstance(metrics, Mapping):
            raise ConfigError(f"score metrics: expected a list of names or a mapping of name to settings, "
                              f"got {metrics!r}.")
        normalised = {}
        for name, options in metrics.items():
            config_class = _metric_class(name).config_class
            if isinstance(options, config_class):
                options = dataclasses.asdict(options)
            from_mapping(config_class, options or {}, f"metrics.{name}")  # rejects unknown settings now
            normalised[name] = dict(options or {})
        object.__setattr__(self, "metrics", normalised)

    @property
    def encoders(self) -> Encoders:
        return Encoders(text_embedder=self.text_embedder, image_text=self.image_text, device=self.device,
                        text_model=self.text_model, memo_mib=self.memo_mib, image_text_model=self.image_text_model)

    def metric_config(self, name: str) -> Any:
        return from_mapping(_metric_class(name).config_class, self.metrics[name], f"metrics.{name}")


def build_scorers(config: ScoreConfig, cache_path: Path | None = None) -> dict[str, Scorer]:
    """The configured scorers (not the derived metrics), sharing one set of encoders."""
    require_device(config.encoders.device)
    return {name: SCORERS[name](config.metric_config(name), encoders=config.encoders, cache_path=cache_path)
            for name in config.metrics if name not in DERIVED}


def build_derived(config: ScoreConfig) -> dict[str, DerivedMetric]:
    return {name: DERIVED[name](config.metric_config(name)) for name in config.metrics if name in DERIVED}


@dataclass
class ScoreStageResult:
    out_dir: Path
    count: int  # rows in the folder's scores.jsonl: (response, metric) values, null ones included
    specs: dict[str, MetricSpec]
    summary: dict[str, Any]
    computed: int  # (response, metric) values computed now
    cache_hits: int
    stale: int = 0  # values set aside because their response, inputs or metric settings changed

    @property
    def rows(self) -> list[ScoreRecord]:
        """Every score row of the folder, read when asked (a run's results do not hold every target's rows at
        once: at 3MAD's size that was gigabytes)."""
        return ScoresFolder(self.out_dir).scores()


class ScoreWorker:
    """Builds the scorers once and scores one request per call (a local or a Ray worker):
    metric name -> inputs the cache did not have, answered with metric name -> scores."""

    def __init__(self, config: ScoreConfig, scorers: dict[str, Scorer] | None = None) -> None:
        self.scorers = scorers if scorers is not None else build_scorers(config)

    def specs(self) -> dict[str, MetricSpec]:
        return {name: scorer.spec for name, scorer in self.scorers.items()}

    def score(self, request: dict[str, list[ScoreInput]]) -> dict[str, list[Score]]:
        return {name: self.scorers[name].score(items) if items else [] for name, items in request.items()}


def score_inputs(
    inputs: Sequence[ScoreInput], config: ScoreConfig, out_dir: Path | ScoresFolder, *,
    cache_path: Path | None = None, scorers: dict[str, Scorer] | None = None, progress: Progress | None = None,
    executor: ExecutorConfig | None = None, derived: dict[str, DerivedMetric] | None = None,
    unreadable: Sequence[SourceError] = (),
) -> ScoreStageResult:
    """Score every input with every configured metric; resumable and cached (module docstring).
    With a ray executor the batches the cache cannot answer are scored on actors. Derived metrics
    (the composite) come last, once every input has its other scores, so they can be calibrated on the run.
    `unreadable`: answers left out because they are not text, written to the folder's failures.jsonl."""
    folder = out_dir if isinstance(out_dir, ScoresFolder) else ScoresFolder(Path(out_dir))
    with one_writer(folder.path, "score"):  # one process writes a scores folder at a time
        write_jsonl_atomic(folder.failures_path, [failure("response", e.item, e, e.problem, fix=e.fix)
                                                  for e in unreadable], "failure")
        if unreadable:
            log.warning("%d answer(s) are not text and were left out of the scores: see %s", len(unreadable),
                        folder.failures_path)
        return _score_into(inputs, config, folder, cache_path=cache_path, scorers=scorers, progress=progress,
                           executor=executor, derived=derived)


def _score_into(
    inputs: Sequence[ScoreInput], config: ScoreConfig, folder: ScoresFolder, *, cache_path: Path | None,
    scorers: dict[str, Scorer] | None, progress: Progress | None, executor: ExecutorConfig | None,
    derived: dict[str, DerivedMetric] | None,
) -> ScoreStageResult:
    local = runs_here(executor)
    derived = build_derived(config) if derived is None else derived
    pool = open_pool(executor, partial(ScoreWorker, config, scorers if local else None))
    try:
        specs = dict(pool.call_any("specs"))
        metrics = list(specs)
        proxy_inputs = any(spec.is_proxy for spec in specs.values())  # a derived metric is a proxy if an input is
        specs.update({name: dataclasses.replace(metric.spec, is_proxy=metric.spec.is_proxy or proxy_inputs)
                      for name, metric in derived.items()})
        folder.path.mkdir(parents=True, exist_ok=True)
        cache = ScoreCache(cache_path)
        identity = {name: content_hash([vars(spec), config.metrics.get(name, {})]) for name, spec in specs.items()}
        reads = {name: tuple(sorted(getattr(SCORERS[name], "reads", ()))) if name in SCORERS else ()
                 for name in metrics}  # optional input fields a metric reads (its cache key holds them)
        keys = {i.response_id: {name: cache.key(identity[name], i, reads[name]) for name in metrics} for i in inputs}
        current, stale = set_aside_stale(folder.scores_path, folder.scores(),
                                         lambda row: keys.get(row.response_id, {}).get(row.metric),
                                         lambda row: row.response_id not in keys)
        done = {(row.response_id, row.metric) for row in current}
        del current  # the file is read again below: never two copies of every row at once
        todo = [i for i in inputs if any((i.response_id, m) not in done for m in metrics)]
        batches, plans = [], {}
        for start in range(0, len(todo), config.batch_size):
            batch = todo[start:start + config.batch_size]
            cached = {name: [cache.get(keys[i.response_id][name]) for i in batch] for name in metrics}
            missing = {name: [k for k, c in enumerate(cached[name]) if c is None] for name in metrics}
            batches.append({name: [batch[k] for k in missing[name]] for name in metrics})
            plans[id(batches[-1])] = (batch, cached, missing)
        computed = 0

        def write(request: dict[str, list[ScoreInput]], fresh: Any) -> None:
            nonlocal computed
            batch, cached, missing = plans[id(request)]
            if isinstance(fresh, Exception):  # the worker was lost for good: these rows wait for a re-run
                log.warning("a scoring batch of %d responses failed (%s); a re-run scores it", len(batch), fresh)
                return
            for name in metrics:
                for k, score in zip(missing[name], fresh[name], strict=True):
                    cached[name][k] = score
                cache.put_many([(keys[batch[k].response_id][name], cached[name][k]) for k in missing[name]])
                computed += len(missing[name])
            append_records(folder.scores_path, *(
                _record(item, name, cached[name][k], keys[item.response_id][name])
                for k, item in enumerate(batch) for name in metrics if (item.response_id, name) not in done))

        resumable_map(pool, "score", batches, write, progress=progress, label="scoring", done=0, total=len(todo),
                      size=lambda request: len(plans[id(request)][0]))
    finally:
        pool.close()
    if derived:
        calibration, derived_stale, rows = _derive(inputs, folder, metrics, derived, specs, identity, keys)
    else:
        calibration, derived_stale, rows = {}, [], folder.scores()
    if stale or derived_stale:
        log.warning("%d score(s) in %s were computed from inputs or settings that changed; moved to stale.jsonl "
                    "and computed again", len(stale) + len(derived_stale), folder.path)
    summary = {**summarise(rows, specs), "calibration": calibration}
    write_json_atomic(folder.summary_path, summary, "score-summary")
    return ScoreStageResult(folder.path, len(rows), specs, summary, computed, cache.hits,
                            len(stale) + len(derived_stale))


def _record(item: ScoreInput, metric: str, score: Score, input_hash: str) -> ScoreRecord:
    return ScoreRecord(response_id=item.response_id, condition=item.condition, metric=metric, value=score.value,
                       null_reason=score.null_reason, detail=score.detail, input_hash=input_hash)


def _derive(inputs: Sequence[ScoreInput], folder: ScoresFolder, base: list[str], derived: dict[str, DerivedMetric],
            specs: dict[str, MetricSpec], identity: dict[str, str], keys: dict[str, dict[str, str]],
            ) -> tuple[dict[str, Any], list[ScoreRecord], list[ScoreRecord]]:
    """The derived metrics of every input whose other scores are all written: each metric calibrates on
    them once, then combines per input. A derived row's key is its identity, the keys of the scores it
    reads and its calibration, so a changed calibration (more responses, other TII values) recomputes it.
    Returns (calibration by metric, derived rows set aside as stale, every row of the file now)."""
    rows = folder.scores()
    scores = {(row.response_id, row.metric): Score(row.value, row.null_reason, row.detail) for row in rows
              if row.metric in base and row.input_hash == keys.get(row.response_id, {}).get(row.metric)}
    ready = [i for i in inputs if all((i.response_id, name) in scores for name in base)]
    by_metric = {name: [scores[(i.response_id, name)] for i in ready] for name in base}
    calibration = {name: metric.calibrate(ready, by_metric, specs) for name, metric in derived.items()}
    derived_keys = {i.response_id: {name: content_hash([identity[name], [keys[i.response_id][n] for n in base],
                                                        calibration[name]]) for name in derived} for i in inputs}
    current, stale = set_aside_stale(folder.scores_path, rows,
                                     lambda row: derived_keys.get(row.response_id, {}).get(row.metric),
                                     lambda row: False)
    done = {(row.response_id, row.metric) for row in current}
    added = [_record(item, name, metric.combine({n: by_metric[n][k] for n in base}, specs),
                     derived_keys[item.response_id][name])
             for k, item in enumerate(ready) for name, metric in derived.items()
             if (item.response_id, name) not in done]
    append_records(folder.scores_path, *added)
    gone = {id(row) for row in stale}
    return calibration, stale, [row for row in rows if id(row) not in gone] + added


def summarise(rows: list[ScoreRecord], specs: dict[str, MetricSpec]) -> dict[str, Any]:
    """Per metric and condition: n, null count (with reasons), mean of the non-null values."""
    groups: dict[tuple[str, str], list[ScoreRecord]] = defaultdict(list)
    for row in rows:
        groups[(row.metric, row.condition or "-")].append(row)
        groups[(row.metric, "all")].append(row)
    table = []
    for (metric, condition), members in sorted(groups.items()):
        values = [m.value for m in members if m.value is not None]
        reasons: dict[str, int] = defaultdict(int)
        for m in members:
            if m.value is None:
                reasons[m.null_reason or "unknown"] += 1
        spec = specs.get(metric)
        table.append({"metric": metric, "condition": condition, "n": len(members), "nulls": len(members) - len(values),
                      "null_reasons": dict(reasons), "mean": sum(values) / len(values) if values else None,
                      "is_proxy": bool(spec and spec.is_proxy)})
    return {"metrics": {n: vars(s) for n, s in specs.items()}, "table": table}


def run(run_dir: RunDir | str | Path, config: ScoreConfig | None = None, *, executor: ExecutorConfig | None = None,
        progress: Progress | None = None, force: bool = False) -> dict[str, ScoreStageResult]:
    """Score every response of a run, per target (and per attack folder); returns results by target. The
    derived metrics are shared, so a folder with too few inputs to calibrate on (an attack folder) takes the
    calibration of the targets before it. Scores are cached by content, so `force` changes nothing here
    (accepted for the common signature)."""
    config = config or ScoreConfig()
    run_dir = as_run_dir(run_dir)
    run_dir.require_benchmark()
    unreadable: dict[str, list[SourceError]] = {}
    targets = read_run_responses(run_dir, unreadable)
    local = runs_here(executor)
    scorers = build_scorers(config) if targets and local else None
    derived = build_derived(config)
    return {target: score_inputs(inputs, config, run_dir.scores_folder(target), cache_path=run_dir.score_cache_path,
                                 scorers=scorers, progress=progress, executor=executor, derived=derived,
                                 unreadable=unreadable.get(target, ()))
            for target, inputs in targets.items()}


def score_file(responses: str | Path, config: ScoreConfig | None = None, *, images: str | Path | None = None,
               out_dir: str | Path | None = None, executor: ExecutorConfig | None = None,
               progress: Progress | None = None) -> dict[str, ScoreStageResult]:
    """Score a responses file (long or wide, see scoring/inputs.py) into OUT (default: beside it)."""
    config = config or ScoreConfig()
    path = Path(responses)
    out = Path(out_dir) if out_dir else path.parent / f"{path.stem}.scores"
    if path.resolve() in {(out / name).resolve() for name in ("scores.jsonl", "stale.jsonl", "cache.sqlite")}:
        raise ConfigError(f"{path} is where the scores would be written; pass another --out folder.")
    unreadable: list[SourceError] = []
    inputs = read_responses_file(path, Path(images) if images else None, unreadable)
    local = runs_here(executor)
    return {path.stem: score_inputs(inputs, config, out, cache_path=out / "cache.sqlite",
                                    scorers=build_scorers(config) if local else None, progress=progress,
                                    executor=executor, unreadable=unreadable)}
