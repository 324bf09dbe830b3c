"""Black-box targets: anything that answers a question about an image.

A target takes a batch of `Query` (text + image) and returns one answer per query, or the error
that query met (so one failing request never stops a batch). Three kinds are registered:

    llava   a LLaVA-family model through the white-box adapter (embedded, tiny, hub id / path);
            batched greedy generation on the adapter's own embeddings (models/llava.py)
    hf      any transformers image-text-to-text model with its processor (MedGemma, Qwen2.5-VL,
            SmolVLM, the LLaVA family...); `trust_remote_code` only when the user opts in; with
            `auto_class: causal-lm` a remote-code model that maps only AutoModelForCausalLM (CheXagent),
            prompted through `prompt_template` when it has no chat template
    api     an OpenAI-compatible chat endpoint with image input (vLLM, `medattack serve`, GPT-4o,
            Gemini's OpenAI-compatible endpoint): retries, rate limit, concurrency and a request
            cache come from api.APIClient; the key stays in the environment

    python  any model through a factory of your own (`python:FILE_OR_MODULE:FACTORY`; models/python_target.py):
            RadFM, Med-Flamingo, XrayGLM and other models with their own code (recipes in examples/targets/)

A target spec on the command line is `KIND:MODEL` (`hf:google/medgemma-4b-it`, `api:gpt-4o`), or a
bare name: `embedded` and `tiny` are the LLaVA adapters of those names, anything else a LLaVA model.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
import torch

from medattack.config import option
from medattack.data.image_io import encode_png
from medattack.errors import ProviderFilterError, TargetError
from medattack.models.base import require_device
from medattack.models.capabilities import generate_batch
from medattack.models.loading import hub_errors, local_device
from medattack.openai_client import APIClient, APIConfig, APIError, chat_text, filtered
from medattack.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Query:
    """One question to a target."""

    query_id: str
    text: str  # the whole user text: question, plus an adversarial suffix when replaying an attack
    image: np.ndarray | None  # (H, W, 3) uint8, or None for a text-only query
    exact_pixels: torch.Tensor | None = None  # (1, 3, H, W) in [0, 1]: an attack's exact float image,
    # used by a local model whose input resolution it matches (others take `image`, the PNG's pixels)
    max_new_tokens: int | None = None  # this query's answer length limit (default: the target's)
    temperature: float | None = None  # this query's sampling (default: the target's); 0 = greedy
    top_p: float | None = None  # nucleus of the sampling (default 1: the whole vocabulary)
    seed: int | None = None  # seed of the sampling (default: the target's)
    about: dict[str, str] | None = None  # what is known of the image, for defences that check the question against
    # it: image_file (absolute path), modality, body_part, description (None: nothing)

    def limit(self, default: int) -> int:
        return default if self.max_new_tokens is None else min(self.max_new_tokens, default)

    def sampling(self, temperature: float, seed: int) -> tuple[float, float, int]:
        """(temperature, top_p, seed) of this query, the target's where the query sets none."""
        return (temperature if self.temperature is None else self.temperature,
                1.0 if self.top_p is None else self.top_p, seed if self.seed is None else self.seed)


