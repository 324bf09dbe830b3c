"""The optional white-box capabilities (models/base.py), each with its fallback on the core protocol.

Attacks and targets call these functions instead of the methods, so they run on any adapter that
implements the core; an adapter that offers a capability gets its speed-up without any caller knowing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medattack.errors import TargetError
from medattack.models.base import (
    AttackState,
    BatchGeneration,
    JointGradient,
    LossResult,
    PixelLoss,
    Probe,
    Probing,
    SharedPrefixLoss,
    WhiteBoxTarget,
)


def joint_grad(model: WhiteBoxTarget, state: AttackState, suffix_ids: torch.Tensor,
               pixels: torch.Tensor) -> tuple[LossResult, torch.Tensor, torch.Tensor]:
    """(loss, token gradient (n, V), pixel gradient (1, 3, H, W)) at (suffix, pixels). Without the
    capability: a pixel gradient, then a token gradient on a state moved to those pixels."""
    if isinstance(model, JointGradient):
        return model.joint_grad(state, suffix_ids, pixels)
    result, pixel = model.pixel_grad(state, suffix_ids, pixels)
    if not torch.equal(state.pixels, pixels):
        state = moved_to(model, state, pixels)
    return result, model.token_grad(state, suffix_ids), pixel


def moved_to(model: WhiteBoxTarget, state: AttackState, pixels: torch.Tensor) -> AttackState:
    """A new state of the same question, target and objective at other pixels."""
    moved = model.start(state.question, state.target, pixels)
    moved.objective = state.objective
    return moved


def probe(model: WhiteBoxTarget, state: AttackState, suffix_ids: torch.Tensor, pixels: torch.Tensor,
          keep_graph: bool = False) -> Probe:
    """Loss of (suffix, pixels) with a state for those pixels. Without the capability: a new state
    and a loss on it (no graph kept)."""
    if isinstance(model, Probing):
        return model.probe(state, suffix_ids, pixels, keep_graph=keep_graph)
    moved = moved_to(model, state, pixels)
    result = model.loss(moved, suffix_ids[None])
    return Probe(moved, suffix_ids, LossResult(result.loss.detach(), result.matches))


def adopt_pixels(model: WhiteBoxTarget, state: AttackState, pixels: torch.Tensor, probed: Probe | None = None) -> None:
    """Move `state` to `pixels`, reusing the probe's prefix cache when the adapter can."""
    if probed is not None and isinstance(model, Probing):
        model.set_pixels(state, pixels, cache_from=probed.state)
    elif probed is not None:
        state.pixels, state.cache, state.extra = probed.state.pixels, probed.state.cache, probed.state.extra
    else:
        model.set_pixels(state, pixels)


def candidate_loss(model: WhiteBoxTarget, state: AttackState, candidate_ids: torch.Tensor,
                   reference: torch.Tensor) -> LossResult:
    """Losses of candidate suffixes (B, n) that each change `reference` (n,) in a few positions: the tokens
    before a candidate's first change are computed once for all candidates (a GCG candidate replacing
    position p computes from p on); without the capability, every candidate whole."""
    if isinstance(model, SharedPrefixLoss):
        return model.loss_sharing(state, candidate_ids, reference)
    return model.loss(state, candidate_ids)


def loss_with_pixels(model: WhiteBoxTarget, state: AttackState, suffix_ids: torch.Tensor,
                     pixels: torch.Tensor) -> LossResult:
    """Loss of one suffix at other pixels, the state's cache untouched."""
    if isinstance(model, PixelLoss):
        return model.loss_with_pixels(state, suffix_ids, pixels)
    return model.loss(moved_to(model, state, pixels), suffix_ids[None])


def generate_batch(model: WhiteBoxTarget, texts: list[str], pixels: torch.Tensor,
                   max_new_tokens: int | list[int] = 64,
                   sampling: Sequence[tuple[float, float, int]] | None = None) -> list[str]:
    """Answers to B texts about B images (B, 3, H, W); one by one, greedy, without the capability
    (sampling, per row (temperature, top_p, seed), needs it)."""
    if isinstance(model, BatchGeneration):
        return model.generate_batch(texts, pixels, max_new_tokens, sampling)
    if sampling and any(temperature > 0 for temperature, _, _ in sampling):
        raise TargetError(f"{model.name} decodes greedily only (no batch generation); ask with temperature 0.")
    limits = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(texts)
    empty = torch.empty(0, dtype=torch.long, device=model.device)
    return [model.generate(model.start(text, "", pixels[k:k + 1]), empty, limits[k])
            for k, text in enumerate(texts)]
