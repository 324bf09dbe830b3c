"""The narrow white-box interface that attacks see (docs/architecture.md, "Model protocol").

Attacks never import transformers. They see token ids, a token mask, pixels in [0, 1] at the model's
input resolution, and the core operations every adapter implements on an `AttackState` (one prompt +
target + image):

    loss(state, candidate_ids)        # (B, n_suffix) -> per-candidate target loss, batched on the cached prefix
    token_grad(state, suffix_ids)     # -> (n_suffix, V) gradient of the loss w.r.t. one-hot suffix tokens
    pixel_grad(state, suffix_ids, p)  # -> loss and d loss / d pixels, (1, 3, H, W)
    generate(state, suffix_ids)       # -> greedy text

plus the bookkeeping around them (preprocess, tokens, start, set_pixels). Optional capabilities make
MCM and replay faster where an adapter offers them; `models/capabilities.py` uses each one when the
model has it and falls back on the core otherwise, so a new VLM family can start with the core alone:

    JointGradient    joint_grad: token and pixel gradients from one backward pass
    Probing          probe: loss at new pixels that also builds their prefix cache (set_pixels(cache_from=...))
    PixelLoss        loss_with_pixels: a loss at other pixels without touching the cached prefix
    SharedPrefixLoss loss_sharing: candidate losses that compute the suffix shared with the current one once
    BatchGeneration  generate_batch: answers to many (text, image) queries in one batch
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from medattack.errors import ConfigError
from medattack.models.objectives import CROSS_ENTROPY, Objective
from medattack.registry import Registry


@dataclass
class LossResult:
    loss: torch.Tensor  # (B,) float32, the state's objective (mean cross-entropy over the target tokens by default)
    matches: torch.Tensor  # (B,) bool, teacher-forced argmax equals the whole target


@dataclass
class AttackState:
    """One prompt, target and image, with what the adapter caches for them.

    The prompt is split at the optimised slot: `prefix` (system, question, image) | suffix | `tail`
    (template end, assistant header) | `target`. The adapter caches the prefix's keys and values and
    rebuilds them only when the pixels change.
    """

    question: str
    target: str
    pixels: torch.Tensor  # (1, 3, H, W) float32 in [0, 1], at the model's input resolution
    target_ids: torch.Tensor  # (T,) long
    cache: Any = None  # adapter-specific prefix cache
    extra: dict[str, Any] = field(default_factory=dict)  # adapter-specific segments
    objective: Objective = CROSS_ENTROPY  # the target loss `loss`, `token_grad` and `pixel_grad` compute


@dataclass
class Probe:
    """One forward pass at (suffix, pixels): its loss, a state for those pixels (prefix cache
    included, as `set_pixels` would build it), and, when the pass kept its graph, the joint gradient at
    that point by one backward pass (`grads`), so a caller that moves there needs no second forward."""

    state: AttackState
    suffix_ids: torch.Tensor  # (n,) long
    result: LossResult  # (1,) detached
    backward: Callable[[], tuple[torch.Tensor | None, torch.Tensor]] | None = None  # (token grad, pixel grad)

    def at(self, suffix_ids: torch.Tensor, pixels: torch.Tensor) -> bool:
        """Whether this pass was made at exactly this suffix and these pixels."""
        return (self.backward is not None and torch.equal(self.suffix_ids, suffix_ids)
                and torch.equal(self.state.pixels, pixels))

    def grads(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(d loss / d one-hot suffix (n, V) float32, d loss / d pixels (1, 3, H, W)); once, it frees the graph."""
        if self.backward is None:
            raise RuntimeError("this probe kept no graph, or its gradients were taken already")
        backward, self.backward = self.backward, None
        token, pixel = backward()
        if token is None:
            raise RuntimeError("this probe's pass had no one-hot suffix, so it has no token gradient")
        return token, pixel


