"""The attack stage: outputs per sample, and resume after a crash with nothing lost or duplicated."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from safetensors.torch import load_file

from medattack.errors import RunDirError
from medattack.models import load_whitebox
from medattack.rundir import read_jsonl
from medattack.stages.attack import AttackStageConfig, FileCheckpoint
from medattack.stages.attack import run as run_attack_stage
from medattack.stages.build import BuildConfig
from medattack.stages.build import run as build_benchmark

OPTIONS = {"rounds": 3, "pgd_steps": 1, "early_stop": False, "max_new_tokens": 4}


@pytest.fixture(scope="module")
def tiny():
    return load_whitebox("tiny")


@pytest.fixture
def run(tmp_path):
    build_benchmark(tmp_path / "run", BuildConfig(tasks=("Matching",), max_images_per_category=1))
    return tmp_path / "run"


def test_stage_writes_every_output(run, tiny):
    result = run_attack_stage(run, AttackStageConfig(model="tiny", limit=2, options=OPTIONS), model=tiny)
    assert len(result.results) == 2 and result.attempted == 2
    row = result.results[0]
    assert row.condition in ("malicious", "both") and row.n_steps == 3
    assert (result.folder / row.image_file).exists()
    tensors = load_file(result.folder / row.tensor_file)
    assert tensors["pixels"].shape == (1, 3, 32, 32) and tensors["suffix_ids"].tolist() == row.suffix_ids
    steps = read_jsonl(result.folder / "steps" / f"{row.sample_id}.jsonl")
    assert [s["step"] for s in steps] == [1, 2, 3] and {"loss", "modality", "success", "seconds"} <= set(steps[0])
    assert not list((result.folder / "checkpoints").glob("*.pt"))
    again = run_attack_stage(run, AttackStageConfig(model="tiny", limit=2, options=OPTIONS), model=tiny)
    assert again.attempted == 0 and len(again.results) == 2


def test_a_different_config_in_the_same_folder_is_refused(run, tiny):
    run_attack_stage(run, AttackStageConfig(model="tiny", limit=1, options=OPTIONS), model=tiny)
    with pytest.raises(RunDirError, match=r"another configuration \(method\.rounds: \d+ -> 4\)"):
        run_attack_stage(run, AttackStageConfig(model="tiny", limit=1, options={**OPTIONS, "rounds": 4}), model=tiny)


class Crash(Exception):
    pass


def test_interrupted_sample_resumes_from_its_checkpoint(run, tiny, tmp_path, monkeypatch):
    config = AttackStageConfig(model="tiny", limit=3, options=OPTIONS)
    build_benchmark(tmp_path / "ref", BuildConfig(tasks=("Matching",), max_images_per_category=1))
    uninterrupted = run_attack_stage(tmp_path / "ref", config, model=tiny).results

    saves = {"n": 0}
    original_save = FileCheckpoint.save

    def crash_on_fifth_save(self, state):
        original_save(self, state)
        saves["n"] += 1
        if saves["n"] == 5:  # sample 2, after its second round
            raise Crash

    monkeypatch.setattr(FileCheckpoint, "save", crash_on_fifth_save)
    with pytest.raises(Crash):
        run_attack_stage(run, config, model=tiny)
    assert len(read_jsonl(next((run / "attacks" / "mcm").iterdir()) / "results.jsonl")) == 1
    assert list((run / "attacks").glob("mcm/*/checkpoints/*.pt"))  # the interrupted sample's state
    monkeypatch.setattr(FileCheckpoint, "save", original_save)
    resumed = run_attack_stage(run, config, model=tiny)
    assert resumed.attempted == 2
    ids = [r.sample_id for r in resumed.results]
    assert len(ids) == len(set(ids)) == 3
    by_id = {r.sample_id: r for r in uninterrupted}
    for row in resumed.results:
        assert row.suffix_ids == by_id[row.sample_id].suffix_ids
        assert row.best_loss == pytest.approx(by_id[row.sample_id].best_loss, abs=1e-5)


SCRIPT = textwrap.dedent("""
    import sys
    from medattack.stages.attack import AttackStageConfig, run
    run(sys.argv[1], AttackStageConfig(model="tiny", limit=6,
                                       options={"rounds": 3, "pgd_steps": 1, "early_stop": False, "max_new_tokens": 4}))
""")


def test_killed_process_resumes_without_losing_or_duplicating(run, tiny):
    results = None
    process = subprocess.Popen([sys.executable, "-c", SCRIPT, str(run)], env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            found = list((run / "attacks").glob("mcm/*/results.jsonl"))
            if found and len(found[0].read_text().splitlines()) >= 2:
                results = found[0]
                break
            if process.poll() is not None:
                break
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait()
    assert results is not None, "the attack subprocess wrote no result"
    before = len(read_jsonl(results))
    resumed = run_attack_stage(run, AttackStageConfig(model="tiny", limit=6, options={
        "rounds": 3, "pgd_steps": 1, "early_stop": False, "max_new_tokens": 4}), model=tiny)
    ids = [json.loads(line)["sample_id"] for line in results.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 6
    assert resumed.attempted == 6 - before
