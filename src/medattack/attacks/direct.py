"""Unoptimised baseline: ask the sample's question as it is (no suffix, clean image).

On `malicious` samples this is the direct request; on `mismatch` and `both` samples it is the
mismatch alone. Same samples, same target loss and success check as the optimised attacks.
"""

from __future__ import annotations

from dataclasses import dataclass

from medattack.attacks.base import ATTACKS, AttackResult, AttackTask, Checkpoint, evaluate_fixed
from medattack.config import option
from medattack.models.base import WhiteBoxTarget


@dataclass(frozen=True)
class DirectConfig:
    max_new_tokens: int = option(64, "Tokens generated for the response.", low=1)


@ATTACKS.register("direct", modality="text", access="any")
class Direct:
    """No optimisation: the sample as it is (direct request, or mismatch alone)."""

    config_class = DirectConfig
    needs: frozenset[str] = frozenset()
    uses_image = False  # text only: runs on a text-only model too

    def __init__(self, config: DirectConfig | None = None) -> None:
        self.config = config or DirectConfig()

    def run(self, model: WhiteBoxTarget, task: AttackTask, checkpoint: Checkpoint | None = None) -> AttackResult:
        return evaluate_fixed(model, task, task.pixels, "", self.config.max_new_tokens)
