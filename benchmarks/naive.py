"""The original MCM code's pattern, rebuilt on our adapter's model for a same-process baseline.

Every GCG candidate is a full forward through `LlavaForConditionalGeneration` with the image
re-encoded and full-vocabulary logits at every position; a 30-token greedy generation follows every
sub-step (each GCG step and each PGD step). Nothing is cached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medattack.attacks.gcg import GCGConfig, filter_candidates, sample_candidates
from medattack.attacks.pgd import PGDConfig, project
from medattack.models.llava import LlavaWhiteBox

GENERATION_TOKENS = 30


def _ids(model: LlavaWhiteBox, state, suffix_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return model.full_input_ids(state, suffix_ids)


def full_loss(model: LlavaWhiteBox, state, suffix_ids: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    ids, labels = _ids(model, state, suffix_ids)
    logits = model.model(input_ids=ids, pixel_values=model.normalise(pixels)).logits  # (1, L, V) everywhere
    return F.cross_entropy(logits[0, :-1].float(), labels[0, 1:], ignore_index=-100)


def generate(model: LlavaWhiteBox, state, suffix_ids: torch.Tensor, pixels: torch.Tensor) -> None:
    ids, _ = _ids(model, state, suffix_ids)
    prompt = ids[:, : ids.shape[1] - len(state.target_ids)]
    model.model.generate(input_ids=prompt, pixel_values=model.normalise(pixels), max_new_tokens=GENERATION_TOKENS,
                         min_new_tokens=GENERATION_TOKENS, do_sample=False)


def token_grad(model: LlavaWhiteBox, state, suffix_ids: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    ids, labels = _ids(model, state, suffix_ids)
    weight = model.embed.weight
    start = ids.shape[1] - len(state.target_ids) - len(state.extra["segments"].tail) - len(suffix_ids)
    one_hot = F.one_hot(suffix_ids, weight.shape[0]).to(weight.dtype).requires_grad_(True)
    with torch.enable_grad():
        # the whole sequence, image re-encoded, with the suffix rows replaced by one-hot @ embeddings
        merged = _merged_embeds(model, ids, pixels)
        merged = torch.cat([merged[:, :start], (one_hot @ weight)[None].to(merged.dtype),
                            merged[:, start + len(suffix_ids):]], dim=1)
        logits = model.model(inputs_embeds=merged).logits
        loss = F.cross_entropy(logits[0, :-1].float(), labels[0, 1:], ignore_index=-100)
        loss.backward()
    return one_hot.grad


def _merged_embeds(model: LlavaWhiteBox, ids: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    embeds = model.embed(ids)
    features = model.image_features(pixels)[0]
    positions = (ids[0] == model.image_token_id).nonzero().flatten()
    embeds = embeds.clone()
    embeds[0, positions] = features.to(embeds.dtype)
    return embeds


def gcg_step(model: LlavaWhiteBox, state, suffix_ids: torch.Tensor, pixels: torch.Tensor, config: GCGConfig,
             generator: torch.Generator) -> torch.Tensor:
    grad = token_grad(model, state, suffix_ids, pixels)
    candidates = sample_candidates(suffix_ids, grad, model.allowed_tokens(), config.search_width, config.topk,
                                   config.n_replace, generator)
    candidates = filter_candidates(model, candidates, suffix_ids)
    with torch.no_grad():
        losses = torch.stack([full_loss(model, state, c, pixels) for c in candidates])
        best = candidates[int(losses.argmin())]
        generate(model, state, best, pixels)
    return best


def pgd_step(model: LlavaWhiteBox, state, suffix_ids: torch.Tensor, pixels: torch.Tensor, clean: torch.Tensor,
             config: PGDConfig) -> torch.Tensor:
    pixels = pixels.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        full_loss(model, state, suffix_ids, pixels).backward()
    stepped = project(pixels.detach() - config.step_size * pixels.grad.sign(), clean, config.epsilon, "linf", None)
    with torch.no_grad():
        generate(model, state, suffix_ids, stepped)
    return stepped


def mcm_round(model: LlavaWhiteBox, state, suffix_ids: torch.Tensor, pixels: torch.Tensor, clean: torch.Tensor,
              gcg: GCGConfig, pgd: PGDConfig, k: int, generator: torch.Generator) -> None:
    gcg_step(model, state, suffix_ids, pixels, gcg, generator)
    for _ in range(k):
        pixels = pgd_step(model, state, suffix_ids, pixels, clean, pgd)
