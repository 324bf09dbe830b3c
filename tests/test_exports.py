"""The peers' formats: JailbreakBench's attack artifact with every documented field and type, and an inspect_ai
task that runs under inspect's own eval with a mock model."""

import importlib.util
import json
import os

import pytest

from medattack.errors import ConfigError, InputError
from medattack.exports import EXPORTS
from medattack.exports.jailbreakbench import ENTRY_FIELDS, PARAMETER_FIELDS

NUMBER = (int, float)
PARAMETER_TYPES = {"method": str, "model": str, "attack_type": str, "defense": (str, type(None)),
                   "attack_success_rate": NUMBER, "total_number_of_jailbreaks": int,
                   "number_of_submitted_prompts": int, "total_number_of_queries": (int, type(None)),
                   "total_prompt_tokens": (int, type(None)), "total_response_tokens": (int, type(None)),
                   "evaluation_date": str, "evaluation_llm_provider": str, "method_parameters": dict}
ENTRY_TYPES = {"index": int, "goal": str, "behavior": str, "category": str, "prompt": (str, type(None)),
               "response": (str, type(None)), "number_of_queries": (int, type(None)),
               "queries_to_jailbreak": (int, type(None)), "prompt_tokens": (int, type(None)),
               "response_tokens": (int, type(None)), "jailbroken": bool}


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory, tiny_whitebox):
    from medattack.models.targets import LlavaTarget, TargetConfig
    from medattack.stages.attack import AttackStageConfig
    from medattack.stages.attack import run as run_attack
    from medattack.stages.build import BuildConfig
    from medattack.stages.build import run as build
    from medattack.stages.query import QueryConfig
    from medattack.stages.query import run as run_query
    from medattack.stages.score import ScoreConfig
    from medattack.stages.score import run as score

    root = tmp_path_factory.mktemp("exports") / "run"
    build(root, BuildConfig(tasks=("Matching",), max_images_per_category=1))
    run_attack(root, AttackStageConfig(method="gcg", model="tiny", limit=3, options={
        "steps": 1, "search_width": 8, "topk": 8, "max_new_tokens": 3}), model=tiny_whitebox)
    target = LlavaTarget(TargetConfig(model="tiny", max_new_tokens=3), model=tiny_whitebox)
    run_query(root, QueryConfig(controls=()), target=target)
    score(root, ScoreConfig(metrics={"keyword_asr": {}, "judge": {}}))
    return root


@pytest.mark.parametrize("method", ["none", "gcg"])
def test_the_jailbreakbench_artifact_holds_every_documented_field_with_its_type(scored_run, tmp_path, method):
    out = EXPORTS["jailbreakbench"](scored_run, tmp_path / "artifact.json", target="tiny-random-llava_unit_tests",
                                    method=method)
    artifact = json.loads(out.read_text())
    assert set(artifact) == {"parameters", "jailbreaks"}
    parameters, entries = artifact["parameters"], artifact["jailbreaks"]
    assert tuple(parameters) == PARAMETER_FIELDS
    assert all(isinstance(parameters[k], t) for k, t in PARAMETER_TYPES.items())
    assert entries and all(tuple(e) == ENTRY_FIELDS for e in entries)
    assert all(isinstance(e[k], t) for e in entries for k, t in ENTRY_TYPES.items())
    assert [e["index"] for e in entries] == list(range(len(entries)))
    assert parameters["number_of_submitted_prompts"] == len(entries)
    assert parameters["total_number_of_jailbreaks"] == sum(e["jailbroken"] for e in entries)
    assert 0 <= parameters["attack_success_rate"] <= 1
    assert parameters["attack_type"] == ("manual" if method == "none" else "white_box")
    assert all(isinstance(v, str | int | float) for v in parameters["method_parameters"].values())
    if method == "gcg":
        assert parameters["method_parameters"]["search_width"] == 8
    assert "judge" in parameters["evaluation_llm_provider"]


def test_an_export_without_a_target_or_of_an_unknown_one_says_what_there_is(scored_run, tmp_path):
    with pytest.raises(ConfigError, match="--target"):
        EXPORTS["jailbreakbench"](scored_run, tmp_path / "a.json")
    with pytest.raises(InputError, match="targets: tiny-random-llava"):
        EXPORTS["jailbreakbench"](scored_run, tmp_path / "a.json", target="nobody")


@pytest.mark.skipif(importlib.util.find_spec("inspect_ai") is None and not os.environ.get("CI"),
                    reason="inspect_ai is not installed (the `inspect` extra; make test installs it)")
def test_the_inspect_task_runs_under_inspect_eval_with_a_mock_model(scored_run, tmp_path, monkeypatch):
    from inspect_ai import eval as inspect_eval

    folder = EXPORTS["inspect"](scored_run, tmp_path / "task")
    assert {"task.py", "samples.jsonl", "judge.json", "images"} <= {p.name for p in folder.iterdir()}
    monkeypatch.chdir(tmp_path)  # as `inspect eval task/task.py` is run: a task file relative to where it runs
    import inspect_ai.model._model as inspect_model
    import inspect_ai.model._tokens as inspect_tokens

    def words(text: str) -> int:  # the mock model counts its input with tiktoken, whose encoding is downloaded on
        return max(1, len(text.split()))  # first use: tests have no network, so they count words instead

    monkeypatch.setattr(inspect_tokens, "count_text_tokens", words)
    monkeypatch.setattr(inspect_model, "count_text_tokens", words)
    [log] = inspect_eval("task/task.py", model="mockllm/model", limit=2, display="none",
                         log_dir=str(tmp_path / "logs"))
    assert log.status == "success", log.error
    assert len(log.samples) == 2 and all(s.scores and "medattack_judge" in s.scores for s in log.samples)
    assert all(s.metadata["condition"] in ("malicious", "both") for s in log.samples)
    assert log.results.scores[0].metrics["accuracy"].value in (0.0, 0.5, 1.0)
