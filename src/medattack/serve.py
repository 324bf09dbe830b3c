"""`medattack serve MODEL`: a local model behind the OpenAI chat-completions API.

    POST /v1/chat/completions   messages with text and images as data URLs -> one assistant message
    GET  /v1/models             the one model served
    GET  /health                "ok"

Requests that arrive together are answered together: a batcher thread takes up to `max_batch`
waiting requests (waiting `batch_wait_ms` for company) and runs them as one generation batch, so a
GPU box can be red-teamed from anywhere by any OpenAI-compatible client, ours included.
`fail_first` answers the first N chat requests with 503 (Retry-After: 0) to exercise clients' retries.
When `api_key_env` is set, requests must carry that variable's value as a Bearer token.
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
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from medattack.config import option
from medattack.data.image_io import load_image
from medattack.errors import InputError, MedattackError, RequestError
from medattack.models.targets import ChatTarget, Query, TargetError

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ServeConfig:
    host: str = option("127.0.0.1", "Address to listen on (0.0.0.0 to accept other machines).")
    port: int = option(8000, "Port (0: any free port).")
    max_batch: int = option(8, "Requests answered in one generation batch at most.")
    batch_wait_ms: float = option(10.0, "How long the first waiting request waits for others to batch with.")
    fail_first: int = option(0, "Answer the first N chat requests with 503 (to test clients' retries).")
    api_key_env: str | None = option(None, "Require the key in this environment variable as a Bearer token.")


def query_from_request(payload: dict[str, Any], max_pixels: int = 16_000_000) -> Query:
    """The last user message of a chat-completions request -> Query (text parts joined, first image)."""
    if payload.get("stream"):
        raise RequestError("streaming is not supported; send stream=false.")
    messages = payload.get("messages")
    users = [m for m in messages or [] if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise RequestError("the request has no user message.")
    content = users[-1].get("content")
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
    texts, image = [], None
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
    max_tokens = payload.get("max_tokens") or payload.get("max_completion_tokens")
    return Query(uuid.uuid4().hex, "\n".join(texts), image,
                 max_new_tokens=int(max_tokens) if max_tokens else None)


class Batcher:
    """One thread runs the target; requests queue up and are answered in batches."""

    def __init__(self, target: ChatTarget, max_batch: int, wait_seconds: float) -> None:
        self.target = target
        self.max_batch = max(1, max_batch)
        self.wait_seconds = wait_seconds
        self.queue: queue.Queue[tuple[Query, Future[str]]] = queue.Queue()
        self.batch_sizes: list[int] = []
        self._thread = threading.Thread(target=self._loop, name="medattack-batcher", daemon=True)
        self._thread.start()

    def submit(self, query: Query) -> Future[str]:
        future: Future[str] = Future()
        self.queue.put((query, future))
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


class ChatServer:
    """The HTTP server; `start()` serves in a background thread, `serve_forever()` in this one."""

    def __init__(self, target: ChatTarget, config: ServeConfig) -> None:
        self.target = target
        self.config = config
        self.batcher = Batcher(target, config.max_batch, config.batch_wait_ms / 1000)
        self.stats = {"requests": 0, "failed_on_purpose": 0}
        self._lock = threading.Lock()
        self._failures_left = config.fail_first
        self.httpd = ThreadingHTTPServer((config.host, config.port), self._handler())
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> ChatServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="medattack-serve", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _take_failure(self) -> bool:
        with self._lock:
            self.stats["requests"] += 1
            if self._failures_left > 0:
                self._failures_left -= 1
                self.stats["failed_on_purpose"] += 1
                return True
            return False

    def _completion(self, answer: str) -> dict[str, Any]:
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                "model": self.target.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                             "finish_reason": "stop"}]}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self
        required_key = os.environ.get(self.config.api_key_env) if self.config.api_key_env else None
        if self.config.api_key_env and not required_key:
            raise MedattackError(f"serve: ${self.config.api_key_env} is empty; export the key or drop --api-key-env.")

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

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
                        {"id": server.target.name, "object": "model", "owned_by": "medattack"}]})
                elif self.path.rstrip("/") == "/health":
                    self._send(200, {"status": "ok"})
                else:
                    self._error(404, f"no such path {self.path}; try /v1/chat/completions.")

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    self._error(413, f"request body over {MAX_BODY_BYTES} bytes.")
                    return
                body = self.rfile.read(length)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._error(404, f"no such path {self.path}; try /v1/chat/completions.")
                    return
                if required_key and self.headers.get("Authorization") != f"Bearer {required_key}":
                    self._error(401, "missing or wrong API key.")
                    return
                if server._take_failure():
                    self._error(503, "failing on purpose (--fail-first).", {"Retry-After": "0"})
                    return
                try:
                    query = query_from_request(json.loads(body or b"{}"))
                except (json.JSONDecodeError, RequestError, TypeError, ValueError, AttributeError) as exc:
                    self._error(400, f"bad request: {exc}")
                    return
                try:
                    answer = server.batcher.submit(query).result()
                except TargetError as exc:
                    self._error(500, str(exc))
                    return
                self._send(200, server._completion(answer))

        return Handler
