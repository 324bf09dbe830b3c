"""PGD on the image: projected gradient descent on the target loss (Madry et al., 2018, arXiv 1706.06083).

Pixels live in [0, 1] at the model's input resolution (normalisation is inside the adapter), so
epsilon is in pixel units: 8/255 means 8 grey levels. The epsilon ball is anchored at the clean image
for the whole attack (never re-centred), every iterate is clipped to [0, 1], and an optional mask
confines the perturbation to a region (region.py). L-inf steps follow the gradient's sign; L2 steps
its direction, projected onto the L2 ball of radius epsilon.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from medattack.attacks.base import (
    ATTACKS,
    AttackResult,
    AttackTask,
    Checkpoint,
    LoopState,
    initial_suffix,
    run_loop,
)
from medattack.config import option
from medattack.models.base import AttackState, LossResult, WhiteBoxTarget
from medattack.models.capabilities import loss_with_pixels


@dataclass(frozen=True)
class PGDConfig:
    steps: int = option(100, "PGD steps at most.", low=1)
    epsilon: float = option(8 / 255, "Radius of the perturbation ball around the clean image, pixel units.", low=0.0)
    step_size: float = option(1 / 255, "Step size, pixel units.", low=0.0)
    norm: Literal["linf", "l2"] = option("linf", "Threat model: linf or l2.")
    random_start: bool = option(False, "Start from a uniform random point inside the ball.")
    suffix_init: str = option("", "Fixed text suffix (empty: image-only attack).")
    early_stop: bool = option(True, "Stop when the teacher-forced argmax equals the target.")
    max_new_tokens: int = option(64, "Tokens generated for the final response.", low=1)


def project(pixels: torch.Tensor, clean: torch.Tensor, epsilon: float, norm: str,
            mask: torch.Tensor | None) -> torch.Tensor:
    """Project onto {clean + delta : ||delta|| <= epsilon, delta = 0 outside mask} within [0, 1]."""
    delta = pixels - clean
    if mask is not None:
        delta = delta * mask
    if norm == "linf":
        delta = delta.clamp(-epsilon, epsilon)
    else:
        length = delta.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
        delta = delta * (epsilon / length).clamp(max=1.0)
    return (clean + delta).clamp(0.0, 1.0)


def random_start(clean: torch.Tensor, config: PGDConfig, mask: torch.Tensor | None,
                 generator: torch.Generator) -> torch.Tensor:
    noise = torch.rand(clean.shape, generator=generator, device=clean.device) * 2 - 1  # U(-1, 1)
    if config.norm == "l2":
        noise = noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    return project(clean + noise * config.epsilon, clean, config.epsilon, config.norm, mask)


def pgd_update(pixels: torch.Tensor, grad: torch.Tensor, clean: torch.Tensor, config: PGDConfig,
               mask: torch.Tensor | None) -> torch.Tensor:
    """Descend along the gradient (sign for L-inf, direction for L2) and project back."""
    if config.norm == "linf":
        direction = grad.sign()
    else:
        direction = grad / grad.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
    return project(pixels - config.step_size * direction, clean, config.epsilon, config.norm, mask)


def pgd_step(
    model: WhiteBoxTarget, state: AttackState, suffix_ids: torch.Tensor, pixels: torch.Tensor,
    clean: torch.Tensor, config: PGDConfig, mask: torch.Tensor | None,
) -> tuple[torch.Tensor, LossResult]:
    """One descent step; returns the new pixels and the loss at the pixels before the step."""
    result, grad = model.pixel_grad(state, suffix_ids, pixels)
    return pgd_update(pixels, grad, clean, config, mask), result


@ATTACKS.register("pgd", citation="Madry et al. 2018, arXiv 1706.06083", modality="image", access="white-box")
class PGD:
    """Image-only: perturb the pixels, keep the (fixed, by default empty) suffix."""

    config_class = PGDConfig
    needs: frozenset[str] = frozenset()
    uses_image = True  # perturbs or replaces the image

    def __init__(self, config: PGDConfig | None = None, mask_fn=None) -> None:
        self.config = config or PGDConfig()
        self.mask_fn = mask_fn  # region.py supplies the region; None = whole image

    def run(self, model: WhiteBoxTarget, task: AttackTask, checkpoint: Checkpoint | None = None) -> AttackResult:
        state = model.start(task.question, task.target, task.pixels)
        clean = state.pixels.clone()
        mask = self.mask_fn(model, state, task) if self.mask_fn else None
        suffix = initial_suffix(model, self.config.suffix_init)
        pixels = clean
        if self.config.random_start:
            pixels = random_start(clean, self.config, mask, torch.Generator(device=model.device).manual_seed(task.seed))
        first = loss_with_pixels(model, state, suffix, pixels)
        loop = LoopState(suffix, pixels, float(first.loss[0]), bool(first.matches[0]))

        def step(loop: LoopState, generator: torch.Generator) -> tuple[str, float, bool]:
            # one forward + backward: the loss is the one at the start of the step
            stepped, before = pgd_step(model, state, loop.suffix_ids, loop.pixels, clean, self.config, mask)
            loop.loss, loop.success = float(before.loss[0]), bool(before.matches[0])
            if loop.success:
                return "none", loop.loss, True
            loop.pixels = stepped
            return "image", loop.loss, False

        result = run_loop(model, task, loop, self.config.steps, step, checkpoint, self.config.early_stop,
                          self.config.max_new_tokens, state)
        result.info["mask_fraction"] = float(mask.mean()) if mask is not None else 1.0
        return result