@dataclass(frozen=True)
class TargetConfig:
    kind: str = option("llava", "llava (white-box adapter), hf (image-text-to-text), api (OpenAI-compatible), "
                       "python (a factory of your own: python:FILE_OR_MODULE:FACTORY).")
    model: str = option("embedded", "embedded | tiny | hub id or local path | the API's model name.")
    max_new_tokens: int = option(512, "Tokens per answer at most (HarmBench's standard 512: a judge needs the whole "
                                 "answer; the report states the cap).", low=1, high=32768)
    batch_size: int = option(8, "Queries per generation batch (local models).", low=1)
    temperature: float = option(0.0, "Sampling temperature (0: greedy).", low=0.0, high=2.0)
    seed: int = option(0, "Seed for local sampling and the API's `seed` field.")
    device: str | None = option(None, "torch device of a local model (default: cuda when available).")
    dtype: str = option("auto", "auto | bfloat16 | float16 | float32 (local models).")
    trust_remote_code: bool = option(False, "Let an hf model run its own code (only models you trust).")
    auto_class: Literal["image-text-to-text", "causal-lm"] = option(
        "image-text-to-text", "hf: the transformers auto class; causal-lm for remote-code models that map only "
        "AutoModelForCausalLM (CheXagent; with trust_remote_code).")
    prompt_template: str | None = option(
        None, "hf: the prompt around {question} for a model without a chat template, e.g. CheXagent's "
        "' USER: <s>{question} ASSISTANT: <s>' (default: its chat template, else 'USER: <image>\\n{question} "
        "ASSISTANT:').")
    prompt_layout: Literal["chat-template", "llava-med"] = option(
        "chat-template", "llava: the model's chat template, or LLaVA-Med's ###Human/###Assistant conversation.")
    system_prompt: str | None = option(None, "System message sent before each question, if any.")
    api: APIConfig = option(APIConfig(), "Endpoint, key variable, retries, rate limit, concurrency (api).")

    @property
    def name(self) -> str:
        return self.model if self.kind == "llava" else f"{self.kind}:{self.model}"

    @classmethod
    def from_text(cls, spec: str) -> TargetConfig:
        """A target written as 'KIND:MODEL' (or a bare LLaVA name) in a config file."""
        return parse_target(spec)

    def answer_settings(self) -> dict[str, Any]:
        """The settings that can change an answer (not batch sizes, devices, retries or concurrency):
        part of each response's input hash, so changing one re-asks instead of reusing old answers."""
        return {"kind": self.kind, "model": self.model, "max_new_tokens": self.max_new_tokens,
                "temperature": self.temperature, "seed": self.seed, "dtype": self.dtype,
                "system_prompt": self.system_prompt, "base_url": self.api.base_url if self.kind == "api" else None,
                **({"prompt_template": self.prompt_template} if self.prompt_template else {}),
                **({"auto_class": self.auto_class} if self.auto_class != "image-text-to-text" else {}),
                **({"prompt_layout": self.prompt_layout} if self.prompt_layout != "chat-template" else {})}


def split_target(spec: str) -> tuple[str, str]:
    """'KIND:MODEL' -> (kind, model); a bare name or path is a LLaVA model ("llava", spec), "text:MODEL" a text-only
    model through the same white-box adapter. A word before
    a colon that is no target kind (nor a drive letter or an existing path) is a typo of one, not a model
    id: refused with the kinds there are (hub ids never hold a colon)."""
    kind, sep, model = spec.partition(":")
    if sep and kind in TARGETS:
        return kind, model
    if sep and kind == "text":  # a text-only white-box model ("text:embedded"), asked through its adapter
        return "llava", spec
    if sep and len(kind) > 1 and kind.isidentifier() and not Path(spec).exists():  # one letter: a drive
        TARGETS[kind]  # raises: unknown target kind, did you mean ...
    return "llava", spec


def parse_target(spec: str, base: TargetConfig | None = None) -> TargetConfig:
    """'KIND:MODEL' or a bare LLaVA name/path -> TargetConfig (other fields from `base`)."""
    kind, model = split_target(spec)
    return replace(base or TargetConfig(), kind=kind, model=model)


class ChatTarget(Protocol):
    """A registered target kind: built as `cls(config, cache_path=..., model=...)`."""

    takes_whitebox: ClassVar[bool]  # `model` may be a white-box adapter already loaded (shared with attacks)
    name: str

    def answer(self, queries: Sequence[Query]) -> list[str | TargetError]:
        """One answer per query, in order; a query that failed gives its TargetError."""
        ...


TARGETS: Registry[Callable[..., ChatTarget]] = Registry("target kind", plugins="medattack.models")


def load_target(config: TargetConfig, cache_path: Path | None = None, model: Any = None) -> ChatTarget:
    """Build the target a config names; `cache_path` is the request cache of API targets, `model` a
    loaded white-box model for the kinds that take one (`takes_whitebox`)."""
    kind = TARGETS[config.kind]
    if config.kind != "api":
        require_device(config.device)
    return kind(config, cache_path=cache_path, model=model if kind.takes_whitebox else None)


def target_device(config: TargetConfig) -> str:
    """The torch device of a local target: its setting, else cuda when available."""
    return local_device(config.device)


def _batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i:i + max(1, size)] for i in range(0, len(items), max(1, size))]


Sampling = tuple[float, float, int]  # (temperature, top_p, seed); temperature 0 = greedy


def by_sampling(batch: Sequence[Query], config: TargetConfig,
                generate: Callable[[Sequence[Query], Sampling], list[str]]) -> list[str]:
    """`generate(queries, sampling)` once per distinct sampling of the batch (a model's generate call
    takes one temperature and one seed), the answers put back in the batch's order."""
    groups: dict[Sampling, list[int]] = {}
    for k, query in enumerate(batch):
        groups.setdefault(query.sampling(config.temperature, config.seed), []).append(k)
    out: list[str] = [""] * len(batch)
    for sampling, members in groups.items():
        for k, answer in zip(members, generate([batch[k] for k in members], sampling), strict=True):
            out[k] = answer
    return out


