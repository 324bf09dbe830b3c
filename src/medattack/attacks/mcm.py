"""MCM: Multimodal Cross-optimisation Method (Huang et al., arXiv 2405.20775, Sec. 4).

Each round starts from the same (suffix, image) state and tries both modalities: one GCG step on the
suffix and K PGD steps on the image; whichever reaches the lower target loss is kept. The image ball
stays anchored at the clean image for the whole attack (the original code re-centred it every round,
so the total perturbation was unbounded), and the prefix cache is rebuilt only when the image wins.
Faithful defaults: 10 candidates, top-k 64, K = 5, 10 rounds; `schedule="alternate"` spends each
round on one modality only (text on even rounds, image on odd) for half the cost.

A round costs K forward-backward passes, one forward pass and the candidate batch:
- the first PGD step's backward pass also yields GCG's token gradient;
- the image branch's loss comes from one pass that also records the prefix cache for its pixels
  (needed if the image wins) and keeps its graph when the next round tries the image: if the image
  wins, the next round's first step is then a backward pass alone.
"""

from __future__ import annotations

from collections.abc import Callable
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
from medattack.attacks.gcg import GCGConfig, gcg_step
from medattack.attacks.pgd import PGDConfig, pgd_step, pgd_update
from medattack.attacks.search import SearchState, SuffixHistory, replacements
from medattack.config import option
from medattack.models.base import AttackState, Probe, WhiteBoxTarget
from medattack.models.capabilities import adopt_pixels, joint_grad, probe

MaskFn = Callable[[WhiteBoxTarget, AttackState, AttackTask], torch.Tensor | None]


@dataclass(frozen=True)
class MCMConfig:
    rounds: int = option(10, "Cross-optimisation rounds at most.", low=1)
    search_width: int = option(10, "GCG candidates per round.", low=1)
    topk: int = option(64, "GCG tokens considered per suffix position.", low=1)
    n_replace: int = option(1, "Suffix positions changed per GCG candidate.", low=1)
    replace_halving: int = option(0, "Halve n_replace every this many rounds, down to 1 (as gcg's); 0: never.",
                                  low=0)
    pgd_steps: int = option(5, "PGD steps per round (K).", low=0)
    epsilon: float = option(8 / 255, "L-inf (or L2) radius around the clean image, pixel units.", low=0.0)
    step_size: float = option(1 / 255, "PGD step size, pixel units.", low=0.0)
    norm: Literal["linf", "l2"] = option("linf", "PGD threat model.")
    schedule: Literal["best", "alternate"] = option(
        "best", "best: both modalities every round, keep the lower loss; alternate: one modality per round.")
    objective: Literal["ce", "mellowmax"] = option("ce", "Target loss of both modalities (as gcg's).")
    mellowmax_alpha: float = option(1.0, "Mellowmax temperature (as gcg's).", low=1e-6)
    history: bool = option(False, "Never evaluate a suffix twice (as gcg's).")
    suffix_init: str = option(SUFFIX_INIT, "Initial suffix text.")
    early_stop: bool = option(True, "Stop when the teacher-forced argmax equals the target.")
    max_new_tokens: int = option(64, "Tokens generated for the final response.", low=1)

    def gcg(self) -> GCGConfig:
        return GCGConfig(search_width=self.search_width, topk=self.topk, n_replace=self.n_replace,
                         objective=self.objective, mellowmax_alpha=self.mellowmax_alpha, history=self.history)

    def pgd(self) -> PGDConfig:
        return PGDConfig(epsilon=self.epsilon, step_size=self.step_size, norm=self.norm)


def tries(config: MCMConfig, step: int) -> tuple[bool, bool]:
    """(try the text, try the image) in round `step`."""
    if config.schedule == "best":
        return True, True
    return step % 2 == 0, step % 2 == 1


