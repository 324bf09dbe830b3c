"""A loopback OpenAI-compatible provider with a rate limit, as hosted APIs enforce one: a token bucket of `rate`
requests per second holding at most `burst` (one second's worth by default, as per-minute limits allow bursts);
a request that finds it empty gets 429 with Retry-After (and retry-after-ms) saying when a token will be there. It
counts what it accepted, refused, and any prompt it accepted twice (an answer asked again)."""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class RateLimitedProvider:
    """`with RateLimitedProvider(rate) as provider:` serves `provider.base_url` until the block ends."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate, self.burst = rate, burst if burst is not None else rate
        self.tokens, self.filled = self.burst, time.monotonic()
        self.accepted = self.refused = 0
        self.prompts: Counter[str] = Counter()
        self.lock = threading.Lock()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                wait = provider.admit(json.dumps(payload.get("messages"), sort_keys=True) + str(payload.get("seed")))
                if wait > 0:
                    body = b'{"error": {"message": "rate limit reached", "type": "requests"}}'
                    self.send_response(429)
                    self.send_header("Retry-After", str(math.ceil(wait)))
                    self.send_header("retry-after-ms", str(math.ceil(wait * 1000)))
                else:
                    body = json.dumps({"id": "x", "object": "chat.completion", "model": payload.get("model"),
                                       "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                           "role": "assistant", "content": "I'm sorry, I can't help with that."}}],
                                       "usage": {"prompt_tokens": 10, "completion_tokens": 8}}).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def admit(self, prompt: str) -> float:
        """0 when a token is there and the request is taken, else the seconds until one will be."""
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.filled) * self.rate)
            self.filled = now
            if self.tokens < 1:
                self.refused += 1
                return (1 - self.tokens) / self.rate
            self.tokens -= 1
            self.accepted += 1
            self.prompts[prompt] += 1
            return 0.0

    @property
    def duplicates(self) -> int:
        """Prompts accepted more than once."""
        return sum(count - 1 for count in self.prompts.values() if count > 1)

    def __enter__(self) -> RateLimitedProvider:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
