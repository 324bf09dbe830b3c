"""Reading a chat-completions request for `medattack serve` (serve.py): the JSON body, the last user message
(system text prepended, the first image as a base64 data URL), sampling, `n`, `max_tokens` and `stream`.
Every check raises RequestError with what to change; the server answers it as a 400.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import uuid
from dataclasses import dataclass
from typing import Any

from medattack.data.image_io import load_image
from medattack.errors import InputError, RequestError
from medattack.models.targets import Query

MAX_JSON_DEPTH = 64
MAX_CHOICES = 16


def _depth(text: bytes) -> int:
    """Deepest nesting of [ and { in a JSON text (strings included: an upper bound, cheap to compute)."""
    depth = deepest = 0
    for byte in text:
        if byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif byte in b"]}":
            depth -= 1
    return deepest


def parse_body(body: bytes) -> dict[str, Any]:
    """The JSON object of a request body (RequestError when it is not one, or nested absurdly deep)."""
    if _depth(body) > MAX_JSON_DEPTH:
        raise RequestError(f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels.")
    try:
        payload = json.loads(body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise RequestError(f"the body is not JSON ({exc}).") from None
    if not isinstance(payload, dict):
        raise RequestError("the body must be a JSON object.")
    return payload


def tokens_asked(payload: dict[str, Any]) -> int | None:
    """The request's `max_tokens` (or `max_completion_tokens`): a whole number from 1 up, None when absent."""
    value = payload.get("max_tokens", payload.get("max_completion_tokens"))
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 1
            or value != int(value)):
        raise RequestError(f"max_tokens must be a whole number from 1 up, got {str(value)[:40]}.")
    return int(value)


def _bounded_number(payload: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = payload.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or not low <= value <= high:
        raise RequestError(f"{key} must be a number from {low:g} to {high:g}, got {str(value)[:40]}.")
    return float(value)


def _text(content: Any) -> str:
    """The text of a message's content (a string, or the text parts of a list)."""
    if isinstance(content, str):
        return content
    return "\n".join(str(part.get("text", "")) for part in content or [] if isinstance(part, dict)
                     and part.get("type") == "text")


def choices_asked(payload: dict[str, Any]) -> int:
    """`n`: how many answers the request asks for (1 to MAX_CHOICES)."""
    n = _bounded_number(payload, "n", 1, MAX_CHOICES)
    if n is not None and n != int(n):
        raise RequestError(f"n must be a whole number from 1 to {MAX_CHOICES}.")
    return int(n or 1)


def stream_asked(payload: dict[str, Any]) -> tuple[bool, bool]:
    """(`stream`, `stream_options.include_usage`) of a request."""
    stream, options = payload.get("stream"), payload.get("stream_options")
    if stream not in (None, True, False):
        raise RequestError(f"stream must be true or false, got {str(stream)[:40]}.")
    if options is not None and (not isinstance(options, dict) or not stream):
        raise RequestError("stream_options must be an object, sent with stream=true.")
    usage = (options or {}).get("include_usage", False)
    if usage not in (True, False):
        raise RequestError("stream_options.include_usage must be true or false.")
    return bool(stream), bool(usage)


def query_from_request(payload: dict[str, Any], max_pixels: int = 16_000_000, max_prompt_chars: int = 32_000,
                       max_tokens: int = 4096, needs_image: bool = False, default_tokens: int | None = None) -> Query:
    """The last user message of a chat-completions request -> Query (system message and text parts joined,
    first image, sampling settings; the answer length asked, cut to `max_tokens`, else `default_tokens`)."""
    messages = payload.get("messages")
    users = [m for m in messages or [] if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise RequestError("the request has no user message.")
    system = "\n".join(_text(m.get("content")) for m in messages if isinstance(m, dict)
                       and m.get("role") in ("system", "developer"))
    content = users[-1].get("content")
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
    texts, image = [system] if system.strip() else [], None
    for part in parts:
        if part.get("type") == "text":
            texts.append(str(part.get("text", "")))
        elif part.get("type") == "image_url" and image is None:
            url = (part.get("image_url") or {}).get("url", "")
            if not url.startswith("data:") or ";base64," not in url:
                raise RequestError("images must be base64 data URLs (data:image/png;base64,...); this server "
                                   "does not fetch URLs.")
            try:
                data = base64.b64decode(url.split(";base64,", 1)[1], validate=True)
                image = load_image(data, name="request image", max_pixels=max_pixels).pixels
            except (binascii.Error, InputError) as exc:
                raise RequestError(f"the image could not be read: {exc}") from None
    text = "\n\n".join(texts)
    if len(text) > max_prompt_chars:
        raise RequestError(f"the prompt has {len(text)} characters; this server takes at most {max_prompt_chars}.")
    seed = _bounded_number(payload, "seed", -(2**63), 2**63 - 1)
    asked = tokens_asked(payload)
    limit = default_tokens if asked is None else min(asked, max_tokens)
    query = Query(uuid.uuid4().hex, text, image, max_new_tokens=limit,
                  temperature=_bounded_number(payload, "temperature", 0, 2),
                  top_p=_bounded_number(payload, "top_p", 0, 1),
                  seed=None if seed is None else int(seed))
    if image is None and needs_image:
        raise RequestError("the request has no image; this server's model answers about an image: add an "
                           "image_url part (a base64 data URL) to the user message.")
    return query


@dataclass(frozen=True)
class ChatRequest:
    """A chat-completions request as the server answers it."""

    query: Query
    n: int  # answers asked
    stream: bool  # answer with server-sent events
    include_usage: bool  # a stream ends with a usage chunk
    capped: bool  # the request asked for more than ServeConfig.max_tokens and was cut to it
