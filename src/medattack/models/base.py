"""The narrow white-box interface that attacks see (DESIGN.md, "Model adapter contract").

Attacks never import transformers. They see token ids, a token mask, pixels in [0, 1] at the model's
input resolution, and four operations on an `AttackState` (one prompt + target + image):

    loss(state, candidate_ids)        # (B, n_suffix) -> per-candidate target loss, batched on the cached prefix
    token_grad(state, suffix_ids)     # -> (n_suffix, V) gradient of the loss w.r.t. one-hot suffix tokens
    pixel_grad(state, suffix_ids, p)  # -> loss and d loss / d pixels, (1, 3, H, W)
    generate(state, suffix_ids)       # -> greedy text
"""

from __future__ import annotations

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

    def fork(self, state: AttackState, pixels: torch.Tensor) -> AttackState:
        """The same prompt and target with other pixels, with its own prefix cache."""
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
