"""Stage functions over the run directory. The CLI parses arguments and calls these; so can users.

    build -> attack -> query -> score -> report     (run_all runs them from one RunConfig)

The attack stage lives in attacks/runner.py, query in query.py, scoring in scoring/stage.py and the
report in report/; the functions here are the entry points the CLI calls. Also: the dataset analyses
and prompt generation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from medattack.analysis.attribute_relevance import AttributeRelevanceResult, attribute_relevance
from medattack.analysis.prompt_relevance import PromptEntry, PromptRelevanceResult, prompt_relevance
from medattack.attacks.runner import AttackStageConfig, AttackStageResult, run_attack_stage
from medattack.config import from_mapping, option
from medattack.data.builder import BuildConfig, BuildResult, build_benchmark, load_samples
from medattack.data.prompt_bank import load_prompt_bank
from medattack.data.taxonomy import load_taxonomy
from medattack.errors import ConfigError
from medattack.executor import ExecutorConfig
from medattack.models.base import WhiteBoxTarget
from medattack.models.targets import ChatTarget, LlavaTarget, TargetConfig, parse_target
from medattack.query import QueryConfig, QueryStageResult, run_query_stage
from medattack.report import ReportConfig, ReportResult, build_report
from medattack.rundir import Progress, RunDir
from medattack.scoring.backends.image_text import IMAGE_TEXT_BACKENDS
from medattack.scoring.backends.text_embedders import get_text_embedder
from medattack.scoring.stage import (
    ScoreConfig,
    ScoreStageResult,
    build_scorers,
    read_responses_file,
    read_run_responses,
    score_inputs,
)

log = logging.getLogger(__name__)

ANALYSIS_DIR = "analysis"


def build(run_dir: str | Path, config: BuildConfig, *, force: bool = False,
          progress: Progress | None = None) -> BuildResult:
    """Stage 1: build the benchmark into `run_dir/benchmark`."""
    return build_benchmark(run_dir, config, force=force, progress=progress)


def analyze_attributes(run_dir: str | Path, backend: str = "proxy",
                       text_embedder: str = "minilm") -> AttributeRelevanceResult:
    """Image relevance to true vs claimed attribute per category, for a built run."""
    run = RunDir(run_dir)
    samples = load_samples(run.root)
    scorer = IMAGE_TEXT_BACKENDS[backend](text_embedder=text_embedder)
    return attribute_relevance(samples, run.benchmark, scorer, run.root / ANALYSIS_DIR)


def analyze_prompts(run_dir: str | Path | None = None, bank: str | None = None,
                    text_embedder: str = "minilm",
                    out_dir: str | Path | None = None) -> PromptRelevanceResult:
    """Prompt-by-prompt relevance per task, for a run's prompts or for a prompt bank."""
    taxonomy = load_taxonomy()
    if run_dir is not None:
        samples = load_samples(run_dir)
        pairs = {}
        for s in samples:
            pairs.setdefault(s["prompt_id"], {"task": s["task"]})[
                "harmful" if s["harmful"] else "normal"] = s["prompt"]
        entries = [PromptEntry(p["task"], p["normal"], p["harmful"]) for p in pairs.values()]
        target = Path(out_dir) if out_dir else RunDir(run_dir).root / ANALYSIS_DIR
    else:
        prompt_bank = load_prompt_bank(bank, taxonomy)
        entries = [PromptEntry(t.task, t.normal, t.harmful) for t in prompt_bank.triples]
        target = Path(out_dir or ".")
    known = [t for t in taxonomy.task_names if any(e.task == t for e in entries)]
    extra = sorted({e.task for e in entries} - set(known))
    embedder = get_text_embedder(text_embedder)
    return prompt_relevance(entries, tuple(known + extra), embedder, target)


def score(
    run_dir: str | Path | None = None, config: ScoreConfig | None = None, *, responses: str | Path | None = None,
    images: str | Path | None = None, out_dir: str | Path | None = None, progress: Progress | None = None,
    executor: ExecutorConfig | None = None,
) -> dict[str, ScoreStageResult]:
    """Score every response of a run (per target), or a responses file; returns results by target."""
    config = config or ScoreConfig()
    if (run_dir is None) == (responses is None):
        raise ConfigError("score needs a run directory or a responses file (one of them).")
    if responses is not None:
        path = Path(responses)
        targets = {path.stem: read_responses_file(path, Path(images) if images else None)}
        base = Path(out_dir) if out_dir else path.parent / f"{path.stem}.scores"
        folders = {path.stem: base}
    else:
        targets = read_run_responses(Path(run_dir))
        base = Path(run_dir) / "scores"
        folders = {target: base / target for target in targets}
    local = executor is None or executor.kind == "local"
    scorers = build_scorers(config) if targets and local else None
    return {target: score_inputs(inputs, config, folders[target], cache_path=base / "cache.jsonl",
                                 scorers=scorers, progress=progress, executor=executor)
            for target, inputs in targets.items()}


