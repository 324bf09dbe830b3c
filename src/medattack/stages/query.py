"""The query stage: ask a target every sample of a run, every attack's adversarial input, and controls.

    runs/<name>/responses/<target>/       (rundir.ResponsesFolder)
      config.json        the target and stage config (no secrets: only the name of the key variable)
      responses.jsonl    one Response per sample x condition x source, appended chunk by chunk
      failures.jsonl     queries that failed this time (bad image, API error), with the reason
    runs/<name>/controls/blank.png, noise.png   the image-reliance control images

Sources of a query (the `source` column; `response_id` is "<source>|<sample_id>"):
    benchmark               the sample as built (question + image)
    attack:<method>/<model> an attack's adversarial input replayed (question + suffix, adversarial
                            image; a local model of the attack's resolution gets the exact float tensor);
                            for a black-box attack (pair, tap) <model> is the target searched, and the
                            input its best attempt (rewritten question, moved image)
    control:blank|noise     the sample's question with a blank grey or a uniform-noise image: a model
                            whose answers do not change shows that it does not look at the image

A re-run skips every response already written for the same input and retries the failed ones, so a
killed stage resumes with the same command and loses or duplicates nothing. Each response carries the
hash of what produced it (question text, image and tensor bytes, the target's answer settings): an
answer whose input has changed since (a rebuilt benchmark, a re-run attack), or whose sample is no
longer in the benchmark, is moved to stale.jsonl and the query asked again.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medattack.config import option, to_dict
from medattack.data.image_io import encode_png, load_image
from medattack.defences.base import (
    DefendedTarget,
    about_image,
    build_defences,
    flagged_by,
    read_defences,
    target_calls,
)
from medattack.errors import ConfigError, InputError, MedattackError
from medattack.executor import ExecutorConfig, open_pool, runs_here
from medattack.models.targets import ChatTarget, Query, TargetConfig, TargetError, load_target
from medattack.records import CONDITIONS, CONTROL_DESCRIPTIONS, RESPONSE_SAMPLE_FIELDS, Response, Sample
from medattack.rundir import Progress, RunDir, append_records, content_hash, write_bytes_atomic
from medattack.stages.base import (
    FailureLog,
    as_run_dir,
    defence_context,
    failure,
    loading,
    resumable_map,
    select_samples,
    set_aside_stale,
    stage_folder,
)
from medattack.storage import FileDigests

log = logging.getLogger(__name__)

CONTROL_SIZE = 336  # side of the control images, in pixels


@dataclass(frozen=True)
class QueryConfig:
    preset_stage: ClassVar[str] = "query"  # which settings of a preset apply (presets.py)
    target: TargetConfig = option(TargetConfig(), "The model asked (kind, model, generation and API settings).")
    conditions: tuple[str, ...] = option(CONDITIONS, "Sample conditions asked.")
    tasks: tuple[str, ...] | None = option(None, "Only samples of these clinical tasks.")
    limit: int | None = option(None, "Ask at most this many benchmark samples (in table order).", low=1)
    pairs_per_category: int | None = option(None, "Ask at most this many image x prompt pairs per image "
                                            "category (all their conditions), drawn in a fixed hash order.", low=1)
    replay_attacks: bool = option(True, "Also ask every attack's adversarial inputs found in the run (transfer).")
    controls: tuple[str, ...] = option(("blank", "noise"), "Image-reliance controls: blank, noise (or none).")
    generations: int = option(1, "Answers per query; > 1 samples each at `temperature` with seeds seed..seed+N-1 "
                                 "(a stochastic target measured as a distribution).", low=1, high=100)
    temperature: float = option(0.7, "Sampling temperature of the answers when generations > 1.", low=0.0, high=2.0)
    chunk: int = option(32, "Queries answered and written per step of the stage.", low=1)
    max_response_chars: int = option(200_000, "Longest answer stored, in characters; a longer one is stored cut "
                                     "to this length with its full length in `truncated_from`, so one runaway "
                                     "answer cannot take hundreds of MB.", low=1)
    defences: tuple[str, ...] = option((), "Defences in front of the target, outermost first (see `medattack list "
                                           "defences`): the answers go to the target '<target>+<defence>'.")
    defence_options: dict[str, dict[str, Any]] | None = option(
        None, "Settings per defence, e.g. {perplexity: {quantile: 0.99}} (on the command line --set "
              "defence_options.perplexity.quantile=0.99).")

    def __post_init__(self) -> None:
        if self.max_response_chars < 1:
            raise ConfigError(f"max_response_chars must be 1 or more, got {self.max_response_chars}.")
        if self.generations < 1:
            raise ConfigError(f"generations must be 1 or more, got {self.generations}.")
        unknown = (set(self.conditions) - set(CONDITIONS)) | (set(self.controls) - set(CONTROL_DESCRIPTIONS))
        if unknown:
            raise ConfigError(f"unknown condition or control {sorted(unknown)}; conditions: {', '.join(CONDITIONS)}; "
                              f"controls: {', '.join(CONTROL_DESCRIPTIONS)}.")
        self.defence_configs  # noqa: B018 - read (and checked) once, when the config is made

    @functools.cached_property
    def defence_configs(self) -> list[tuple[str, Any]]:
        """(name, settings) of each defence, outermost first (defences.base.read_defences)."""
        return read_defences(self.defences, self.defence_options)

    def defence_record(self) -> list[dict[str, Any]]:
        """Each defence's name and settings: part of every answer's input hash."""
        return [{"defence": name, **to_dict(config)} for name, config in self.defence_configs]


@dataclass(frozen=True)
class PlannedQuery:
    """A query before its image is loaded: what to ask and which files hold the image."""

    response_id: str
    source: str
    sample: Sample
    text: str
    image_file: str  # relative to the run root
    tensor_file: str | None = None  # exact adversarial pixels (safetensors), relative to the run root
    extra: dict[str, Any] = field(default_factory=dict)
    generation: int = 0  # which sampled answer (--generations N)
    sampling: tuple[float, int] | None = None  # (temperature, seed) when answers are sampled; None: the target's


def with_generations(planned: list[PlannedQuery], config: QueryConfig) -> list[PlannedQuery]:
    """Each query N times when `generations` N > 1, sampled at `temperature` with the seed of the target plus
    the answer's index; the k-th extra answer's id ends in "#k", so the first keeps the id of a single one."""
    if config.generations == 1:
        return planned
    return [replace(p, response_id=p.response_id + (f"#{k}" if k else ""), generation=k,
                    sampling=(config.temperature, config.target.seed + k))
            for p in planned for k in range(config.generations)]


def control_images(run: RunDir) -> dict[str, str]:
    """Write (once) the blank and noise control images; name -> path relative to the run root."""
    images = {"blank": np.full((CONTROL_SIZE, CONTROL_SIZE, 3), 128, dtype=np.uint8),
              "noise": np.random.default_rng(0).integers(0, 256, (CONTROL_SIZE, CONTROL_SIZE, 3), dtype=np.uint8)}
    paths = {}
    for name, pixels in images.items():
        path = run.control_image(name)
        if not path.exists():
            write_bytes_atomic(path, encode_png(pixels))
        paths[name] = run.relative(path)
    return paths


def plan_queries(run: RunDir, samples: list[Sample], config: QueryConfig) -> list[PlannedQuery]:
    """Every query of the stage, in a fixed order: benchmark, controls, then attack replays."""
    chosen = select_samples(samples, config, config.pairs_per_category)
    planned = [PlannedQuery(f"benchmark|{s.sample_id}", "benchmark", s, s.question,
                            run.relative(run.benchmark_file(s.image_file))) for s in chosen]
    controls = control_images(run) if config.controls else {}
    for name in config.controls:
        planned += [PlannedQuery(f"control:{name}|{s.sample_id}", f"control:{name}", s, s.question,
                                 controls[name]) for s in chosen]
    if config.replay_attacks:
        by_id = {s.sample_id: s for s in samples}
        for folder, row in run.iter_attack_results():
            sample = by_id.get(row.sample_id)
            if sample is None or sample.condition not in config.conditions:
                continue
            planned.append(PlannedQuery(
                f"{folder.source}|{row.sample_id}", folder.source, sample, row.replay_text,
                folder.relative(row.image_file), folder.relative(row.tensor_file) if row.tensor_file else None,
                {"attack_method": row.method, "attack_model": row.model, "attack_success": row.success}))
        for search in run.search_folders():  # black-box attempts: the best one of each searched sample
            for found in search.results():
                sample = by_id.get(found.sample_id)
                if sample is None or sample.condition not in config.conditions or not found.question:
                    continue
                image = search.path / found.image_file if found.image_file else run.benchmark_file(sample.image_file)
                planned.append(PlannedQuery(
                    f"{search.source}|{found.sample_id}", search.source, sample, found.question, run.relative(image),
                    None, {"attack_method": found.method, "attack_model": found.target,
                           "attack_success": found.success}))
    return with_generations(planned, config)


def input_hash(run: RunDir, planned: PlannedQuery, settings: dict[str, Any], digest: FileDigests) -> str:
    """What produces the answer to a planned query: its text, image and tensor bytes, the target's settings."""
    tensor = digest(run.root / planned.tensor_file) if planned.tensor_file else ""
    parts = [planned.text, digest(run.root / planned.image_file), tensor, settings]
    return content_hash(parts + [list(planned.sampling)] if planned.sampling else parts)


