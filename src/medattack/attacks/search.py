"""Search strategies a GCG step can add to the original's (Zou et al. 2023), each small and pure:

    SuffixHistory   every suffix evaluated so far, by hash: a candidate seen at an earlier step is never
                    evaluated again (Faster-GCG, Li et al. 2024, arXiv 2410.15362, "avoid self-loops")
    AttackBuffer    the B lowest-loss suffixes found; each step starts from the best of them (nanoGCG 0.3's
                    attack buffer, after ACG, Haize Labs 2024)
    replacements    positions changed per candidate on a schedule: several at first, fewer as the search
                    closes in (I-GCG's multi-coordinate updates, Jia et al. 2024, arXiv 2405.21018)

Their state travels in the attack's checkpoint as tensors, so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

_HASH_BASE = 1_000_003  # an odd multiplier; int64 arithmetic wraps, which is all a hash needs


def suffix_hashes(candidates: torch.Tensor) -> torch.Tensor:
    """(B, n) long -> (B,) long: a polynomial hash of each row (equal rows, equal hashes)."""
    powers = torch.full((candidates.shape[1],), _HASH_BASE, dtype=torch.long, device=candidates.device)
    powers = torch.cumprod(powers, dim=0)  # wraps in int64: deterministic on every device
    return (candidates * powers).sum(dim=1)


@dataclass
class SuffixHistory:
    """Hashes of every suffix whose loss was computed; `unseen` keeps the candidates not among them."""

    seen: set[int] = field(default_factory=set)

    def unseen(self, candidates: torch.Tensor) -> torch.Tensor:
        """(B, n) -> (B', n): the candidates never evaluated before (row order kept)."""
        hashes = suffix_hashes(candidates).tolist()
        keep = torch.tensor([h not in self.seen for h in hashes], dtype=torch.bool, device=candidates.device)
        return candidates[keep]

    def add(self, candidates: torch.Tensor) -> None:
        self.seen.update(suffix_hashes(candidates).tolist())


@dataclass
class AttackBuffer:
    """The `size` lowest-loss suffixes seen, lowest first: (loss, suffix ids (n,), teacher-forced success)."""

    size: int
    entries: list[tuple[float, torch.Tensor, bool]] = field(default_factory=list)

    def add(self, loss: float, suffix_ids: torch.Tensor, success: bool) -> None:
        """Keep `suffix_ids` if the buffer has room or it beats the worst entry (an equal suffix is not kept twice)."""
        if any(torch.equal(ids, suffix_ids) for _, ids, _ in self.entries):
            return
        if len(self.entries) < self.size:
            self.entries.append((loss, suffix_ids.clone(), success))
        elif loss < self.entries[-1][0]:
            self.entries[-1] = (loss, suffix_ids.clone(), success)
        else:
            return
        self.entries.sort(key=lambda entry: entry[0])

    def best(self) -> tuple[float, torch.Tensor, bool]:
        return self.entries[0]


@dataclass
class SearchState:
    """A GCG run's history and buffer (either may be off), mirrored into `LoopState.extra["search"]` after
    every step so that the checkpoint carries them; a loop restored from a checkpoint rebuilds them."""

    history: SuffixHistory | None
    buffer: AttackBuffer | None
    loop: Any = None  # the LoopState these belong to

    @classmethod
    def start(cls, history: bool, buffer_size: int, loop: Any) -> SearchState:
        state = cls(SuffixHistory() if history else None, AttackBuffer(buffer_size) if buffer_size else None, loop)
        if state.history is not None:
            state.history.add(loop.suffix_ids[None])
        if state.buffer is not None:
            state.buffer.add(loop.loss, loop.suffix_ids, loop.success)
        return state

    def restore(self, loop: Any, device: torch.device) -> None:
        """Take the history and buffer from `loop`'s checkpointed copy when `loop` is not the one they follow."""
        if loop is self.loop:
            return
        saved = loop.extra.get("search", {})
        if self.history is not None:
            self.history = SuffixHistory(set(saved["history"].tolist()))
        if self.buffer is not None:
            self.buffer = AttackBuffer(self.buffer.size, [(float(loss), ids.to(device), bool(success))
                                                          for loss, ids, success in saved["buffer"]])
        self.loop = loop

    def save(self, loop: Any) -> None:
        saved: dict[str, Any] = {}
        if self.history is not None:
            saved["history"] = torch.tensor(sorted(self.history.seen), dtype=torch.long)
        if self.buffer is not None:
            saved["buffer"] = [(loss, ids.cpu(), success) for loss, ids, success in self.buffer.entries]
        loop.extra["search"] = saved
        self.loop = loop


def replacements(step: int, n_replace: int, halving: int) -> int:
    """Positions to change per candidate at `step` (0-based): n_replace, halved every `halving` steps, at
    least 1; `halving` 0 keeps n_replace throughout."""
    if halving <= 0:
        return n_replace
    return max(1, n_replace >> (step // halving))