class WhiteBoxTarget(Protocol):
    """The core every white-box adapter implements."""

    name: str
    image_size: tuple[int, int]  # (H, W) of the pixels the model takes ((1, 1) for a text-only model)
    device: torch.device
    has_image: bool  # False: a text-only model (models/causal_lm.py): pixels are carried, never read

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """(H0, W0, 3) uint8 -> (1, 3, H, W) float32 in [0, 1] at the model's resolution."""
        ...

    def allowed_tokens(self) -> torch.Tensor:
        """(V,) bool: tokens a suffix may use (ASCII, printable, not special)."""
        ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int] | torch.Tensor) -> str: ...

    def retokenizes(self, candidate_ids: torch.Tensor) -> torch.Tensor:
        """(B, n) -> (B,) bool: the candidate decodes and re-encodes to itself."""
        ...

    def start(self, question: str, target: str, pixels: torch.Tensor) -> AttackState: ...

    def set_pixels(self, state: AttackState, pixels: torch.Tensor) -> None:
        """Change the image of a state (rebuilding whatever the adapter caches for it)."""
        ...

    def loss(self, state: AttackState, candidate_ids: torch.Tensor) -> LossResult: ...

    def token_grad(self, state: AttackState, suffix_ids: torch.Tensor) -> torch.Tensor: ...

    def pixel_grad(
        self, state: AttackState, suffix_ids: torch.Tensor, pixels: torch.Tensor
    ) -> tuple[LossResult, torch.Tensor]: ...

    def generate(self, state: AttackState, suffix_ids: torch.Tensor, max_new_tokens: int = 64,
                 pixels: torch.Tensor | None = None) -> str: ...


@runtime_checkable
class JointGradient(Protocol):
    def joint_grad(
        self, state: AttackState, suffix_ids: torch.Tensor, pixels: torch.Tensor
    ) -> tuple[LossResult, torch.Tensor, torch.Tensor]:
        """One backward giving the token gradient (n, V) and the pixel gradient (1, 3, H, W)."""
        ...


@runtime_checkable
class Probing(Protocol):
    def probe(self, state: AttackState, suffix_ids: torch.Tensor, pixels: torch.Tensor,
              keep_graph: bool = False) -> Probe:
        """Loss of (suffix, pixels) and a state for the pixels from one forward pass; with
        `keep_graph`, the pass keeps its graph for `Probe.grads`."""
        ...

    def set_pixels(self, state: AttackState, pixels: torch.Tensor, cache_from: AttackState | None = None) -> None:
        """Change the image of a state, taking `cache_from`'s prefix cache (built for these pixels)."""
        ...


@runtime_checkable
class SharedPrefixLoss(Protocol):
    def loss_sharing(self, state: AttackState, candidate_ids: torch.Tensor, reference: torch.Tensor) -> LossResult:
        """`loss(state, candidate_ids)`, computing the suffix tokens each candidate shares with `reference`
        (n,) before its first difference once, for all of them."""
        ...


@runtime_checkable
class PixelLoss(Protocol):
    def loss_with_pixels(self, state: AttackState, suffix_ids: torch.Tensor, pixels: torch.Tensor) -> LossResult:
        """Loss of one suffix with other pixels, leaving the cached prefix as it is."""
        ...


@runtime_checkable
class BatchGeneration(Protocol):
    def generate_batch(self, texts: list[str], pixels: torch.Tensor, max_new_tokens: int | list[int] = 64,
                       sampling: Sequence[tuple[float, float, int]] | None = None) -> list[str]:
        """Answers to B user texts about B images (B, 3, H, W) in [0, 1]: greedy, or per row sampled at
        (temperature, top_p, seed) where the temperature is above 0."""
        ...


WHITEBOX_MODELS: Registry[Callable[..., WhiteBoxTarget]] = Registry("white-box model", plugins="medattack.models")


def require_device(device: str | None) -> None:
    """Refuse a torch device this machine does not have, in one line and before any model loads (torch's own
    error comes mid-load, as a long traceback)."""
    if not device:
        return
    try:
        torch.device(str(device))
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {str(device)[:40]!r} is not a torch device: use cpu, cuda, cuda:N or mps.") from None
    kind, _, index = str(device).partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {device!r}: this machine has no CUDA GPU that torch can use (torch "
                              f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); use --device cpu, or "
                              "run on a GPU machine with a CUDA build of torch.")
        if index and (not index.isdigit() or int(index) >= count):
            raise ConfigError(f"device {device!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}.")
    elif kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"device {device!r}: Apple's MPS is not available here; use --device cpu.")


def load_whitebox(spec: str, **options: Any) -> WhiteBoxTarget:
    """Load a white-box target from "NAME" (registered: embedded, tiny), "KIND:MODEL" (a registered kind
    that takes a model: `text:embedded`, `text:Qwen/Qwen2.5-0.5B-Instruct`, `hf:ID`) or a hub id / local path
    (a LLaVA-family model)."""
    require_device(options.get("device"))
    if spec in WHITEBOX_MODELS:
        return WHITEBOX_MODELS[spec](**options)
    kind, colon, model = spec.partition(":")
    if colon and kind in WHITEBOX_MODELS and model:
        return WHITEBOX_MODELS[kind](model, **options)
    return WHITEBOX_MODELS["hf"](spec, **options)
