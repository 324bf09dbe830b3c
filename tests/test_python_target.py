"""The `python:` target kind: a factory of the user's own, loaded from a file, asked through `query` and
`serve`; broken factories give one-line errors; the recipe files import without their heavy packages and
their stand-ins answer through the kind."""

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medattack.cli import app
from medattack.errors import TargetError
from medattack.models.targets import Query, TargetConfig, load_target

RECIPES = Path(__file__).parent.parent / "examples" / "targets"
runner = CliRunner()

GOOD = '''
class Echo:
    def __init__(self, device):
        self.device = device

    def generate(self, images, questions, max_new_tokens):
        return [f"{q[:12]} | {'no image' if i is None else i.size} | {self.device}" for i, q in zip(images, questions)]


def load(device="cpu", dtype="auto"):
    return Echo(device)


def no_generate(device="cpu", dtype="auto"):
    return object()


def wrong_type(device="cpu", dtype="auto"):
    class Bad:
        def generate(self, images, questions, max_new_tokens):
            return "one string for all"
    return Bad()


class Sampler:
    def generate(self, images, questions, max_new_tokens, temperature=0.0, top_p=1.0, seed=0):
        return [f"t={temperature} p={top_p} s={seed}" for _ in questions]


def sampler(device="cpu", dtype="auto"):
    return Sampler()


def crashes(device="cpu", dtype="auto"):
    raise RuntimeError("CUDA out of memory while loading")
'''


@pytest.fixture
def factory_file(tmp_path) -> Path:
    path = tmp_path / "my_model.py"
    path.write_text(GOOD)
    return path


def _query(k: int) -> Query:
    return Query(f"q{k}", f"What does image {k} show?", np.full((20 + k, 30, 3), 10 * k, dtype=np.uint8))


def test_a_factory_from_a_file_answers_in_batches(factory_file):
    target = load_target(TargetConfig(kind="python", model=f"{factory_file}:load", device="cpu", batch_size=2))
    answers = target.answer([_query(k) for k in range(3)])
    assert answers == [f"What does im | (30, {20 + k}) | cpu" for k in range(3)]
    assert target.name == f"python:{factory_file}:load"


@pytest.mark.parametrize(("factory", "words"), [
    ("no_generate", "has no generate(images, questions, max_new_tokens) method"),
    ("crashes", "the factory failed: RuntimeError: CUDA out of memory"),
    ("missing", "has no function 'missing'"),
])
def test_a_broken_factory_is_one_line(factory_file, factory, words):
    with pytest.raises(TargetError, match=words.replace("(", r"\(").replace(")", r"\)")):
        load_target(TargetConfig(kind="python", model=f"{factory_file}:{factory}"))


def test_wrong_answers_fail_each_query_with_the_reason(factory_file):
    target = load_target(TargetConfig(kind="python", model=f"{factory_file}:wrong_type", batch_size=2))
    answers = target.answer([_query(0), _query(1)])
    assert all(isinstance(a, TargetError) and "must return a list of 1 strings" in str(a) for a in answers)


def test_the_kind_works_through_query_and_serve(factory_file, tmp_path):
    run = tmp_path / "run"
    invoke = lambda *a: runner.invoke(app, [str(x) for x in a], terminal_width=300)  # noqa: E731
    assert invoke("build", run, "--task", "Matching", "--max-per-category", "1").exit_code == 0
    result = invoke("query", run, "--target", f"python:{factory_file}:load", "--limit", "2", "--controls", "blank")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in next((run / "responses").glob("*/responses.jsonl")).open()]
    assert rows and all("| cpu" in r["response"] for r in rows)
    assert any(r["source"] == "control:blank" for r in rows)
    again = invoke("query", run, "--target", f"python:{factory_file}:load", "--limit", "2", "--controls", "blank")
    assert "0 asked now" in " ".join(again.output.split())  # answered before: nothing asked again
    broken = invoke("query", run, "--target", f"python:{factory_file}:crashes", "--limit", "1")
    assert broken.exit_code == 2 and "the factory failed" in " ".join(broken.output.split())

    from medattack.models.targets import APIChatTarget
    from medattack.openai_client import APIConfig
    from medattack.serve import ChatServer, ServeConfig

    server = ChatServer(load_target(TargetConfig(kind="python", model=f"{factory_file}:load")),
                        ServeConfig(port=0)).start()
    try:
        remote = APIChatTarget(TargetConfig(kind="api", model="m", api=APIConfig(base_url=server.base_url)))
        assert remote.answer([_query(4)]) == ["What does im | (30, 24) | cpu"]
    finally:
        server.close()


@pytest.mark.parametrize("recipe", ["radfm", "med_flamingo", "xrayglm"])
def test_recipes_import_without_their_packages_and_their_stand_ins_answer(recipe):
    spec = importlib.util.spec_from_file_location(f"recipe_{recipe}", RECIPES / f"{recipe}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # no torch-heavy or repository import at module level
    assert callable(module.load) and callable(module.load_stand_in)
    target = load_target(TargetConfig(kind="python", model=f"{RECIPES / recipe}.py:load_stand_in", max_new_tokens=30))
    answers = target.answer([_query(1), _query(2)])
    assert all(isinstance(a, str) and "stand-in" in a for a in answers) and answers[0] != answers[1]
    assert target.needs_image


def test_sampled_queries_reach_a_generate_that_takes_the_settings_and_fail_clearly_otherwise(factory_file):
    queries = [_query(0), replace(_query(1), temperature=0.7, seed=3), replace(_query(2), temperature=0.7, seed=4)]
    target = load_target(TargetConfig(kind="python", model=f"{factory_file}:sampler", batch_size=3))
    assert target.answer(queries) == ["t=0.0 p=1.0 s=0", "t=0.7 p=1.0 s=3", "t=0.7 p=1.0 s=4"]  # one call per seed
    greedy_only = load_target(TargetConfig(kind="python", model=f"{factory_file}:load", batch_size=3))
    first, second, third = greedy_only.answer(queries)
    assert isinstance(first, str)  # greedy queries are still answered
    assert isinstance(second, TargetError) and "cannot give sampled answers" in str(second)


@pytest.mark.parametrize(("recipe", "words"), [("radfm", "RADFM_DIR"), ("med_flamingo", "open-flamingo"),
                                               ("xrayglm", "SwissArmyTransformer")])
def test_a_recipe_that_cannot_load_names_what_it_needs(recipe, words):
    with pytest.raises(TargetError, match="This recipe needs: .*" + words):
        load_target(TargetConfig(kind="python", model=f"{RECIPES / recipe}.py:load", device="cpu"))
