"""Generation for the LLaVA adapter: one greedy answer on an attack's state, or many replayed queries
in one left-padded batch, greedy or sampled per row (the `BatchGeneration` capability). Mixed into
`LlavaWhiteBox`, whose embeddings, decoder, image features and chat template it uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from medattack.models.base import AttackState
from medattack.models.causal_lm import SUFFIX_MARK

if TYPE_CHECKING:
    from medattack.models.llava import Segments

Sampling = tuple[float, float, int]  # (temperature, top_p, seed) of one row; temperature 0 = greedy


class LlavaGeneration:
    """Generation methods of `LlavaWhiteBox` (which provides what is declared below)."""

    if TYPE_CHECKING:
        device: torch.device
        dtype: torch.dtype
        decoder: Any
        lm_head: Any
        embed: Any
        image_mark: str
        _cache_kw: str
        _stop_ids: set[int]

        def decode(self, ids: list[int] | torch.Tensor) -> str: ...
        def render(self, question: str) -> str: ...
        def image_features(self, pixels: torch.Tensor) -> torch.Tensor: ...
        def _ids(self, text: str, first: bool = False) -> torch.Tensor: ...
        def _prefix_embeds(self, segments: Segments, pixels: torch.Tensor) -> torch.Tensor: ...
        def _greedy(self, inputs: torch.Tensor, max_new_tokens: int) -> str: ...

    @torch.no_grad()
    def generate(self, state: AttackState, suffix_ids: torch.Tensor, max_new_tokens: int = 64,
                 pixels: torch.Tensor | None = None) -> str:
        """Greedy continuation after prefix + suffix + tail (with `pixels`, or the state's)."""
        segments: Segments = state.extra["segments"]
        inputs = torch.cat([
            self._prefix_embeds(segments, state.pixels if pixels is None else pixels.to(self.device)),
            self.embed(suffix_ids)[None],
            self.embed(segments.tail)[None],
        ], dim=1)
        return self._greedy(inputs, max_new_tokens)

    @torch.no_grad()
    def generate_batch(self, texts: list[str], pixels: torch.Tensor, max_new_tokens: int | list[int] = 64,
                       sampling: Sequence[Sampling] | None = None) -> list[str]:
        """Answers to B user texts about B images, batched with left padding: greedy, or sampled per row.

        texts: B user messages (question, plus any suffix); pixels: (B, 3, H, W) in [0, 1];
        max_new_tokens: one limit for all, or one per text; sampling: per row (temperature, top_p, seed),
        temperature 0 = greedy (None: greedy for all).
        """
        from transformers import DynamicCache

        features = self.image_features(pixels.to(self.device).float())  # (B, P, D)
        rows = []
        for text, image in zip(texts, features, strict=True):
            before, after = self.render(text).replace(" " + SUFFIX_MARK, "", 1).replace(SUFFIX_MARK, "", 1).split(
                self.image_mark, 1)
            rows.append(torch.cat([self.embed(self._ids(before, first=True)), image, self.embed(self._ids(after))]))
        batch, longest = len(rows), max(len(r) for r in rows)
        limits = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * batch
        inputs = torch.zeros(batch, longest, rows[0].shape[-1], dtype=self.dtype, device=self.device)
        mask = torch.zeros(batch, longest, dtype=torch.long, device=self.device)
        for i, row in enumerate(rows):
            inputs[i, longest - len(row):] = row
            mask[i, longest - len(row):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        hidden = self.decoder(inputs_embeds=inputs, attention_mask=mask, position_ids=positions, use_cache=True,
                              **{self._cache_kw: cache}).last_hidden_state
        stop = torch.tensor(sorted(self._stop_ids) or [-1], device=self.device)
        done = torch.tensor([limit <= 0 for limit in limits], device=self.device)
        out: list[list[int]] = [[] for _ in range(batch)]
        generators = sampling_generators(sampling, self.device)
        for step in range(max(limits)):
            logits = self.lm_head(hidden[:, -1])  # (B, V)
            tokens = logits.argmax(-1)  # (B,)
            if generators:
                tokens = sample_tokens(logits, tokens, sampling or [], generators)
            done |= torch.isin(tokens, stop) | torch.tensor([step >= limit for limit in limits], device=self.device)
            if bool(done.all()):
                break
            for i in (~done).nonzero().flatten().tolist():
                out[i].append(int(tokens[i]))
            mask = torch.cat([mask, torch.ones(batch, 1, dtype=mask.dtype, device=self.device)], dim=1)
            positions = positions[:, -1:] + 1
            hidden = self.decoder(inputs_embeds=self.embed(tokens[:, None]), attention_mask=mask,
                                  position_ids=positions, use_cache=True,
                                  **{self._cache_kw: cache}).last_hidden_state
        return [self.decode(ids) for ids in out]


def sampling_generators(sampling: Sequence[Sampling] | None, device: torch.device) -> dict[int, torch.Generator]:
    """One seeded generator per sampled row (temperature > 0): the same seed gives the same answer."""
    generators = {}
    for row, (temperature, _, seed) in enumerate(sampling or []):
        if temperature > 0:
            generators[row] = torch.Generator(device=device)
            generators[row].manual_seed(int(seed))
    return generators


def sample_tokens(logits: torch.Tensor, greedy: torch.Tensor, sampling: Sequence[Sampling],
                  generators: dict[int, torch.Generator]) -> torch.Tensor:
    """(B, V) logits -> (B,) tokens: rows with a generator sampled at their temperature from their top-p
    nucleus (the smallest set of tokens whose probability reaches top_p), the others greedy."""
    tokens = greedy.clone()
    for row, generator in generators.items():
        temperature, top_p, _ = sampling[row]
        probs = torch.softmax(logits[row].float() / temperature, dim=-1)
        ordered, order = probs.sort(descending=True)
        keep = ordered.cumsum(0) - ordered < top_p  # tokens before the nucleus is full, and the one that fills it
        nucleus = torch.zeros_like(probs).scatter(0, order[keep], ordered[keep])
        tokens[row] = order.new_tensor(int(torch.multinomial(nucleus, 1, generator=generator)))
    return tokens
