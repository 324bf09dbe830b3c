"""Text generators for prompt writing: a local transformers chat model, or an OpenAI-compatible API.

Every call is cached by a content hash of (generator, prompt, settings) in an SQLite file (SqliteCache), so a
re-run costs nothing and a killed run resumes. API keys come from the environment only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from medattack.config import option
from medattack.models.loading import hub_errors
from medattack.openai_client import APIClient, APIConfig, APIError, chat_text
from medattack.registry import Registry
from medattack.rundir import SqliteCache


class TextGenerator(Protocol):
    config_class: type  # its settings (a frozen dataclass)
    name: str

    def __init__(self, config: Any = None, cache_path: Path | None = None) -> None: ...

    def generate(self, system: str, user: str) -> str:
        """The model's reply ('' when the call failed for good)."""
        ...


TEXT_GENERATORS: Registry[type[TextGenerator]] = Registry("text generator", plugins="medattack.prompts")


@dataclass(frozen=True)
class LocalChatConfig:
    model: str | None = option(None, "Hub id or folder of a chat model; None = the embedded SmolLM2-135M-Instruct.")
    max_new_tokens: int = option(96, "Tokens per reply.")
    device: str = option("cpu", "torch device.")


@TEXT_GENERATORS.register("local")
class LocalChat:
    """Greedy generation with a transformers causal LM and its chat template."""

    config_class = LocalChatConfig

    def __init__(self, config: LocalChatConfig | None = None, cache_path: Path | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from medattack.models.embedded import smollm2_dir

        hf_logging.disable_progress_bar()
        self.config = config or LocalChatConfig()
        source = self.config.model or str(smollm2_dir())
        self.name = f"local:{self.config.model or 'SmolLM2-135M-Instruct'}"
        with hub_errors(source):
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            self.model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).to(
                self.config.device).eval()
        self.cache = SqliteCache(cache_path)
        self._torch = torch

    def generate(self, system: str, user: str) -> str:
        key = SqliteCache.key(self.name, system, user, self.config.max_new_tokens)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(self.config.device)
        with self._torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=self.config.max_new_tokens, do_sample=False,
                                         pad_token_id=self.tokenizer.eos_token_id)
        reply = self.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        self.cache.put(key, reply)
        return reply


@dataclass(frozen=True)
class APIChatConfig:
    model: str = option("gpt-4o", "Chat model name at the endpoint.")
    api: APIConfig = option(APIConfig(), "Endpoint, key variable, retries, rate limit, concurrency.")
    temperature: float = option(0.7, "Sampling temperature (diversity of the rewrites).")
    max_tokens: int = option(300, "Tokens per reply.")


@TEXT_GENERATORS.register("api")
class APIChat:
    """Any OpenAI-compatible chat endpoint (GPT-4-class models, a vLLM server, `medattack serve`)."""

    config_class = APIChatConfig

    def __init__(self, config: APIChatConfig | None = None, cache_path: Path | None = None) -> None:
        self.config = config or APIChatConfig()
        self.name = f"api:{self.config.model}@{self.config.api.base_url}"
        self.client = APIClient(self.config.api, cache_path)

    def generate(self, system: str, user: str) -> str:
        payload = {"model": self.config.model, "temperature": self.config.temperature,
                   "max_tokens": self.config.max_tokens,
                   "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
        try:
            return chat_text(self.client.post("chat/completions", payload)).strip()
        except APIError:
            return ""
