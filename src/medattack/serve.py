"""`medattack serve MODEL`: a local model behind the OpenAI chat-completions API.

    POST /v1/chat/completions   messages with text and images as data URLs -> `n` assistant messages
    GET  /v1/models             the one model served
    GET  /health                "ok"

A request is read as the OpenAI API defines it: the system message (prepended to the question: the
served adapters have no system turn), `temperature`, `top_p` and `seed` (sampling; 0 = greedy), `n`
answers, `stream` and `max_tokens`. A request without an image is refused (400) when the served model
needs one (the LLaVA adapters do). The model id is the served model's name with odd characters replaced.

`max_tokens` (or `max_completion_tokens`): the request's ask wins over the served target's own
`max_new_tokens` (which only applies to a request that asks nothing), up to `ServeConfig.max_tokens`; a
larger ask is cut to that cap and the answer says so in the header `X-Medattack-Max-Tokens-Capped: <cap>`.
An answer cut at its limit says `finish_reason: "length"`.

`stream: true` answers with server-sent events as the OpenAI API and vLLM do (`text/event-stream`):
`chat.completion.chunk`s with the role delta of every choice, then, once the model has answered (whole
answers, not token by token), each choice's content delta and its finish chunk, a `usage` chunk with
empty choices when `stream_options.include_usage` asks for it, and `data: [DONE]`.

`usage` counts the prompt as the served model sees it, by its own prompt builder: for the LLaVA adapter
the chat template, the question and the image's tokens (one per patch feature), for an `hf` target its
processor's input ids. A target that cannot tell (an `api` or `python` target, a target of your own) has
only the question's text counted, by its tokenizer when it has one (no `usage` without one). Answers are
counted by the same tokenizer.

Requests that arrive together are answered together: a batcher thread takes up to `max_batch`
waiting requests (waiting `batch_wait_ms` for company) and runs them as one generation batch, so a
GPU box can be red-teamed from anywhere by any OpenAI-compatible client, ours included.
`fail_first` answers the first N chat requests with 503 (Retry-After: 0) to exercise clients' retries.
When `api_key_env` is set, requests must carry that variable's value as a Bearer token.

Hostile or broken requests get a 4xx JSON answer and never stall the server: the body, the prompt, the
answer length and the JSON nesting are bounded, a connection that stops sending times out, at most
`max_connections` are handled at once and at most `max_queue` queries wait for the model; past either
the answer is 503 with Retry-After, never a reset connection.

Reading a request is serve_request.py, the event stream serve_sse.py.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, is_dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import torch

from medattack.background import BackgroundServer
from medattack.config import option
from medattack.errors import MedattackError, RequestError
from medattack.models.causal_lm import SUFFIX_MARK
from medattack.models.targets import ChatTarget, HFChatTarget, LlavaTarget, Query, TargetError
from medattack.rundir import folder_name
from medattack.serve_request import (
    ChatRequest,
    choices_asked,
    parse_body,
    query_from_request,
    stream_asked,
    tokens_asked,
)
from medattack.serve_sse import EventStream, answer_chunks, role_chunks

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 64 * 1024 * 1024
CAPPED_HEADER = "X-Medattack-Max-Tokens-Capped"


@dataclass(frozen=True)
class ServeConfig:
    host: str = option("127.0.0.1", "Address to listen on (0.0.0.0 to accept other machines).")
    port: int = option(8000, "Port (0: any free port).")
    max_batch: int = option(8, "Requests answered in one generation batch at most.")
    batch_wait_ms: float = option(10.0, "How long the first waiting request waits for others to batch with.")
    fail_first: int = option(0, "Answer the first N chat requests with 503 (to test clients' retries).")
    api_key_env: str | None = option(None, "Require the key in this environment variable as a Bearer token.")
    max_prompt_chars: int = option(32_000, "Longest user text accepted, in characters (about 8k tokens).")
    max_tokens: int = option(4096, "Cap on a request's max_tokens: a larger ask is cut to it (and the answer says "
                             "so in the X-Medattack-Max-Tokens-Capped header).")
    read_timeout_s: float = option(30.0, "A connection that sends nothing for this long is closed.")
    max_connections: int = option(64, "Connections handled at once; more get 503 with Retry-After.")
    max_queue: int = option(256, "Queries waiting for the model at most; more get 503 with Retry-After.")


# --- counting tokens ------------------------------------------------------------------------------


@functools.singledispatch
def text_tokens(target: ChatTarget, text: str) -> int | None:
    """Tokens of a text by the target's tokenizer (its model's `encode`, or `tokenizer.encode`); None without one."""
    model = getattr(target, "model", None)
    encode = getattr(model, "encode", None) or getattr(getattr(model, "tokenizer", None), "encode", None)
    return len(encode(text)) if callable(encode) else None


@text_tokens.register
def _hf_text_tokens(target: HFChatTarget, text: str) -> int | None:
    tokenizer = getattr(target.processor, "tokenizer", target.processor)
    return len(tokenizer.encode(text, add_special_tokens=False))


@functools.singledispatch
def prompt_tokens(target: ChatTarget, query: Query) -> int | None:
    """Tokens of the prompt the target's model reads for `query`. A target kind registers how its prompt is
    built; one that cannot tell (api, python, your own) has the query's text counted (`text_tokens`)."""
    return text_tokens(target, query.text)


