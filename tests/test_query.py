"""The query stage: every sample, attack replays and controls; resume, failures, no secrets on disk."""

from __future__ import annotations

import shutil

import pytest

from medattack.errors import RunDirError
from medattack.models.targets import LlavaTarget, TargetConfig, TargetError
from medattack.openai_client import APIConfig
from medattack.rundir import RunDir, read_jsonl
from medattack.stages.attack import AttackStageConfig
from medattack.stages.attack import run as run_attack_stage
from medattack.stages.build import BuildConfig
from medattack.stages.build import run as build_benchmark
from medattack.stages.query import QueryConfig, plan_queries
from medattack.stages.query import run as run_query_stage

SMALL_BUILD = BuildConfig(tasks=("Disease Classification",))  # 11 images x 1 prompt x 4 conditions


@pytest.fixture(scope="module")
def attacked_run(tmp_path_factory, tiny_whitebox):
    """A small built run with one GCG attack (2 samples) by the tiny model; copied per test."""
    root = tmp_path_factory.mktemp("query") / "run"
    build_benchmark(root, SMALL_BUILD)
    run_attack_stage(root, AttackStageConfig(method="gcg", model="tiny", limit=2,
                                             options={"steps": 2, "search_width": 8}), model=tiny_whitebox)
    return root


