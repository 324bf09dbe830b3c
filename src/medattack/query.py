"""The query stage: ask a target every sample of a run, every attack's adversarial input, and controls.

    runs/<name>/responses/<target>/
      config.json        the target and stage config (no secrets: only the name of the key variable)
      responses.jsonl    one row per sample x condition x source, appended batch by batch
      failures.jsonl     queries that failed this time (bad image, API error), with the reason
    runs/<name>/controls/blank.png, noise.png   the image-reliance control images

Sources of a query (the `source` column; `response_id` is "<source>|<sample_id>"):
    benchmark               the sample as built (question + image)
    attack:<method>/<model> an attack's adversarial input replayed (question + suffix, adversarial
                            image; a local model of the attack's resolution gets the exact float tensor)
    control:blank|noise     the sample's question with a blank grey or a uniform-noise image: a model
                            whose answers do not change shows that it does not look at the image

A re-run skips every response already written and retries the failed ones, so a killed stage resumes
with the same command and loses or duplicates nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medattack.config import option, to_dict
from medattack.data.builder import load_samples
from medattack.data.image_io import encode_png, load_image
from medattack.errors import ConfigError, InputError, MedattackError, RunDirError
from medattack.models.targets import ChatTarget, Query, TargetConfig, TargetError, load_target
from medattack.rundir import (
    Progress,
    RunDir,
    append_jsonl,
    content_hash,
    read_jsonl,
    write_bytes_atomic,
    write_json_atomic,
    write_jsonl_atomic,
)

log = logging.getLogger(__name__)

CONDITIONS = ("normal", "mismatch", "malicious", "both")
CONTROL_SIZE = 336  # side of the control images, in pixels
CONTROL_DESCRIPTIONS = {"blank": "a blank uniform grey image", "noise": "an image of uniform random noise"}
SAMPLE_FIELDS = ("sample_id", "pair_id", "condition", "task", "task_group", "category", "modality", "body_part",
                 "prompt", "shown_attribute", "true_attribute", "description", "key_phrase")


@dataclass(frozen=True)
class QueryConfig:
    target: TargetConfig = option(TargetConfig(), "The model asked (kind, model, generation and API settings).")
    conditions: tuple[str, ...] = option(CONDITIONS, "Sample conditions asked.")
    tasks: tuple[str, ...] | None = option(None, "Only samples of these clinical tasks.")
    limit: int | None = option(None, "Ask at most this many benchmark samples (in table order).")
    pairs_per_category: int | None = option(None, "Ask at most this many image x prompt pairs per image "
                                            "category (all their conditions), drawn in a fixed hash order.")
    replay_attacks: bool = option(True, "Also ask every attack's adversarial inputs found in the run (transfer).")
    controls: tuple[str, ...] = option(("blank", "noise"), "Image-reliance controls: blank, noise (or none).")
    chunk: int = option(32, "Queries answered and written per step of the stage.")

    def __post_init__(self) -> None:
        unknown = (set(self.conditions) - set(CONDITIONS)) | (set(self.controls) - set(CONTROL_DESCRIPTIONS))
        if unknown:
            raise ConfigError(f"unknown condition or control {sorted(unknown)}; conditions: {', '.join(CONDITIONS)}; "
                              f"controls: {', '.join(CONTROL_DESCRIPTIONS)}.")


@dataclass(frozen=True)
class PlannedQuery:
    """A query before its image is loaded: what to ask and which files hold the image."""

    response_id: str
    source: str
    sample: dict[str, Any]
    text: str
    image_file: str  # relative to the run root
    tensor_file: str | None = None  # exact adversarial pixels (safetensors), relative to the run root
    extra: dict[str, Any] = field(default_factory=dict)


def control_images(run: RunDir) -> dict[str, str]:
    """Write (once) the blank and noise control images; name -> path relative to the run root."""
    images = {"blank": np.full((CONTROL_SIZE, CONTROL_SIZE, 3), 128, dtype=np.uint8),
              "noise": np.random.default_rng(0).integers(0, 256, (CONTROL_SIZE, CONTROL_SIZE, 3), dtype=np.uint8)}
    paths = {}
    for name, pixels in images.items():
        path = run.root / "controls" / f"{name}.png"
        if not path.exists():
            write_bytes_atomic(path, encode_png(pixels))
        paths[name] = f"controls/{name}.png"
    return paths


def select_samples(samples: list[dict[str, Any]], config: QueryConfig) -> list[dict[str, Any]]:
    chosen = [s for s in samples if s["condition"] in config.conditions
              and (config.tasks is None or s["task"] in config.tasks)]
    if config.pairs_per_category is not None:
        pairs: dict[str, list[str]] = {}
        for pair_id, category in sorted({(s["pair_id"], s["category"]) for s in chosen},
                                        key=lambda p: hashlib.sha256(p[0].encode()).hexdigest()):
            pairs.setdefault(category, []).append(pair_id)
        keep = {p for members in pairs.values() for p in members[: config.pairs_per_category]}
        chosen = [s for s in chosen if s["pair_id"] in keep]
    return chosen[: config.limit] if config.limit is not None else chosen


def plan_queries(run: RunDir, samples: list[dict[str, Any]], config: QueryConfig) -> list[PlannedQuery]:
    """Every query of the stage, in a fixed order: benchmark, controls, then attack replays."""
    chosen = select_samples(samples, config)
    planned = [PlannedQuery(f"benchmark|{s['sample_id']}", "benchmark", s, s["question"],
                            f"benchmark/{s['image_file']}") for s in chosen]
    controls = control_images(run) if config.controls else {}
    for name in config.controls:
        planned += [PlannedQuery(f"control:{name}|{s['sample_id']}", f"control:{name}", s, s["question"],
                                 controls[name]) for s in chosen]
    if config.replay_attacks:
        by_id = {s["sample_id"]: s for s in samples}
        for results in sorted((run.root / "attacks").glob("*/*/results.jsonl")):
            folder = results.parent.relative_to(run.root)
            source = f"attack:{folder.parent.name}/{folder.name}"
            for row in read_jsonl(results):
                sample = by_id.get(row["sample_id"])
                if sample is None or sample["condition"] not in config.conditions:
                    continue
                text = f"{row['question']} {row['suffix']}".strip() if row.get("suffix") else row["question"]
                planned.append(PlannedQuery(
                    f"{source}|{row['sample_id']}", source, sample, text, f"{folder}/{row['image_file']}",
                    f"{folder}/{row['tensor_file']}" if row.get("tensor_file") else None,
                    {"attack_method": row.get("method", folder.parent.name), "attack_model": row.get("model", ""),
                     "attack_success": row.get("success")}))
    return planned


def _load_query(run: RunDir, planned: PlannedQuery) -> Query:
    image = load_image(run.root / planned.image_file).pixels
    exact = None
    if planned.tensor_file and (run.root / planned.tensor_file).is_file():
        from safetensors.torch import load_file

        exact = load_file(run.root / planned.tensor_file)["pixels"]
    return Query(planned.response_id, planned.text, image, exact)


def target_slug(name: str) -> str:
    from medattack.attacks.runner import model_slug

    return model_slug(name)


@dataclass
class QueryStageResult:
    folder: Path
    target: str
    responses: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    asked: int  # queries answered in this call (others were already done)


def run_query_stage(run_dir: str | Path, config: QueryConfig, *, target: ChatTarget | None = None,
                    force: bool = False, progress: Progress | None = None) -> QueryStageResult:
    """Ask the configured target; resumable, see the module docstring."""
    run = RunDir(run_dir)
    samples = load_samples(run.root)
    target = target or load_target(config.target, cache_path=run.root / "responses" / "api_cache.jsonl")
    folder = run.root / "responses" / target_slug(target.name)
    record = {"stage": to_dict(config), "target_name": target.name}
    stamp = folder / "config.json"
    if stamp.exists() and not force:
        previous = json.loads(stamp.read_text(encoding="utf-8"))
        if content_hash(previous) != content_hash(record):
            raise RunDirError(f"{folder} holds responses asked with another configuration; use --force to add to "
                              "it anyway, or change the target.")
    write_json_atomic(stamp, record)
    run.record_stage(f"query/{target_slug(target.name)}", record, config.target.seed)

    responses_path, failures_path = folder / "responses.jsonl", folder / "failures.jsonl"
    done = {r["response_id"] for r in read_jsonl(responses_path)}
    planned = plan_queries(run, samples, config)
    todo = [p for p in planned if p.response_id not in done]
    failures: list[dict[str, Any]] = []
    for start in range(0, len(todo), max(1, config.chunk)):
        if progress:
            progress(f"asking {target.name}", len(planned) - len(todo) + start, len(planned))
        chunk, queries = [], []
        for planned_query in todo[start:start + config.chunk]:
            try:
                queries.append(_load_query(run, planned_query))
                chunk.append(planned_query)
            except InputError as error:
                failures.append({"response_id": planned_query.response_id, "error": type(error).__name__,
                                 "problem": error.problem, "fix": error.fix, "file": planned_query.image_file})
        tick = time.perf_counter()
        try:
            answers = target.answer(queries) if queries else []
        except MedattackError as error:  # a target that fails as a whole fails every query of the chunk
            answers = [TargetError(str(error))] * len(queries)
        seconds = (time.perf_counter() - tick) / max(1, len(queries))
        rows = []
        for planned_query, answer in zip(chunk, answers, strict=True):
            if isinstance(answer, Exception):
                failures.append({"response_id": planned_query.response_id, "error": type(answer).__name__,
                                 "problem": str(answer)})
                continue
            rows.append({
                "response_id": planned_query.response_id, "target": target.name, "source": planned_query.source,
                "kind": planned_query.source.split(":")[0], "question": planned_query.text,
                "image_file": planned_query.image_file, "response": answer, "seconds": round(seconds, 3),
                **{key: planned_query.sample.get(key) for key in SAMPLE_FIELDS},
                "attack_method": None, "attack_model": None, "attack_success": None, **planned_query.extra,
            })
        append_jsonl(responses_path, *rows)
        write_jsonl_atomic(failures_path, failures)
    write_jsonl_atomic(failures_path, failures)
    if failures:
        log.warning("%d queries to %s failed; see %s (a re-run retries them)", len(failures), target.name,
                    failures_path)
    if progress:
        progress(f"asking {target.name}", len(planned), len(planned))
    return QueryStageResult(folder, target.name, read_jsonl(responses_path), failures, len(todo) - len(failures))
