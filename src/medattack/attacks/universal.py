"""Universal and ensemble attacks: one suffix (GCG) or one image perturbation (PGD) optimised over many samples
and several white-box models at once (Zou et al. 2023, arXiv 2307.15043, Sec. 2.3: a suffix optimised over
many requests and models transfers far better than a per-request one).

A member is one (model, sample): its own prompt, target, image and prefix cache. The objective is the mean of
the members' target losses. Samples join progressively, as in llm-attacks: the search starts on the first
sample and takes in the next once every sample so far is forced to its target (`progressive`; off: all at
once). Models: the suffix lives in the first model's tokens; a member whose model tokenises text otherwise is
scored on the suffix's text re-tokenised by its own tokenizer (its loss counts, its gradient cannot: the token
proposals come from the members that share the first model's tokens). Universal PGD needs the models to take
one image size. The result is one input applied to every sample (stages/universal.py records it per sample).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from medattack.attacks.base import (
    ATTACKS,
    AttackTask,
    Checkpoint,
    LoopState,
    StepRecord,
    initial_suffix,
    step_generator,
)
from medattack.attacks.gcg import GCGConfig, GCGStep, filter_candidates, sample_candidates
from medattack.attacks.pgd import PGDConfig
from medattack.attacks.search import SearchState, SuffixHistory, replacements
from medattack.config import option
from medattack.errors import ConfigError
from medattack.models.base import AttackState, LossResult, WhiteBoxTarget
from medattack.models.capabilities import candidate_loss

PROBE_TEXT = "Sure, here is how to ! describe 42 images."  # tokenised by two models to tell whether they share tokens


@dataclass(frozen=True)
class UniversalSettings:
    """What a universal attack adds to its per-sample method's settings (the stage reads train and models)."""

    train: int = option(10, "Samples the input is optimised on (the first selected, in table order); every other "
                            "selected sample gets the input as found (held out).", low=1)
    models: tuple[str, ...] = option((), "Further white-box models optimised at once (an ensemble: the mean of "
                                         "every model's losses), as --model takes them.")
    progressive: bool = option(True, "Add the next sample once all so far are forced (llm-attacks); off: all at once.")


@dataclass(frozen=True)
class UniversalGCGConfig(UniversalSettings, GCGConfig):
    def __post_init__(self) -> None:
        unused = [name for name, value in (("buffer_size", self.buffer_size), ("confirm", self.confirm)) if value]
        if unused:
            raise ConfigError(f"universal-gcg does not take {', '.join(unused)} (gcg's per-sample options); "
                              "leave them out.")


@dataclass(frozen=True)
class UniversalPGDConfig(UniversalSettings, PGDConfig):
    def __post_init__(self) -> None:
        if self.random_start:
            raise ConfigError("universal-pgd starts from no perturbation; leave random_start out.")


@dataclass
class Member:
    """One (model, sample) of the objective."""

    model: WhiteBoxTarget
    task: AttackTask
    state: AttackState
    shares_tokens: bool  # the model tokenises text as the first model does


@dataclass
class UniversalResult:
    suffix: str
    suffix_ids: list[int]  # in the first model's tokens
    delta: torch.Tensor  # (1, 3, H, W) perturbation added to every image (zeros for a suffix attack)
    steps: list[StepRecord]
    active: int  # samples in the objective at the end
    success: bool  # every active member forced to its target at the end
    loss: float  # mean target loss of the active members at the end
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


def shares_tokens(model: WhiteBoxTarget, first: WhiteBoxTarget) -> bool:
    return model is first or (model.encode(PROBE_TEXT) == first.encode(PROBE_TEXT)
                               and model.allowed_tokens().shape == first.allowed_tokens().shape)


def members_of(models: Sequence[WhiteBoxTarget], tasks_by_model: Sequence[Sequence[AttackTask]]) -> list[Member]:
    """Members sample-major (every model of sample 0, then sample 1, ...), so that `active` samples are a prefix."""
    first = models[0]
    out = []
    for k in range(len(tasks_by_model[0])):
        for model, tasks in zip(models, tasks_by_model, strict=True):
            task = tasks[k]
            out.append(Member(model, task, model.start(task.question, task.target, task.pixels),
                              shares_tokens(model, first)))
    return out


