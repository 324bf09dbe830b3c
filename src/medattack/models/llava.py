"""White-box adapter for transformers LLaVA-family models (`LlavaForConditionalGeneration`).

Covers LLaVA-1.5 (`llava-hf/llava-1.5-7b-hf`), LLaVA-Med v1.5 in HF format, and the embedded and
tiny targets built in `embedded.py`. The adapter assembles input embeddings itself:

    [before image] [image features] [question + " "] | [suffix] | [template tail] [target]
    ^---------------------- prefix, cached once per image ------^

so that (a) the prefix is run once per image and its keys/values serve every GCG candidate without
a stored copy per candidate (`FrozenPrefixCache`), (b) logits are computed only at target positions, and (c)
pixels enter as (B, 3, H, W) in [0, 1] with normalisation inside the adapter, so PGD's epsilon is in
pixel units.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from medattack.errors import ConfigError
from medattack.models.base import AttackState, LossResult, Probe
from medattack.models.causal_lm import SUFFIX_MARK, CausalLMWhiteBox, place_suffix
from medattack.models.frozen_cache import FrozenPrefixCache
from medattack.models.llava_generation import LlavaGeneration

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Segments:
    """Token ids of the prompt around the image and the optimised slot."""

    before_image: torch.Tensor  # (n0,) long
    after_image: torch.Tensor  # (n1,) long: the question up to the slot
    tail: torch.Tensor  # (n2,) long: end of the user turn and the assistant header


PromptLayout = Literal["chat-template", "llava-med"]
PROMPT_LAYOUTS: tuple[str, ...] = ("chat-template", "llava-med")
# the system prompt of LLaVA-Med's conversation template (the Vicuna v0 one, turns separated by "###")
LLAVA_MED_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                    "helpful, detailed, and polite answers to the human's questions.")


class LlavaWhiteBox(LlavaGeneration, CausalLMWhiteBox):
    """The white-box protocol (models/base.py: the core and every capability) for a
    `LlavaForConditionalGeneration` and its tokenizer: the text core of `CausalLMWhiteBox` (the suffix
    forward on the frozen prefix cache, candidate losses, token gradients) with the image added.

    Args:
        model: the LLaVA model (eval mode, on its device, in its dtype).
        tokenizer: its tokenizer.
        name: how runs and reports call this target.
        image_size: (H, W) the vision tower takes.
        image_mean, image_std: per-channel normalisation applied inside the adapter.
        chat: function question -> prompt text with "<image>" where the image goes, or None to use the
            processor's / tokenizer's chat template.
        image_mark: the placeholder text of the image in the rendered prompt.
        max_batch: candidates per forward pass at most (halved automatically on out-of-memory).
        prompt_layout: `chat-template` (the processor's or tokenizer's template: image, then question,
            then the suffix) or `llava-med` (LLaVA-Med's `###Human: ... ###Assistant:` conversation with
            its system prompt, and the order question, image, suffix, as the paper attacked it; a replayed
            question that carries its suffix is then placed, suffix included, before the image).
    """

    has_image: ClassVar[bool] = True

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        image_size: tuple[int, int],
        image_mean: tuple[float, float, float] = CLIP_MEAN,
        image_std: tuple[float, float, float] = CLIP_STD,
        processor: Any = None,
        image_mark: str = "<image>",
        max_batch: int = 512,
        prompt_layout: PromptLayout = "chat-template",
    ) -> None:
        inner = model.model
        stop = getattr(model.generation_config, "eos_token_id", None)
        super().__init__(inner.language_model, model.lm_head, model.get_input_embeddings(), tokenizer, name=name,
                         max_batch=max_batch, stop_ids={stop} if isinstance(stop, int) else set(stop or ()))
        self.model = model
        self.processor = processor
        self.image_size = image_size
        self.image_mark = image_mark
        if prompt_layout not in PROMPT_LAYOUTS:
            raise ConfigError(f"prompt_layout {prompt_layout!r}: use {' or '.join(PROMPT_LAYOUTS)}.")
        self.prompt_layout = prompt_layout
        self.mean = torch.tensor(image_mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(image_std, device=self.device).view(1, 3, 1, 1)
        self.vision_tower = inner.vision_tower
        self.projector = inner.multi_modal_projector
        self.feature_layer = model.config.vision_feature_layer
        self.select_strategy = model.config.vision_feature_select_strategy
        self.image_token_id = getattr(model.config, "image_token_id", None) or model.config.image_token_index
        for p in model.parameters():
            p.requires_grad_(False)

    def excluded_ids(self) -> set[int]:
        """Special tokens and the image placeholder never go into a suffix."""
        return super().excluded_ids() | {self.image_token_id}

    def render(self, question: str) -> str:
        """The full prompt text with the image placeholder and the suffix mark."""
        if self.prompt_layout == "llava-med":
            return f"{LLAVA_MED_SYSTEM}###Human: {question}\n{self.image_mark}{SUFFIX_MARK}###Assistant:"
        user_text = place_suffix(question)
        if self.processor is not None and getattr(self.processor, "chat_template", None):
            conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user_text}]}]
            return self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        if getattr(self.tokenizer, "chat_template", None):
            conversation = [{"role": "user", "content": f"{self.image_mark}\n{user_text}"}]
            return self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        return f"USER: {self.image_mark}\n{user_text} ASSISTANT:"

    def segments(self, question: str) -> Segments:
        before_slot, tail = self.render(question).split(SUFFIX_MARK)
        before_image, after_image = before_slot.split(self.image_mark, 1)
        return Segments(self._ids(before_image, first=True), self._ids(after_image), self._ids(tail))

    # --- image ------------------------------------------------------------------------------------

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """(H0, W0, 3) uint8 -> (1, 3, H, W) float32 in [0, 1]: shortest side resized, centre crop."""
        height, width = self.image_size
        pil = Image.fromarray(image, mode="RGB")
        scale = max(height / pil.height, width / pil.width)
        resized = pil.resize((max(width, round(pil.width * scale)), max(height, round(pil.height * scale))),
                             Image.Resampling.BICUBIC)
        left, top = (resized.width - width) // 2, (resized.height - height) // 2
        crop = np.asarray(resized.crop((left, top, left + width, top + height)), dtype=np.float32) / 255.0
        return torch.from_numpy(crop).permute(2, 0, 1).unsqueeze(0).to(self.device)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, P, D) projected image features."""
        normalised = ((pixels - self.mean) / self.std).to(self.dtype)
        hidden = self.vision_tower(normalised, output_hidden_states=True).hidden_states
        layers = self.feature_layer if isinstance(self.feature_layer, list | tuple) else [self.feature_layer]
        features = torch.cat([hidden[i] for i in layers], dim=-1)  # (B, 1 + P, Dv)
        if self.select_strategy == "default":
            features = features[:, 1:]
        return self.projector(features)

    # --- state and caches -------------------------------------------------------------------------

    def _prefix_embeds(self, segments: Segments, pixels: torch.Tensor) -> torch.Tensor:
        """(1, n_prefix, D): before-image tokens, image features, question tokens."""
        return torch.cat([
            self.embed(segments.before_image)[None],
            self.image_features(pixels),
            self.embed(segments.after_image)[None],
        ], dim=1)

    @torch.no_grad()
    def _fill_cache(self, state: AttackState) -> None:
        prefix = self._prefix_embeds(state.extra["segments"], state.pixels)
        cache = FrozenPrefixCache()
        self.decoder(inputs_embeds=prefix, use_cache=True, **{self._cache_kw: cache})
        state.cache = cache.freeze()
        state.extra["prefix_len"] = prefix.shape[1]

    @torch.no_grad()
    def _before_image_cache(self, segments: Segments) -> FrozenPrefixCache:
        """Keys/values of the tokens before the image (system prompt, user header): the same for every
        image, so the full-sequence passes of PGD start after them."""
        cache = FrozenPrefixCache()
        self.decoder(inputs_embeds=self.embed(segments.before_image)[None], use_cache=True,
                     **{self._cache_kw: cache})
        return cache.freeze()

    def start(self, question: str, target: str, pixels: torch.Tensor) -> AttackState:
        segments = self.segments(question)
        target_ids = torch.tensor(self.encode(target), dtype=torch.long, device=self.device)
        state = AttackState(question=question, target=target, pixels=pixels.detach().to(self.device).float(),
                            target_ids=target_ids, extra={"segments": segments,
                                                          "before_image": self._before_image_cache(segments)})
        self._fill_cache(state)
        return state

    def set_pixels(self, state: AttackState, pixels: torch.Tensor, cache_from: AttackState | None = None) -> None:
        """Change the state's image; reuse `cache_from`'s prefix cache when it was built for these pixels."""
        state.pixels = pixels.detach().float()
        if cache_from is not None:
            state.cache, state.extra["prefix_len"] = cache_from.cache, cache_from.extra["prefix_len"]
        else:
            self._fill_cache(state)

    # --- losses and gradients ---------------------------------------------------------------------

    def pixel_grad(
        self, state: AttackState, suffix_ids: torch.Tensor, pixels: torch.Tensor
    ) -> tuple[LossResult, torch.Tensor]:
        """Loss with these pixels, and d loss / d pixels (1, 3, H, W), through the vision tower."""
        result, _, grad = self._full_backward(state, suffix_ids, pixels, token_grad=False)
        return result, grad

    def joint_grad(
        self, state: AttackState, suffix_ids: torch.Tensor, pixels: torch.Tensor
    ) -> tuple[LossResult, torch.Tensor, torch.Tensor]:
        """One forward + backward giving both d loss / d one-hot(suffix) (n, V) and d loss / d pixels."""
        result, token, pixel = self._full_backward(state, suffix_ids, pixels, token_grad=True)
        assert token is not None
        return result, token, pixel

    def _full_backward(
        self, state: AttackState, suffix_ids: torch.Tensor, pixels: torch.Tensor, token_grad: bool
    ) -> tuple[LossResult, torch.Tensor | None, torch.Tensor]:
        result, _, backward = self._graph_forward(state, suffix_ids, pixels, token_grad, record_prefix=False)
        token, pixel = backward()
        return result, token, pixel

    def _graph_forward(
        self, state: AttackState, suffix_ids: torch.Tensor, pixels: torch.Tensor, token_grad: bool,
        record_prefix: bool,
    ) -> tuple[LossResult, FrozenPrefixCache | None, Callable[[], tuple[torch.Tensor | None, torch.Tensor]]]:
        """The full-sequence forward with its graph; returns the detached loss, the prefix cache for these
        pixels when recorded, and the backward pass giving (token gradient or None, pixel gradient)."""
        pixels = pixels.detach().clone().requires_grad_(True)
        weight = self.embed.weight  # (V, D)
        one_hot = None
        with torch.enable_grad():
            if token_grad:
                one_hot = F.one_hot(suffix_ids, weight.shape[0]).to(weight.dtype).requires_grad_(True)
                suffix_embeds = (one_hot @ weight)[None]
            else:
                suffix_embeds = self.embed(suffix_ids)[None]
            result, prefix = self._full_forward(state, suffix_embeds, pixels, record_prefix)

        def backward() -> tuple[torch.Tensor | None, torch.Tensor]:
            with torch.enable_grad():
                result.loss.sum().backward()
            token = one_hot.grad.float() if one_hot is not None else None
            return token, pixels.grad.detach()

        return LossResult(result.loss.detach(), result.matches), prefix, backward

    def probe(self, state: AttackState, suffix_ids: torch.Tensor, pixels: torch.Tensor,
              keep_graph: bool = False) -> Probe:
        """One full-sequence pass at (suffix, pixels) that also records the prefix's keys/values, so the
        new state costs no prefix pass of its own; with `keep_graph`, `grads()` is one backward away."""
        backward = None
        if keep_graph:
            result, prefix, backward = self._graph_forward(state, suffix_ids, pixels, token_grad=True,
                                                           record_prefix=True)
        else:
            with torch.no_grad():
                result, prefix = self._full_forward(state, self.embed(suffix_ids)[None], pixels, record_prefix=True)
        assert prefix is not None
        other = AttackState(question=state.question, target=state.target, pixels=pixels.detach().float(),
                            target_ids=state.target_ids, cache=prefix, extra=dict(state.extra),
                            objective=state.objective)
        other.extra["prefix_len"] = prefix.get_seq_length()
        return Probe(other, suffix_ids.detach().clone(), result, backward)

    @torch.no_grad()
    def loss_with_pixels(self, state: AttackState, suffix_ids: torch.Tensor, pixels: torch.Tensor) -> LossResult:
        """Loss of one suffix with other pixels than the cached ones (full forward, cache untouched)."""
        return self._full_forward(state, self.embed(suffix_ids)[None], pixels)[0]

    def _full_forward(
        self, state: AttackState, suffix_embeds: torch.Tensor, pixels: torch.Tensor, record_prefix: bool = False,
    ) -> tuple[LossResult, FrozenPrefixCache | None]:
        """The sequence from the image on, without the prefix cache, so gradients can reach the pixels
        (the tokens before the image, which no pixel changes, come from their own frozen cache).
        With `record_prefix`, the keys/values of the image and question positions are kept and returned
        as the prefix cache for these pixels (detached).

        suffix_embeds: (1, n, D); pixels: (1, 3, H, W) in [0, 1].
        """
        segments: Segments = state.extra["segments"]
        features = self.image_features(pixels)  # (1, P, D)
        inputs = torch.cat([  # the tokens before the image come from their cache
            features,
            self.embed(segments.after_image)[None],
            suffix_embeds,
            self.embed(segments.tail)[None],
            self.embed(state.target_ids[:-1])[None],
        ], dim=1)
        cache: FrozenPrefixCache = state.extra["before_image"]
        if record_prefix:
            cache = cache.recording(features.shape[1] + len(segments.after_image))
        hidden = self.decoder(inputs_embeds=inputs, use_cache=True, **{self._cache_kw: cache}).last_hidden_state
        start = inputs.shape[1] - len(state.target_ids)
        result = self._score(self._target_logits(hidden, start, len(state.target_ids)), state.target_ids,
                             state.objective)
        return result, cache.extended() if record_prefix else None

    # --- generation -------------------------------------------------------------------------------

    def full_input_ids(self, state: AttackState, suffix_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, L) input ids with the image token repeated, and (1, L) labels (-100 except the target),
        for checking the adapter against the model's own forward."""
        segments: Segments = state.extra["segments"]
        n_image = self.image_features(state.pixels).shape[1]
        image = torch.full((n_image,), self.image_token_id, dtype=torch.long, device=self.device)
        ids = torch.cat([segments.before_image, image, segments.after_image, suffix_ids, segments.tail,
                         state.target_ids])
        labels = torch.full_like(ids, -100)
        labels[-len(state.target_ids):] = state.target_ids
        return ids[None], labels[None]

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        return ((pixels - self.mean) / self.std).to(self.dtype)
