"""What every attack takes and returns, the registry, and the resumable step loop they share.

An attack is `XConfig` (frozen dataclass, defaults only there) + `X` (registered in `ATTACKS`, with
`run(model, task, checkpoint) -> AttackResult`). Randomness is drawn per step from a generator seeded
by (seed, sample id, step), so a run resumed from a checkpoint takes exactly the steps an
uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from medattack.errors import ConfigError, InputError
from medattack.models.base import AttackState, WhiteBoxTarget
from medattack.registry import Registry

SUFFIX_INIT = "! ! ! ! ! ! ! ! ! ! ! ! ! ! ! ! ! ! ! !"


@dataclass(frozen=True)
class AttackTask:
    """One sample to attack, in the model's input space."""

    sample_id: str
    question: str
    target: str
    pixels: torch.Tensor  # (1, 3, H, W) float32 in [0, 1]: the clean image
    seed: int = 0
    mask: torch.Tensor | None = None  # (1, 1, H, W) float32 in {0, 1}: lesion region, when known
    typographic_pixels: torch.Tensor | None = None  # (1, 3, H, W): key phrase rendered under the image

    def __post_init__(self) -> None:
        if not self.target.strip():
            raise InputError(f"sample {self.sample_id}", "the target (the answer the attack makes the model start "
                             "with) is empty", "give the opening of the answer sought, e.g. 'Sure, here is how to'")


@dataclass
class StepRecord:
    step: int
    loss: float
    modality: str  # "text", "image" or "none": what this step changed
    success: bool  # teacher-forced argmax equals the target
    seconds: float


@dataclass
class AttackResult:
    suffix: str
    suffix_ids: list[int]
    pixels: torch.Tensor  # (1, 3, H, W) in [0, 1]: the adversarial (or clean) image
    steps: list[StepRecord]
    success: bool  # teacher-forced success at the end
    best_loss: float | None
    response: str = ""
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


class Checkpoint(Protocol):
    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any]) -> None: ...


class Attack(Protocol):
    """A registered attack class: built from its `config_class`, it runs one task at a time."""

    config_class: type  # the frozen XConfig dataclass of its settings
    needs: frozenset[str]  # optional inputs it reads from the sample (see NEEDS); the stage loads only these
    uses_image: bool  # it perturbs or replaces the image: a text-only model cannot take it
    config: Any

    def __init__(self, config: Any) -> None: ...

    def run(self, model: WhiteBoxTarget, task: AttackTask, checkpoint: Checkpoint | None = None) -> AttackResult: ...


# Inputs an attack may declare in `needs` beyond the question, target and clean image.
NEEDS = frozenset({"typographic_image"})  # the key phrase rendered under the image (AttackTask.typographic_pixels)


ATTACKS: Registry[type[Attack]] = Registry("attack", plugins="medattack.attacks")


def require_image(method: str, model: WhiteBoxTarget) -> None:
    """Refuse, in one line, an attack that perturbs the image on a text-only model."""
    if ATTACKS[method].uses_image and not getattr(model, "has_image", True):
        raise ConfigError(f"{method} works on the image, and {model.name} is a text-only model (no image): attack "
                          "it with gcg (without an image, MCM reduces to GCG).")


def step_generator(seed: int, sample_id: str, step: int, device: torch.device) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}\x1f{sample_id}\x1f{step}".encode()).digest()
    generator = torch.Generator(device=device)
    generator.manual_seed(int.from_bytes(digest[:8], "big") & ((1 << 63) - 1))
    return generator


