"""The first hour with real models: config precedence per stage, one-line errors with the fix, a missing key
caught before any request, exit codes that mean something, progress while attacking, readable files,
one list-flag style, a locked run.json, and Ray's GPUs."""

import json
import os
import stat
import threading

import pytest
from typer.testing import CliRunner

from medattack.cli import app

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], terminal_width=400)


def flat(result) -> str:
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("first") / "run"
    assert invoke("build", run, "--task", "Matching", "--max-per-category", "1").exit_code == 0
    return run


def stage_config(run, stage: str) -> dict:
    return json.loads((run / "run.json").read_text())["stages"][stage]["config"]


def test_a_config_file_beats_the_defaults_and_a_typed_flag_beats_the_file(tmp_path):
    run = tmp_path / "run"
    config = tmp_path / "build.yaml"
    config.write_text("tasks: [Matching]\nmax_images_per_category: 1\nseed: 7\n")
    assert invoke("build", run, "--config", config).exit_code == 0
    assert stage_config(run, "build")["seed"] == 7  # the file, not the default 0
    other = tmp_path / "other"
    assert invoke("build", other, "--config", config, "--seed", "3").exit_code == 0
    assert stage_config(other, "build")["seed"] == 3  # a typed flag beats the file


def test_query_takes_the_target_from_the_file(small_run, tmp_path):
    config = tmp_path / "q.yaml"
    config.write_text("target: {kind: llava, model: tiny, max_new_tokens: 2}\ncontrols: []\nlimit: 1\n")
    result = invoke("query", small_run, "--config", config, "--no-attacks")
    assert result.exit_code == 0, result.output
    recorded = [v["config"] for k, v in json.loads((small_run / "run.json").read_text())["stages"].items()
                if k.startswith("query/")]
    assert recorded and recorded[-1]["stage"]["target"]["model"] == "tiny"  # not the embedded default


def test_attack_and_score_take_their_settings_from_the_file(small_run, tmp_path):
    attack = tmp_path / "a.yaml"
    attack.write_text("method: gcg\nmodel: tiny\nlimit: 1\noptions: {steps: 2, search_width: 4}\n")
    result = invoke("attack", small_run, "--config", attack)
    assert result.exit_code == 0, result.output
    assert (small_run / "attacks" / "gcg").is_dir()  # the file's method, not the default mcm
    score = tmp_path / "s.yaml"
    score.write_text("metrics: [keyword_asr]\n")
    assert invoke("score", small_run, "--config", score).exit_code == 0
    rows = [json.loads(line) for path in (small_run / "scores").glob("*/scores.jsonl") for line in path.open()]
    assert rows and {r["metric"] for r in rows} == {"keyword_asr"}


@pytest.mark.parametrize(("target", "words"), [
    ("foo:bar", "unknown target kind 'foo'"),
    ("hff:org/model", "did you mean 'hf'"),
    ("hf:org/not-here", "not in the local cache"),
    ("hf:/no/such/folder", "neither a folder on this machine nor a model on the hub"),
])
def test_a_bad_target_is_one_line_with_the_fix(small_run, target, words):
    result = invoke("query", small_run, "--target", target, "--limit", "1")
    assert result.exit_code == 2 and words in flat(result)
    assert "Traceback" not in result.output


def test_a_gated_model_says_to_set_hf_token():
    from medattack.models.loading import explain

    class GatedRepoError(OSError):
        pass

    error = explain("google/medgemma-4b-it", GatedRepoError("401 Client Error. Cannot access gated repo"))
    assert error is not None and "HF_TOKEN" in str(error)
    assert explain("x", OSError("disk full")) is None  # anything else passes through


def test_a_missing_key_is_caught_before_the_first_request(small_run, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = invoke("query", small_run, "--target", "api:gpt-4o", "--limit", "1")
    assert result.exit_code == 2 and "OPENAI_API_KEY is not set" in flat(result)
    assert not (small_run / "responses" / "api_gpt-4o" / "failures.jsonl").exists()  # nothing was sent
    from medattack.errors import ConfigError
    from medattack.scoring.judge import JudgeConfig, JudgeMetric

    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        JudgeMetric(JudgeConfig(backend="api"))  # the judge fails at once, not after minutes of retries


def test_stages_with_nothing_to_do_exit_non_zero_with_the_right_next_step(tmp_path):
    run = tmp_path / "run"
    assert invoke("build", run, "--task", "Matching", "--max-per-category", "1").exit_code == 0
    result = invoke("score", run)
    assert result.exit_code == 1 and "medattack query" in flat(result)
    result = invoke("report", run)
    assert result.exit_code == 1 and "medattack score" in flat(result)
    assert not (run / "report" / "report.html").exists()


def test_files_are_written_with_the_users_umask(tmp_path):
    from medattack.storage import write_json_atomic

    old = os.umask(0o022)
    os.umask(old)
    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": 1})
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o666 & ~old and mode & 0o044  # readable by the group and others under umask 022


def test_controls_repeat_like_every_other_list_flag(small_run):
    from medattack.cli.stages import _controls

    assert _controls(["blank", "noise"]) == ["blank", "noise"] == _controls(["blank,noise"])
    assert _controls(["none"]) == [] and _controls(None) is None


def test_ray_uses_the_gpus_it_finds():
    from medattack.executor import gpu_share

    assert gpu_share(8, 4) == 1.0 and gpu_share(2, 4) == 0.5 and gpu_share(0, 4) == 0.0


def test_run_json_keeps_every_stage_recorded_at_once(tmp_path):
    from medattack.rundir import RunDir

    run = RunDir(tmp_path / "run")
    threads = [threading.Thread(target=run.record_stage, args=(f"query/t{k}", {"k": k}, 0)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(run.read_manifest()["stages"]) == {f"query/t{k}" for k in range(8)}


def test_an_attack_reports_every_step(small_run):
    from medattack.stages.attack import AttackStageConfig
    from medattack.stages.attack import run as attack

    lines: list[str] = []
    attack(small_run, AttackStageConfig(method="pgd", model="tiny", limit=1, options={"steps": 3}),
           progress=lambda label, done, total: lines.append(label), force=True)
    assert any(line.startswith("loading tiny") for line in lines)
    steps = [line for line in lines if " | " in line]
    assert len(steps) == 3 and "step 3/3, loss" in steps[-1] and "(best " in steps[-1]


def test_one_preset_turns_on_the_gpu_models():
    from medattack.cli.app import stage_config
    from medattack.stages.query import QueryConfig
    from medattack.stages.score import ScoreConfig

    score = stage_config(ScoreConfig, None, ["metrics.judge.options.model=/models/guard"], {}, preset="gpu")
    assert (score.device, score.text_embedder, score.image_text) == ("cuda", "bge-m3", "biomedclip")
    assert score.metrics["judge"] == {"backend": "hf", "options": {"model": "/models/guard", "device": "cuda"}}
    assert "tto" in score.metrics and "composite" in score.metrics
    assert stage_config(QueryConfig, None, None, {}, preset="gpu").target.device == "cuda"


def test_quiet_silences_the_progress_bars(tmp_path, monkeypatch):
    import importlib

    cli_app = importlib.import_module("medattack.cli.app")  # the module (medattack.cli.app is also the Typer app)
    result = invoke("-q", "build", tmp_path / "run", "--task", "Matching", "--max-per-category", "1")
    assert result.exit_code == 0 and cli_app.QUIET["on"] is True
    with cli_app.progress_bar() as progress:
        assert progress("phase", 1, 2) is None  # a no-op
    monkeypatch.setitem(cli_app.QUIET, "on", False)
