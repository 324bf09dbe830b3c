"""Every stage from one config: `medattack run CONFIG.yaml` and `medattack demo`.

    build -> attack -> blackbox -> query -> score -> report     (stages/, one module each)

`run_all` runs the configured stages in order over one run directory. Each stage skips what the run
already holds, so running the same config again after a crash finishes the work without redoing or
duplicating any of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medattack.analysis.attribute_relevance import AttributeRelevanceResult
from medattack.analysis.prompt_relevance import PromptRelevanceResult
from medattack.config import coerce, option
from medattack.defences.base import read_defences
from medattack.errors import ConfigError
from medattack.executor import ExecutorConfig, runs_here
from medattack.models.base import WhiteBoxTarget, load_whitebox
from medattack.models.targets import TARGETS, TargetConfig, load_target
from medattack.report.analysis import ReportConfig
from medattack.report.builder import ReportResult
from medattack.rundir import Progress, RunDir
from medattack.stages import analyze, attack, blackbox, build, query, report, score
from medattack.stages.attack import AttackStageConfig, AttackStageResult
from medattack.stages.blackbox import BlackBoxConfig, BlackBoxStageResult
from medattack.stages.build import BuildConfig, BuildResult
from medattack.stages.query import QueryConfig, QueryStageResult
from medattack.stages.score import ScoreConfig, ScoreStageResult

log = logging.getLogger(__name__)

STAGES = ("build", "attack", "blackbox", "query", "score", "report")


@dataclass(frozen=True)
class RunConfig:
    """Every stage of a run in one YAML file; `medattack run CONFIG.yaml` resumes when re-run.

    Example:
        run_dir: runs/ct
        build: {sources: [embedded], tasks: [Disease Classification]}
        attacks:
          - {method: mcm, model: embedded, limit: 4, options: {rounds: 5}}
        blackbox:
          - {method: pair, target: {kind: api, model: gpt-4o}, attacker: {generator: api}, limit: 4}
        targets: [embedded, "hf:HuggingFaceTB/SmolVLM-256M-Instruct", {kind: api, model: gpt-4o}]
        query: {pairs_per_category: 2, controls: [blank, noise]}
        score: {metrics: [keyword_asr, tto, tio, tii, composite]}
        executor: {kind: ray, address: auto, workers: 4, gpus_per_worker: 1}
        preset: paper    # optional: the preset's settings of every stage, under the ones written here
    """

    run_dir: str = option("runs/run", "Run directory.")
    stages: tuple[str, ...] = option(STAGES, "Stages to run, in this order: build, attack, blackbox, query, score, "
                                             "report.")
    build: BuildConfig = option(BuildConfig(), "Benchmark settings (see `medattack build --help`).")
    attacks: tuple[AttackStageConfig, ...] = option((), "White-box attacks: method, model, limit, options...")
    blackbox: tuple[BlackBoxConfig, ...] = option((), "Black-box attacks: method, target, attacker, judge, limit, "
                                                  "options... (their best attempts are replayed by the query stage)")
    targets: tuple[TargetConfig, ...] = option((TargetConfig(),), "Models asked: 'KIND:MODEL' strings or "
                                               "mappings of target settings.")
    query: QueryConfig = option(QueryConfig(), "Query settings shared by every target (its `target` is ignored).")
    defences: tuple[str, ...] = option((), "Defences measured: every target is asked undefended and then behind each "
                                           "of these in turn (`medattack list defences`).")
    defence_options: dict[str, dict[str, Any]] | None = option(None, "Settings per defence, e.g. {perplexity: "
                                                                     "{quantile: 0.99}}.")
    score: ScoreConfig = option(ScoreConfig(), "Scoring settings.")
    report: ReportConfig = option(ReportConfig(), "Report settings.")
    executor: ExecutorConfig = option(ExecutorConfig(), "Where attack, query and score run: local or ray.")
    preset: str | None = option(None, "Named settings of every stage under the ones written here (`list presets`).")

    @staticmethod
    def apply_preset(data: dict[str, Any], name: str) -> dict[str, Any]:
        """The run YAML `data` with preset `name`'s settings under each stage's (and each attack's and
        target's) own."""
        from medattack.config import under
        from medattack.models.targets import split_target
        from medattack.presets import preset_layer

        out = dict(data)
        for key in ("build", "query", "score"):
            out[key] = under(preset_layer(name, key, out.get(key) or {}), out.get(key) or {})
        attacks = [{"method": a} if isinstance(a, str) else dict(a) for a in out.get("attacks") or ()]
        out["attacks"] = [under(preset_layer(name, "attack", a), a) for a in attacks]
        answers = preset_layer(name, "query", {}).get("target", {})
        default = TargetConfig()
        targets = out.get("targets") or [{"kind": default.kind, "model": default.model}]
        out["targets"] = [under(answers, dict(zip(("kind", "model"), split_target(t), strict=True))) if isinstance(
            t, str) else under(answers, t) if isinstance(t, Mapping) else t for t in targets]
        return out

    def __post_init__(self) -> None:
        unknown = set(self.stages) - set(STAGES)
        if unknown:
            raise ConfigError(f"stages: unknown {sorted(unknown)}; use {', '.join(STAGES)}.")
        # entries may be text ("api:gpt-4o", "mcm") or mappings, also when the config is built in Python
        object.__setattr__(self, "targets", tuple(coerce(t, TargetConfig, "targets") for t in self.targets))
        object.__setattr__(self, "attacks", tuple(coerce(a, AttackStageConfig, "attacks") for a in self.attacks))
        object.__setattr__(self, "blackbox", tuple(coerce(b, BlackBoxConfig, "blackbox") for b in self.blackbox))
        read_defences(self.defences, self.defence_options)  # names and options checked now, not after the attacks

    def defence_sets(self) -> list[tuple[str, ...]]:
        """What each target is asked behind: nothing, then each defence alone."""
        return [(), *((name,) for name in self.defences)]

    def query_config(self, target: TargetConfig, defences: tuple[str, ...]) -> QueryConfig:
        """The query stage's config for one target behind `defences` (their options only)."""
        options = {k: v for k, v in (self.defence_options or {}).items() if k in defences} or None
        return replace(self.query, target=target, defences=defences, defence_options=options)


@dataclass
class RunResult:
    run_dir: Path
    build: BuildResult | None = None
    attacks: list[AttackStageResult] = field(default_factory=list)
    searches: list[BlackBoxStageResult] = field(default_factory=list)
    queries: list[QueryStageResult] = field(default_factory=list)
    scores: dict[str, ScoreStageResult] = field(default_factory=dict)
    report: ReportResult | None = None


class _Models:
    """White-box models by spec, loaded once and shared by the attack and query stages of a local run."""

    def __init__(self, local: bool) -> None:
        self.local = local  # with ray, the actors load the models
        self.loaded: dict[str, WhiteBoxTarget] = {}

    def get(self, spec: str, device: str | None) -> WhiteBoxTarget | None:
        if not self.local:
            return None
        if spec not in self.loaded:
            self.loaded[spec] = load_whitebox(spec, **({"device": device} if device else {}))
        return self.loaded[spec]


StageStep = Callable[[RunDir, RunConfig, RunResult, _Models, "Progress | None"], None]


def _build(run: RunDir, config: RunConfig, result: RunResult, models: _Models, progress: Progress | None) -> None:
    result.build = build.run(run, config.build, progress=progress)


def _attack(run: RunDir, config: RunConfig, result: RunResult, models: _Models, progress: Progress | None) -> None:
    for stage in config.attacks:
        result.attacks.append(attack.run(run, stage, executor=config.executor, progress=progress,
                                         model=models.get(stage.model, stage.device)))


def _blackbox(run: RunDir, config: RunConfig, result: RunResult, models: _Models, progress: Progress | None) -> None:
    for stage in config.blackbox:
        shared = models.get(stage.target.model, stage.target.device) if TARGETS[stage.target.kind].takes_whitebox \
            else None
        target = load_target(stage.target, model=shared) if shared is not None else None
        result.searches.append(blackbox.run(run, stage, progress=progress, target=target))


def _query(run: RunDir, config: RunConfig, result: RunResult, models: _Models, progress: Progress | None) -> None:
    for target_config in config.targets:
        shared = models.get(target_config.model, target_config.device) if TARGETS[
            target_config.kind].takes_whitebox else None
        target = load_target(target_config, model=shared) if shared is not None else None
        for defences in config.defence_sets():
            result.queries.append(query.run(run, config.query_config(target_config, defences),
                                            executor=config.executor, progress=progress, target=target))


def _score(run: RunDir, config: RunConfig, result: RunResult, models: _Models, progress: Progress | None) -> None:
    result.scores = score.run(run, config.score, executor=config.executor, progress=progress)


def _report(run: RunDir, config: RunConfig, result: RunResult, models: _Models, progress: Progress | None) -> None:
    result.report = report.run(run, config.report)


STAGE_STEPS: dict[str, StageStep] = {"build": _build, "attack": _attack, "blackbox": _blackbox, "query": _query,
                                     "score": _score, "report": _report}


def run_all(config: RunConfig, progress: Progress | None = None) -> RunResult:
    """Run the configured stages in order (module docstring)."""
    run = RunDir(config.run_dir)
    result = RunResult(run.root)
    models = _Models(local=runs_here(config.executor))
    for name in config.stages:
        STAGE_STEPS[name](run, config, result, models, progress)
    return result


DEMO_ATTACK_SAMPLES = 2
DEMO_ROUNDS = 4


def demo_config(run_dir: str | Path = "runs/demo") -> RunConfig:
    """The whole pipeline on the embedded defaults, sized for a laptop CPU: MCM on a handful of
    samples, one image x prompt pair per category asked in all conditions with both controls."""
    return RunConfig(
        run_dir=str(run_dir),
        attacks=(AttackStageConfig(method="mcm", model="embedded", limit=DEMO_ATTACK_SAMPLES,
                                   options={"rounds": DEMO_ROUNDS}),),
        targets=(TargetConfig(model="embedded", max_new_tokens=24),),
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
    return DemoResult(result, analyze.attributes(run_dir), analyze.prompts(run_dir))