@dataclass
class LoopState:
    """What a resumable attack carries from step to step (and into its checkpoint), with the input of the
    lowest loss reached so far (`best`: suffix ids, pixels, loss)."""

    suffix_ids: torch.Tensor  # (n_suffix,) long
    pixels: torch.Tensor  # (1, 3, H, W) float32
    loss: float
    success: bool
    step: int = 0
    steps: list[StepRecord] = field(default_factory=list)
    best: tuple[torch.Tensor, torch.Tensor, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # an attack's own search state (CPU tensors, lists)

    def __post_init__(self) -> None:
        if self.best is None:
            self.best = (self.suffix_ids.clone(), self.pixels.detach().clone(), self.loss)

    def keep_best(self) -> None:
        if self.best is None or self.loss < self.best[2]:
            self.best = (self.suffix_ids.clone(), self.pixels.detach().clone(), self.loss)

    def to_checkpoint(self) -> dict[str, Any]:
        assert self.best is not None
        return {"suffix_ids": self.suffix_ids.cpu(), "pixels": self.pixels.cpu(), "loss": self.loss,
                "success": self.success, "step": self.step, "steps": [vars(s) for s in self.steps],
                "best": (self.best[0].cpu(), self.best[1].cpu(), self.best[2]), "extra": self.extra}

    @classmethod
    def from_checkpoint(cls, data: dict[str, Any], device: torch.device) -> LoopState:
        best = data.get("best")
        return cls(suffix_ids=data["suffix_ids"].to(device), pixels=data["pixels"].to(device),
                   loss=float(data["loss"]), success=bool(data["success"]), step=int(data["step"]),
                   steps=[StepRecord(**s) for s in data["steps"]],
                   best=(best[0].to(device), best[1].to(device), float(best[2])) if best else None,
                   extra=data.get("extra", {}))


StepFn = Callable[[LoopState, torch.Generator], tuple[str, float, bool]]


def run_loop(
    model: WhiteBoxTarget,
    task: AttackTask,
    initial: LoopState,
    n_steps: int,
    step_fn: StepFn,
    checkpoint: Checkpoint | None,
    early_stop: bool,
    max_new_tokens: int,
    state: AttackState,
    confirm: bool = False,
) -> AttackResult:
    """Run `step_fn` until n_steps or success, checkpointing after every step; then generate once.
    With `confirm`, a teacher-forced success counts only when greedy generation begins with the target.

    `step_fn(loop, generator)` mutates `loop` (suffix, pixels, loss, success) and returns
    (modality changed, loss, success) for the log. The input kept (and answered) is the one that forced
    the target when one did, else the one of the lowest loss reached (as nanoGCG returns its best
    string); `best_loss` is that input's loss.
    """
    started = time.perf_counter()
    loop = initial
    saved = checkpoint.load() if checkpoint else None
    if saved is not None:
        loop = LoopState.from_checkpoint(saved, model.device)
        model.set_pixels(state, loop.pixels)
    while loop.step < n_steps and not (early_stop and loop.success):
        tick = time.perf_counter()
        generator = step_generator(task.seed, task.sample_id, loop.step, model.device)
        modality, loss, success = step_fn(loop, generator)
        if success and confirm and not generation_begins(model, state, loop, task.target):
            loop.success = success = False
        loop.step += 1
        loop.keep_best()
        loop.steps.append(StepRecord(loop.step, float(loss), modality, bool(success), time.perf_counter() - tick))
        if checkpoint:
            checkpoint.save(loop.to_checkpoint())
    assert loop.best is not None
    suffix_ids, pixels, best_loss = (loop.suffix_ids, loop.pixels, loop.loss) if loop.success else loop.best
    response = model.generate(state, suffix_ids, max_new_tokens, pixels=pixels)
    return AttackResult(
        suffix=model.decode(suffix_ids), suffix_ids=suffix_ids.tolist(), pixels=pixels.detach().cpu(),
        steps=loop.steps, success=loop.success, best_loss=best_loss, response=response,
        seconds=time.perf_counter() - started,
    )


def generation_begins(model: WhiteBoxTarget, state: AttackState, loop: LoopState, target: str) -> bool:
    """Whether greedy generation at the loop's input begins with `target` (whitespace at the start aside)."""
    answer = model.generate(state, loop.suffix_ids, len(state.target_ids) + 2, pixels=loop.pixels)
    return answer.lstrip().startswith(target.strip())


def initial_suffix(model: WhiteBoxTarget, text: str) -> torch.Tensor:
    return torch.tensor(model.encode(text), dtype=torch.long, device=model.device)


def evaluate_fixed(model: WhiteBoxTarget, task: AttackTask, pixels: torch.Tensor, suffix_text: str,
                   max_new_tokens: int, suffix_ids: list[int] | None = None) -> AttackResult:
    """An unoptimised input: its target loss, teacher-forced success and response (one step 0 record);
    `suffix_ids` (the model's tokens of `suffix_text`, as an attack found them) are used as they are."""
    started = time.perf_counter()
    state = model.start(task.question, task.target, pixels)
    suffix = (torch.tensor(suffix_ids, dtype=torch.long, device=model.device) if suffix_ids is not None
              else initial_suffix(model, suffix_text))
    result = model.loss(state, suffix[None])
    loss, success = float(result.loss[0]), bool(result.matches[0])
    response = model.generate(state, suffix, max_new_tokens)
    seconds = time.perf_counter() - started
    return AttackResult(suffix=suffix_text, suffix_ids=suffix.tolist(), pixels=state.pixels.detach().cpu(),
                        steps=[StepRecord(0, loss, "none", success, seconds)], success=success, best_loss=loss,
                        response=response, seconds=seconds)