def answer_in_batches(queries: Sequence[Query], size: int, generate: Callable[[Sequence[Query]], list[str]],
                      catch: tuple[type[BaseException], ...],
                      retry: Callable[[Sequence[Query]], list[str | TargetError]]) -> list[str | TargetError]:
    """`generate` on batches of at most `size` queries. A batch that fails with one of `catch` is asked
    again one query at a time through `retry` (the target's own `answer`), so only the bad query fails; a
    single query that fails gives its error as a TargetError naming the query."""
    out: list[str | TargetError] = []
    for batch in _batches(queries, size):
        try:
            out.extend(generate(batch))
        except catch as error:
            if len(batch) > 1:
                for query in batch:
                    out.extend(retry([query]))
                continue
            out.append(error if isinstance(error, TargetError) else TargetError(
                f"query {batch[0].query_id}: {type(error).__name__}: {error}"))
    return out


@TARGETS.register("llava", access="white-box")
class LlavaTarget:
    """A LLaVA-family model through the white-box adapter, answering in batches (greedy, or sampled at the
    target's or the query's temperature)."""

    takes_whitebox = True
    needs_image = True  # every query is about an image

    def __init__(self, config: TargetConfig, model: Any = None, **_: Any) -> None:
        from medattack.models.base import load_whitebox

        self.config = config
        options = {"device": target_device(config)}
        if config.model not in ("embedded", "tiny"):
            options["dtype"] = config.dtype
        if config.prompt_layout != "chat-template":
            options["prompt_layout"] = config.prompt_layout
        self.model = model or load_whitebox(config.model, **options)
        self.name = self.model.name

    def _pixels(self, query: Query) -> torch.Tensor:
        exact = query.exact_pixels
        if exact is not None and tuple(exact.shape[-2:]) == tuple(self.model.image_size):
            return exact.to(self.model.device).float()
        if query.image is None:
            raise TargetError(f"query {query.query_id}: this model needs an image.")
        return self.model.preprocess(query.image)

    def _sampling(self, batch: Sequence[Query]) -> list[tuple[float, float, int]] | None:
        """Per query (temperature, top_p, seed); None when every one decodes greedily."""
        rows = [q.sampling(self.config.temperature, self.config.seed) for q in batch]
        return rows if any(temperature > 0 for temperature, _, _ in rows) else None

    def answer(self, queries: Sequence[Query]) -> list[str | TargetError]:
        out: list[str | TargetError] = []
        torch.manual_seed(self.config.seed)
        for batch in _batches(queries, self.config.batch_size):
            try:
                pixels = torch.cat([self._pixels(q) for q in batch])
                limits = [q.limit(self.config.max_new_tokens) for q in batch]
                out.extend(generate_batch(self.model, [q.text for q in batch], pixels, limits, self._sampling(batch)))
            except TargetError as error:  # answer one by one so only the bad query fails
                for query in batch:
                    try:
                        out.extend(generate_batch(self.model, [query.text], self._pixels(query),
                                                  [query.limit(self.config.max_new_tokens)],
                                                  self._sampling([query])))
                    except TargetError as single:
                        out.append(single)
                log.debug("batch fell back to single queries: %s", error)
        return out