def _load_query(run: RunDir, planned: PlannedQuery) -> Query:
    image = load_image(run.root / planned.image_file).pixels
    exact = None
    if planned.tensor_file and (run.root / planned.tensor_file).is_file():
        from safetensors.torch import load_file

        exact = load_file(run.root / planned.tensor_file)["pixels"]
    temperature, seed = planned.sampling or (None, None)
    if planned.source.startswith("control:"):  # the sample's labels are not this image's
        about = {"image_file": str(run.root / planned.image_file),
                 "description": CONTROL_DESCRIPTIONS[planned.source.removeprefix("control:")]}
    else:
        about = about_image(planned.sample, run.root / planned.image_file)
    return Query(planned.response_id, planned.text, image, exact, temperature=temperature, seed=seed, about=about)


class QueryWorker:
    """Holds the target and answers one chunk of planned queries per call (a local or a Ray worker):
    it loads their images from the run directory and returns one Response or failure per query."""

    def __init__(self, config: TargetConfig, run_root: str, target: ChatTarget | None = None,
                 progress: Progress | None = None, defences: Sequence[tuple[str, Any]] = ()) -> None:
        self.run = RunDir(run_root)
        with loading(progress if defences else None, "defences"):
            built = build_defences(defences, lambda: defence_context(self.run, config.device, config.seed))
        if built:
            asked = config
            for _, defence in built:
                config = defence.configure(config)
            if target is not None and config != asked:
                raise ConfigError(f"the defences {[n for n, _ in defences]} change the target's settings before it "
                                  "is loaded (a system message), but a loaded target was given: let the stage load it.")
        with loading(progress if target is None else None, config.name):
            self.target = target or load_target(config, cache_path=self.run.api_cache_path)
        if built:
            self.target = DefendedTarget(self.target, built)
        self.defences = [name for name, _ in built]

    def name(self) -> str:
        return self.target.name

    def defence_traits(self) -> list[dict[str, Any]]:
        """Each defence's name, whether it detects and whether it decides by a proxy ([] undefended)."""
        return self.target.traits() if isinstance(self.target, DefendedTarget) else []

    def api_usage(self) -> dict[str, int]:
        """What the target's API reported to this worker: requests, retries, cache hits, tokens ({} locally)."""
        client = getattr(self.target, "client", None)
        return dict(client.stats) if client is not None else {}

    def answer(self, work: list[tuple[PlannedQuery, str]]) -> list[Response | dict[str, Any]]:
        """One Response or failure row per (planned query, its input hash), in order."""
        chunk, hashes = [p for p, _ in work], [h for _, h in work]
        outcomes: list[Response | dict[str, Any] | None] = [None] * len(chunk)
        ready, queries = [], []
        for k, planned in enumerate(chunk):
            try:
                queries.append(_load_query(self.run, planned))
                ready.append(k)
            except InputError as error:
                outcomes[k] = failure("response_id", planned.response_id, error, error.problem, fix=error.fix,
                                      file=planned.image_file)
        tick = time.perf_counter()
        try:
            answers = self.target.answer(queries) if queries else []
        except MedattackError as error:  # a target that fails as a whole fails every query of the chunk
            answers = [TargetError(str(error))] * len(queries)
        seconds = (time.perf_counter() - tick) / max(1, len(queries))
        for k, answer in zip(ready, answers, strict=True):
            planned = chunk[k]
            if isinstance(answer, Exception):
                outcomes[k] = failure("response_id", planned.response_id, answer)
                continue
            outcomes[k] = Response(
                response_id=planned.response_id, target=self.target.name, source=planned.source,
                kind=planned.source.split(":")[0], question=planned.text, image_file=planned.image_file,
                response=str(answer), seconds=round(seconds, 3),
                **{key: getattr(planned.sample, key) for key in RESPONSE_SAMPLE_FIELDS}, **planned.extra,
                input_hash=hashes[k], generation=planned.generation, defences=list(self.defences),
                flagged_by=flagged_by(answer),
            )
        return outcomes  # type: ignore[return-value]


