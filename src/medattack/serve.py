"""`medattack serve MODEL`: a local model behind the OpenAI chat-completions API.

    POST /v1/chat/completions   messages with text and images as data URLs -> `n` assistant messages
    GET  /v1/models             the one model served
    GET  /health                "ok"

A request is read as the OpenAI API defines it: the system message (prepended to the question: the
served adapters have no system turn), `temperature`, `top_p` and `seed` (sampling; 0 = greedy), `n`
answers, `max_tokens` (an answer cut there says `finish_reason: "length"`) and `usage` (text tokens of
the question and the answers, counted by the served model's tokenizer when it has one; image tokens are
not counted). A request without an image is refused (400) when the served model needs one (the LLaVA
adapters do).
The model id is the served model's name with spaces and other odd characters replaced.

Requests that arrive together are answered together: a batcher thread takes up to `max_batch`
waiting requests (waiting `batch_wait_ms` for company) and runs them as one generation batch, so a
GPU box can be red-teamed from anywhere by any OpenAI-compatible client, ours included.
`fail_first` answers the first N chat requests with 503 (Retry-After: 0) to exercise clients' retries.
When `api_key_env` is set, requests must carry that variable's value as a Bearer token.

Hostile or broken requests get a 4xx JSON answer and never stall the server: the body, the prompt, the
answer length and the JSON nesting are bounded, a connection that stops sending times out, at most
`max_connections` are handled at once and at most `max_queue` queries wait for the model; past either
the answer is 503 with Retry-After, never a reset connection.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from medattack.background import BackgroundServer
from medattack.config import option
from medattack.data.image_io import load_image
from medattack.errors import InputError, MedattackError, RequestError
from medattack.models.targets import ChatTarget, Query, TargetError
from medattack.rundir import folder_name

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_JSON_DEPTH = 64


@dataclass(frozen=True)
class ServeConfig:
    host: str = option("127.0.0.1", "Address to listen on (0.0.0.0 to accept other machines).")
    port: int = option(8000, "Port (0: any free port).")
    max_batch: int = option(8, "Requests answered in one generation batch at most.")
    batch_wait_ms: float = option(10.0, "How long the first waiting request waits for others to batch with.")
    fail_first: int = option(0, "Answer the first N chat requests with 503 (to test clients' retries).")
    api_key_env: str | None = option(None, "Require the key in this environment variable as a Bearer token.")
    max_prompt_chars: int = option(32_000, "Longest user text accepted, in characters (about 8k tokens).")
    max_tokens: int = option(4096, "Largest max_tokens a request may ask for.")
    read_timeout_s: float = option(30.0, "A connection that sends nothing for this long is closed.")
    max_connections: int = option(64, "Connections handled at once; more get 503 with Retry-After.")
    max_queue: int = option(256, "Queries waiting for the model at most; more get 503 with Retry-After.")


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


def _max_tokens(payload: dict[str, Any], limit: int) -> int | None:
    value = payload.get("max_tokens", payload.get("max_completion_tokens"))
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, int | float) or value != value or not 1 <= value <= limit
            or value != int(value)):
        raise RequestError(f"max_tokens must be a whole number from 1 to {limit}, got {str(value)[:40]}.")
    return int(value)


MAX_CHOICES = 16


def _number(payload: dict[str, Any], key: str, low: float, high: float) -> float | None:
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
    n = _number(payload, "n", 1, MAX_CHOICES)
    if n is not None and n != int(n):
        raise RequestError(f"n must be a whole number from 1 to {MAX_CHOICES}.")
    return int(n or 1)


def query_from_request(payload: dict[str, Any], max_pixels: int = 16_000_000, max_prompt_chars: int = 32_000,
                       max_tokens: int = 4096, needs_image: bool = False) -> Query:
    """The last user message of a chat-completions request -> Query (system message and text parts joined,
    first image, sampling settings)."""
    if payload.get("stream"):
        raise RequestError("streaming is not supported; send stream=false.")
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
    seed = _number(payload, "seed", -(2**63), 2**63 - 1)
    query = Query(uuid.uuid4().hex, text, image, max_new_tokens=_max_tokens(payload, max_tokens),
                  temperature=_number(payload, "temperature", 0, 2), top_p=_number(payload, "top_p", 0, 1),
                  seed=None if seed is None else int(seed))
    if image is None and needs_image:
        raise RequestError("the request has no image; this server's model answers about an image: add an "
                           "image_url part (a base64 data URL) to the user message.")
    return query


class Batcher:
    """One thread runs the target; requests queue up and are answered in batches."""

    def __init__(self, target: ChatTarget, max_batch: int, wait_seconds: float, max_queue: int = 0) -> None:
        self.target = target
        self.max_batch = max(1, max_batch)
        self.wait_seconds = wait_seconds
        self.queue: queue.Queue[tuple[Query, Future[str]]] = queue.Queue(maxsize=max(0, max_queue))
        self.batch_sizes: list[int] = []
        self._thread = threading.Thread(target=self._loop, name="medattack-batcher", daemon=True)
        self._thread.start()

    def submit(self, query: Query) -> Future[str]:
        """Queue a query; queue.Full when `max_queue` queries already wait."""
        future: Future[str] = Future()
        self.queue.put_nowait((query, future))
        return future

    def _loop(self) -> None:
        while True:
            batch = [self.queue.get()]
            deadline = time.monotonic() + self.wait_seconds
            while len(batch) < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    batch.append(self.queue.get(timeout=max(0.0, remaining)) if remaining > 0
                                 else self.queue.get_nowait())
                except queue.Empty:
                    break
            self.batch_sizes.append(len(batch))
            try:
                answers = self.target.answer([query for query, _ in batch])
            except Exception as exc:  # noqa: BLE001 - every waiting request must hear about it
                answers = [TargetError(f"{type(exc).__name__}: {exc}")] * len(batch)
            for (_, future), answer in zip(batch, answers, strict=True):
                if isinstance(answer, Exception):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # a burst of connections waits in the backlog instead of being reset


class ChatServer(BackgroundServer):
    """The HTTP server; `start()` serves in a background thread, `serve_forever()` in this one."""

    thread_name = "medattack-serve"

    def __init__(self, target: ChatTarget, config: ServeConfig) -> None:
        self.target = target
        self.config = config
        self.batcher = Batcher(target, config.max_batch, config.batch_wait_ms / 1000, config.max_queue)
        self._slots = threading.BoundedSemaphore(max(1, config.max_connections))
        self.stats = {"requests": 0, "failed_on_purpose": 0}
        self._lock = threading.Lock()
        self._failures_left = config.fail_first
        self.httpd = _Server((config.host, config.port), self._handler())
        self.httpd.daemon_threads = True

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def _take_failure(self) -> bool:
        with self._lock:
            self.stats["requests"] += 1
            if self._failures_left > 0:
                self._failures_left -= 1
                self.stats["failed_on_purpose"] += 1
                return True
            return False

    @property
    def model_id(self) -> str:
        return folder_name(self.target.name)

    def _tokens(self, text: str) -> int | None:
        model = getattr(self.target, "model", None)
        encode = getattr(model, "encode", None) or getattr(getattr(model, "tokenizer", None), "encode", None)
        return len(encode(text)) if callable(encode) else None

    def _completion(self, query: Query, answers: list[str]) -> dict[str, Any]:
        limit = query.limit(getattr(getattr(self.target, "config", None), "max_new_tokens", self.config.max_tokens))
        counts = [self._tokens(answer) for answer in answers]
        prompt = self._tokens(query.text)
        choices = [{"index": k, "message": {"role": "assistant", "content": answer},
                    "finish_reason": "length" if count is not None and count >= limit else "stop"}
                   for k, (answer, count) in enumerate(zip(answers, counts, strict=True))]
        completion = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
                      "created": int(time.time()), "model": self.model_id, "choices": choices}
        if prompt is not None and None not in counts:
            used = sum(c for c in counts if c is not None)
            completion["usage"] = {"prompt_tokens": prompt, "completion_tokens": used,
                                   "total_tokens": prompt + used}
        return completion

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self
        required_key = os.environ.get(self.config.api_key_env) if self.config.api_key_env else None
        if self.config.api_key_env and not required_key:
            raise MedattackError(f"serve: ${self.config.api_key_env} is empty; export the key or drop --api-key-env.")

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = server.config.read_timeout_s  # a stalled upload or idle connection is closed

            def handle(self) -> None:
                if not server._slots.acquire(blocking=False):
                    self.close_connection = True
                    try:
                        self.raw_requestline = self.rfile.readline(65537)
                        if self.parse_request():
                            self._error(503, "too many connections; retry shortly.", {"Retry-After": "1"})
                    except OSError:
                        pass
                    return
                try:
                    super().handle()
                finally:
                    server._slots.release()

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("%s " + fmt, self.client_address[0], *args)

            def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
                self._send(status, {"error": {"message": message, "type": "invalid_request_error"
                                              if status == 400 else "server_error"}}, headers)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.rstrip("/") in ("/v1/models", "/models"):
                    self._send(200, {"object": "list", "data": [
                        {"id": server.model_id, "object": "model", "owned_by": "medattack"}]})
                elif self.path.rstrip("/") == "/health":
                    self._send(200, {"status": "ok"})
                else:
                    self._error(404, f"no such path {self.path}; try /v1/chat/completions.")

            def do_POST(self) -> None:  # noqa: N802
                raw = (self.headers.get("Content-Length") or "0").strip()
                if not raw.isdigit():
                    self.close_connection = True
                    self._error(400, f"Content-Length must be a non-negative whole number, got {raw[:20]!r}.")
                    return
                length = int(raw)
                if length > MAX_BODY_BYTES:
                    self.close_connection = True
                    self._error(413, f"request body over {MAX_BODY_BYTES} bytes.")
                    return
                try:
                    body = self.rfile.read(length)
                except OSError:  # the client stopped sending: the read timed out
                    self.close_connection = True
                    return
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._error(404, f"no such path {self.path}; try /v1/chat/completions.")
                    return
                if required_key and self.headers.get("Authorization") != f"Bearer {required_key}":
                    self._error(401, "missing or wrong API key.")
                    return
                if server._take_failure():
                    self._error(503, "failing on purpose (--fail-first).", {"Retry-After": "0", "retry-after-ms": "1"})
                    return
                try:
                    payload = parse_body(body)
                    query = query_from_request(payload, max_prompt_chars=server.config.max_prompt_chars,
                                               max_tokens=server.config.max_tokens,
                                               needs_image=getattr(server.target, "needs_image", False))
                    n = choices_asked(payload)
                except (RequestError, TypeError, ValueError, AttributeError, OverflowError) as exc:
                    self._error(400, f"bad request: {exc}")
                    return
                # n answers: the query itself, then copies sampled with seeds seed + 1, seed + 2, ...
                seed = query.seed if query.seed is not None else 0
                copies = [query, *(replace(query, query_id=f"{query.query_id}-{k}", seed=seed + k)
                                   for k in range(1, n))]
                try:
                    futures = [server.batcher.submit(copy) for copy in copies]
                except queue.Full:
                    self._error(503, "the model is busy (queue full); retry shortly.", {"Retry-After": "1"})
                    return
                try:
                    answers = [future.result() for future in futures]
                except TargetError as exc:
                    self._error(500, str(exc))
                    return
                self._send(200, server._completion(query, answers))

        return Handler
