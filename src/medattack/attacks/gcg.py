"""GCG: Greedy Coordinate Gradient suffix optimisation (Zou et al., 2023, arXiv 2307.15043).

Each step: the gradient of the target loss w.r.t. the one-hot suffix gives, per position, the top-k
tokens most likely to lower the loss; `search_width` candidates each replace `n_replace` random
positions with one of those tokens; candidates that do not re-tokenise to themselves (or repeat)
are dropped; all survivors are scored in batched passes over the cached prefix (image included),
with logits only at target positions, and the suffix tokens before a candidate's change computed once
for all candidates (capabilities.candidate_loss); the best candidate becomes the suffix. The suffix sits after
the image tokens and the question, as in the MCM paper (arXiv 2405.20775).

Stronger search, each an option (attacks/search.py, models/objectives.py; benchmarks/attack_budget.py measures
them per CPU second): an attack buffer, the mellowmax loss, several replacements per candidate on a halving
schedule, no suffix evaluated twice, and an early stop confirmed by greedy generation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
from medattack.attacks.search import SearchState, SuffixHistory, replacements
from medattack.config import option
from medattack.models.base import AttackState, LossResult, WhiteBoxTarget
from medattack.models.capabilities import candidate_loss
from medattack.models.objectives import Objective


@dataclass(frozen=True)
class GCGConfig:
    steps: int = option(250, "Optimisation steps at most.", low=1)
    search_width: int = option(512, "Candidates sampled per step.", low=1)
    topk: int = option(256, "Tokens considered per suffix position.", low=1)
    n_replace: int = option(1, "Suffix positions changed per candidate.", low=1)
    replace_halving: int = option(
        0, "Halve n_replace every this many steps, down to 1 (I-GCG's schedule, arXiv 2405.21018); 0: never.", low=0)
    buffer_size: int = option(
        0, "Attack buffer: keep the B lowest-loss suffixes and start each step from the best (nanoGCG 0.3); "
           "0: always move to the step's best candidate.", low=0)
    objective: Literal["ce", "mellowmax"] = option(
        "ce", "Target loss: ce (mean cross-entropy) or mellowmax (Asadi & Littman 2017, as in nanoGCG 0.3).")
    mellowmax_alpha: float = option(1.0, "Mellowmax temperature: larger weighs the worst target token more.",
                                    low=1e-6)
    history: bool = option(False, "Never evaluate a suffix twice: drop candidates evaluated at an earlier "
                                  "step (Faster-GCG, arXiv 2410.15362).")
    suffix_init: str = option(SUFFIX_INIT, "Initial suffix text.")
    early_stop: bool = option(True, "Stop when the teacher-forced argmax equals the target.")
    confirm: bool = option(False, "Stop early only when greedy generation also begins with the target.")
    max_new_tokens: int = option(64, "Tokens generated for the final response.", low=1)

    def objective_fn(self) -> Objective:
        return Objective(self.objective, self.mellowmax_alpha)


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
    generator: torch.Generator, grad: torch.Tensor | None = None, *, n_replace: int | None = None,
    history: SuffixHistory | None = None,
) -> GCGStep:
    """One GCG step from `suffix_ids` (n,); `grad` (n, V) may be given when it was computed already (MCM's
    joint backward); `n_replace` overrides the config's for this step (a schedule); `history` drops the
    candidates evaluated before and records this step's."""
    grad = model.token_grad(state, suffix_ids) if grad is None else grad  # (n, V)
    allowed = model.allowed_tokens()
    candidates = torch.empty((0, suffix_ids.shape[0]), dtype=torch.long, device=suffix_ids.device)
    for _ in range(3):  # resample when filtering left nothing
        sampled = sample_candidates(suffix_ids, grad, allowed, config.search_width, config.topk,
                                    n_replace or config.n_replace, generator)
        candidates = filter_candidates(model, sampled, suffix_ids)
        if history is not None and len(candidates):
            candidates = history.unseen(candidates)
        if len(candidates):
            break
    if not len(candidates):
        current: LossResult = model.loss(state, suffix_ids[None])
        return GCGStep(suffix_ids, float(current.loss[0]), bool(current.matches[0]), 0)
    if history is not None:
        history.add(candidates)
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
        config = self.config
        state = model.start(task.question, task.target, task.pixels)
        state.objective = config.objective_fn()
        suffix = initial_suffix(model, config.suffix_init)
        first = model.loss(state, suffix[None])
        loop = LoopState(suffix, state.pixels, float(first.loss[0]), bool(first.matches[0]))
        search = SearchState.start(config.history, config.buffer_size, loop)

        def step(loop: LoopState, generator: torch.Generator) -> tuple[str, float, bool]:
            search.restore(loop, model.device)
            start = search.buffer.best()[1] if search.buffer else loop.suffix_ids
            result = gcg_step(model, state, start, config, generator, history=search.history,
                              n_replace=replacements(loop.step, config.n_replace, config.replace_halving))
            if search.buffer is not None:
                search.buffer.add(result.loss, result.suffix_ids, result.success)
                loop.loss, loop.suffix_ids, loop.success = search.buffer.best()
            else:
                loop.suffix_ids, loop.loss, loop.success = result.suffix_ids, result.loss, result.success
            search.save(loop)
            return "text", loop.loss, loop.success  # the kept suffix's (the buffer's best, with a buffer)

        return run_loop(model, task, loop, config.steps, step, checkpoint, config.early_stop,
                        config.max_new_tokens, state, confirm=config.confirm)
