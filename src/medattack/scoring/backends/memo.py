"""Encodings kept in memory for reuse across metrics, batches and targets of one process.

A run's scoring job encodes the same texts many times over: TTO and TIO both read the response, TTO
and TII the question, and every target of a run asks the same questions about the same images. The
memo holds each encoding once (key -> encoding) and drops the least recently used ones when the
total size passes its budget. A budget of 0 keeps nothing; keys repeated inside one call are still
encoded once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

MIB = 1 << 20


def nbytes(value: object) -> int:
    """Bytes held by an encoding: a numpy array, a torch tensor, or a tuple of them."""
    if isinstance(value, tuple):
        return sum(nbytes(v) for v in value)
    size = getattr(value, "nbytes", None)
    if not isinstance(size, int):
        raise TypeError(f"cannot size an encoding of type {type(value).__name__}")
    return size


class EncodingMemo(Generic[K, V]):
    """key -> encoding, least recently used dropped beyond `max_mib`."""

    def __init__(self, max_mib: float) -> None:
        self.max_bytes = int(max_mib * MIB)
        self._held: OrderedDict[K, V] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._held)

    def encode(self, keys: Sequence[K], compute: Callable[[list[K]], Sequence[V]]) -> list[V]:
        """The encodings of `keys`, in order. `compute` is called at most once, with the distinct
        keys the memo does not hold, and must return one encoding per key."""
        found: dict[K, V] = {}
        missing: list[K] = []
        for key in dict.fromkeys(keys):
            if key in self._held:
                self._held.move_to_end(key)
                found[key] = self._held[key]
            else:
                missing.append(key)
        self.hits += len(found)
        self.misses += len(missing)
        if missing:
            fresh = list(compute(missing))
            if len(fresh) != len(missing):
                raise ValueError(f"compute returned {len(fresh)} encodings for {len(missing)} keys")
            found.update(zip(missing, fresh, strict=True))
            for key, value in zip(missing, fresh, strict=True):
                self._keep(key, value)
        return [found[key] for key in keys]

    def _keep(self, key: K, value: V) -> None:
        size = nbytes(value)
        if size > self.max_bytes:
            return
        self._held[key] = value
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, dropped = self._held.popitem(last=False)
            self._bytes -= nbytes(dropped)