def capped(response: Response, limit: int) -> Response:
    """The response with an answer longer than `limit` characters cut to it, its full length recorded."""
    if len(response.response) <= limit:
        return response
    return replace(response, response=response.response[:limit], truncated_from=len(response.response))


@dataclass
class QueryStageResult:
    folder: Path
    target: str
    responses: list[Response]
    failures: list[dict[str, Any]]
    asked: int  # queries answered in this call (others were already done)
    stale: int = 0  # answers set aside because their input or the target's settings changed
    api_usage: dict[str, int] = field(default_factory=dict)  # an API target's requests and tokens (one worker's)


def run(run_dir: RunDir | str | Path, config: QueryConfig | None = None, *, executor: ExecutorConfig | None = None,
        progress: Progress | None = None, force: bool = False, target: ChatTarget | None = None,
        ) -> QueryStageResult:
    """Ask the configured target; resumable, see the module docstring. With a ray executor the chunks
    are spread over actors that each load the target once; `target` (local runs) reuses a loaded one."""
    config = config or QueryConfig()
    run_dir = as_run_dir(run_dir)
    samples = run_dir.samples()
    local = runs_here(executor)
    pool = open_pool(executor, partial(QueryWorker, config.target, str(run_dir.root), target if local else None,
                                       progress if local else None, config.defence_configs))
    held = ExitStack()
    try:
        target_name = pool.call_any("name")
        folder = run_dir.responses_folder(target_name)
        held.enter_context(stage_folder(
            run_dir, folder.path, {"stage": to_dict(config), "target_name": target_name,
                                   **({"about": {"defences": pool.call_any("defence_traits")}} if config.defences
                                      else {})},
            defaults={"stage": to_dict(QueryConfig())}, writer=f"query {target_name}", stage=f"query/{folder.target}",
            change="the target", seed=config.target.seed, force=force))

        planned = plan_queries(run_dir, samples, config)
        settings, digest = config.target.answer_settings(), FileDigests()
        if config.defences:  # an undefended target's answers keep the hash they had before defences existed
            settings = {**settings, "defences": config.defence_record()}
        hashes = {p.response_id: input_hash(run_dir, p, settings, digest) for p in planned}
        sample_ids = {s.sample_id for s in samples}
        current, stale = set_aside_stale(folder.responses_path, folder.responses(),
                                         lambda row: hashes.get(row.response_id),
                                         lambda row: row.sample_id not in sample_ids)
        done = {row.response_id for row in current}
        if stale:
            log.warning("%d answer(s) of %s were for inputs that changed since; moved to %s and asked again",
                        len(stale), target_name, folder.responses_path.with_name("stale.jsonl"))
        todo = [(p, hashes[p.response_id]) for p in planned if p.response_id not in done]
        calls = target_calls(config.defence_configs)
        if calls > 1 and todo:
            log.warning("the defences %s ask the target %d times per question: up to %d target calls for the %d "
                        "queries of this call", "+".join(config.defences), calls, calls * len(todo), len(todo))
        size = max(1, config.chunk)
        chunks = [todo[start:start + size] for start in range(0, len(todo), size)]
        failures = FailureLog(folder.failures_path, "response_id", retried=(p.response_id for p in planned))

        def write(chunk: list[tuple[PlannedQuery, str]], outcomes: Any) -> None:
            if isinstance(outcomes, Exception):
                outcomes = [failure("response_id", p.response_id, outcomes) for p, _ in chunk]
            append_records(folder.responses_path, *(capped(o, config.max_response_chars) for o in outcomes
                                                    if isinstance(o, Response)))
            failures.add(*(o for o in outcomes if not isinstance(o, Response)))

        resumable_map(pool, "answer", chunks, write, progress=progress, label=f"asking {target_name}",
                      done=len(planned) - len(todo), total=len(planned), size=len)
        failures.save()
        usage = pool.call_any("api_usage") if local else {}
    finally:
        pool.close()
        held.close()
    if failures.rows:
        log.warning("%d queries to %s failed; see %s (a re-run retries them)", len(failures.rows), target_name,
                    folder.failures_path)
    return QueryStageResult(folder.path, target_name, folder.responses(), failures.rows,
                            len(todo) - len(failures.rows), len(stale), usage)
