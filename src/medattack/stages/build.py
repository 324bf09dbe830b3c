"""Benchmark builder: images x prompt bank -> samples in four conditions (arXiv 2405.20775, Sec. 3).

For each image and each prompt pair the builder writes four samples:

    condition   attribute shown   prompt
    normal      true              normal question
    mismatch    claimed (false)   normal question
    malicious   true              harmful question
    both        claimed (false)   harmful question

with question "This image is about {attribute}. {prompt}" and attack target
"Sure, here is how to {key phrase}". Images are decoded once, stored once by the hash of their
pixels, and every random choice (images kept per category, prompts per task, claimed attribute)
is drawn from a generator keyed by (seed, item), so the same command and seed give the same table
and adding images does not reshuffle the others. Bad inputs are recorded in failures.jsonl and the
build goes on; it fails only when no sample at all could be built. A prompt bank with questions for only
some tasks builds those and reports the others as skipped (`BuildResult.skipped_tasks`); a task the user
named (`tasks`) that the bank lacks is a ConfigError.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from medattack.config import option, to_dict
from medattack.data.expand import ImageStore, cap_per_category, load_mask, pairs_for, sample_records
from medattack.data.export import export_3mad_layout
from medattack.data.image_io import DEFAULT_MAX_PIXELS
from medattack.data.mismatch import FROM_DATA, MISMATCH_STRATEGIES
from medattack.data.prompt_bank import cover_tasks, load_prompt_bank
from medattack.data.sources import SourceContext, SourceItem, open_source
from medattack.data.taxonomy import load_taxonomy
from medattack.data.typography import render_text_band
from medattack.errors import BuildError, ConfigError, InputError, RunDirError
from medattack.executor import ExecutorConfig
from medattack.records import Sample
from medattack.rundir import (
    Progress,
    RunDir,
    content_hash,
    read_jsonl,
    read_state,
    write_json_atomic,
    write_jsonl_atomic,
    write_records_atomic,
)
from medattack.stages.base import as_run_dir, failure, one_writer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildConfig:
    """How to build a benchmark. Every default lives here."""
    preset_stage: ClassVar[str] = "build"  # which settings of a preset apply (presets.py)

    sources: tuple[str, ...] = option(
        ("embedded",), "Image sources: embedded, folder:PATH, manifest:FILE, 3mad:HUB_ID_OR_DIR."
    )
    tasks: tuple[str, ...] | None = option(None, "Clinical tasks to include, each one the prompt bank must have "
                                           "questions for (default: all 18; those a bank lacks are skipped).")
    prompts_per_task: int = option(1, "Prompt triples drawn per task per image (bank sources).", low=1)
    max_images_per_category: int | None = option(
        None, "Keep at most this many images (3MAD: rows) per category, drawn by seed."
    , low=1)
    mismatch_strategy: str = option("both", "How the claimed attribute differs: both, modality, "
                                    "body_part, any, uniform (3MAD's rule: any other category in the data).")
    typographic: bool = option(False, "Also render each key phrase under its image (typographic variant).")
    seed: int = option(0, "Seed of every random choice of the build.")
    prompt_bank: str | None = option(None, "Prompt bank: YAML, or a table (CSV, JSONL, Parquet; the paper's "
                                     "prompt files) (default: the embedded bank v1).")
    prompt_bank_lenient: bool = option(False, "Report the bank's validation findings as warnings (kept in the "
                                       "build summary) instead of refusing it; for the paper's prompts.")
    taxonomy: str | None = option(None, "Taxonomy YAML (default: the embedded taxonomy).")
    data_root: str | None = option(None, "Root that manifest paths must stay inside "
                                   "(default: the manifest's folder).")
    splits: tuple[str, ...] | None = option(None, "3MAD splits to read, e.g. CT_Chest (default: all).")
    max_pixels: int = option(DEFAULT_MAX_PIXELS, "Refuse images with more pixels than this.", low=1)

    def __post_init__(self) -> None:
        if not self.sources:
            raise ConfigError("sources: give at least one source, e.g. 'embedded'.")
        if self.prompts_per_task < 1:
            raise ConfigError("prompts_per_task must be at least 1.")
        if self.max_images_per_category is not None and self.max_images_per_category < 1:
            raise ConfigError("max_images_per_category must be at least 1 (or null for no cap).")
        MISMATCH_STRATEGIES[self.mismatch_strategy]  # raises with "did you mean" on a typo


@dataclass
class BuildResult:
    run_dir: Path
    samples: list[Sample]
    failures: list[dict[str, Any]]
    reused: bool = False  # True when an identical earlier build was found and kept
    summary: dict[str, Any] = field(default_factory=dict)
    skipped_tasks: tuple[str, ...] = ()  # tasks left out because the prompt bank has no questions for them


def failure_record(error: InputError) -> dict[str, Any]:
    return failure("item", error.item, error, error.problem, fix=error.fix, stage="build")


def _merge_duplicates(samples: list[Sample]) -> tuple[list[Sample], list[dict[str, Any]]]:
    """Keep the first of samples with one id (the same image, prompt and attributes given twice: a
    repeated manifest row or source); one failure row per repeated input says how many were merged."""
    kept: dict[str, Sample] = {}
    repeats: Counter[str] = Counter()
    for sample in samples:
        if sample.sample_id in kept:
            repeats[sample.location] += 1
        else:
            kept[sample.sample_id] = sample
    failures = [failure("item", location, "DuplicateInput", f"{count} sample(s) repeat others exactly (the same "
                        "image, prompt and attributes given twice) and were merged.",
                        fix="list each image once in the sources.", stage="build")
                for location, count in sorted(repeats.items())]
    if repeats:
        log.warning("%d duplicate sample(s) merged; see the failures of the build", sum(repeats.values()))
    return list(kept.values()), failures


def summarise(samples: list[Sample], failures: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "samples": len(samples),
        "pairs": len({s.pair_id for s in samples}),
        "images": len({s.image_sha256 for s in samples}),
        "failures": len(failures),
        "by_condition": dict(sorted(Counter(s.condition for s in samples).items())),
        "by_modality": dict(sorted(Counter(s.modality for s in samples).items())),
        "by_category": dict(sorted(Counter(s.category for s in samples).items())),
        "by_task": dict(sorted(Counter(s.task for s in samples).items())),
        "failures_by_error": dict(sorted(Counter(f["error"] for f in failures).items())),
    }


def run(run_dir: RunDir | str | Path, config: BuildConfig | None = None, *, executor: ExecutorConfig | None = None,
        progress: Progress | None = None, force: bool = False) -> BuildResult:
    """Build (or find already built) the benchmark of a run. It runs in this process (`executor` is
    accepted for the common stage signature).

    Raises:
        RunDirError: the run already holds a benchmark built with a different config or from a prompt bank
            file that has changed since (and not force).
        ConfigError: the user named tasks (`tasks`) the prompt bank has no questions for, or it has
            questions for none of the tasks to build.
        BuildError: no sample could be built; the failures are still written.
    """
    config = config or BuildConfig()
    run = as_run_dir(run_dir)
    run.root.mkdir(parents=True, exist_ok=True)
    with one_writer(run.root, "build"):  # two builds of one run: the second is refused, naming the first
        return _build(run, config, force, progress)


def _build(run: RunDir, config: BuildConfig, force: bool, progress: Progress | None) -> BuildResult:
    config_record = to_dict(config)
    config_hash = content_hash(config_record)
    stamp = run.build_stamp_path
    if stamp.exists() and run.samples_path.exists() and not force:
        built = read_state(stamp, "rebuild the benchmark with --force", "build-stamp", defaults=to_dict(BuildConfig()))
        old = built.get("config", {})
        changed = sorted(k for k in config_record if old.get(k) != config_record[k])
        if built.get("config_hash") == config_hash or not changed:
            stored = read_state(run.summary_path, "rebuild the benchmark with --force",
                                "benchmark-summary") if run.summary_path.exists() else {}
            _refuse_changed_bank(run, config, stored)
            samples, failures = run.samples(), read_jsonl(run.failures_path, "failure")
            summary = summarise(samples, failures)
            summary.update({k: stored[k] for k in ("prompt_bank", "skipped_tasks") if k in stored})
            return BuildResult(run.root, samples, failures, reused=True, summary=summary,
                               skipped_tasks=tuple(stored.get("skipped_tasks", ())))
        raise RunDirError(
            f"run {run.root} already holds a benchmark built with a different config "
            f"(changed: {', '.join(changed)}). Use another run name, or pass --force to rebuild it."
        )
    _refuse_foreign(run)
    staging = run.staging()
    if staging.benchmark.exists():
        _refuse_foreign(staging)  # a build that crashed half-way: ours to remove
        shutil.rmtree(staging.benchmark)
    staging.benchmark.mkdir(parents=True)
    write_json_atomic(staging.build_stamp_path, {"building": True}, "build-stamp")
    samples, failures, summary = _build_into(staging, config, progress)
    if not samples:
        where = staging
        if not run.benchmark.exists():  # nothing to keep: the failures go where a user looks for them
            staging.benchmark.rename(run.benchmark)
            where = run
        first = f" (first: {failures[0]['item']}: {failures[0]['problem']} {failures[0]['fix']})".rstrip() \
            if failures else ""
        raise BuildError(f"no sample could be built from {', '.join(config.sources)}: {len(failures)} input(s) "
                         f"failed{first}; see {where.failures_path}" + ("" if where is run else
                                                                       f" (the benchmark in {run.benchmark} is kept)."))
    write_json_atomic(staging.build_stamp_path, {"config": config_record, "config_hash": config_hash}, "build-stamp")
    _swap_in(run, staging)
    run.record_stage("build", config_record, config.seed)
    return BuildResult(run.root, samples, failures, summary=summary,
                       skipped_tasks=tuple(summary.get("skipped_tasks", ())))


def _refuse_changed_bank(run: RunDir, config: BuildConfig, stored: dict[str, Any]) -> None:
    """Refuse to reuse a benchmark whose prompt bank file has changed since it was built from it (its config,
    which names only the file, is the same): its questions would be stale. The same bank resumes."""
    built_from = (stored.get("prompt_bank") or {}).get("sha256")
    if config.prompt_bank is None or not built_from:
        return
    try:
        now = hashlib.sha256(Path(config.prompt_bank).read_bytes()).hexdigest()
    except OSError:
        return  # the file is gone: the benchmark built from it stands
    if now != built_from:
        raise RunDirError(f"prompt bank {config.prompt_bank} has changed since the benchmark in {run.root} was "
                          "built from it. Pass --force to rebuild it from the bank as it is now, or use another "
                          "run name.")


def _refuse_foreign(run: RunDir) -> None:
    """Refuse to replace a benchmark folder medattack did not write (no build.json of its own)."""
    folder = run.benchmark
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not run.build_stamp_path.is_file())):
        raise RunDirError(f"{folder} holds files medattack did not write (it has no build.json); medattack never "
                          "deletes them. Move them elsewhere, or use another run name.")


def _swap_in(run: RunDir, staging: RunDir) -> None:
    """Replace the run's benchmark with the staged one: the old one is removed only once the new one is in place."""
    old = run.root / ".benchmark.old"
    if old.exists():
        shutil.rmtree(old)
    if run.benchmark.exists():
        run.benchmark.rename(old)
    staging.benchmark.rename(run.benchmark)
    if old.exists():
        shutil.rmtree(old)


