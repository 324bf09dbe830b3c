"""The client for OpenAI-compatible HTTP APIs (chat completions, moderations), on the `openai` SDK.

Used by API targets, judges, moderation, prompt generation and the black-box attacker. The SDK does the
transport: retries of 408/409/429/5xx, timeouts and dropped connections with backoff and jitter, Retry-After
(a server asking for more than a minute is not retried), connection reuse, `OPENAI_BASE_URL`, Azure
endpoints. Around it this client adds a content-hash cache of answers (the endpoint and payload; a repeat
costs nothing, across runs and processes), a rate limit over every attempt, `concurrency` requests at
once, token counts, and one error type naming the URL. The API key is read from the environment variable
the config names; it is sent in a header and never written to the cache, the run directory or the logs.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medattack.config import option
from medattack.errors import APIError, ConfigError
from medattack.redaction import credentials_in, redact_url, redact_urls
from medattack.storage import SqliteCache

if TYPE_CHECKING:
    import openai

log = logging.getLogger(__name__)
OPENAI_URL = "https://api.openai.com/v1"


@dataclass(frozen=True)
class APIConfig:
    base_url: str = option("", f"Base URL of the OpenAI-compatible API (empty: $OPENAI_BASE_URL, else {OPENAI_URL}); "
                               "with azure_api_version, the Azure resource endpoint.")
    api_key_env: str = option("OPENAI_API_KEY", "Environment variable holding the API key (the key is never stored).")
    azure_api_version: str = option("", "Azure OpenAI API version (e.g. 2024-10-21): talk to an Azure endpoint, "
                                        "the model name being the deployment.")
    timeout: float = option(60.0, "Seconds per request attempt, from connecting to the last byte of the answer.",
                            low=0.001)
    max_retries: int = option(5, "Retries on 408/409/429/5xx, timeouts and dropped connections before giving up.",
                              low=0, high=100)
    requests_per_second: float = option(0.0, "Rate limit over every attempt, across threads (0: none).", low=0.0)
    concurrency: int = option(4, "Requests in flight at once.", low=1, high=1024)

    def __post_init__(self) -> None:
        for name, low, strict in (("timeout", 0, True), ("max_retries", 0, False), ("requests_per_second", 0, False),
                                  ("concurrency", 1, False)):
            value = getattr(self, name)
            if value < low or (strict and value == low):
                raise ValueError(f"api.{name} must be {'above' if strict else 'at least'} {low}, got {value!r}")
        if not self.base_url:  # resolved once, so a stage's recorded settings name the endpoint it used
            object.__setattr__(self, "base_url", os.environ.get("OPENAI_BASE_URL") or OPENAI_URL)
        carried = credentials_in(self.base_url)
        if carried:
            raise ValueError(f"api.base_url {redact_url(self.base_url)} carries a credential ({', '.join(carried)}); "
                             "put the key in an environment variable and name it with api_key_env (--api-key-env), "
                             "and give the URL without it")


# hosted APIs refuse every request without a key; a local server (vLLM, `medattack serve`) needs none
HOSTED_API_SUFFIXES = ("api.openai.com", "openai.azure.com", "generativelanguage.googleapis.com",
                       "api.anthropic.com", "openrouter.ai", "api.together.xyz", "api.mistral.ai", "api.groq.com")


def is_hosted(base_url: str) -> bool:
    host = (urllib.parse.urlsplit(base_url).hostname or "").lower()
    return any(host == suffix or host.endswith("." + suffix) for suffix in HOSTED_API_SUFFIXES)


class APIClient:
    """POST JSON to `{base_url}/{path}` through the SDK, with the answer cache, a rate limit and concurrency.
    A hosted endpoint without its key in the environment is refused at once (`require_key`), before any
    request: without it every request would fail after its retries. `stats` counts requests (every
    attempt), retries, cache hits and the tokens the API reported."""

    def __init__(self, config: APIConfig, cache_path: Path | None = None, require_key: bool = True,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.api_key = os.environ.get(config.api_key_env) or None
        if require_key and is_hosted(config.base_url) and not self.api_key:
            raise ConfigError(f"{redact_url(config.base_url)} needs an API key and ${config.api_key_env} is not set: "
                              "export it (or name another variable with --api-key-env / api.api_key_env).")
        self.config = config
        self._cache = SqliteCache(cache_path)
        self._lock = threading.Lock()
        self._last_start = -math.inf  # when the last attempt went out
        self._floor = 1.0 / config.requests_per_second if config.requests_per_second > 0 else 0.0
        self._gap = self._floor  # seconds between attempt starts: the set rate, widened while the API says 429
        self._paused_until = 0.0  # no attempt before this (a 429's Retry-After, for every thread)
        self._widened = -math.inf  # when a 429 last widened the gap
        self._sleep = sleep
        self._attempts = threading.local()  # attempts of the request in flight on this thread
        self.stats = {"requests": 0, "retries": 0, "cache_hits": 0, "prompt_tokens": 0, "completion_tokens": 0}
        import openai  # here, not at import: it costs a second of start-up to every command that never calls an API

        self._openai = openai
        self._http = openai.DefaultHttpxClient(event_hooks={"request": [self._before_each_attempt],
                                                            "response": [self._after_each_attempt]},
                                               transport=deadline_transport(config.timeout))
        self._sdk: openai.OpenAI | None = None

    def _client(self) -> tuple[openai.OpenAI, dict[str, Any]]:
        """The SDK client for the key the environment holds now (read per request, never stored on disk),
        and the request options: without a key no Authorization header is sent (a local server needs
        none; a placeholder would reach its logs as a "key")."""
        key = os.environ.get(self.config.api_key_env) or None
        with self._lock:
            if self._sdk is None or key != self.api_key:
                common = {"api_key": key or "unused", "max_retries": self.config.max_retries,
                          "timeout": self.config.timeout, "http_client": self._http}
                if self.config.azure_api_version:
                    self._sdk = self._openai.AzureOpenAI(azure_endpoint=self.config.base_url,
                                                   api_version=self.config.azure_api_version, **common)
                else:
                    self._sdk = self._openai.OpenAI(base_url=self.config.base_url, **common)
                self.api_key = key
            return self._sdk, ({} if key else {"headers": {"Authorization": self._openai.omit}})

    @property
    def has_key(self) -> bool:
        return bool(os.environ.get(self.config.api_key_env))

    def _before_each_attempt(self, request: Any) -> None:
        """The HTTP client's hook before every attempt, retries included: count it and keep the rate."""
        self._attempts.count = getattr(self._attempts, "count", 0) + 1
        with self._lock:
            self.stats["requests"] += 1
            if request.headers.get("x-stainless-retry-count", "0") != "0":  # the SDK numbers its attempts
                self.stats["retries"] += 1
        while True:  # the gap is read afresh after each wait: a narrower one applies at once
            with self._lock:
                now = time.monotonic()
                wait = max(self._last_start + self._gap, self._paused_until) - now
                if wait <= 0:
                    self._last_start = now
                    return
            self._sleep(min(wait, 0.05))

    def _after_each_attempt(self, response: Any) -> None:
        """The HTTP client's hook after every attempt: pace to what the API takes. A 429 pauses every thread
        until its Retry-After and widens the gap between attempts by a quarter (once per episode: fifty threads
        refused at once widen it once); each answer narrows it again by 3%, never below the set rate
        (`requests_per_second`). So many requests in flight against a rate-limited API settle near its rate
        instead of spending their retries on 429s (as TCP's congestion control does)."""
        with self._lock:
            now = time.monotonic()
            if response.status_code == 429:
                wait = min(_retry_after(response.headers), 60.0)
                if now >= self._widened + max(self._gap, wait):  # once per episode, not once per thread refused
                    self._gap = min(60.0, max(1.25 * self._gap, 0.005))
                    self._widened = now
                self._paused_until = max(self._paused_until, now + wait)
            elif response.status_code < 400:
                self._gap = max(self._floor, self._gap * 0.97)

    def _told_url(self, path: str) -> str:
        """The URL of `path` as errors tell it: its credentials redacted (the request uses the URL as given)."""
        return redact_url(f"{self.config.base_url.rstrip('/')}/{path.lstrip('/')}")

    def post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """The JSON answer to one request, from the cache when it was asked before. A chat-completions answer
        that carries no answer (usable_chat) is an APIError and is never cached."""
        key = SqliteCache.key(self.config.base_url.rstrip("/"), path, payload)  # the API key is not part of it
        check = usable_chat if path.rstrip("/").endswith("chat/completions") else None
        cached = self._cache.get(key)
        if cached is not None and (check is None or check(cached) is None):
            with self._lock:
                self.stats["cache_hits"] += 1
            return cached
        response = self._post_once(path, payload)
        problem = check(response) if check else None
        if problem:
            raise APIError(f"{self._told_url(path)} answered 200 without an answer: {problem}")
        self._cache.put(key, response)
        return response

    def _post_once(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        url = self._told_url(path)
        self._attempts.count = 0
        sdk, options = self._client()
        try:
            response = sdk.post("/" + path.lstrip("/"), body=payload, cast_to=object, options=options)
        except ValueError as exc:  # a 200 whose body is not JSON: cut off, or an HTML error page
            raise APIError(f"{url} answered 200 with a body that is not JSON (cut off, or not an API): "
                           f"{redact(str(exc), self.api_key)[:200]}") from None
        except self._openai.APIStatusError as exc:
            detail = redact(_error_text(exc), self.api_key)[:300]
            if exc.status_code in (401, 403) and not self.api_key:
                detail += f" (no key: set the environment variable {self.config.api_key_env})"
            tries = f" (gave up after {self._attempts.count} attempts)" if self._attempts.count > 1 else ""
            raise APIError(f"{url} answered {exc.status_code}{tries}: {detail}", exc.status_code) from None
        except self._openai.APIConnectionError as exc:
            raise APIError(f"{url}: gave up after {self._attempts.count} attempts ({type(exc).__name__}: "
                           f"{redact(str(exc), self.api_key)[:200]}).") from None
        if not isinstance(response, dict):
            raise APIError(f"{url} answered something that is not a JSON object: {str(response)[:200]}")
        usage = response.get("usage") or {}
        with self._lock:
            for field in ("prompt_tokens", "completion_tokens"):
                if isinstance(usage.get(field), int):
                    self.stats[field] += usage[field]
        return response

    def map(self, path: str, payloads: Sequence[dict[str, Any]]) -> list[dict[str, Any] | APIError]:
        """POST many payloads with `concurrency` threads; failures come back as APIError values."""

        def one(payload: dict[str, Any]) -> dict[str, Any] | APIError:
            try:
                return self.post(path, payload)
            except APIError as exc:
                return exc

        with ThreadPoolExecutor(max_workers=max(1, self.config.concurrency)) as pool:
            return list(pool.map(one, payloads))

    def close(self) -> None:
        self._http.close()


def _retry_after(headers: Any) -> float:
    """Seconds a 429 asks to wait (retry-after-ms, else Retry-After in seconds; 0 when it says nothing usable)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            return max(0.0, float(headers.get(name, "")) * scale)
        except ValueError:
            continue
    return 0.0


def deadline_transport(seconds: float) -> Any:
    """An httpx transport that ends a request attempt `seconds` after it began, body included. httpx's own
    timeouts bound each read, so an answer that trickles in a byte a second would never end; here it ends as
    a read timeout, which the SDK retries like any other (`max_retries`)."""
    import httpx2 as httpx  # the HTTP library of the openai SDK 3 (httpx's successor, same API)

    class DeadlineStream(httpx.SyncByteStream):
        def __init__(self, inner: Any, deadline: float, request: httpx.Request) -> None:
            self.inner, self.deadline, self.request = inner, deadline, request

        def __iter__(self) -> Any:
            for chunk in self.inner:
                if time.monotonic() > self.deadline:
                    raise httpx.ReadTimeout(f"the answer took longer than {seconds:g} s in all", request=self.request)
                yield chunk

        def close(self) -> None:
            self.inner.close()

    class DeadlineTransport(httpx.BaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.HTTPTransport(limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100))

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            deadline = time.monotonic() + seconds
            response = self.inner.handle_request(request)
            response.stream = DeadlineStream(response.stream, deadline, request)
            return response

        def close(self) -> None:
            self.inner.close()

    return DeadlineTransport()


def _error_text(exc: openai.APIStatusError) -> str:
    """The server's own words for an error status: its JSON error message, else the body's text."""
    body = exc.body
    if isinstance(body, dict):
        message = body.get("message") if "message" in body else body.get("error", body)
        return message if isinstance(message, str) else str(message)
    try:
        return exc.response.text or exc.message
    except Exception:  # a streamed or closed body
        return exc.message


def redact(text: str, *secrets: str | None) -> str:
    """`text` with every secret (an API key) replaced by [REDACTED], wherever it appears (a server that
    echoes the Authorization header in an error body must not get the key written to failures.jsonl), and
    the credentials of any URL in it redacted (redaction.py)."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[REDACTED]")
    return redact_urls(text)