@TARGETS.register("hf", access="black-box", needs=("model weights",))
class HFChatTarget:
    """Any transformers image-text-to-text model with its processor, batched with left padding."""

    takes_whitebox = False

    def __init__(self, config: TargetConfig, **_: Any) -> None:
        import transformers

        self.config = config
        self.device = target_device(config)
        dtype = {"auto": "auto", "bfloat16": torch.bfloat16, "float16": torch.float16,
                 "float32": torch.float32}[config.dtype]
        with hub_errors(config.model):
            self.processor = transformers.AutoProcessor.from_pretrained(config.model,
                                                                        trust_remote_code=config.trust_remote_code)
        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.padding_side = "left"
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
        auto = (transformers.AutoModelForCausalLM if config.auto_class == "causal-lm"
                else transformers.AutoModelForImageTextToText)
        try:
            with hub_errors(config.model):
                model = auto.from_pretrained(config.model, dtype=dtype, trust_remote_code=config.trust_remote_code)
        except ValueError as error:
            if config.auto_class == "causal-lm" or "Unrecognized configuration class" not in str(error):
                raise
            raise TargetError(f"{config.model} is not an image-text-to-text model in transformers; if its own code "
                              "maps only AutoModelForCausalLM (CheXagent), ask it with --set "
                              "target.auto_class=causal-lm --set target.trust_remote_code=true.") from None
        self.model = model.to(self.device).eval()
        self.name = config.name

    def _prompt(self, text: str, has_image: bool) -> str:
        if self.config.prompt_template:
            return self.config.prompt_template.replace("{question}", text)
        content = ([{"type": "image"}] if has_image else []) + [{"type": "text", "text": text}]
        messages = [{"role": "user", "content": content}]
        if self.config.system_prompt:
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": self.config.system_prompt}]})
        if getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template(messages, add_generation_prompt=True)
        image = "<image>\n" if has_image else ""
        return f"USER: {image}{text} ASSISTANT:"

    def _generate(self, batch: Sequence[Query]) -> list[str]:
        return by_sampling(batch, self.config, self._generate_with)

    def _generate_with(self, batch: Sequence[Query], sampling: Sampling) -> list[str]:
        from PIL import Image

        images = [Image.fromarray(q.image) for q in batch if q.image is not None]
        if images and len(images) != len(batch):
            raise TargetError("a batch mixes queries with and without images.")
        prompts = [self._prompt(q.text, q.image is not None) for q in batch]
        inputs = self.processor(text=prompts, images=images or None, padding=True, return_tensors="pt").to(
            self.device)
        temperature, top_p, seed = sampling
        options = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {
            "do_sample": False}
        limits = [q.limit(self.config.max_new_tokens) for q in batch]
        torch.manual_seed(seed)
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=max(limits), **options)
        prompt = inputs["input_ids"]
        echoed = output.shape[1] > prompt.shape[1] and torch.equal(output[:, :prompt.shape[1]].to(prompt.device),
                                                                   prompt)
        new = output[:, prompt.shape[1]:] if echoed else output  # some remote-code models return only new tokens
        return [self.processor.decode(row[:limit], skip_special_tokens=True).strip()
                for row, limit in zip(new, limits, strict=True)]

    def answer(self, queries: Sequence[Query]) -> list[str | TargetError]:
        torch.manual_seed(self.config.seed)
        return answer_in_batches(queries, self.config.batch_size, self._generate,
                                 (TargetError, ValueError, RuntimeError), self.answer)


def image_data_url(image: np.ndarray) -> str:
    """(H, W, 3) uint8 -> a PNG data URL, the form OpenAI-compatible chat APIs take."""
    return "data:image/png;base64," + base64.b64encode(encode_png(image)).decode("ascii")


def chat_payload(config: TargetConfig, query: Query) -> dict[str, Any]:
    """The chat-completions request for one query (the image as a PNG data URL after the text)."""
    content: list[dict[str, Any]] = [{"type": "text", "text": query.text}]
    if query.image is not None:
        content.append({"type": "image_url", "image_url": {"url": image_data_url(query.image)}})
    messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
    if config.system_prompt:
        messages.insert(0, {"role": "system", "content": config.system_prompt})
    temperature, top_p, seed = query.sampling(config.temperature, config.seed)
    return {"model": config.model, "messages": messages, "temperature": temperature,
            "max_tokens": query.limit(config.max_new_tokens), "seed": seed, **({"top_p": top_p} if top_p < 1 else {})}


@TARGETS.register("api", access="black-box", needs=("network", "api-key"))
class APIChatTarget:
    """An OpenAI-compatible chat endpoint with image input; requests run `api.concurrency` at a time."""

    takes_whitebox = False

    def __init__(self, config: TargetConfig, cache_path: Path | None = None, **_: Any) -> None:
        self.config = config
        self.client = APIClient(config.api, cache_path)
        self.name = config.name

    def answer(self, queries: Sequence[Query]) -> list[str | TargetError]:
        payloads = [chat_payload(self.config, q) for q in queries]
        out: list[str | TargetError] = []
        for query, response in zip(queries, self.client.map("chat/completions", payloads), strict=True):
            if isinstance(response, APIError):
                out.append(TargetError(f"query {query.query_id}: {response}"))
            elif filtered(response):
                out.append(ProviderFilterError(f"query {query.query_id}: the provider withheld the answer "
                                               "(finish_reason content_filter); counted apart, never scored"))
            else:
                out.append(chat_text(response))
        return out