def member_loss(member: Member, first: WhiteBoxTarget, candidates: torch.Tensor, reference: torch.Tensor) -> LossResult:
    """Loss of each candidate (B, n) in the first model's tokens for this member, re-tokenised where needed."""
    if member.shares_tokens:
        return candidate_loss(member.model, member.state, candidates, reference)
    ids = [member.model.encode(first.decode(row)) for row in candidates]
    loss = torch.empty(len(ids), device=member.model.device)
    matches = torch.empty(len(ids), dtype=torch.bool, device=member.model.device)
    for length in sorted({len(i) for i in ids}):  # one batch per re-tokenised length
        rows = [k for k, i in enumerate(ids) if len(i) == length]
        batch = torch.tensor([ids[k] for k in rows], dtype=torch.long, device=member.model.device)
        result = member.model.loss(member.state, batch)
        loss[rows], matches[rows] = result.loss.to(loss.device), result.matches.to(matches.device)
    return LossResult(loss.to(first.device), matches.to(first.device))


def universal_gcg_step(members: Sequence[Member], suffix_ids: torch.Tensor, config: GCGConfig,
                       generator: torch.Generator, n_replace: int, history: SuffixHistory | None) -> GCGStep:
    """One GCG step on the mean loss of `members`; the proposals come from the summed token gradients."""
    first = members[0].model
    grad = sum(m.model.token_grad(m.state, suffix_ids) for m in members if m.shares_tokens)
    assert isinstance(grad, torch.Tensor)
    candidates = torch.empty((0, suffix_ids.shape[0]), dtype=torch.long, device=suffix_ids.device)
    for _ in range(3):
        sampled = sample_candidates(suffix_ids, grad, first.allowed_tokens(), config.search_width, config.topk,
                                    n_replace, generator)
        candidates = filter_candidates(first, sampled, suffix_ids)
        if history is not None and len(candidates):
            candidates = history.unseen(candidates)
        if len(candidates):
            break
    if not len(candidates):
        candidates = suffix_ids[None]
    elif history is not None:
        history.add(candidates)
    results = [member_loss(m, first, candidates, suffix_ids) for m in members]
    loss = torch.stack([r.loss for r in results]).mean(dim=0)
    matches = torch.stack([r.matches for r in results]).all(dim=0)
    best = int(loss.argmin())
    return GCGStep(candidates[best], float(loss[best]), bool(matches[best]), len(candidates))


def project_delta(delta: torch.Tensor, config: PGDConfig) -> torch.Tensor:
    if config.norm == "linf":
        return delta.clamp(-config.epsilon, config.epsilon)
    length = delta.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
    return delta * (config.epsilon / length).clamp(max=1.0)


def universal_pgd_step(members: Sequence[Member], suffixes: Sequence[torch.Tensor], delta: torch.Tensor,
                       config: PGDConfig) -> tuple[torch.Tensor, float, bool]:
    """One descent step of the shared perturbation (1, 3, H, W) on the mean loss, each member with its model's
    tokens of the fixed suffix (`suffixes`, in member order); the loss is the step's start."""
    total = torch.zeros_like(delta)
    losses, forced = [], True
    for member, suffix in zip(members, suffixes, strict=False):  # the active members: a prefix of `suffixes`
        pixels = (member.task.pixels.to(delta.device) + delta).clamp(0.0, 1.0)
        result, grad = member.model.pixel_grad(member.state, suffix, pixels)
        total += grad.to(delta.device)
        losses.append(float(result.loss[0]))
        forced = forced and bool(result.matches[0])
    if forced:  # every target forced where the step starts: keep this perturbation (as per-sample PGD does)
        return delta, sum(losses) / len(losses), True
    direction = total.sign() if config.norm == "linf" else total / total.flatten(1).norm(dim=1).clamp(min=1e-12)
    return project_delta(delta - config.step_size * direction, config), sum(losses) / len(losses), forced


StepFn = Callable[[LoopState, Sequence[Member], torch.Generator], tuple[str, float, bool]]


def run_universal(members: Sequence[Member], per_sample: int, loop: LoopState, steps: int, step_fn: StepFn,
                  checkpoint: Checkpoint | None, progressive: bool, early_stop: bool, seed: int) -> LoopState:
    """Steps on the active members until `steps` or every sample is in and forced; checkpointed after each step.
    `per_sample` members make one sample (one per model); `loop.extra["active"]` counts the samples in."""
    samples = len(members) // per_sample
    saved = checkpoint.load() if checkpoint else None
    if saved is not None:
        loop = LoopState.from_checkpoint(saved, loop.suffix_ids.device)
    loop.extra.setdefault("active", 1 if progressive else samples)
    while loop.step < steps and not (early_stop and loop.success and int(loop.extra["active"]) == samples):
        active = int(loop.extra["active"])
        tick = time.perf_counter()
        modality, loss, success = step_fn(loop, members[:active * per_sample],
                                          step_generator(seed, "universal", loop.step, loop.suffix_ids.device))
        loop.step += 1
        loop.steps.append(StepRecord(loop.step, float(loss), modality, bool(success), time.perf_counter() - tick))
        if success and active < samples:
            loop.extra["active"] = active + 1  # every sample so far forced: take in the next
            loop.success = False
        if checkpoint:
            checkpoint.save(loop.to_checkpoint())
    return loop


