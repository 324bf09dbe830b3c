"""White-box adapter for a decoder-only language model, text only (`--model text:ID_OR_PATH`, `text:embedded`),
and the text half every white-box adapter shares (LlavaWhiteBox adds the image to it).

    [prompt up to the slot] | [suffix] | [template tail] [target]
    ^---- prefix, cached once ----^

The slot is where the optimised suffix goes: after the question (one space between) by default, or where
the question holds `{optim_str}` (nanoGCG's marker). The prefix's keys and values are computed once and
serve every candidate of a step without a copy per candidate (`FrozenPrefixCache`); logits are computed only
at the target's positions, on a contiguous slice of the hidden states (a strided slice makes the LM head's
matmul several times slower on CPU), and the cross-entropy is taken on flattened logits.

A text-only model has no image: `image_size` is (1, 1), pixels are carried but never read, and the attacks
that perturb an image (`uses_image`) refuse it in one line.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from medattack.errors import ConfigError
from medattack.models.base import WHITEBOX_MODELS, AttackState, LossResult
from medattack.models.frozen_cache import FrozenPrefixCache
from medattack.models.loading import hub_errors, local_device, torch_dtype
from medattack.models.objectives import CROSS_ENTROPY, Objective

log = logging.getLogger(__name__)

SUFFIX_MARK = "\u2063MEDATTACK_SUFFIX\u2063"  # invisible separators around a word no template contains
OPTIM_MARK = "{optim_str}"  # where a question places the suffix itself (nanoGCG's marker)
EMBEDDED_TEXT_NAME = "smollm2-135m-instruct (text only, not a medical model)"
TINY_TEXT_NAME = "tiny-random-causal-lm (unit tests)"


@dataclass(frozen=True)
class TextSegments:
    """Token ids of a text prompt around the optimised slot."""

    before: torch.Tensor  # (n0,) long: the prompt up to the slot (BOS included when the tokenizer adds one)
    tail: torch.Tensor  # (n2,) long: the rest of the user turn and the assistant header


def place_suffix(question: str) -> str:
    """The user text with SUFFIX_MARK in the slot: at `{optim_str}` when the question holds it, else after it."""
    if OPTIM_MARK in question:
        return question.replace(OPTIM_MARK, SUFFIX_MARK, 1)
    return f"{question} {SUFFIX_MARK}"


class CausalLMWhiteBox:
    """The white-box core (models/base.py) for a decoder-only language model and its tokenizer.

    Args:
        decoder: the model's base transformer (hidden states out; `model.get_decoder()`).
        lm_head: its output projection (hidden -> vocabulary logits).
        embed: its input embedding.
        tokenizer: its tokenizer (its chat template renders the prompt when it has one).
        name: how runs and reports call this model.
        max_batch: candidates per forward pass at most (halved automatically on out-of-memory).
        stop_ids: token ids that end a generated answer (besides the tokenizer's EOS).
    """

    has_image: ClassVar[bool] = False
    image_size: tuple[int, int] = (1, 1)

    def __init__(self, decoder: Any, lm_head: Any, embed: Any, tokenizer: Any, *, name: str, max_batch: int = 512,
                 stop_ids: set[int] | None = None) -> None:
        self.decoder, self.lm_head, self.embed, self.tokenizer = decoder, lm_head, embed, tokenizer
        self.name = name
        self.max_batch = max_batch
        weight = embed.weight
        self.device, self.dtype = weight.device, weight.dtype
        # transformers renamed `past_key_values` to `cache` in the 5.2x series; accept both
        params = inspect.signature(decoder.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._allowed: torch.Tensor | None = None
        self._stop_ids = set(stop_ids or ()) | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None
                                                else set())
        for module in (decoder, lm_head, embed):
            for p in module.parameters():
                p.requires_grad_(False)

    # --- text -------------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def excluded_ids(self) -> set[int]:
        """Token ids a suffix never uses beyond the non-printable ones: the tokenizer's special tokens."""
        return set(self.tokenizer.all_special_ids)

    def allowed_tokens(self) -> torch.Tensor:
        """(V,) bool over the embedding rows: printable ASCII tokens that are not special."""
        if self._allowed is None:
            vocab = self.embed.weight.shape[0]
            allowed = torch.zeros(vocab, dtype=torch.bool)
            special = self.excluded_ids()
            for token_id in range(min(vocab, len(self.tokenizer))):
                if token_id in special:
                    continue
                text = self.tokenizer.decode([token_id])
                if text and text.isascii() and text.isprintable() and text.strip():
                    allowed[token_id] = True
            self._allowed = allowed.to(self.device)
        return self._allowed

    def _ids(self, text: str, first: bool = False) -> torch.Tensor:
        """(n,) token ids of a piece of the prompt; the first piece gets BOS when the tokenizer adds one."""
        ids = self.encode(text)
        bos = self.tokenizer.bos_token_id
        if first and getattr(self.tokenizer, "add_bos_token", False) and bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    def retokenizes(self, candidate_ids: torch.Tensor) -> torch.Tensor:
        """(B, n) -> (B,) bool: decoding then encoding each candidate gives the same ids back."""
        rows = candidate_ids.tolist()
        texts = self.tokenizer.batch_decode(rows, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        again = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return torch.tensor([a == r for a, r in zip(again, rows, strict=True)], device=candidate_ids.device)

    # --- the text prompt (LlavaWhiteBox renders its own, with the image) ----------------------------

    def render(self, question: str) -> str:
        """The full prompt text with SUFFIX_MARK in the slot: the tokenizer's chat template (one user turn,
        the assistant header after it), or "USER: ... ASSISTANT:" without one."""
        user_text = place_suffix(question)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": user_text}],
                                                      add_generation_prompt=True, tokenize=False)
        return f"USER: {user_text} ASSISTANT:"

    def segments(self, question: str) -> TextSegments:
        before, tail = self.render(question).split(SUFFIX_MARK)
        return TextSegments(self._ids(before, first=True), self._ids(tail))

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """A text-only model takes no image: (1, 3, 1, 1) zeros stand for it and are never read."""
        return torch.zeros((1, 3, *self.image_size), device=self.device)

    @torch.no_grad()
    def start(self, question: str, target: str, pixels: torch.Tensor | None = None) -> AttackState:
        segments = self.segments(question)
        target_ids = torch.tensor(self.encode(target), dtype=torch.long, device=self.device)
        pixels = self.preprocess(np.zeros((1, 1, 3), np.uint8)) if pixels is None else pixels
        state = AttackState(question=question, target=target, pixels=pixels.detach().to(self.device).float(),
                            target_ids=target_ids, extra={"segments": segments})
        cache = FrozenPrefixCache()
        self.decoder(inputs_embeds=self.embed(segments.before)[None], use_cache=True, **{self._cache_kw: cache})
        state.cache = cache.freeze()
        return state

    def set_pixels(self, state: AttackState, pixels: torch.Tensor, cache_from: AttackState | None = None) -> None:
        state.pixels = pixels.detach().float()  # carried, never read: the prefix cache does not change

    def pixel_grad(self, state: AttackState, suffix_ids: torch.Tensor,
                   pixels: torch.Tensor) -> tuple[LossResult, torch.Tensor]:
        raise ConfigError(f"{self.name} is a text-only model: it has no image to perturb; attack it with gcg.")

    @torch.no_grad()
    def generate(self, state: AttackState, suffix_ids: torch.Tensor, max_new_tokens: int = 64,
                 pixels: torch.Tensor | None = None) -> str:
        """Greedy continuation after prefix + suffix + tail (`pixels` ignored)."""
        segments: TextSegments = state.extra["segments"]
        ids = torch.cat([segments.before, suffix_ids.to(self.device), segments.tail])[None]
        return self._greedy(self.embed(ids), max_new_tokens)

    def _greedy(self, inputs: torch.Tensor, max_new_tokens: int) -> str:
        """Greedy continuation of one prompt's embeddings (1, L, D), stopping at a stop token."""
        from transformers import DynamicCache

        cache = DynamicCache()
        hidden = self.decoder(inputs_embeds=inputs, use_cache=True, **{self._cache_kw: cache}).last_hidden_state
        out: list[int] = []
        for _ in range(max_new_tokens):
            token = int(self.lm_head(hidden[:, -1]).argmax(-1))
            if token in self._stop_ids:
                break
            out.append(token)
            hidden = self.decoder(inputs_embeds=self.embed(torch.tensor([[token]], device=self.device)),
                                  use_cache=True, **{self._cache_kw: cache}).last_hidden_state
        return self.decode(out)

    def token_nll(self, text: str) -> torch.Tensor:
        """(n - 1,) float32 on the CPU: the negative log-likelihood (nats) of each token of `text` (as plain text,
        no chat template; BOS first when the tokenizer adds one) given the tokens before it."""
        return self.token_nlls([text])[0]

    @torch.no_grad()
    def token_nlls(self, texts: list[str], batch_size: int = 32) -> list[torch.Tensor]:
        """token_nll of each text, `batch_size` texts per forward pass. The texts are padded on the right: under
        causal attention a token never sees the padding after it, so the values equal the unbatched ones."""
        out: list[torch.Tensor] = []
        for start in range(0, len(texts), batch_size):
            rows = [self._ids(text, first=True) for text in texts[start:start + batch_size]]
            longest = max(len(r) for r in rows)
            if longest < 2:
                out.extend(torch.zeros(0) for _ in rows)
                continue
            ids = torch.stack([F.pad(r, (0, longest - len(r))) for r in rows])  # (B, L), right-padded with 0
            hidden = self.decoder(inputs_embeds=self.embed(ids), use_cache=False).last_hidden_state
            logits = self.lm_head(hidden[:, :-1].contiguous()).float()  # (B, L - 1, V)
            nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none").cpu()  # (B, L - 1)
            out.extend(nll[k, :max(0, len(r) - 1)] for k, r in enumerate(rows))
        return out

    # --- losses and gradients (shared with LlavaWhiteBox) -------------------------------------------

    def _target_logits(self, hidden: torch.Tensor, start: int, n_target: int) -> torch.Tensor:
        """Logits only where the target is predicted: (B, T, V) float32, from a contiguous slice of the
        hidden states (the LM head on a strided view is several times slower on CPU)."""
        return self.lm_head(hidden[:, start:start + n_target].contiguous()).float()

    def _score(self, logits: torch.Tensor, target_ids: torch.Tensor,
               objective: Objective = CROSS_ENTROPY) -> LossResult:
        """The state's target loss per candidate (mean cross-entropy unless the attack chose another) and
        whether the teacher-forced argmax equals the target, from logits (B, T, V)."""
        labels = target_ids.expand(logits.shape[0], -1)
        return LossResult(loss=objective(logits, labels), matches=(logits.argmax(-1) == labels).all(dim=1))

    def _suffix_forward(self, state: AttackState, suffix_embeds: torch.Tensor,
                        cache: FrozenPrefixCache | None = None) -> LossResult:
        """Suffix (B, n, D) + tail + target on the frozen prefix cache (`cache`: a longer one, holding the first
        suffix tokens too, whose remaining tokens `suffix_embeds` then are) -> per-candidate loss."""
        batch = suffix_embeds.shape[0]
        tail = self.embed(state.extra["segments"].tail)[None].expand(batch, -1, -1)
        target_in = self.embed(state.target_ids[:-1])[None].expand(batch, -1, -1)
        inputs = torch.cat([suffix_embeds.to(self.dtype), tail, target_in], dim=1)
        hidden = self.decoder(inputs_embeds=inputs, use_cache=True,
                              **{self._cache_kw: state.cache if cache is None else cache}).last_hidden_state
        start = suffix_embeds.shape[1] + tail.shape[1] - 1
        return self._score(self._target_logits(hidden, start, len(state.target_ids)), state.target_ids, state.objective)

    def _chunked(self, candidate_ids: torch.Tensor, forward: Any) -> LossResult:
        """`forward(chunk)` over chunks of at most max_batch candidates, halving it on out-of-memory."""
        results: list[LossResult] = []
        start = 0
        while start < candidate_ids.shape[0]:
            chunk = candidate_ids[start:start + self.max_batch]
            try:
                results.append(forward(chunk))
            except torch.OutOfMemoryError:
                if self.max_batch == 1:
                    raise
                self.max_batch = max(1, self.max_batch // 2)
                log.info("out of memory: candidate batch now %d", self.max_batch)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            start += chunk.shape[0]
        return LossResult(loss=torch.cat([r.loss for r in results]), matches=torch.cat([r.matches for r in results]))

    @torch.no_grad()
    def loss(self, state: AttackState, candidate_ids: torch.Tensor) -> LossResult:
        """Target loss of each candidate suffix, (B, n_suffix) -> (B,), in OOM-safe chunks."""
        return self._chunked(candidate_ids, lambda chunk: self._suffix_forward(state, self.embed(chunk)))

    @torch.no_grad()
    def loss_sharing(self, state: AttackState, candidate_ids: torch.Tensor, reference: torch.Tensor) -> LossResult:
        """`loss`, with the suffix tokens a candidate shares with `reference` (n,) before its first change
        computed once: one pass over `reference` records its keys and values, and the candidates whose first
        change is at position p run from p on, on the prefix cache extended by reference[:p]. A GCG step
        (each candidate changes one random position) then computes about half the suffix per candidate.
        Losses equal `loss`'s to float rounding (tests/test_text_models.py)."""
        n = reference.shape[0]
        differs = candidate_ids != reference[None]  # (B, n)
        first = torch.where(differs.any(dim=1), differs.int().argmax(dim=1), n)  # (B,) first changed position
        recorder = state.cache.recording(n)
        self.decoder(inputs_embeds=self.embed(reference)[None].to(self.dtype), use_cache=True,
                     **{self._cache_kw: recorder})
        loss = torch.empty(candidate_ids.shape[0], device=self.device)
        matches = torch.empty(candidate_ids.shape[0], dtype=torch.bool, device=self.device)
        for position, rows in _buckets(first, minimum=max(MIN_BUCKET, candidate_ids.shape[0] // MAX_BUCKETS)):
            cache = recorder.extended(position) if position else state.cache
            result = self._chunked(candidate_ids[rows, position:], lambda chunk, cache=cache: self._suffix_forward(
                state, self.embed(chunk), cache))
            loss[rows], matches[rows] = result.loss, result.matches
        return LossResult(loss=loss, matches=matches)

    def token_grad(self, state: AttackState, suffix_ids: torch.Tensor) -> torch.Tensor:
        """d loss / d one-hot(suffix): (n_suffix, V) float32."""
        weight = self.embed.weight  # (V, D)
        one_hot = F.one_hot(suffix_ids, weight.shape[0]).to(weight.dtype).requires_grad_(True)
        with torch.enable_grad():
            result = self._suffix_forward(state, (one_hot @ weight)[None])
            result.loss.sum().backward()
        return one_hot.grad.float()


MIN_BUCKET = 8  # candidates per shared-prefix pass at least (smaller passes use the CPU's matmuls poorly)
MAX_BUCKETS = 16  # passes per candidate batch at most (larger buckets when there are more candidates)


def _buckets(first: torch.Tensor, minimum: int) -> list[tuple[int, torch.Tensor]]:
    """Candidates grouped by their first changed position (B,) into passes of at least `minimum` candidates:
    (the smallest first position of the pass, the rows), in position order; a pass starts at its smallest."""
    order = torch.argsort(first, stable=True)
    buckets: list[tuple[int, torch.Tensor]] = []
    start = 0
    positions = first[order].tolist()
    while start < len(order):
        end = min(start + minimum, len(order))
        while end < len(order) and positions[end] == positions[end - 1]:  # a position is never split
            end += 1
        if len(order) - end < minimum // 2:  # a small remainder joins this pass
            end = len(order)
        buckets.append((positions[start], order[start:end]))
        start = end
    return buckets


def from_causal_lm(model: Any, tokenizer: Any, name: str, max_batch: int = 512) -> CausalLMWhiteBox:
    """The adapter around a loaded transformers causal LM (eval mode, on its device, in its dtype)."""
    stop = getattr(model.generation_config, "eos_token_id", None)
    stop_ids = {stop} if isinstance(stop, int) else set(stop or ())
    return CausalLMWhiteBox(model.get_decoder(), model.get_output_embeddings(), model.get_input_embeddings(),
                            tokenizer, name=name, max_batch=max_batch, stop_ids=stop_ids)


@WHITEBOX_MODELS.register("text", modality="text", access="white-box")
def load_text(model_id: str, *, dtype: str = "auto", device: str | None = None, max_batch: int = 512,
              trust_remote_code: bool = False, seed: int = 0) -> CausalLMWhiteBox:
    """A text-only causal LM: `text:embedded` (SmolLM2-135M-Instruct, offline), `text:tiny` (a tiny random
    model for tests), or any transformers causal LM by hub id or local path."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from medattack.models.embedded import smollm2_dir

    hf_logging.disable_progress_bar()

    device = local_device(device)
    if model_id == "tiny":
        from transformers import LlamaConfig, LlamaForCausalLM

        tokenizer = AutoTokenizer.from_pretrained(smollm2_dir())
        torch.manual_seed(seed)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
        return from_causal_lm(LlamaForCausalLM(config).to(device).eval(), tokenizer, TINY_TEXT_NAME, max_batch)
    source = smollm2_dir() if model_id == "embedded" else model_id
    with hub_errors(str(source)):
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype(dtype, device),
                                                     attn_implementation="sdpa",
                                                     trust_remote_code=trust_remote_code).to(device).eval()
    return from_causal_lm(model, tokenizer, EMBEDDED_TEXT_NAME if model_id == "embedded" else model_id, max_batch)
