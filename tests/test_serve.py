"""`medattack serve`: a local model behind the OpenAI chat-completions API, asked by our API client, by raw
HTTP and by the `openai` SDK on loopback (answers, batching, retries, keys, max_tokens, streaming, usage)."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from chat_helpers import CAPS_TARGET, random_queries
from medattack.models.targets import (
    APIChatTarget,
    LlavaTarget,
    Query,
    TargetConfig,
    image_data_url,
    load_target,
)
from medattack.openai_client import APIConfig
from medattack.rundir import folder_name
from medattack.serve import CAPPED_HEADER, ChatServer, ServeConfig


@pytest.fixture
def serve(request):
    servers = []

    def start(target, **options) -> ChatServer:
        server = ChatServer(target, ServeConfig(port=0, **options)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def _post(url: str, payload: dict, headers: dict | None = None, with_headers: bool = False):
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json",
                                                                        **(headers or {})}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as handle:
            status, body, answer_headers = handle.status, json.loads(handle.read()), handle.headers
    except urllib.error.HTTPError as error:
        status, body, answer_headers = error.code, json.loads(error.read()), error.headers
    return (status, body, answer_headers) if with_headers else (status, body)


def _image_payload(text: str, **fields) -> dict:
    url = image_data_url(np.full((32, 32, 3), 90, dtype=np.uint8))
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": text},
                                                      {"type": "image_url", "image_url": {"url": url}}]}], **fields}


# --- answers, batching, retries, keys ---------------------------------------------------------------------


def test_serve_answers_like_the_local_model(serve, embedded_whitebox):
    local = LlavaTarget(TargetConfig(max_new_tokens=10), model=embedded_whitebox)
    server = serve(local, max_batch=4)
    remote = APIChatTarget(TargetConfig(kind="api", model="embedded", max_new_tokens=10,
                                        api=APIConfig(base_url=server.base_url, concurrency=3)))
    queries = random_queries(3)
    assert remote.answer(queries) == local.answer(queries)


def test_serve_retries_concurrency_and_cache(serve, tiny_whitebox, tmp_path):
    server = serve(LlavaTarget(TargetConfig(max_new_tokens=4), model=tiny_whitebox), max_batch=8, fail_first=3,
                   batch_wait_ms=50)
    config = TargetConfig(kind="api", model="tiny", max_new_tokens=4,  # the request's max_tokens is served
                          api=APIConfig(base_url=server.base_url, concurrency=6, max_retries=5))
    remote = APIChatTarget(config, cache_path=tmp_path / "cache.jsonl")
    queries = random_queries(12)
    first = remote.answer(queries)
    assert all(isinstance(a, str) for a in first)
    assert server.stats["failed_on_purpose"] == 3 and remote.client.stats["retries"] == 3
    assert max(server.batcher.batch_sizes) > 1  # concurrent requests were answered together
    requests = server.stats["requests"]
    again = APIChatTarget(config, cache_path=tmp_path / "cache.jsonl").answer(queries)  # a new client, same cache
    assert again == first and server.stats["requests"] == requests  # every answer came from the cache


def test_serve_rejects_bad_requests_with_a_reason(serve, tiny_whitebox):
    server = serve(LlavaTarget(TargetConfig(max_new_tokens=3), model=tiny_whitebox))
    url = f"{server.base_url}/chat/completions"
    cases = [
        ({"messages": [{"role": "system", "content": "hi"}]}, "no user message"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}, {
            "type": "image_url", "image_url": {"url": "http://example.com/x.png"}}]}]}, "data URLs"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
            "url": "data:image/png;base64,bm90IGFuIGltYWdl"}}]}]}, "could not be read"),
        (_image_payload("x", stream="yes"), "stream must be true or false"),
        (_image_payload("x", stream_options={"include_usage": True}), "stream_options"),
        (_image_payload("x", max_tokens=0), "max_tokens"),
    ]
    for payload, reason in cases:
        status, body = _post(url, payload)
        assert status == 400 and reason in body["error"]["message"]
    status, body = _post(url, {"messages": [{"role": "user", "content": "no image here"}]})
    assert status == 400 and "no image" in body["error"]["message"]  # the model needs one: the client's mistake
    models = json.loads(urllib.request.urlopen(f"{server.base_url}/models", timeout=10).read())
    assert models["data"][0]["id"] == folder_name(tiny_whitebox.name) and " " not in models["data"][0]["id"]


def test_serve_requires_the_key_when_asked(serve, tiny_whitebox, monkeypatch):
    monkeypatch.setenv("MEDATTACK_TEST_SERVE_KEY", "sk-serve-123")
    server = serve(LlavaTarget(TargetConfig(max_new_tokens=3), model=tiny_whitebox),
                   api_key_env="MEDATTACK_TEST_SERVE_KEY")
    query = random_queries(1)[0]
    image = {"type": "image_url", "image_url": {"url": image_data_url(query.image)}}
    text = {"type": "text", "text": query.text}
    payload = {"model": "tiny", "messages": [{"role": "user", "content": [text, image]}]}
    assert _post(f"{server.base_url}/chat/completions", payload)[0] == 401
    status, body = _post(f"{server.base_url}/chat/completions", payload, {"Authorization": "Bearer sk-serve-123"})
    assert status == 200 and isinstance(body["choices"][0]["message"]["content"], str)


def test_serve_speaks_the_api(serve, tiny_whitebox):
    seen: list[Query] = []

    class Recording(LlavaTarget):
        def answer(self, queries):
            seen.extend(queries)
            return super().answer(queries)

    server = serve(Recording(TargetConfig(model="tiny", max_new_tokens=8), model=tiny_whitebox))
    url = f"{server.base_url}/chat/completions"
    status, body = _post(url, {**_image_payload("What is shown?", max_tokens=3),
                               "messages": [{"role": "system", "content": "Answer as a radiologist."},
                                            *_image_payload("What is shown?")["messages"]]})
    assert status == 200 and seen[-1].text == "Answer as a radiologist.\n\nWhat is shown?"  # the system message
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"  # cut at max_tokens = 3
    assert body["usage"]["completion_tokens"] >= 3 and body["usage"]["prompt_tokens"] > 0
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    status, body = _post(url, _image_payload("Describe it.", n=3))
    assert status == 200 and [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert len({c["message"]["content"] for c in body["choices"]}) == 1  # greedy: the same answer three times
    sampled = [_post(url, _image_payload("Describe it.", temperature=1.5, seed=seed, max_tokens=6))[1]
               for seed in (1, 1, 2)]
    texts = [s["choices"][0]["message"]["content"] for s in sampled]
    assert texts[0] == texts[1]  # the same seed samples the same answer
    assert seen[-1].temperature == 1.5 and seen[-1].seed == 2
    status, body = _post(url, _image_payload("Describe it.", temperature=3))
    assert status == 400 and "temperature" in body["error"]["message"]


# --- the handler ----------------------------------------------------------------------------------------


def test_one_module_level_handler_class_serves_every_server_from_its_own_state(serve, tiny_whitebox, monkeypatch):
    from medattack import serve as serve_module

    monkeypatch.setenv("MEDATTACK_TEST_SERVE_KEY", "sk-a")

    first = serve(LlavaTarget(TargetConfig(max_new_tokens=2), model=tiny_whitebox),
                  api_key_env="MEDATTACK_TEST_SERVE_KEY")
    second = serve(LlavaTarget(TargetConfig(max_new_tokens=2), model=tiny_whitebox))
    second.target.name = "second model"
    handler = serve_module._ChatHandler
    assert first.httpd.RequestHandlerClass is handler and second.httpd.RequestHandlerClass is handler
    assert handler.__qualname__ == "_ChatHandler"  # defined at module level, not inside a function
    assert first.httpd.chat is first and second.httpd.chat is second
    payload = _image_payload("What is shown?", max_tokens=2)
    assert _post(f"{first.base_url}/chat/completions", payload)[0] == 401  # the first server's key
    status, body = _post(f"{second.base_url}/chat/completions", payload)  # the second has none
    assert status == 200 and body["model"] == "second_model"


# --- max_tokens ---------------------------------------------------------------------------------------------



def test_the_request_max_tokens_wins_over_the_target_default_up_to_the_stated_cap(serve, tmp_path):
    factory = tmp_path / "caps.py"
    factory.write_text(CAPS_TARGET)
    target = load_target(TargetConfig(kind="python", model=f"{factory}:load", max_new_tokens=256))
    server = serve(target, max_tokens=1000)
    url = f"{server.base_url}/chat/completions"

    def ask(**fields) -> tuple[str, str | None]:
        status, body, headers = _post(url, {"messages": [{"role": "user", "content": "hi"}], **fields},
                                      with_headers=True)
        assert status == 200, body
        return body["choices"][0]["message"]["content"].split(" q=")[0], headers.get(CAPPED_HEADER)

    assert ask(max_tokens=512) == ("cap=512", None)  # more than the target's 256: the request wins
    assert ask(max_completion_tokens=40) == ("cap=40", None)
    assert ask() == ("cap=256", None)  # no ask: the target's own default
    assert ask(max_tokens=5000) == ("cap=1000", "1000")  # over the cap: cut to it, and said so
    assert ask(max_tokens=10**9) == ("cap=1000", "1000")
    assert target.config.max_new_tokens == 256  # the caller's target is not changed


def test_an_answer_cut_at_a_larger_ask_says_length(serve, tiny_whitebox):
    server = serve(LlavaTarget(TargetConfig(model="tiny", max_new_tokens=3), model=tiny_whitebox), max_tokens=12)
    status, body, headers = _post(f"{server.base_url}/chat/completions", _image_payload("Describe it.", max_tokens=40),
                                  with_headers=True)
    assert status == 200 and headers.get(CAPPED_HEADER) == "12"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] > 3 + 1  # past the target's own 3 tokens, up to the cap of 12


# --- streaming ----------------------------------------------------------------------------------------------


def test_a_stream_from_the_openai_sdk_gives_the_answers_of_the_plain_request(serve, embedded_whitebox):
    from openai import OpenAI

    server = serve(LlavaTarget(TargetConfig(max_new_tokens=8), model=embedded_whitebox))
    client = OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    ask = {"model": server.model_id, "messages": _image_payload("What does this image show?")["messages"],
           "n": 2, "temperature": 0, "seed": 0, "max_tokens": 8}
    plain = client.chat.completions.create(**ask)
    chunks = list(client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    assert {c.object for c in chunks} == {"chat.completion.chunk"} and len({c.id for c in chunks}) == 1
    assert [c.choices[0].delta.role for c in chunks[:2]] == ["assistant", "assistant"]
    texts, finish = {0: "", 1: ""}, {}
    for chunk in chunks[:-1]:
        (choice,) = chunk.choices
        texts[choice.index] += choice.delta.content or ""
        if choice.finish_reason:
            finish[choice.index] = choice.finish_reason
    assert [texts[0], texts[1]] == [c.message.content for c in plain.choices] and texts[0]
    assert finish == {c.index: c.finish_reason for c in plain.choices}
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage  # the usage chunk comes last
    assert all(c.usage is None for c in chunks[:-1])


def test_a_stream_is_server_sent_events_ending_in_done_and_errors_arrive_in_it(serve, tiny_whitebox):
    from openai import APIError, OpenAI

    server = serve(LlavaTarget(TargetConfig(model="tiny", max_new_tokens=3), model=tiny_whitebox))
    host, port = server.httpd.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    for _ in range(2):  # the connection stays open for the next request
        connection.request("POST", "/v1/chat/completions", json.dumps(_image_payload("Hi", stream=True, max_tokens=2)),
                           {"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200 and response.getheader("Content-Type") == "text/event-stream"
        events = [line for line in response.read().decode().split("\n\n") if line]
        assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
        finish = json.loads(events[-2][6:])["choices"][0]
        assert finish["delta"] == {} and finish["finish_reason"] in ("stop", "length")
    connection.close()

    class Broken:
        name = "broken"

        def answer(self, queries):
            raise RuntimeError("out of memory")

    broken = serve(Broken())
    client = OpenAI(base_url=broken.base_url, api_key="unused", max_retries=0)
    with pytest.raises(APIError, match="out of memory"):
        list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True))


# --- usage ----------------------------------------------------------------------------------------------------


def test_prompt_tokens_are_the_tokens_the_llava_adapter_feeds_its_model(serve, embedded_whitebox):
    prefill: list[int] = []
    hook = embedded_whitebox.decoder.register_forward_pre_hook(
        lambda module, args, kwargs: prefill.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True)
    try:
        server = serve(LlavaTarget(TargetConfig(max_new_tokens=2), model=embedded_whitebox))
        question = "What is shown?"
        status, body = _post(f"{server.base_url}/chat/completions", _image_payload(question, max_tokens=2))
    finally:
        hook.remove()
    assert status == 200
    prompt = body["usage"]["prompt_tokens"]
    assert prompt > len(embedded_whitebox.encode(question))  # the template and the image count too
    assert prompt == prefill[0]  # the positions the model read before its first answer token


def test_prompt_tokens_of_an_hf_target_are_its_processor_input_ids(serve, saved_tiny_vlm):
    target = load_target(TargetConfig(kind="hf", model=str(saved_tiny_vlm), max_new_tokens=2))
    lengths: list[int] = []
    generate = target.model.generate

    def recording(**inputs):
        lengths.append(inputs["input_ids"].shape[1])
        return generate(**inputs)

    target.model.generate = recording
    server = serve(target)
    status, body = _post(f"{server.base_url}/chat/completions", _image_payload("What is shown?", max_tokens=2))
    assert status == 200 and body["usage"]["prompt_tokens"] == lengths[0]
    assert lengths[0] > len(target.processor.tokenizer.encode("What is shown?", add_special_tokens=False))
