"""Server-sent events of `medattack serve` (`stream: true`), shaped as the OpenAI API and vLLM send them.

    data: {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant"}, ...}]}
    data: {... "choices": [{"index": 0, "delta": {"content": "the whole answer"}, "finish_reason": null}]}
    data: {... "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    data: {... "choices": [], "usage": {...}}        (with stream_options.include_usage)
    data: [DONE]

The model answers whole (no token streaming): the role deltas go out as soon as a request is queued, each
answer's content as one delta once it is generated. The body is sent with chunked transfer encoding, so
the connection stays open for the client's next request.
"""

from __future__ import annotations

import json
from typing import Any, BinaryIO


def _chunk(head: dict[str, Any], choices: list[dict[str, Any]], include_usage: bool) -> dict[str, Any]:
    return {**head, "object": "chat.completion.chunk", "choices": choices,
            **({"usage": None} if include_usage else {})}


def role_chunks(head: dict[str, Any], n: int, include_usage: bool) -> list[dict[str, Any]]:
    """The first chunk of each of the n choices: the assistant role. `head` is the id, created and model."""
    return [_chunk(head, [{"index": k, "delta": {"role": "assistant"}, "logprobs": None, "finish_reason": None}],
                   include_usage) for k in range(n)]


def answer_chunks(completion: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """The rest of the stream of a chat.completion: each choice's content and finish chunks, then the usage
    chunk (empty choices) when asked."""
    head = {key: completion[key] for key in ("id", "created", "model")}
    chunks = []
    for choice in completion["choices"]:
        content = choice["message"]["content"]
        if content:
            chunks.append(_chunk(head, [{"index": choice["index"], "delta": {"content": content}, "logprobs": None,
                                         "finish_reason": None}], include_usage))
        chunks.append(_chunk(head, [{"index": choice["index"], "delta": {}, "logprobs": None,
                                     "finish_reason": choice["finish_reason"]}], include_usage))
    if include_usage:
        chunks.append({**_chunk(head, [], include_usage), "usage": completion.get("usage")})
    return chunks


class EventStream:
    """`data:` events written as HTTP/1.1 chunks to a response whose headers said `Transfer-Encoding: chunked`."""

    def __init__(self, wfile: BinaryIO) -> None:
        self.wfile = wfile

    def _write(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode("ascii") + data + b"\r\n")
        self.wfile.flush()

    def send(self, *events: dict[str, Any]) -> None:
        """Each event as one `data: {json}` line."""
        for event in events:
            self._write(b"data: " + json.dumps(event).encode("utf-8") + b"\n\n")

    def close(self) -> None:
        """`data: [DONE]` and the last (empty) chunk."""
        self._write(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
