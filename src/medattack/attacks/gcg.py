"""GCG: Greedy Coordinate Gradient suffix optimisation (Zou et al., 2023, arXiv 2307.15043).

Each step: the gradient of the target loss w.r.t. the one-hot suffix gives, per position, the top-k
tokens most likely to lower the loss; `search_width` candidates each replace `n_replace` random
positions with one of those tokens; candidates that do not re-tokenise to themselves (or repeat)
are dropped; all survivors are scored in batched passes over the cached prefix (image included),
with logits only at target positions, and the suffix tokens before a candidate's change computed once
for all candidates (capabilities.candidate_loss); the best candidate becomes the suffix. The suffix sits after
the image tokens and the question, as in the MCM paper (arXiv 2405.20775).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medattack.attacks.base import (
    ATTACKS,
    SUFFIX_INIT,
    AttackResult,
    AttackTask,
    Checkpoint,
    LoopState,
    initial_suffix,
    run_loop,
)
from medattack.config import option
from medattack.models.base import AttackState, LossResult, WhiteBoxTarget
from medattack.models.capabilities import candidate_loss


@dataclass(frozen=True)
class GCGConfig:
    steps: int = option(250, "Optimisation steps at most.", low=1)
    search_width: int = option(512, "Candidates sampled per step.", low=1)
    topk: int = option(256, "Tokens considered per suffix position.", low=1)
    n_replace: int = option(1, "Suffix positions changed per candidate.", low=1)
    suffix_init: str = option(SUFFIX_INIT, "Initial suffix text.")
    early_stop: bool = option(True, "Stop when the teacher-forced argmax equals the target.")
    max_new_tokens: int = option(64, "Tokens generated for the final response.", low=1)


@dataclass
class GCGStep:
    suffix_ids: torch.Tensor  # (n,) the best candidate
    loss: float
    success: bool
    n_candidates: int  # kept after filtering


def sample_candidates(
    suffix_ids: torch.Tensor, grad: torch.Tensor, allowed: torch.Tensor, search_width: int, topk: int,
    n_replace: int, generator: torch.Generator,
) -> torch.Tensor:
    """(search_width, n) candidates from the top-k tokens of -grad at n_replace random positions."""
    n = suffix_ids.shape[0]
    scores = (-grad).masked_fill(~allowed[None], float("-inf"))  # (n, V)
    top = scores.topk(topk, dim=1).indices  # (n, k)
    device = suffix_ids.device
    positions = torch.rand((search_width, n), generator=generator, device=device).argsort(dim=1)[:, :n_replace]
    choice = torch.randint(0, topk, (search_width, n_replace), generator=generator, device=device)
    tokens = top[positions, choice]  # (W, n_replace)
    return suffix_ids.repeat(search_width, 1).scatter(1, positions, tokens)


def filter_candidates(model: WhiteBoxTarget, candidates: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """Drop duplicates, the current suffix, and candidates that do not re-tokenise to themselves."""
    candidates = torch.unique(candidates, dim=0)
    candidates = candidates[(candidates != current).any(dim=1)]
    return candidates[model.retokenizes(candidates)] if len(candidates) else candidates


def gcg_step(
    model: WhiteBoxTarget, state: AttackState, suffix_ids: torch.Tensor, config: GCGConfig,
    generator: torch.Generator, grad: torch.Tensor | None = None,
) -> GCGStep:
    """One GCG step; `grad` (n, V) may be given when it was computed already (MCM's joint backward)."""
    grad = model.token_grad(state, suffix_ids) if grad is None else grad  # (n, V)
    allowed = model.allowed_tokens()
    candidates = torch.empty((0, suffix_ids.shape[0]), dtype=torch.long, device=suffix_ids.device)
    for _ in range(3):  # resample when filtering left nothing
        sampled = sample_candidates(suffix_ids, grad, allowed, config.search_width, config.topk, config.n_replace,
                                    generator)
        candidates = filter_candidates(model, sampled, suffix_ids)
        if len(candidates):
            break
    if not len(candidates):
        current: LossResult = model.loss(state, suffix_ids[None])
        return GCGStep(suffix_ids, float(current.loss[0]), bool(current.matches[0]), 0)
    result = candidate_loss(model, state, candidates, suffix_ids)
    best = int(result.loss.argmin())
    return GCGStep(candidates[best], float(result.loss[best]), bool(result.matches[best]), len(candidates))


@ATTACKS.register("gcg", citation="Zou et al. 2023, arXiv 2307.15043", modality="text", access="white-box")
class GCG:
    """Text-only: optimise the suffix, keep the clean image."""

    config_class = GCGConfig
    needs: frozenset[str] = frozenset()
    uses_image = False  # text only: runs on a text-only model too

    def __init__(self, config: GCGConfig | None = None) -> None:
        self.config = config or GCGConfig()

    def run(self, model: WhiteBoxTarget, task: AttackTask, checkpoint: Checkpoint | None = None) -> AttackResult:
        state = model.start(task.question, task.target, task.pixels)
        suffix = initial_suffix(model, self.config.suffix_init)
        first = model.loss(state, suffix[None])
        loop = LoopState(suffix, state.pixels, float(first.loss[0]), bool(first.matches[0]))

        def step(loop: LoopState, generator: torch.Generator) -> tuple[str, float, bool]:
            result = gcg_step(model, state, loop.suffix_ids, self.config, generator)
            loop.suffix_ids, loop.loss, loop.success = result.suffix_ids, result.loss, result.success
            return "text", result.loss, result.success

        return run_loop(model, task, loop, self.config.steps, step, checkpoint, self.config.early_stop,
                        self.config.max_new_tokens, state)