@prompt_tokens.register
def _llava_prompt_tokens(target: LlavaTarget, query: Query) -> int | None:
    """The LLaVA adapter's generation prompt (LlavaGeneration.generate_batch): the rendered template around the
    question, with one token per image feature in place of the image mark."""
    model = target.model
    rendered = model.render(query.text).replace(" " + SUFFIX_MARK, "", 1).replace(SUFFIX_MARK, "", 1)
    before, after = rendered.split(model.image_mark, 1)
    return len(model._ids(before, first=True)) + _image_tokens(model) + len(model._ids(after))


@functools.lru_cache(maxsize=4)
def _image_tokens(model: Any) -> int:
    """Image features a LLaVA adapter puts in the prompt (its pixels are always resized to `image_size`)."""
    with torch.no_grad():
        return int(model.image_features(torch.zeros(1, 3, *model.image_size, device=model.device)).shape[1])


@prompt_tokens.register
def _hf_prompt_tokens(target: HFChatTarget, query: Query) -> int | None:
    """The input ids the target's processor makes of its prompt and the image (image tokens included)."""
    from PIL import Image

    images = None if query.image is None else [Image.fromarray(query.image)]
    inputs = target.processor(text=[target._prompt(query.text, query.image is not None)], images=images,
                              return_tensors="pt")
    return int(inputs["input_ids"].shape[1])


# --- the model, the server, the handler -----------------------------------------------------------


def served_copy(target: ChatTarget, cap: int) -> tuple[ChatTarget, int | None]:
    """(the target to serve, its own answer length). A target caps every query at its config's
    max_new_tokens (Query.limit keeps the smaller); the served copy's is raised to `cap`, so a request's
    max_tokens wins and a request without one is given the target's own. A target without such a config
    is served as it is (None)."""
    config = getattr(target, "config", None)
    default = getattr(config, "max_new_tokens", None)
    if not is_dataclass(config) or isinstance(config, type) or not isinstance(default, int):
        return target, None
    served: Any = copy.copy(target)
    served.config = replace(config, max_new_tokens=max(default, cap))
    return served, default


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


class _HTTPServer(ThreadingHTTPServer):
    """The listening socket; its handlers find the ChatServer as `self.server.chat`."""

    request_queue_size = 256  # a burst of connections waits in the backlog instead of being reset
    daemon_threads = True

    def __init__(self, address: tuple[str, int], chat: ChatServer) -> None:
        self.chat = chat
        super().__init__(address, _ChatHandler)


class ChatServer(BackgroundServer):
    """The HTTP server; `start()` serves in a background thread, `serve_forever()` in this one."""

    thread_name = "medattack-serve"

    def __init__(self, target: ChatTarget, config: ServeConfig) -> None:
        self.config = config
        self.target, self.default_tokens = served_copy(target, config.max_tokens)
        self.required_key = os.environ.get(config.api_key_env) if config.api_key_env else None
        if config.api_key_env and not self.required_key:
            raise MedattackError(f"serve: ${config.api_key_env} is empty; export the key or drop --api-key-env.")
        self.batcher = Batcher(self.target, config.max_batch, config.batch_wait_ms / 1000, config.max_queue)
        self.slots = threading.BoundedSemaphore(max(1, config.max_connections))
        self.stats = {"requests": 0, "failed_on_purpose": 0}
        self._lock = threading.Lock()
        self._failures_left = config.fail_first
        self.httpd = _HTTPServer((config.host, config.port), self)

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    @property
    def model_id(self) -> str:
        return folder_name(self.target.name)

    def take_failure(self) -> bool:
        """Count a chat request; True when it is one of the first `fail_first` (answered 503 on purpose)."""
        with self._lock:
            self.stats["requests"] += 1
            if self._failures_left > 0:
                self._failures_left -= 1
                self.stats["failed_on_purpose"] += 1
                return True
            return False

    def read(self, payload: dict[str, Any]) -> ChatRequest:
        """A request's JSON -> ChatRequest (RequestError naming what to change)."""
        query = query_from_request(payload, max_prompt_chars=self.config.max_prompt_chars,
                                   max_tokens=self.config.max_tokens, default_tokens=self.default_tokens,
                                   needs_image=getattr(self.target, "needs_image", False))
        asked = tokens_asked(payload)
        return ChatRequest(query, choices_asked(payload), *stream_asked(payload),
                           capped=asked is not None and asked > self.config.max_tokens)

    def submit(self, request: ChatRequest) -> list[Future[str]]:
        """Queue the request's n answers: the query itself, then copies sampled with seeds seed + 1, seed + 2, ...
        (queue.Full when the queue is full)."""
        query = request.query
        seed = query.seed if query.seed is not None else 0
        copies = [query, *(replace(query, query_id=f"{query.query_id}-{k}", seed=seed + k)
                           for k in range(1, request.n))]
        return [self.batcher.submit(copy) for copy in copies]

    def completion(self, query: Query, answers: list[str], head: dict[str, Any]) -> dict[str, Any]:
        """The chat.completion object of the answers; `head` is its id, created and model."""
        limit = query.max_new_tokens or self.config.max_tokens
        counts = [text_tokens(self.target, answer) for answer in answers]
        choices = [{"index": k, "message": {"role": "assistant", "content": answer},
                    "finish_reason": "length" if count is not None and count >= limit else "stop"}
                   for k, (answer, count) in enumerate(zip(answers, counts, strict=True))]
        completion = {**head, "object": "chat.completion", "choices": choices}
        try:
            prompt = prompt_tokens(self.target, query)
        except Exception as exc:  # noqa: BLE001 - counting must never cost the answer
            log.warning("serve: the prompt's tokens could not be counted (%s); the answer has no usage", exc)
            prompt = None
        if prompt is not None and None not in counts:
            used = sum(c for c in counts if c is not None)
            completion["usage"] = {"prompt_tokens": prompt, "completion_tokens": used, "total_tokens": prompt + used}
        return completion

    def head(self) -> dict[str, Any]:
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": self.model_id}


