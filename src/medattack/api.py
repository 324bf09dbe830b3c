"""A small client for OpenAI-compatible HTTP APIs (chat completions, moderations).

Used by the judges now and by black-box targets and prompt generation later. It retries 429, 5xx,
timeouts and dropped connections with exponential backoff and jitter (honouring Retry-After), spaces
requests to a rate limit, runs up to `concurrency` requests at once, and caches answers by a content
hash of the endpoint and payload. The API key is read from the environment variable the config
names; it is sent in a header and never written to the cache, the run directory or the logs.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medattack.config import option
from medattack.errors import APIError, ConfigError
from medattack.rundir import JsonlCache

log = logging.getLogger(__name__)
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class APIConfig:
    base_url: str = option("https://api.openai.com/v1", "Base URL of the OpenAI-compatible API.")
    api_key_env: str = option("OPENAI_API_KEY", "Environment variable holding the API key (the key is never stored).")
    timeout: float = option(60.0, "Seconds per request.")
    max_retries: int = option(5, "Retries on 429 / 5xx / timeouts before giving up.")
    backoff: float = option(1.0, "First retry delay in seconds; doubles each retry, with jitter.")
    max_backoff: float = option(30.0, "Longest single retry delay in seconds.")
    requests_per_second: float = option(0.0, "Rate limit across threads (0: none).")
    concurrency: int = option(4, "Requests in flight at once.")


# hosted APIs refuse every request without a key; a local server (vLLM, `medattack serve`) needs none
HOSTED_API_SUFFIXES = ("api.openai.com", "openai.azure.com", "generativelanguage.googleapis.com",
                       "api.anthropic.com", "openrouter.ai", "api.together.xyz", "api.mistral.ai", "api.groq.com")


def is_hosted(base_url: str) -> bool:
    host = (urllib.parse.urlsplit(base_url).hostname or "").lower()
    return any(host == suffix or host.endswith("." + suffix) for suffix in HOSTED_API_SUFFIXES)


class APIClient:
    """POST JSON to `{base_url}/{path}` with retries, rate limit, concurrency and a response cache.
    A hosted endpoint without its key in the environment is refused at once (`require_key`), before any
    request: without it every request would fail after its retries."""

    def __init__(self, config: APIConfig, cache_path: Path | None = None,
                 sleep: Callable[[float], None] = time.sleep, require_key: bool = True) -> None:
        if require_key and is_hosted(config.base_url) and not os.environ.get(config.api_key_env):
            raise ConfigError(f"{config.base_url} needs an API key and ${config.api_key_env} is not set: export it "
                              "(or name another variable with --api-key-env / api.api_key_env).")
        self.config = config
        self._cache = JsonlCache(cache_path)
        self._lock = threading.Lock()
        self._next_slot = 0.0
        self._sleep = sleep
        self.stats = {"requests": 0, "retries": 0, "cache_hits": 0}

    @property
    def has_key(self) -> bool:
        return bool(os.environ.get(self.config.api_key_env))

    def _wait_for_slot(self) -> None:
        if self.config.requests_per_second <= 0:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next_slot)
            self._next_slot = slot + 1.0 / self.config.requests_per_second
        if slot > now:
            self._sleep(slot - now)

    def post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        key = JsonlCache.key(self.config.base_url.rstrip("/"), path, payload)  # the API key is not part of it
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self.stats["cache_hits"] += 1
                return cached
        response = self._post_with_retries(path, payload)
        with self._lock:
            self._cache.put(key, response)
        return response

    def _post_with_retries(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.config.base_url.rstrip('/')}/{path.lstrip('/')}"
        headers = {"Content-Type": "application/json"}
        api_key = os.environ.get(self.config.api_key_env)
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        body = json.dumps(payload).encode("utf-8")
        delay = self.config.backoff
        for attempt in range(self.config.max_retries + 1):
            self._wait_for_slot()
            with self._lock:
                self.stats["requests"] += 1
            retry_after = None
            try:
                request = urllib.request.Request(url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.config.timeout) as handle:
                    return json.loads(handle.read().decode("utf-8"))
            except urllib.error.HTTPError as exc:
                if exc.code not in RETRY_STATUS:
                    detail = redact(exc.read().decode("utf-8", "replace"), api_key)[:300]
                    if exc.code in (401, 403) and not api_key:
                        detail += f" (no key: set the environment variable {self.config.api_key_env})"
                    raise APIError(f"{url} answered {exc.code}: {detail}", exc.code) from None
                problem, retry_after = f"status {exc.code}", exc.headers.get("Retry-After")
            except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError) as exc:
                problem = type(exc).__name__
            if attempt == self.config.max_retries:
                raise APIError(f"{url}: gave up after {attempt + 1} attempts ({problem}).")
            wait = min(self.config.max_backoff, delay) * (0.5 + random.random())
            if retry_after and retry_after.replace(".", "", 1).isdigit():  # honoured up to max_backoff
                wait = min(max(wait, float(retry_after)), self.config.max_backoff)
            log.info("retrying %s in %.1fs (%s)", url, wait, problem)
            with self._lock:
                self.stats["retries"] += 1
            self._sleep(wait)
            delay *= 2
        raise AssertionError("unreachable")

    def map(self, path: str, payloads: Sequence[dict[str, Any]]) -> list[dict[str, Any] | APIError]:
        """POST many payloads with `concurrency` threads; failures come back as APIError values."""

        def one(payload: dict[str, Any]) -> dict[str, Any] | APIError:
            try:
                return self.post(path, payload)
            except APIError as exc:
                return exc

        with ThreadPoolExecutor(max_workers=max(1, self.config.concurrency)) as pool:
            return list(pool.map(one, payloads))


def redact(text: str, *secrets: str | None) -> str:
    """`text` with every secret (an API key) replaced by [REDACTED], wherever it appears (a server that
    echoes the Authorization header in an error body must not get the key written to failures.jsonl)."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[REDACTED]")
    return text


def chat_text(response: dict[str, Any]) -> str:
    """The assistant text of a chat-completions response ('' when absent)."""
    try:
        return response["choices"][0]["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        return ""
