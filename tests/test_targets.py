"""Black-box targets (local LLaVA adapter, transformers image-text-to-text, OpenAI-compatible API); `medattack
serve` is tested in test_serve.py."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from chat_helpers import random_queries
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
from medattack.openai_client import APIConfig


def test_parse_target_specs():
    assert parse_target("embedded") == TargetConfig(kind="llava", model="embedded")
    assert parse_target("llava-hf/llava-1.5-7b-hf").kind == "llava"
    assert parse_target("hf:google/medgemma-4b-it") == TargetConfig(kind="hf", model="google/medgemma-4b-it")
    api = parse_target("api:gpt-4o")
    assert (api.kind, api.model, api.name) == ("api", "gpt-4o", "api:gpt-4o")
    assert parse_target("C:/models/llava").kind == "llava"  # a drive letter is not a target kind


def test_batched_answers_equal_one_at_a_time(embedded_whitebox):
    target = LlavaTarget(TargetConfig(max_new_tokens=12, batch_size=4), model=embedded_whitebox)
    queries = random_queries(3)
    batched = target.answer(queries)
    assert batched == [target.answer([q])[0] for q in queries]
    assert all(isinstance(a, str) and a for a in batched)


def test_per_query_token_limit_and_a_failing_query_does_not_stop_the_batch(tiny_whitebox):
    target = LlavaTarget(TargetConfig(max_new_tokens=10, batch_size=4), model=tiny_whitebox)
    good = random_queries(2)
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
    image = random_queries(1)[0]
    exact = torch.rand(1, 3, *tiny_whitebox.image_size, generator=torch.Generator().manual_seed(1))
    expected = tiny_whitebox.generate_batch([image.text], exact, 6)
    with_exact = target.answer([Query("x", image.text, image.image, exact_pixels=exact)])
    assert with_exact == expected


def test_hf_image_text_to_text_target(saved_tiny_vlm):
    target = load_target(TargetConfig(kind="hf", model=str(saved_tiny_vlm), max_new_tokens=5, batch_size=2))
    queries = random_queries(3)
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
    answers = target.answer(random_queries(2))
    assert answers == ["mostly greyscale with high contrast"] * 2  # the fake answers so only when it got a PNG
    assert image_data_url(np.zeros((2, 2, 3), np.uint8)).startswith("data:image/png;base64,")


def test_sampling_follows_the_seed_and_the_nucleus(tiny_whitebox):
    target = LlavaTarget(TargetConfig(model="tiny", max_new_tokens=6), model=tiny_whitebox)
    image = np.full((32, 32, 3), 90, dtype=np.uint8)
    greedy = target.answer([Query("g", "Describe it.", image)])[0]
    nucleus = target.answer([Query("n", "Describe it.", image, temperature=1.0, top_p=1e-6, seed=5)])[0]
    assert nucleus == greedy  # a nucleus of one token is the argmax
    runs = {target.answer([Query(f"s{k}", "Describe it.", image, temperature=2.0, seed=k)])[0] for k in range(6)}
    assert len(runs) > 1  # different seeds sample different answers