def query(run_dir: str | Path, config: QueryConfig, *, target: ChatTarget | None = None, force: bool = False,
          progress: Progress | None = None, executor: ExecutorConfig | None = None) -> QueryStageResult:
    """Stage 3: ask a target every selected sample, the attacks' adversarial inputs and the controls."""
    return run_query_stage(run_dir, config, target=target, force=force, progress=progress, executor=executor)


def report(run_dirs: Sequence[str | Path], out_dir: str | Path | None = None,
           config: ReportConfig | None = None) -> ReportResult:
    """Stage 5: report.html, report.md, figures and tables for one run or several compared."""
    return build_report(run_dirs, out_dir, config)


# --- every stage from one YAML (medattack run) ----------------------------------------------------

STAGES = ("build", "attack", "query", "score", "report")


@dataclass(frozen=True)
class RunConfig:
    """Every stage of a run in one YAML file; `medattack run CONFIG.yaml` resumes when re-run.

    Example:
        run_dir: runs/ct
        build: {sources: [embedded], tasks: [Disease Classification]}
        attacks:
          - {method: mcm, model: embedded, limit: 4, options: {rounds: 5}}
        targets: [embedded, "hf:HuggingFaceTB/SmolVLM-256M-Instruct", {kind: api, model: gpt-4o}]
        query: {pairs_per_category: 2, controls: [blank, noise]}
        score: {metrics: [keyword_asr, tto, tio, tii, composite]}
        executor: {kind: ray, address: auto, workers: 4, gpus_per_worker: 1}
    """

    run_dir: str = option("runs/run", "Run directory.")
    stages: tuple[str, ...] = option(STAGES, "Stages to run, in this order: build, attack, query, score, report.")
    build: BuildConfig = option(BuildConfig(), "Benchmark settings (see `medattack build --help`).")
    attacks: tuple[AttackStageConfig, ...] = option((), "White-box attacks: method, model, limit, options...")
    targets: tuple[TargetConfig, ...] = option((TargetConfig(),), "Models asked: 'KIND:MODEL' strings or "
                                               "mappings of target settings.")
    query: QueryConfig = option(QueryConfig(), "Query settings shared by every target (its `target` is ignored).")
    score: ScoreConfig = option(ScoreConfig(), "Scoring settings.")
    report: ReportConfig = option(ReportConfig(), "Report settings.")
    executor: ExecutorConfig = option(ExecutorConfig(), "Where attack, query and score run: local or ray.")

    def __post_init__(self) -> None:
        unknown = set(self.stages) - set(STAGES)
        if unknown:
            raise ConfigError(f"stages: unknown {sorted(unknown)}; use {', '.join(STAGES)}.")
        targets = tuple(parse_target(t) if isinstance(t, str) else t for t in self.targets)
        object.__setattr__(self, "targets", targets)
        attacks = tuple(from_mapping(AttackStageConfig, a, "attacks") if isinstance(a, dict) else a
                        for a in self.attacks)
        object.__setattr__(self, "attacks", attacks)


@dataclass
class RunResult:
    run_dir: Path
    build: BuildResult | None = None
    attacks: list[AttackStageResult] = field(default_factory=list)
    queries: list[QueryStageResult] = field(default_factory=list)
    scores: dict[str, ScoreStageResult] = field(default_factory=dict)
    report: ReportResult | None = None


