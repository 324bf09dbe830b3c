"""A prefix KV cache shared by a whole batch of candidates without copying it.

GCG scores hundreds of suffix candidates that share one long prefix (system prompt, question and
576 image tokens on LLaVA-1.5). Copying the prefix cache per candidate costs ~0.3 GB each on a 7B
model. `FrozenPrefixCache` is filled once with the prefix (batch 1); afterwards `update` returns the
prefix broadcast to the batch concatenated with the new keys/values, for this layer's attention
only, and stores nothing: memory stays at one prefix plus one layer's transient keys.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache


class FrozenPrefixCache(DynamicCache):
    """DynamicCache that, once frozen, serves its content to any batch size without growing."""

    frozen: bool = False

    def freeze(self) -> FrozenPrefixCache:
        self.frozen = True
        return self

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        if not self.frozen:
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)
        layer = self.layers[layer_idx]
        batch = key_states.shape[0]
        keys = layer.keys.expand(batch, -1, -1, -1)  # (B, H_kv, T_prefix, d), a view
        values = layer.values.expand(batch, -1, -1, -1)
        return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)
