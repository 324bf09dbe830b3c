"""Typographic baseline: the key phrase rendered as text under the image (FigStep-style visual prompt).

The attack stage supplies the rendered image (the builder's typographic variant, or rendered on the
fly with the font that ships in Pillow); nothing is optimised.
"""

from __future__ import annotations

from dataclasses import dataclass

from medattack.attacks.base import ATTACKS, AttackResult, AttackTask, Checkpoint, evaluate_fixed
from medattack.config import option
from medattack.errors import ConfigError
from medattack.models.base import WhiteBoxTarget


@dataclass(frozen=True)
class TypoConfig:
    max_new_tokens: int = option(64, "Tokens generated for the response.", low=1)


@ATTACKS.register("typo", citation="typographic attacks, Gong et al. 2023 (FigStep), arXiv 2311.05608",
                  modality="image", access="any")
class Typo:
    """No optimisation: the key phrase rendered under the image."""

    config_class = TypoConfig
    needs = frozenset({"typographic_image"})
    uses_image = True  # perturbs or replaces the image

    def __init__(self, config: TypoConfig | None = None) -> None:
        self.config = config or TypoConfig()

    def run(self, model: WhiteBoxTarget, task: AttackTask, checkpoint: Checkpoint | None = None) -> AttackResult:
        if task.typographic_pixels is None:
            raise ConfigError(f"sample {task.sample_id}: the typo attack needs a typographic image.")
        return evaluate_fixed(model, task, task.typographic_pixels, "", self.config.max_new_tokens)