def _message(response: dict[str, Any]) -> dict[str, Any] | None:
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    message = choices[0].get("message")
    return message if isinstance(message, dict) else None


def _content_text(content: Any) -> str | None:
    """Message content as text: a string, or the text parts of a content-part list joined; None otherwise."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content and all(isinstance(p, dict) for p in content):
        texts = [p.get("text") for p in content if p.get("type") in ("text", "output_text")]
        if texts and all(isinstance(t, str) for t in texts):
            return "".join(texts)
    return None


def filtered(response: dict[str, Any]) -> bool:
    """The provider withheld the answer (finish_reason content_filter): a provider outcome, not the model's."""
    choices = response.get("choices")
    return (isinstance(choices, list) and bool(choices) and isinstance(choices[0], dict)
            and choices[0].get("finish_reason") == "content_filter")


def usable_chat(response: dict[str, Any]) -> str | None:
    """Why a 200 chat-completions response carries no answer (None when it does): an `error` object, no
    choices, no message, content null or not text. A content-filtered choice is an answer of the provider
    (see `filtered`); a model's structured `refusal` is an answer."""
    if response.get("error"):
        error = response["error"]
        return f"an error object ({(error.get('message') if isinstance(error, dict) else error)!s:.200})"
    message = _message(response)
    if message is None:
        return "no choices" if not response.get("choices") else "no message in the first choice"
    if filtered(response):
        return None
    content = message.get("content")
    if content is None:
        return None if isinstance(message.get("refusal"), str) else "content is null"
    return None if _content_text(content) is not None else f"content is not text ({type(content).__name__})"


def chat_text(response: dict[str, Any]) -> str:
    """The assistant text of a chat-completions response: the content, content parts joined, or the model's
    structured refusal; '' when there is none (a filtered answer)."""
    message = _message(response) or {}
    text = _content_text(message.get("content"))
    if text is None and isinstance(message.get("refusal"), str):
        text = message["refusal"]
    return text or ""