def mcm_round(
    model: WhiteBoxTarget, state: AttackState, loop: LoopState, clean: torch.Tensor, config: MCMConfig,
    generator: torch.Generator, mask: torch.Tensor | None = None, carry: dict[str, Probe] | None = None,
    history: SuffixHistory | None = None,
) -> tuple[str, float, bool]:
    """One round from (loop.suffix_ids, loop.pixels); updates `loop` and returns (winner, loss, success).
    `carry` passes the image branch's kept pass from one round to the next (used only where it was
    made at exactly the round's starting point); `history`, GCG's suffixes evaluated before."""
    gcg_config, pgd_config = config.gcg(), config.pgd()
    try_text, try_image = tries(config, loop.step)
    carried = carry.pop("probe", None) if carry is not None else None
    token_grad = None
    image_pixels = loop.pixels
    if try_image:
        # the first PGD step's backward also yields the token gradient GCG needs: one pass for both
        if carried is not None and carried.at(loop.suffix_ids, loop.pixels):
            token_grad, pixel_grad = carried.grads()  # the forward was the last round's image branch
        elif try_text:
            _, token_grad, pixel_grad = joint_grad(model, state, loop.suffix_ids, loop.pixels)
        else:
            _, pixel_grad = model.pixel_grad(state, loop.suffix_ids, loop.pixels)
        token_grad = token_grad if try_text else None
        image_pixels = pgd_update(loop.pixels, pixel_grad, clean, pgd_config, mask)
        for _ in range(config.pgd_steps - 1):
            image_pixels, _ = pgd_step(model, state, loop.suffix_ids, image_pixels, clean, pgd_config, mask)
    text = gcg_step(model, state, loop.suffix_ids, gcg_config, generator, token_grad, history=history,
                    n_replace=replacements(loop.step, config.n_replace, config.replace_halving)) if try_text else None
    image = None
    if try_image:  # keeps its graph when a next round tries the image and would start from here
        next_tries_image = loop.step + 1 < config.rounds and tries(config, loop.step + 1)[1]
        image = probe(model, state, loop.suffix_ids, image_pixels, keep_graph=carry is not None and next_tries_image)
    if text is not None and (image is None or text.loss <= float(image.result.loss[0])):
        loop.suffix_ids, loop.loss, loop.success = text.suffix_ids, text.loss, text.success
        return "text", loop.loss, loop.success
    assert image is not None
    loop.pixels, loop.loss, loop.success = image_pixels, float(image.result.loss[0]), bool(image.result.matches[0])
    adopt_pixels(model, state, loop.pixels, image)  # no second prefix pass
    if carry is not None and image.backward is not None:
        carry["probe"] = image
    return "image", loop.loss, loop.success


@ATTACKS.register("mcm", citation="Huang et al. 2025 (AAAI), arXiv 2405.20775", modality="text+image",
                  access="white-box")
class MCM:
    """Text suffix and image perturbation, cross-optimised."""

    config_class = MCMConfig
    needs: frozenset[str] = frozenset()
    uses_image = True  # perturbs or replaces the image

    def __init__(self, config: MCMConfig | None = None, mask_fn: MaskFn | None = None) -> None:
        self.config = config or MCMConfig()
        self.mask_fn = mask_fn

    def run(self, model: WhiteBoxTarget, task: AttackTask, checkpoint: Checkpoint | None = None) -> AttackResult:
        config = self.config
        state = model.start(task.question, task.target, task.pixels)
        state.objective = config.gcg().objective_fn()
        clean = state.pixels.clone()
        mask = self.mask_fn(model, state, task) if self.mask_fn else None
        suffix = initial_suffix(model, config.suffix_init)
        first = model.loss(state, suffix[None])
        loop = LoopState(suffix, clean, float(first.loss[0]), bool(first.matches[0]))
        search = SearchState.start(config.history, 0, loop)

        carry: dict[str, Probe] = {}

        def round_(loop: LoopState, generator: torch.Generator) -> tuple[str, float, bool]:
            search.restore(loop, model.device)
            result = mcm_round(model, state, loop, clean, config, generator, mask, carry, search.history)
            search.save(loop)
            return result

        result = run_loop(model, task, loop, config.rounds, round_, checkpoint, config.early_stop,
                          config.max_new_tokens, state)
        result.info["linf"] = float((result.pixels - clean.cpu()).abs().max())
        return result