def run_all(config: RunConfig, progress: Progress | None = None) -> RunResult:
    """Run the configured stages in order. Each stage skips what the run already holds, so running
    the same config again after a crash finishes the work without redoing or duplicating any of it."""
    from medattack.models.base import load_whitebox

    root = Path(config.run_dir)
    result = RunResult(root)
    loaded: dict[str, WhiteBoxTarget] = {}  # white-box models by spec, shared by the attack and query stages
    local = config.executor.kind == "local"  # with ray, the actors load the models

    def whitebox(spec: str, device: str | None) -> WhiteBoxTarget:
        if spec not in loaded:
            loaded[spec] = load_whitebox(spec, **({"device": device} if device else {}))
        return loaded[spec]

    if "build" in config.stages:
        result.build = build(root, config.build, progress=progress)
    if "attack" in config.stages:
        for attack in config.attacks:
            model = whitebox(attack.model, attack.device) if local else None
            result.attacks.append(run_attack_stage(root, attack, model=model, progress=progress,
                                                   executor=config.executor))
    if "query" in config.stages:
        for target_config in config.targets:
            query_config = replace(config.query, target=target_config)
            target = None
            if target_config.kind == "llava" and local:
                target = LlavaTarget(target_config, model=whitebox(target_config.model, target_config.device))
            result.queries.append(query(root, query_config, target=target, progress=progress,
                                        executor=config.executor))
    if "score" in config.stages:
        result.scores = score(root, config.score, progress=progress, executor=config.executor)
    if "report" in config.stages:
        result.report = report([root], config=config.report)
    return result


DEMO_ATTACK_SAMPLES = 3
DEMO_ROUNDS = 5


def demo_config(run_dir: str | Path = "runs/demo") -> RunConfig:
    """The whole pipeline on the embedded defaults, sized for a laptop CPU: MCM on a handful of
    samples, one image x prompt pair per category asked in all conditions with both controls."""
    return RunConfig(
        run_dir=str(run_dir),
        attacks=(AttackStageConfig(method="mcm", model="embedded", limit=DEMO_ATTACK_SAMPLES,
                                   options={"rounds": DEMO_ROUNDS}),),
        targets=(TargetConfig(model="embedded", max_new_tokens=48),),
        query=QueryConfig(pairs_per_category=1),
    )


@dataclass
class DemoResult:
    run: RunResult
    attributes: AttributeRelevanceResult
    prompts: PromptRelevanceResult


def demo(run_dir: str | Path = "runs/demo", progress: Progress | None = None) -> DemoResult:
    """Build the embedded benchmark, attack, replay, score and report, then the dataset analyses (offline)."""
    result = run_all(demo_config(run_dir), progress=progress)
    return DemoResult(result, analyze_attributes(run_dir), analyze_prompts(run_dir))


# --- prompt generation (medattack prompts ...) -----------------------------------------------------


def prompts_attributes(out_dir: str | Path, sources: tuple[str, ...] = ("embedded",), reader: str = "metadata",
                       questions: tuple[str, ...] | None = None, reader_model: str | None = None,
                       data_root: str | None = None, progress: Progress | None = None) -> dict:
    """Step 1: attributes.jsonl (one record per image) and attribute_failures.jsonl."""
    from medattack.data.image_io import DEFAULT_MAX_PIXELS
    from medattack.data.sources import SourceContext, open_source
    from medattack.errors import InputError
    from medattack.prompts.attributes import (
        ATTRIBUTE_READERS,
        DEFAULT_QUESTIONS,
        HFReaderConfig,
        WhiteboxReaderConfig,
        read_attributes,
    )
    from medattack.rundir import write_jsonl_atomic

    out = Path(out_dir)
    context = SourceContext(load_taxonomy(), Path(data_root) if data_root else None)
    items, failures = [], []
    for spec in sources:
        for entry in open_source(spec, context):
            (failures if isinstance(entry, InputError) else items).append(entry)
    configs = {"whitebox": WhiteboxReaderConfig, "hf": HFReaderConfig}
    options = {"config": configs[reader](model=reader_model)} if reader in configs and reader_model else {}
    attribute_reader = ATTRIBUTE_READERS[reader](**options, cache_path=out / "calls.jsonl")
    records = []
    for index, record in enumerate(read_attributes(items, attribute_reader, questions or DEFAULT_QUESTIONS,
                                                   DEFAULT_MAX_PIXELS)):
        if progress:
            progress("attributes", index, len(items))
        (failures if isinstance(record, InputError) else records).append(record)
    write_jsonl_atomic(out / "attributes.jsonl", records)
    write_jsonl_atomic(out / "attribute_failures.jsonl", [
        {"item": f.item, "error": type(f).__name__, "problem": f.problem, "fix": f.fix} for f in failures])
    return {"images": len(records), "failures": len(failures), "reader": attribute_reader.name}


