"""Stage functions over the run directory. The CLI parses arguments and calls these; so can users.

Stages so far: build (benchmark), the dataset analyses that read a built benchmark, and score
(responses of a run's attacks, or of any file). The attack stage lives in attacks/runner.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from medattack.analysis.attribute_relevance import AttributeRelevanceResult, attribute_relevance
from medattack.analysis.prompt_relevance import PromptEntry, PromptRelevanceResult, prompt_relevance
from medattack.data.builder import BuildConfig, BuildResult, build_benchmark, load_samples
from medattack.data.prompt_bank import load_prompt_bank
from medattack.data.taxonomy import load_taxonomy
from medattack.errors import ConfigError
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
    scorers = build_scorers(config) if targets else {}
    return {target: score_inputs(inputs, config, folders[target], cache_path=base / "cache.jsonl",
                                 scorers=scorers, progress=progress)
            for target, inputs in targets.items()}


@dataclass
class DemoResult:
    build: BuildResult
    attributes: AttributeRelevanceResult
    prompts: PromptRelevanceResult


def demo(run_dir: str | Path = "runs/demo", progress: Progress | None = None) -> DemoResult:
    """Build the embedded benchmark and run the dataset analyses on it (offline)."""
    result = build(run_dir, BuildConfig(), progress=progress)
    return DemoResult(result, analyze_attributes(run_dir), analyze_prompts(run_dir))
