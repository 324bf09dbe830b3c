"""The Ray executor: the same rows as the local one, a killed worker loses nothing, a poison item ends."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

if os.environ.get("CI"):
    import ray  # CI installs the extra (make test): a missing Ray fails there
else:
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'medattack[ray]')")

from medattack.executor import ExecutorConfig, WorkerLostError, open_pool  # noqa: E402
from medattack.models.targets import TargetConfig  # noqa: E402
from medattack.rundir import read_jsonl  # noqa: E402
from medattack.stages.attack import AttackStageConfig  # noqa: E402
from medattack.stages.attack import run as run_attack_stage  # noqa: E402
from medattack.stages.build import BuildConfig  # noqa: E402
from medattack.stages.build import run as build_benchmark  # noqa: E402
from medattack.stages.query import QueryConfig  # noqa: E402
from medattack.stages.query import run as run_query_stage  # noqa: E402
from medattack.stages.score import run as score  # noqa: E402

TESTS = Path(__file__).resolve().parent
RAY = ExecutorConfig(kind="ray", workers=2)
ATTACK = AttackStageConfig(method="gcg", model="tiny", limit=2, options={"steps": 2, "search_width": 8})
QUERY = QueryConfig(target=TargetConfig(model="tiny", max_new_tokens=6), limit=8, chunk=4)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """A local Ray instance with 2 CPUs whose workers can import this folder's helpers."""
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray") / "built"
    build_benchmark(root, BuildConfig(tasks=("Disease Classification",)))
    return root


def _copy(built: Path, folder: Path) -> Path:
    shutil.copytree(built, folder)
    return folder


def _rows(root: Path) -> dict[str, list]:
    def value(v):
        return None if v is None else round(float(v), 5)

    return {
        "attacks": sorted((r["sample_id"], r["suffix"], r["success"], value(r["best_loss"]), r["response"])
                          for p in root.glob("attacks/*/*/results.jsonl") for r in read_jsonl(p)),
        "responses": sorted((r["response_id"], r["response"]) for p in root.glob("responses/*/responses.jsonl")
                            for r in read_jsonl(p)),
        "scores": sorted((p.parent.name, r["response_id"], r["metric"], value(r["value"]))
                         for p in root.glob("scores/*/scores.jsonl") for r in read_jsonl(p)),
    }


def test_attack_query_and_score_on_ray_give_the_rows_of_the_local_executor(built, tmp_path):
    local, on_ray = _copy(built, tmp_path / "local"), _copy(built, tmp_path / "ray")
    run_attack_stage(local, ATTACK)
    run_query_stage(local, QUERY)
    score(local)
    run_attack_stage(on_ray, ATTACK, executor=RAY)
    run_query_stage(on_ray, QUERY, executor=RAY)
    score(on_ray, executor=RAY)
    expected, got = _rows(local), _rows(on_ray)
    assert expected["attacks"] and expected["responses"] and expected["scores"]
    for part in expected:
        assert len(set(got[part])) == len(got[part]), f"duplicated {part}"
        assert got[part] == expected[part], part


def _worker_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(b"ray::_RayWorker"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_a_worker_killed_mid_stage_loses_and_duplicates_nothing(built, tmp_path):
    config = QueryConfig(target=TargetConfig(model="tiny", max_new_tokens=6), limit=20, chunk=2)  # 60 queries
    reference = run_query_stage(_copy(built, tmp_path / "local"), config)
    root = _copy(built, tmp_path / "ray")
    responses = root / "responses" / "tiny-random-llava_unit_tests" / "responses.jsonl"
    killed: list[int] = []

    def kill_one_worker() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if len(read_jsonl(responses)) >= 4 and _worker_pids():
                pid = _worker_pids()[0]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_worker)
    killer.start()
    result = run_query_stage(root, config, executor=RAY)
    killer.join()
    assert killed, "no worker was killed: the stage ended before the killer found one"
    assert result.failures == []  # the lost chunk was retried on the restarted actor
    key = lambda rows: sorted((r["response_id"], r["response"]) for r in rows)  # noqa: E731
    assert key(read_jsonl(responses)) == key(r.to_json() for r in reference.responses)
    assert len(read_jsonl(responses)) == len(reference.responses)


def test_an_item_that_keeps_killing_its_worker_is_recorded_failed_not_retried_forever():
    from ray_helpers import PoisonWorker

    pool = open_pool(ExecutorConfig(kind="ray", workers=2, max_retries=1), PoisonWorker)
    try:
        outcomes = dict(pool.map("double", [1, 2, "poison", 3, 4]))
    finally:
        pool.close()
    assert {k: v for k, v in outcomes.items() if k != 2} == {0: 2, 1: 4, 3: 6, 4: 8}
    assert isinstance(outcomes[2], WorkerLostError) and "2 time(s)" in str(outcomes[2])
