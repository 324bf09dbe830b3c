"""The narrow white-box interface that attacks see (DESIGN.md, "Model adapter contract").

Attacks never import transformers. They see token ids, a token mask, pixels in [0, 1] at the model's
input resolution, and four operations on an `AttackState` (one prompt + target + image):

    loss(state, candidate_ids)        # (B, n_suffix) -> per-candidate target loss, batched on the cached prefix
    token_grad(state, suffix_ids)     # -> (n_suffix, V) gradient of the loss w.r.t. one-hot suffix tokens
    pixel_grad(state, suffix_ids, p)  # -> loss and d loss / d pixels, (1, 3, H, W)
    generate(state, suffix_ids)       # -> greedy text
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from medattack.registry import Registry


@dataclass
class LossResult:
    loss: torch.Tensor  # (B,) float32, mean cross-entropy over the target tokens
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
    name: str
    image_size: tuple[int, int]  # (H, W) of the pixels the model takes
    device: torch.device

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

    def set_pixels(self, state: AttackState, pixels: torch.Tensor, cache_from: AttackState | None = None) -> None:
        """Change the image of a state (rebuilds the prefix cache, or takes `cache_from`'s)."""
        ...

    def probe(self, state: AttackState, suffix_ids: torch.Tensor, pixels: torch.Tensor,
              keep_graph: bool = False) -> Probe:
        """Loss of (suffix, pixels) and a state for the pixels from one forward pass; with
        `keep_graph`, the pass keeps its graph for `Probe.grads`."""
        ...

    def loss(self, state: AttackState, candidate_ids: torch.Tensor) -> LossResult: ...

    def token_grad(self, state: AttackState, suffix_ids: torch.Tensor) -> torch.Tensor: ...

    def pixel_grad(
        self, state: AttackState, suffix_ids: torch.Tensor, pixels: torch.Tensor
    ) -> tuple[LossResult, torch.Tensor]: ...

    def joint_grad(
        self, state: AttackState, suffix_ids: torch.Tensor, pixels: torch.Tensor
    ) -> tuple[LossResult, torch.Tensor, torch.Tensor]:
        """One backward giving the token gradient (n, V) and the pixel gradient (1, 3, H, W)."""
        ...

    def loss_with_pixels(self, state: AttackState, suffix_ids: torch.Tensor, pixels: torch.Tensor) -> LossResult:
        """Loss of one suffix with other pixels, leaving the cached prefix as it is."""
        ...

    def generate(self, state: AttackState, suffix_ids: torch.Tensor, max_new_tokens: int = 64,
                 pixels: torch.Tensor | None = None) -> str: ...


WHITEBOX_MODELS: Registry[Any] = Registry("white-box model")


def load_whitebox(spec: str, **options: Any) -> WhiteBoxTarget:
    """Load a white-box target from "NAME" (registered: embedded, tiny) or a hub id / local path."""
    if spec in WHITEBOX_MODELS:
        return WHITEBOX_MODELS[spec](**options)
    return WHITEBOX_MODELS["hf"](spec, **options)
