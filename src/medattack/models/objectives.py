"""The target losses an attack can minimise, computed from the logits at the target positions.

    cross-entropy  mean over the target tokens of -log p(target token)  (GCG, Zou et al. 2023)
    mellowmax      a smooth maximum over the target tokens of -logit(target token): the worst-predicted
                   tokens weigh most (Asadi & Littman 2017, arXiv 1612.05628; GCG's option in nanoGCG 0.3)

Both are (B, T, V) float32 logits + (B, T) labels -> (B,) float32; lower is better for the attacker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Objective:
    """Which target loss the adapter computes (`AttackState.objective`); `alpha` is mellowmax's temperature."""

    name: Literal["ce", "mellowmax"] = "ce"
    alpha: float = 1.0

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """logits (B, T, V) float32, labels (B, T) long -> (B,) float32."""
        if self.name == "mellowmax":
            return mellowmax(-logits.gather(-1, labels[..., None]).squeeze(-1), self.alpha)
        batch, length, vocab = logits.shape
        nll = F.cross_entropy(logits.reshape(-1, vocab), labels.reshape(-1), reduction="none")
        return nll.view(batch, length).mean(dim=1)


def mellowmax(values: torch.Tensor, alpha: float) -> torch.Tensor:
    """(B, T) -> (B,): log(mean(exp(alpha * values))) / alpha, between the mean (alpha -> 0) and the max."""
    return (torch.logsumexp(alpha * values, dim=-1) - math.log(values.shape[-1])) / alpha


CROSS_ENTROPY = Objective()
