"""`medattack run CONFIG.yaml`: every stage from one file, killed at random points and resumed."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from medattack.config import load_config
from medattack.errors import ConfigError
from medattack.models.targets import TargetConfig
from medattack.pipeline import RunConfig, demo_config
from medattack.rundir import read_jsonl

CONFIG = {
    "build": {"tasks": ["Disease Classification"]},
    "attacks": [{"method": "gcg", "model": "tiny", "limit": 2, "options": {"steps": 4, "search_width": 8}},
                {"method": "pgd", "model": "tiny", "limit": 2, "options": {"steps": 3}}],
    "targets": [{"kind": "llava", "model": "tiny", "max_new_tokens": 8}],
    "query": {"limit": 12, "chunk": 4},
    "score": {"batch_size": 8},
}


def _write_config(folder: Path, run_dir: Path) -> Path:
    path = folder / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(run_dir), **CONFIG}))
    return path


def _command(config: Path) -> list[str]:
    return [sys.executable, "-m", "medattack.cli", "run", str(config)]


def _progress(run_dir: Path) -> int:
    """How much a run holds: records in its JSONL files plus its files (grows with every write).

    The run renames temporary folders into place while this walks, so a folder or file that vanishes
    between listing and reading is skipped (os.walk ignores folders gone mid-walk; Path.rglob raises).
    """
    total = 0
    for folder, _, names in os.walk(run_dir):
        for name in names:
            total += 1
            if name.endswith(".jsonl"):
                with contextlib.suppress(FileNotFoundError):
                    total += (Path(folder) / name).read_bytes().count(b"\n")
    return total


def _rows(run_dir: Path) -> dict[str, list]:
    """What a finished run holds, in a comparable form (timings left out)."""

    def value(v):
        return None if v is None else round(float(v), 5)

    attacks = sorted((r["method"], r["sample_id"], r["suffix"], r["success"], value(r["best_loss"]))
                     for path in run_dir.glob("attacks/*/*/results.jsonl") for r in read_jsonl(path))
    responses = sorted((r["response_id"], r["response"]) for path in run_dir.glob("responses/*/responses.jsonl")
                       for r in read_jsonl(path))
    scores = sorted((path.parent.name, r["response_id"], r["metric"], value(r["value"]))
                    for path in run_dir.glob("scores/*/scores.jsonl") for r in read_jsonl(path))
    samples = sorted(r["sample_id"] for r in read_jsonl(run_dir / "benchmark" / "samples.jsonl"))
    return {"samples": samples, "attacks": attacks, "responses": responses, "scores": scores}


def test_killed_at_random_points_the_same_command_finishes_with_the_same_rows(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    reference_dir = tmp_path / "reference"
    subprocess.run(_command(_write_config(tmp_path, reference_dir)), check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    reference = _rows(reference_dir)
    assert reference["attacks"] and reference["responses"] and reference["scores"]
    assert (reference_dir / "report" / "report.html").is_file()

    killed_dir = tmp_path / "killed"
    config = _write_config(tmp_path, killed_dir)
    final = _progress(reference_dir)
    rng = random.Random(7)
    thresholds = sorted(rng.uniform(0.05, 0.9) * final for _ in range(5))
    kills = 0
    for threshold in thresholds:
        process = subprocess.Popen(_command(config), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while process.poll() is None and _progress(killed_dir) < threshold:
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 0.3))  # somewhere after that write, maybe in the middle of the next
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait(timeout=60)
    assert kills >= 5
    subprocess.run(_command(config), check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                   timeout=600)
    resumed = _rows(killed_dir)
    for part in ("samples", "attacks", "responses", "scores"):
        assert len(set(resumed[part])) == len(resumed[part]), f"duplicated {part}"
        assert resumed[part] == reference[part], part
    assert (killed_dir / "report" / "report.html").is_file()


def test_run_config_reads_targets_as_strings_or_mappings(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"targets": ["embedded", "api:gpt-4o", {"kind": "hf", "model": "x/y"}],
                                    "attacks": [{"method": "mcm", "limit": 1, "options": {"rounds": 2}}]}))
    config = load_config(RunConfig, path)
    assert [t.kind for t in config.targets] == ["llava", "api", "hf"]
    assert isinstance(config.targets[0], TargetConfig) and config.attacks[0].options == {"rounds": 2}
    with pytest.raises(ConfigError, match="unknown key 'target'"):
        load_config(RunConfig, path, {"target": "embedded"})
    with pytest.raises(ConfigError, match="stages"):
        load_config(RunConfig, path, {"stages": ["build", "atack"]})


def test_the_example_config_loads():
    config = load_config(RunConfig, Path(__file__).resolve().parents[1] / "examples" / "run.yaml")
    assert [a.method for a in config.attacks] == ["mcm", "typo"] and config.targets[0].model == "embedded"
    assert [(b.method, b.target.model, b.options) for b in config.blackbox] == [
        ("pair", "embedded", {"streams": 2, "depth": 2})]
    assert config.executor.kind == "local" and config.run_dir == "runs/example"


def test_demo_config_is_sized_for_a_laptop():
    config = demo_config("runs/x")
    assert [a.method for a in config.attacks] == ["mcm"] and config.attacks[0].limit <= 5
    assert config.query.pairs_per_category == 1 and set(config.query.controls) == {"blank", "noise"}
    assert [t.model for t in config.targets] == ["embedded"]