@ATTACKS.register("universal-gcg", citation="Zou et al. 2023, arXiv 2307.15043 (universal, multi-model)",
                  modality="text", access="white-box")
class UniversalGCG:
    """One suffix for many samples (and models)."""

    config_class = UniversalGCGConfig
    needs: frozenset[str] = frozenset()
    uses_image = False
    universal = True

    def __init__(self, config: UniversalGCGConfig | None = None) -> None:
        self.config = config or UniversalGCGConfig()

    def run_many(self, members: Sequence[Member], per_sample: int, checkpoint: Checkpoint | None = None,
                 seed: int = 0) -> UniversalResult:
        config, first, started = self.config, members[0].model, time.perf_counter()
        objective = config.objective_fn()
        for member in members:
            member.state.objective = objective
        suffix = initial_suffix(first, config.suffix_init)
        loop = LoopState(suffix, torch.zeros(1), float("nan"), False)
        search = SearchState.start(config.history, 0, loop)

        def step(loop: LoopState, active: Sequence[Member], generator: torch.Generator) -> tuple[str, float, bool]:
            search.restore(loop, first.device)
            result = universal_gcg_step(active, loop.suffix_ids, config, generator,
                                        replacements(loop.step, config.n_replace, config.replace_halving),
                                        search.history)
            loop.suffix_ids, loop.loss, loop.success = result.suffix_ids, result.loss, result.success
            search.save(loop)
            return "text", result.loss, result.success

        loop = run_universal(members, per_sample, loop, config.steps, step, checkpoint, config.progressive,
                             config.early_stop, seed)
        shape = members[0].task.pixels.shape
        return UniversalResult(first.decode(loop.suffix_ids), loop.suffix_ids.tolist(), torch.zeros(shape),
                               loop.steps, int(loop.extra["active"]), loop.success, loop.loss,
                               time.perf_counter() - started)

    def run(self, model: WhiteBoxTarget, task: AttackTask, checkpoint: Checkpoint | None = None) -> Any:
        raise ConfigError("universal-gcg optimises one suffix over many samples: run it with `medattack attack "
                          "--method universal-gcg` (the stage), or gcg for one input.")


@ATTACKS.register("universal-pgd", citation="Madry et al. 2018 with a universal perturbation "
                  "(Moosavi-Dezfooli et al. 2017, arXiv 1610.08401)", modality="image", access="white-box")
class UniversalPGD:
    """One image perturbation for many samples (and models of one image size)."""

    config_class = UniversalPGDConfig
    needs: frozenset[str] = frozenset()
    uses_image = True
    universal = True

    def __init__(self, config: UniversalPGDConfig | None = None) -> None:
        self.config = config or UniversalPGDConfig()

    def run_many(self, members: Sequence[Member], per_sample: int, checkpoint: Checkpoint | None = None,
                 seed: int = 0) -> UniversalResult:
        config, first, started = self.config, members[0].model, time.perf_counter()
        if len({tuple(m.task.pixels.shape) for m in members}) > 1:
            raise ConfigError("universal-pgd: the models take images of different sizes; one perturbation needs one "
                              "size (attack them one at a time, or use universal-gcg).")
        loop = LoopState(initial_suffix(first, config.suffix_init), torch.zeros_like(members[0].task.pixels),
                         float("nan"), False)
        suffixes = [initial_suffix(member.model, config.suffix_init) for member in members]  # tokenised once

        def step(loop: LoopState, active: Sequence[Member], generator: torch.Generator) -> tuple[str, float, bool]:
            loop.pixels, loop.loss, loop.success = universal_pgd_step(active, suffixes, loop.pixels, config)
            return "image", loop.loss, loop.success

        loop = run_universal(members, per_sample, loop, config.steps, step, checkpoint, config.progressive,
                             config.early_stop, seed)
        return UniversalResult(config.suffix_init, loop.suffix_ids.tolist(), loop.pixels.detach().cpu(), loop.steps,
                               int(loop.extra["active"]), loop.success, loop.loss, time.perf_counter() - started,
                               {"linf": float(loop.pixels.abs().max())})

    def run(self, model: WhiteBoxTarget, task: AttackTask, checkpoint: Checkpoint | None = None) -> Any:
        raise ConfigError("universal-pgd optimises one perturbation over many samples: run it with `medattack "
                          "attack --method universal-pgd` (the stage), or pgd for one input.")