def _text_generator(writer: str, out: Path, model: str | None, base_url: str | None, api_key_env: str,
                    max_new_tokens: int = 96):
    """None for `template`; a local or API chat model otherwise (calls cached in OUT/calls.jsonl)."""
    from medattack.api import APIConfig
    from medattack.prompts.textgen import TEXT_GENERATORS, APIChatConfig, LocalChatConfig

    if writer == "template":
        return None
    if writer in ("local", "paraphrase"):
        return TEXT_GENERATORS["local"](LocalChatConfig(model=model, max_new_tokens=max_new_tokens),
                                        cache_path=out / "calls.jsonl")
    if writer == "api":
        api = APIConfig(base_url=base_url or APIConfig.base_url, api_key_env=api_key_env)
        return TEXT_GENERATORS["api"](APIChatConfig(model=model or APIChatConfig.model, api=api),
                                      cache_path=out / "calls.jsonl")
    raise ConfigError(f"unknown writer {writer!r}; use paraphrase, template, local or api.")


def prompts_normal(out_dir: str | Path, per_task: int = 8, writer: str = "template", writer_model: str | None = None,
                   base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY") -> dict:
    """Step 2: normal.jsonl from attributes.jsonl (templates; rewritten by a chat model when one is named)."""
    from medattack.data.prompt_bank import vocabulary_pattern
    from medattack.prompts.normal import normal_questions, write_with_model
    from medattack.rundir import read_jsonl, write_jsonl_atomic

    out = Path(out_dir)
    records = read_jsonl(out / "attributes.jsonl")
    if not records:
        raise ConfigError(f"{out / 'attributes.jsonl'} is missing or empty; run `medattack prompts attributes` first.")
    taxonomy = load_taxonomy()
    questions = normal_questions(records, taxonomy, per_task)
    rejected: list[dict] = []
    generator = _text_generator(writer, out, writer_model, base_url, api_key_env, max_new_tokens=48)
    if generator is not None:
        rejected = write_with_model(questions, records, generator, get_text_embedder("minilm"),
                                    vocabulary_pattern(taxonomy))
    write_jsonl_atomic(out / "normal.jsonl", questions)
    write_jsonl_atomic(out / "normal_rejected.jsonl", rejected)
    return {"questions": len(questions), "tasks": len({q["task"] for q in questions}), "rejected": len(rejected)}


def prompts_harmful(out_dir: str | Path, writer: str = "paraphrase", writer_model: str | None = None,
                    base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                    near_duplicate: float = 0.92, version: str | None = None) -> dict:
    """Step 3: bank.yaml (validated, builder-ready) and rejected.jsonl from normal.jsonl."""
    import yaml

    from medattack.data.prompt_bank import vocabulary_pattern
    from medattack.prompts.harmful import drop_near_duplicates, rewrite_all, to_bank
    from medattack.rundir import content_hash, read_jsonl, write_bytes_atomic, write_jsonl_atomic

    out = Path(out_dir)
    normals = read_jsonl(out / "normal.jsonl")
    if not normals:
        raise ConfigError(f"{out / 'normal.jsonl'} is missing or empty; run `medattack prompts normal` first.")
    taxonomy = load_taxonomy()
    generator = _text_generator(writer, out, writer_model, base_url, api_key_env,
                                max_new_tokens=48 if writer == "paraphrase" else 96)
    embedder = get_text_embedder("minilm")
    mode = "paraphrase" if writer == "paraphrase" else "rewrite"
    rewrites, rejected = rewrite_all(normals, generator, load_prompt_bank(taxonomy=taxonomy),
                                     vocabulary_pattern(taxonomy), mode, embedder)
    kept = drop_near_duplicates(rewrites, embedder, near_duplicate)
    version = version or f"generated-{content_hash([vars(r) for r in kept])[:12]}"
    bank = to_bank(kept, taxonomy, version)
    write_bytes_atomic(out / "bank.yaml", yaml.safe_dump(bank, sort_keys=False, allow_unicode=True,
                                                          width=120).encode("utf-8"))
    write_jsonl_atomic(out / "rejected.jsonl", rejected)
    origins: dict[str, int] = {}
    for rewrite in kept:
        origins[rewrite.origin] = origins.get(rewrite.origin, 0) + 1
    return {"triples": len(kept), "near_duplicates_dropped": len(rewrites) - len(kept), "rejected": len(rejected),
            "origins": origins, "version": version, "bank": str(out / "bank.yaml")}
