"""`perplexity`: refuse a question whose text a small language model finds too improbable (Alon & Kamfonas 2023,
arXiv 2308.14132; Jain et al. 2023, arXiv 2309.00614, with their windowed variant).

The score is the mean negative log-likelihood per token (log-perplexity, nats) of the question under the scorer
(the embedded SmolLM2-135M by default; any causal LM by hub id or path), or with `window` the highest mean over
any `window` consecutive tokens. The threshold, unless set, is calibrated on the run's benign questions
(condition normal): their `quantile` (1.0: the highest, so none of them is refused). A question above it is
refused without asking the target. Catches GCG-style optimised suffixes; known weakness: fluent jailbreaks
(PAIR, AutoDAN, a mismatched claim) read as ordinary text, and rare clinical vocabulary raises false alarms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medattack.config import option
from medattack.defences.base import DEFENCES, REFUSAL, Answer, Ask, Defence, DefenceContext, Flagged, ask_rest
from medattack.errors import ConfigError
from medattack.models.targets import Query


@dataclass(frozen=True)
class PerplexityConfig:
    model: str = option("embedded", "Scorer: embedded (SmolLM2-135M-Instruct, offline), tiny (tests), or a causal "
                                    "LM's hub id or local path.")
    threshold: float | None = option(None, "Log-perplexity (nats per token) above which a question is refused; "
                                           "None: calibrated on the run's normal questions.")
    quantile: float = option(1.0, "Calibration: this quantile of the normal questions' scores (1.0: their highest).",
                             low=0.0, high=1.0)
    window: int | None = option(None, "Score the worst `window` consecutive tokens instead of the whole text.", low=1)

    def __post_init__(self) -> None:
        if not 0.5 <= self.quantile <= 1.0:
            raise ConfigError(f"perplexity quantile must be in [0.5, 1], got {self.quantile}.")
        if self.window is not None and self.window < 2:
            raise ConfigError(f"perplexity window must be 2 or more tokens (or null), got {self.window}.")


@DEFENCES.register("perplexity", citation="Alon & Kamfonas 2023 (arXiv 2308.14132); Jain et al. 2023 "
                   "(arXiv 2309.00614)", modality="text", access="black-box", needs=("embedded SmolLM2",))
class PerplexityFilter(Defence):
    """Refuse questions with a log-perplexity above a threshold calibrated on benign questions."""

    config_class = PerplexityConfig
    config: PerplexityConfig
    detects = True

    def __init__(self, config: PerplexityConfig, context: DefenceContext) -> None:
        super().__init__(config, context)
        from medattack.models.causal_lm import load_text

        self.scorer = load_text(config.model, device=context.device)
        self.threshold = config.threshold if config.threshold is not None else self._calibrate()

    def _calibrate(self) -> float:
        questions = self.context.normal_questions()
        if not questions:
            raise ConfigError("defence perplexity: the run has no normal questions to calibrate the threshold on; "
                              "query a benchmark with condition normal, or set defence_options.perplexity.threshold.")
        return float(np.quantile(self.scores(questions), self.config.quantile))

    def scores(self, texts: list[str]) -> list[float]:
        """Log-perplexity of each text (nats per token), or of its worst window; texts scored in batches."""
        return [self._reduce(nll.numpy()) for nll in self.scorer.token_nlls(texts)]

    def score(self, text: str) -> float:
        return self.scores([text])[0]

    def _reduce(self, nll: np.ndarray) -> float:
        """(n - 1,) token NLLs -> their mean, or the highest mean over `window` consecutive tokens."""
        window = self.config.window
        if window is None or len(nll) <= window:
            return float(nll.mean()) if len(nll) else 0.0
        sums = np.convolve(nll, np.ones(window), mode="valid")
        return float(sums.max() / window)

    def answer(self, queries: Sequence[Query], ask: Ask) -> list[Answer]:
        scores = self.scores([q.text for q in queries])
        return ask_rest([Flagged(REFUSAL, ("perplexity",)) if score > self.threshold else query
                         for query, score in zip(queries, scores, strict=True)], ask)

    def calibrated(self) -> dict[str, Any]:
        return {"threshold": round(self.threshold, 4), "scorer": self.scorer.name}
