"""`smoothllm`: ask N randomly perturbed copies of each question and answer with the majority (Robey et al. 2023,
arXiv 2310.03684, SmoothLLM).

Each copy has a share `rate` of its characters perturbed (swap: replaced; insert: a random character added after;
patch: one run of consecutive characters replaced), seeded per question and copy. Each answer is classed
jailbroken or not by the refusal matcher (as SmoothLLM's own check); the answer returned is the first copy's on the
majority side. Optimised suffixes are brittle to character changes; known weakness: N target calls per question,
perturbed questions are answered worse (a utility cost), and semantic jailbreaks survive perturbation.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from medattack.config import option
from medattack.defences.base import DEFENCES, Answer, Ask, Defence, seeded
from medattack.errors import ConfigError, TargetError
from medattack.models.targets import Query
from medattack.scoring.keyword import keyword_success

ALPHABET = string.printable.strip() + " "


@dataclass(frozen=True)
class SmoothLLMConfig:
    copies: int = option(5, "Perturbed copies asked per question (N target calls each).", low=1, high=64)
    rate: float = option(0.10, "Share of the characters perturbed in each copy.", low=0.0, high=0.5)
    perturbation: Literal["swap", "insert", "patch"] = option("swap", "How characters are perturbed.")

    def __post_init__(self) -> None:
        if self.copies < 1:
            raise ConfigError(f"smoothllm copies must be 1 or more, got {self.copies}.")
        if not 0.0 < self.rate <= 0.5:
            raise ConfigError(f"smoothllm rate must be in (0, 0.5], got {self.rate}.")


def perturb(text: str, rate: float, kind: str, rng: np.random.Generator) -> str:
    """`text` with about `rate` of its characters perturbed (`kind`: swap, insert, patch)."""
    if not text:
        return text
    n = max(1, round(len(text) * rate))
    letters = list(text)
    if kind == "patch":
        start = int(rng.integers(0, len(text) - n + 1))
        letters[start:start + n] = rng.choice(list(ALPHABET), n)
        return "".join(letters)
    where = sorted(rng.choice(len(text), size=min(n, len(text)), replace=False).tolist(), reverse=True)
    for position in where:
        character = str(rng.choice(list(ALPHABET)))
        if kind == "swap":
            letters[position] = character
        else:
            letters.insert(position + 1, character)
    return "".join(letters)


@DEFENCES.register("smoothllm", citation="Robey et al. 2023 (arXiv 2310.03684)", modality="text",
                   access="black-box")
class SmoothLLM(Defence):
    """Majority vote over randomly perturbed copies of the question."""

    config_class = SmoothLLMConfig
    config: SmoothLLMConfig

    @classmethod
    def target_calls(cls, config: SmoothLLMConfig) -> int:
        return config.copies

    def copies(self, query: Query) -> list[Query]:
        out = []
        for k in range(self.config.copies):
            rng = seeded(self.context.seed, query.query_id, k)
            out.append(replace(query, text=perturb(query.text, self.config.rate, self.config.perturbation, rng)))
        return out

    def answer(self, queries: Sequence[Query], ask: Ask) -> list[Answer]:
        n = self.config.copies
        answers = ask([copy for query in queries for copy in self.copies(query)])
        out: list[Answer] = []
        for k, query in enumerate(queries):
            mine = answers[k * n:(k + 1) * n]
            texts = [a for a in mine if not isinstance(a, TargetError)]
            if not texts:
                out.append(mine[0])
                continue
            jailbroken = [keyword_success(str(a), query.text) for a in texts]
            majority = sum(jailbroken) * 2 > len(texts)
            out.append(next(a for a, j in zip(texts, jailbroken, strict=True) if j == majority))
        return out
