"""The dataset analyses: how well images fit their true vs claimed attribute, and how prompts relate per task.

    attributes(run_dir)   analysis/attribute_relevance*.csv + figure, for a built run
    prompts(run_dir|bank) analysis/prompt_relevance.csv + figure, for a run's prompts or a prompt bank
"""

from __future__ import annotations

from pathlib import Path

from medattack.analysis.attribute_relevance import AttributeRelevanceResult, attribute_relevance
from medattack.analysis.prompt_relevance import PromptEntry, PromptRelevanceResult, prompt_relevance
from medattack.data.prompt_bank import load_prompt_bank
from medattack.data.taxonomy import load_taxonomy
from medattack.rundir import RunDir
from medattack.scoring.backends.image_text import IMAGE_TEXT_BACKENDS
from medattack.scoring.backends.text_embedders import get_text_embedder
from medattack.stages.base import as_run_dir


def attributes(run_dir: RunDir | str | Path, backend: str = "proxy",
               text_embedder: str = "minilm") -> AttributeRelevanceResult:
    """Image relevance to true vs claimed attribute per category, for a built run."""
    run = as_run_dir(run_dir)
    scorer = IMAGE_TEXT_BACKENDS[backend](text_embedder=text_embedder)
    return attribute_relevance(run.samples(), run.benchmark, scorer, run.analysis)


def prompts(run_dir: RunDir | str | Path | None = None, bank: str | None = None, text_embedder: str = "minilm",
            out_dir: str | Path | None = None) -> PromptRelevanceResult:
    """Prompt-by-prompt relevance per task, for a run's prompts or for a prompt bank."""
    taxonomy = load_taxonomy()
    if run_dir is not None:
        run = as_run_dir(run_dir)
        pairs: dict[str, dict[str, str]] = {}
        for s in run.samples():
            pairs.setdefault(s.prompt_id, {"task": s.task})["harmful" if s.harmful else "normal"] = s.prompt
        entries = [PromptEntry(p["task"], p["normal"], p["harmful"]) for p in pairs.values()]
        target = Path(out_dir) if out_dir else run.analysis
    else:
        prompt_bank = load_prompt_bank(bank, taxonomy, require_all_tasks=False)
        entries = [PromptEntry(t.task, t.normal, t.harmful) for t in prompt_bank.triples]
        target = Path(out_dir or ".")
    known = [t for t in taxonomy.task_names if any(e.task == t for e in entries)]
    extra = sorted({e.task for e in entries} - set(known))
    return prompt_relevance(entries, tuple(known + extra), get_text_embedder(text_embedder), target)
