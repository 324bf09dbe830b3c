"""Region attacks: the image perturbation confined to (or kept away from) a lesion region.

The region is the sample's lesion mask or bounding box from the manifest (resized to the model's
input like the image). When a sample has none, an automatically chosen square patch is used: the
window of `patch_fraction` of the image area with the largest summed gradient magnitude of the target
loss at the clean image (gradient saliency). `inside` perturbs only the region, `outside` only the
rest. PGD and MCM both accept the mask; `region` runs PGD, `region-mcm` runs MCM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from medattack.attacks.base import ATTACKS, AttackResult, AttackTask, Checkpoint, initial_suffix
from medattack.attacks.mcm import MCM, MCMConfig
from medattack.attacks.pgd import PGD, PGDConfig
from medattack.config import option
from medattack.models.base import AttackState, WhiteBoxTarget

Region = Literal["inside", "outside", "saliency"]


def saliency_patch(model: WhiteBoxTarget, state: AttackState, suffix_text: str, patch_fraction: float) -> torch.Tensor:
    """(1, 1, H, W) mask of the square patch where |d loss / d pixels| sums highest."""
    _, grad = model.pixel_grad(state, initial_suffix(model, suffix_text), state.pixels)
    heat = grad.abs().sum(dim=1, keepdim=True)  # (1, 1, H, W)
    height, width = heat.shape[-2:]
    side = max(1, min(height, width, round(math.sqrt(patch_fraction * height * width))))
    pooled = F.avg_pool2d(heat, side, stride=1)  # (1, 1, H - side + 1, W - side + 1)
    index = int(pooled.flatten().argmax())
    top, left = divmod(index, pooled.shape[-1])
    mask = torch.zeros_like(heat)
    mask[..., top:top + side, left:left + side] = 1.0
    return mask


def region_mask(model: WhiteBoxTarget, state: AttackState, task: AttackTask, region: Region,
                patch_fraction: float, suffix_text: str) -> torch.Tensor:
    if region == "saliency" or task.mask is None:
        mask = saliency_patch(model, state, suffix_text, patch_fraction)
    else:
        mask = (task.mask.to(state.pixels.device) > 0.5).float()
    return 1.0 - mask if region == "outside" else mask


def run_in_region(inner: type[PGD] | type[MCM], config: RegionConfig | RegionMCMConfig, model: WhiteBoxTarget,
                  task: AttackTask, checkpoint: Checkpoint | None) -> AttackResult:
    """Run PGD or MCM with its image steps confined to the configured region."""

    def mask_fn(model: WhiteBoxTarget, state: AttackState, task: AttackTask) -> torch.Tensor:
        return region_mask(model, state, task, config.region, config.patch_fraction, config.suffix_init)

    result = inner(config, mask_fn=mask_fn).run(model, task, checkpoint)
    result.info["region"] = config.region if task.mask is not None else "saliency"
    return result


@dataclass(frozen=True)
class RegionConfig(PGDConfig):
    region: Region = option("inside", "inside or outside the lesion mask/bbox, or saliency (automatic patch).")
    patch_fraction: float = option(0.25, "Area fraction of the automatic patch when a sample has no mask.",
                                   low=0.0, high=1.0)


@ATTACKS.register("region", citation="PGD (Madry et al. 2018) restricted to a region", modality="image",
                  access="white-box")
class RegionPGD:
    """PGD restricted to a region."""

    config_class = RegionConfig
    needs: frozenset[str] = frozenset()
    uses_image = True  # perturbs or replaces the image

    def __init__(self, config: RegionConfig | None = None) -> None:
        self.config = config or RegionConfig()

    def run(self, model: WhiteBoxTarget, task: AttackTask, checkpoint: Checkpoint | None = None) -> AttackResult:
        return run_in_region(PGD, self.config, model, task, checkpoint)


@dataclass(frozen=True)
class RegionMCMConfig(MCMConfig):
    region: Region = option("inside", "inside or outside the lesion mask/bbox, or saliency (automatic patch).")
    patch_fraction: float = option(0.25, "Area fraction of the automatic patch when a sample has no mask.",
                                   low=0.0, high=1.0)


@ATTACKS.register("region-mcm", citation="MCM (arXiv 2405.20775) restricted to a region", modality="text+image",
                  access="white-box")
class RegionMCM:
    """MCM whose image steps are restricted to a region."""

    config_class = RegionMCMConfig
    needs: frozenset[str] = frozenset()
    uses_image = True  # perturbs or replaces the image

    def __init__(self, config: RegionMCMConfig | None = None) -> None:
        self.config = config or RegionMCMConfig()

    def run(self, model: WhiteBoxTarget, task: AttackTask, checkpoint: Checkpoint | None = None) -> AttackResult:
        return run_in_region(MCM, self.config, model, task, checkpoint)
