"""Occlusion baseline: the lesion region (or the saliency patch) painted mid-grey, nothing optimised.

Tells whether a model's answer depends on the region at all: if occluding it changes nothing, a
region attack's effect is not about the lesion.
"""

from __future__ import annotations

from dataclasses import dataclass

from medattack.attacks.base import ATTACKS, AttackResult, AttackTask, Checkpoint, evaluate_fixed
from medattack.attacks.region import Region, region_mask
from medattack.config import option
from medattack.models.base import WhiteBoxTarget


@dataclass(frozen=True)
class OcclusionConfig:
    region: Region = option("inside", "Occlude inside or outside the lesion mask/bbox, or the saliency patch.")
    patch_fraction: float = option(0.25, "Area fraction of the automatic patch when a sample has no mask.",
                                   low=0.0, high=1.0)
    fill: float = option(0.5, "Grey level painted over the region, in [0, 1].", low=0.0, high=1.0)
    max_new_tokens: int = option(64, "Tokens generated for the response.", low=1)


@ATTACKS.register("occlusion", modality="image", access="any")
class Occlusion:
    """No optimisation: the region painted grey."""

    config_class = OcclusionConfig
    needs: frozenset[str] = frozenset()
    uses_image = True  # perturbs or replaces the image

    def __init__(self, config: OcclusionConfig | None = None) -> None:
        self.config = config or OcclusionConfig()

    def run(self, model: WhiteBoxTarget, task: AttackTask, checkpoint: Checkpoint | None = None) -> AttackResult:
        state = model.start(task.question, task.target, task.pixels)
        mask = region_mask(model, state, task, self.config.region, self.config.patch_fraction, "")
        occluded = task.pixels.to(mask.device) * (1 - mask) + self.config.fill * mask
        result = evaluate_fixed(model, task, occluded, "", self.config.max_new_tokens)
        result.info["mask_fraction"] = float(mask.mean())
        return result