class _ChatHandler(BaseHTTPRequestHandler):
    """One connection: its requests answered with the state of `self.server.chat`."""

    protocol_version = "HTTP/1.1"

    @property
    def chat(self) -> ChatServer:
        return cast(_HTTPServer, self.server).chat

    def setup(self) -> None:
        self.timeout = self.chat.config.read_timeout_s  # a stalled upload or idle connection is closed
        super().setup()

    def handle(self) -> None:
        if not self.chat.slots.acquire(blocking=False):
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
            self.chat.slots.release()

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
                {"id": self.chat.model_id, "object": "model", "owned_by": "medattack"}]})
        elif self.path.rstrip("/") == "/health":
            self._send(200, {"status": "ok"})
        else:
            self._error(404, f"no such path {self.path}; try /v1/chat/completions.")

    def _body(self) -> bytes | None:
        """The request body, or None once the request has been answered (bad length) or the client stalled."""
        raw = (self.headers.get("Content-Length") or "0").strip()
        if not raw.isdigit():
            self.close_connection = True
            self._error(400, f"Content-Length must be a non-negative whole number, got {raw[:20]!r}.")
            return None
        if int(raw) > MAX_BODY_BYTES:
            self.close_connection = True
            self._error(413, f"request body over {MAX_BODY_BYTES} bytes.")
            return None
        try:
            return self.rfile.read(int(raw))
        except OSError:  # the client stopped sending: the read timed out
            self.close_connection = True
            return None

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        chat = self.chat
        body = self._body()
        if body is None:
            return
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._error(404, f"no such path {self.path}; try /v1/chat/completions.")
            return
        if chat.required_key and self.headers.get("Authorization") != f"Bearer {chat.required_key}":
            self._error(401, "missing or wrong API key.")
            return
        if chat.take_failure():
            self._error(503, "failing on purpose (--fail-first).", {"Retry-After": "0", "retry-after-ms": "1"})
            return
        try:
            request = chat.read(parse_body(body))
        except (RequestError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            self._error(400, f"bad request: {exc}")
            return
        try:
            futures = chat.submit(request)
        except queue.Full:
            self._error(503, "the model is busy (queue full); retry shortly.", {"Retry-After": "1"})
            return
        headers = {CAPPED_HEADER: str(chat.config.max_tokens)} if request.capped else {}
        if request.stream:
            self._stream(request, futures, headers)
            return
        try:
            answers = [future.result() for future in futures]
        except TargetError as exc:
            self._error(500, str(exc))
            return
        self._send(200, chat.completion(request.query, answers, chat.head()), headers)

    def _stream(self, request: ChatRequest, futures: list[Future[str]], headers: dict[str, str]) -> None:
        """The answers as server-sent events: the role deltas at once, the rest when the model has answered."""
        head = self.chat.head()
        self.send_response(200)
        for name, value in {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                            "Transfer-Encoding": "chunked", **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        events = EventStream(self.wfile)
        try:
            events.send(*role_chunks(head, request.n, request.include_usage))
            try:
                answers = [future.result() for future in futures]
            except TargetError as exc:
                events.send({"error": {"message": str(exc), "type": "server_error"}})
            else:
                completion = self.chat.completion(request.query, answers, head)
                events.send(*answer_chunks(completion, request.include_usage))
            events.close()
        except OSError:  # the client went away mid-stream
            self.close_connection = True
