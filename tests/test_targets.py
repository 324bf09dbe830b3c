"""Black-box targets (local LLaVA adapter, transformers image-text-to-text, OpenAI-compatible API) and
`medattack serve` with our API client on loopback."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import replace

import numpy as np
import pytest

from medattack.api import APIConfig
from medattack.models.targets import (
    APIChatTarget,
    LlavaTarget,
    Query,
    TargetConfig,
    TargetError,
    image_data_url,
    load_target,
    parse_target,
)
from medattack.rundir import folder_name
from medattack.serve import ChatServer, ServeConfig


def _queries(n: int, seed: int = 0, prefix: str = "q") -> list[Query]:
    rng = np.random.default_rng(seed)
    texts = ["What does this image show?", "Describe the findings in this chest CT image, please.",
             "Is there a fracture?", "Summarise this scan in one sentence for a referring clinician."]
    return [Query(f"{prefix}{i}", texts[i % len(texts)], rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8))
            for i in range(n)]


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


def test_parse_target_specs():
    assert parse_target("embedded") == TargetConfig(kind="llava", model="embedded")
    assert parse_target("llava-hf/llava-1.5-7b-hf").kind == "llava"
    assert parse_target("hf:google/medgemma-4b-it") == TargetConfig(kind="hf", model="google/medgemma-4b-it")
    api = parse_target("api:gpt-4o")
    assert (api.kind, api.model, api.name) == ("api", "gpt-4o", "api:gpt-4o")
    assert parse_target("C:/models/llava").kind == "llava"  # a drive letter is not a target kind


def test_batched_answers_equal_one_at_a_time(embedded_whitebox):
    target = LlavaTarget(TargetConfig(max_new_tokens=12, batch_size=4), model=embedded_whitebox)
    queries = _queries(3)
    batched = target.answer(queries)
    assert batched == [target.answer([q])[0] for q in queries]
    assert all(isinstance(a, str) and a for a in batched)


def test_per_query_token_limit_and_a_failing_query_does_not_stop_the_batch(tiny_whitebox):
    target = LlavaTarget(TargetConfig(max_new_tokens=10, batch_size=4), model=tiny_whitebox)
    good = _queries(2)
    short = Query("short", good[0].text, good[0].image, max_new_tokens=3)
    broken = Query("no-image", "What is this?", None)
    answers = target.answer([good[0], broken, short, good[1]])
    assert isinstance(answers[1], TargetError) and "no-image" in str(answers[1])
    assert [isinstance(a, str) for a in answers] == [True, False, True, True]
    assert len(tiny_whitebox.encode(answers[2])) <= 3 + 1  # decoding may merge or split at the edges
    assert answers[0].lstrip().startswith(answers[2].strip()[:3])  # the same greedy start, cut earlier


def test_exact_pixels_are_used_when_the_resolution_matches(tiny_whitebox):
    import torch

    target = LlavaTarget(TargetConfig(max_new_tokens=6), model=tiny_whitebox)
    image = _queries(1)[0]
    exact = torch.rand(1, 3, *tiny_whitebox.image_size, generator=torch.Generator().manual_seed(1))
    expected = tiny_whitebox.generate_batch([image.text], exact, 6)
    with_exact = target.answer([Query("x", image.text, image.image, exact_pixels=exact)])
    assert with_exact == expected


def test_hf_image_text_to_text_target(saved_tiny_vlm):
    target = load_target(TargetConfig(kind="hf", model=str(saved_tiny_vlm), max_new_tokens=5, batch_size=2))
    queries = _queries(3)
    answers = target.answer(queries)
    assert target.name == f"hf:{saved_tiny_vlm}"
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    assert answers == [target.answer([q])[0] for q in queries]  # left padding does not change greedy answers
    sampled = [replace(q, temperature=1.0, seed=k) for k, q in enumerate(queries)]
    mixed = [queries[0], *sampled[1:]]
    assert target.answer(mixed) == [answers[0], *target.answer(sampled)[1:]]  # each seed answered on its own
    assert target.answer(sampled) == target.answer(sampled)  # a seed reproduces its answer


def test_api_target_sends_text_and_a_png_data_url(fake_api):
    target = APIChatTarget(TargetConfig(kind="api", model="vision-model", api=APIConfig(base_url=fake_api.base_url)))
    answers = target.answer(_queries(2))
    assert answers == ["mostly greyscale with high contrast"] * 2  # the fake answers so only when it got a PNG
    assert image_data_url(np.zeros((2, 2, 3), np.uint8)).startswith("data:image/png;base64,")


def test_serve_answers_like_the_local_model(serve, embedded_whitebox):
    local = LlavaTarget(TargetConfig(max_new_tokens=10), model=embedded_whitebox)
    server = serve(local, max_batch=4)
    remote = APIChatTarget(TargetConfig(kind="api", model="embedded", max_new_tokens=10,
                                        api=APIConfig(base_url=server.base_url, concurrency=3)))
    queries = _queries(3)
    assert remote.answer(queries) == local.answer(queries)


def test_serve_retries_concurrency_and_cache(serve, tiny_whitebox, tmp_path):
    server = serve(LlavaTarget(TargetConfig(max_new_tokens=4), model=tiny_whitebox), max_batch=8, fail_first=3,
                   batch_wait_ms=50)
    config = TargetConfig(kind="api", model="tiny", api=APIConfig(base_url=server.base_url, concurrency=6,
                                                                    max_retries=5))
    remote = APIChatTarget(config, cache_path=tmp_path / "cache.jsonl")
    queries = _queries(12)
    first = remote.answer(queries)
    assert all(isinstance(a, str) for a in first)
    assert server.stats["failed_on_purpose"] == 3 and remote.client.stats["retries"] == 3
    assert max(server.batcher.batch_sizes) > 1  # concurrent requests were answered together
    requests = server.stats["requests"]
    again = APIChatTarget(config, cache_path=tmp_path / "cache.jsonl").answer(queries)  # a new client, same cache
    assert again == first and server.stats["requests"] == requests  # every answer came from the cache


def _post(url: str, payload: dict, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json",
                                                                        **(headers or {})}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as handle:
            return handle.status, json.loads(handle.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_serve_rejects_bad_requests_with_a_reason(serve, tiny_whitebox):
    server = serve(LlavaTarget(TargetConfig(max_new_tokens=3), model=tiny_whitebox))
    url = f"{server.base_url}/chat/completions"
    cases = [
        ({"messages": [{"role": "system", "content": "hi"}]}, "no user message"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}, {
            "type": "image_url", "image_url": {"url": "http://example.com/x.png"}}]}]}, "data URLs"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
            "url": "data:image/png;base64,bm90IGFuIGltYWdl"}}]}]}, "could not be read"),
        ({"stream": True, "messages": [{"role": "user", "content": "x"}]}, "streaming"),
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
    query = _queries(1)[0]
    image = {"type": "image_url", "image_url": {"url": image_data_url(query.image)}}
    text = {"type": "text", "text": query.text}
    payload = {"model": "tiny", "messages": [{"role": "user", "content": [text, image]}]}
    assert _post(f"{server.base_url}/chat/completions", payload)[0] == 401
    status, body = _post(f"{server.base_url}/chat/completions", payload, {"Authorization": "Bearer sk-serve-123"})
    assert status == 200 and isinstance(body["choices"][0]["message"]["content"], str)


def _image_payload(text: str, **fields) -> dict:
    url = image_data_url(np.full((32, 32, 3), 90, dtype=np.uint8))
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": text},
                                                      {"type": "image_url", "image_url": {"url": url}}]}], **fields}


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


def test_sampling_follows_the_seed_and_the_nucleus(tiny_whitebox):
    target = LlavaTarget(TargetConfig(model="tiny", max_new_tokens=6), model=tiny_whitebox)
    image = np.full((32, 32, 3), 90, dtype=np.uint8)
    greedy = target.answer([Query("g", "Describe it.", image)])[0]
    nucleus = target.answer([Query("n", "Describe it.", image, temperature=1.0, top_p=1e-6, seed=5)])[0]
    assert nucleus == greedy  # a nucleus of one token is the argmax
    runs = {target.answer([Query(f"s{k}", "Describe it.", image, temperature=2.0, seed=k)])[0] for k in range(6)}
    assert len(runs) > 1  # different seeds sample different answers
