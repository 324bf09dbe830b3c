"""A prefix KV cache shared by a whole batch of candidates without copying it.

GCG scores hundreds of suffix candidates that share one long prefix (system prompt, question and
576 image tokens on LLaVA-1.5). Copying the prefix cache per candidate costs ~0.3 GB each on a 7B
model. `FrozenPrefixCache` is filled once with the prefix (batch 1); afterwards `update` returns the
prefix broadcast to the batch concatenated with the new keys/values, for this layer's attention
only, and stores nothing: memory stays at one prefix plus one layer's transient keys.

A pass over the prefix's continuation can also keep the first new positions' keys/values
(`recording`), so that the longer prefix is had from that pass instead of a pass of its own.
"""

from __future__ import annotations

import copy

import torch
from transformers import DynamicCache


class FrozenPrefixCache(DynamicCache):
    """DynamicCache that, once frozen, serves its content to any batch size without growing."""

    frozen: bool = False
    _record: int = 0  # new positions whose keys/values `update` keeps (a recording copy only)
    _recorded: dict[int, tuple[torch.Tensor, torch.Tensor]]  # layer -> (keys, values), when recording

    def freeze(self) -> FrozenPrefixCache:
        self.frozen = True
        return self

    def recording(self, n_positions: int) -> FrozenPrefixCache:
        """A copy serving the same frozen prefix that also keeps the keys/values of the first
        `n_positions` new positions of each layer, detached; `extended()` then makes them a cache."""
        if not self.frozen:
            raise ValueError("only a frozen cache can record")
        recorder = copy.copy(self)  # shares the frozen layers, which `update` never changes
        recorder._record, recorder._recorded = n_positions, {}
        return recorder

    def extended(self, n_positions: int | None = None) -> FrozenPrefixCache:
        """A new frozen cache: this prefix followed by the recorded positions (the first `n_positions` of them)."""
        if not self._record or len(self._recorded) != len(self.layers):
            raise ValueError("record a full pass first")
        cache = FrozenPrefixCache()
        for index, layer in enumerate(self.layers):
            keys, values = (part[:, :, :n_positions] for part in self._recorded[index])
            cache.update(torch.cat([layer.keys, keys], dim=-2), torch.cat([layer.values, values], dim=-2), index)
        return cache.freeze()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        if not self.frozen:
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)
        layer = self.layers[layer_idx]
        if self._record:
            self._recorded[layer_idx] = (key_states[:, :, : self._record].detach(),
                                         value_states[:, :, : self._record].detach())
        batch = key_states.shape[0]
        keys = layer.keys.expand(batch, -1, -1, -1)  # (B, H_kv, T_prefix, d), a view
        values = layer.values.expand(batch, -1, -1, -1)
        return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)