@pytest.fixture
def run(attacked_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(attacked_run, copy)
    return copy


def _target(tiny_whitebox, **options) -> LlavaTarget:
    return LlavaTarget(TargetConfig(model="tiny", max_new_tokens=4, **options), model=tiny_whitebox)


def test_every_sample_control_and_attack_is_asked_once(run, tiny_whitebox):
    config = QueryConfig(limit=8)
    result = run_query_stage(run, config, target=_target(tiny_whitebox))
    sources = [r.source for r in result.responses]
    assert sources.count("benchmark") == 8 and sources.count("control:blank") == 8
    assert sources.count("control:noise") == 8
    attack_rows = [r for r in result.responses if r.kind == "attack"]
    results = read_jsonl(run / "attacks" / "gcg" / "tiny-random-llava_unit_tests" / "results.jsonl")
    assert len(attack_rows) == len(results) == 2
    for row in attack_rows:  # the replayed input is the question plus the optimised suffix, on the adversarial image
        original = next(r for r in results if r["sample_id"] == row.sample_id)
        assert row.question == f"{original['question']} {original['suffix']}"
        assert row.image_file.endswith(original["image_file"]) and row.attack_method == "gcg"
    ids = [r.response_id for r in result.responses]
    assert len(ids) == len(set(ids)) and result.failures == []
    assert (run / "controls" / "blank.png").is_file() and (run / "controls" / "noise.png").is_file()
    again = run_query_stage(run, config, target=_target(tiny_whitebox))
    assert again.asked == 0 and len(again.responses) == len(result.responses)


def test_pairs_per_category_spreads_over_categories(run):
    samples = RunDir(run).samples()
    planned = plan_queries(RunDir(run), samples, QueryConfig(pairs_per_category=1, controls=(), replay_attacks=False))
    categories = {s.category for s in samples}
    assert len(planned) == 4 * len(categories)  # one pair per category, all four conditions
    assert {p.sample.category for p in planned} == categories


def test_a_bad_image_is_recorded_and_the_rest_goes_on_then_a_rerun_retries_it(run, tiny_whitebox):
    samples = read_jsonl(run / "benchmark" / "samples.jsonl")
    broken = run / "benchmark" / samples[0]["image_file"]
    good_bytes = broken.read_bytes()
    broken.write_bytes(b"not a png")
    config = QueryConfig(limit=4, controls=(), replay_attacks=False)
    result = run_query_stage(run, config, target=_target(tiny_whitebox))
    shared = [s for s in samples[:4] if s["image_file"] == samples[0]["image_file"]]
    assert len(result.failures) == len(shared) >= 1
    failure = result.failures[0]
    assert samples[0]["image_file"] in failure["file"] and failure["error"].endswith("ImageError")
    assert failure["problem"] and failure["fix"]  # says what is wrong and what to do
    assert len(result.responses) == 4 - len(shared)
    assert read_jsonl(result.folder / "failures.jsonl", "failure") == result.failures
    broken.write_bytes(good_bytes)
    fixed = run_query_stage(run, config, target=_target(tiny_whitebox))
    assert fixed.failures == [] and len(fixed.responses) == 4 and fixed.asked == len(shared)


class _FlakyTarget:
    """Answers like the tiny model but fails one query and then crashes mid-stage once."""

    def __init__(self, inner: LlavaTarget, crash_after: int) -> None:
        self.inner, self.name, self.calls, self.crash_after = inner, inner.name, 0, crash_after

    def answer(self, queries):
        self.calls += 1
        if self.calls == self.crash_after:
            raise KeyboardInterrupt  # like a kill: nothing of this chunk is written
        answers = self.inner.answer(queries)
        return [TargetError("api said 500") if q.query_id.startswith("control:noise") and k == 0 else a
                for k, (q, a) in enumerate(zip(queries, answers, strict=True))]


def test_an_interrupted_stage_resumes_without_losing_or_duplicating(run, tiny_whitebox, tmp_path):
    config = QueryConfig(limit=6, chunk=4)
    reference_run = tmp_path / "reference"
    shutil.copytree(run, reference_run)
    reference = run_query_stage(reference_run, config, target=_target(tiny_whitebox))
    with pytest.raises(KeyboardInterrupt):
        run_query_stage(run, config, target=_FlakyTarget(_target(tiny_whitebox), crash_after=3))
    partial = read_jsonl(run / "responses" / "tiny-random-llava_unit_tests" / "responses.jsonl")
    assert 0 < len(partial) < len(reference.responses)
    resumed = run_query_stage(run, config, target=_target(tiny_whitebox))
    key = lambda rows: sorted((r.response_id, r.response) for r in rows)  # noqa: E731
    assert key(resumed.responses) == key(reference.responses)


def test_another_config_in_the_same_folder_is_refused_but_a_larger_limit_adds_samples(run, tiny_whitebox):
    first = run_query_stage(run, QueryConfig(limit=2, controls=()), target=_target(tiny_whitebox))
    with pytest.raises(RunDirError, match=r"another configuration \(stage\.conditions: "):
        run_query_stage(run, QueryConfig(limit=2, controls=(), conditions=("normal",)), target=_target(tiny_whitebox))
    more = run_query_stage(run, QueryConfig(limit=3, controls=()), target=_target(tiny_whitebox))
    assert len(more.responses) > len(first.responses)


def test_api_target_run_keeps_the_key_off_disk_and_out_of_logs(run, fake_api, monkeypatch, caplog):
    secret = "sk-test-very-secret-key-0123456789"
    monkeypatch.setenv("MEDATTACK_TEST_KEY", secret)
    fake_api.fail_next = 2  # retries are logged: the key must not be in those lines either
    config = QueryConfig(limit=4, controls=("blank",), target=TargetConfig(
        kind="api", model="vision-model", api=APIConfig(base_url=fake_api.base_url, api_key_env="MEDATTACK_TEST_KEY")))
    with caplog.at_level("DEBUG"):
        result = run_query_stage(run, config)
    assert len(result.responses) == 4 + 4 + 2 and result.failures == []
    assert fake_api.authorization[-1] == f"Bearer {secret}"  # it was sent...
    assert secret not in caplog.text  # ...but never logged
    for path in run.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_generations_ask_each_query_n_times_with_one_seed_each_and_cost_nothing_again(run, fake_api):
    asked = []
    original = fake_api.chat
    fake_api.chat = lambda payload: (asked.append((payload["seed"], payload["temperature"])), original(payload))[1]
    config = QueryConfig(limit=2, controls=(), replay_attacks=False, generations=3, temperature=0.8,
                         target=TargetConfig(kind="api", model="vision-model", seed=5,
                                             api=APIConfig(base_url=fake_api.base_url)))
    result = run_query_stage(run, config)
    ids = sorted(r.response_id for r in result.responses)
    assert len(ids) == 6 and sum(i.endswith("#1") for i in ids) == 2 and sum(i.endswith("#2") for i in ids) == 2
    assert sorted({r.generation for r in result.responses}) == [0, 1, 2]
    assert sorted(asked) == [(5, 0.8), (5, 0.8), (6, 0.8), (6, 0.8), (7, 0.8), (7, 0.8)]  # seed + k per answer
    assert result.api_usage["requests"] == 6 and result.api_usage["cache_hits"] == 0  # printed after the stage
    again = run_query_stage(run, config)
    assert again.asked == 0 and len(asked) == 6  # every sampled answer kept: nothing asked twice