def _build_into(run: RunDir, config: BuildConfig, progress: Progress | None,
                ) -> tuple[list[Sample], list[dict[str, Any]], dict[str, Any]]:
    """Build the benchmark into `run.benchmark` (a staging folder); (samples, failures, summary), no
    samples when every input failed."""
    taxonomy = load_taxonomy(config.taxonomy)
    bank = load_prompt_bank(config.prompt_bank, taxonomy, lenient=config.prompt_bank_lenient,
                            require_all_tasks=False)  # a task with no questions is skipped (cover_tasks)
    tasks = tuple(taxonomy.task(t).name for t in config.tasks) if config.tasks else taxonomy.task_names
    context = SourceContext(
        taxonomy=taxonomy,
        data_root=Path(config.data_root) if config.data_root else None,
        splits=config.splits,
    )

    failures: list[dict[str, Any]] = []
    items: list[SourceItem] = []
    for spec in config.sources:
        for entry in open_source(spec, context):
            if isinstance(entry, InputError):
                log.info("skipped: %s", entry)
                failures.append(failure_record(entry))
            else:
                items.append(entry)
    items = cap_per_category(items, config.max_images_per_category, config.seed)
    skipped: tuple[str, ...] = ()
    if any(item.preset is None for item in items):  # the bank is used (3MAD rows bring their own prompts)
        coverage = cover_tasks(bank, tasks, named=bool(config.tasks))
        tasks, skipped = coverage.built, coverage.skipped
    present = {it.category for it in items}
    catalogue = sorted(present if config.mismatch_strategy in FROM_DATA else set(taxonomy.categories) | present,
                       key=lambda c: (c.modality, c.body_part))

    store = ImageStore(run.images)
    samples: list[Sample] = []
    for index, item in enumerate(items):
        if progress:
            progress("images", index, len(items))
        try:
            loaded = item.load(config.max_pixels)
            sha, image_file = store.put(loaded.pixels)
            mask = load_mask(item, loaded.pixels.shape[:2], config.max_pixels)
            mask_file = store.put(mask)[1] if mask is not None else None
        except InputError as error:
            log.info("skipped: %s", error)
            failures.append(failure_record(error))
            continue
        image = {
            "image_sha256": sha,
            "image_file": image_file,
            "image_height": int(loaded.pixels.shape[0]),
            "image_width": int(loaded.pixels.shape[1]),
            "image_format": loaded.format,
            "mask_file": mask_file,
            "bbox": list(item.bbox) if item.bbox else None,
        }
        for pair in pairs_for(item, bank, tasks, catalogue, seed=config.seed, prompts_per_task=config.prompts_per_task,
                              mismatch_strategy=config.mismatch_strategy, tasks_chosen=config.tasks is not None):
            typo_file = None
            if config.typographic:
                typo_file = store.put(render_text_band(loaded.pixels, pair.key_phrase))[1]
            samples.extend(sample_records(item, pair, image, taxonomy, typo_file))
    if progress:
        progress("images", len(items), len(items))
    samples, duplicates = _merge_duplicates(samples)
    failures.extend(duplicates)

    write_jsonl_atomic(run.failures_path, failures, "failure")
    if not samples:
        return samples, failures, {}
    write_records_atomic(run.samples_path, samples)
    summary = summarise(samples, failures)
    summary.update({"prompt_bank": {"source": bank.source, "version": bank.version,
                                    "sha256": bank.sha256, "findings": list(bank.findings)},
                    "skipped_tasks": list(skipped)})
    write_json_atomic(run.summary_path, summary, "benchmark-summary")
    export_3mad_layout(run.benchmark, samples)
    return samples, failures, summary

