import json

import pytest
from typer.testing import CliRunner

from medattack.cli import app

runner = CliRunner()


def test_list_tasks_shows_all_eighteen():
    result = runner.invoke(app, ["list", "tasks"], terminal_width=200)
    assert result.exit_code == 0
    for task in ("Disease Classification", "Inference Making", "Close-ended", "Error Identification"):
        assert task in result.output


@pytest.mark.parametrize("what", ["modalities", "sources", "mismatch"])
def test_list_commands(what):
    result = runner.invoke(app, ["list", what], terminal_width=200)
    assert result.exit_code == 0 and result.output.strip()


@pytest.mark.parametrize(("what", "key", "expected"), [
    ("attacks", "name", {"gcg", "pgd", "mcm", "pair", "tap"}), ("metrics", "name", {"keyword_asr", "judge"}),
    ("targets", "name", {"llava", "hf", "api"}), ("embedders", "name", {"minilm"}),
    ("tasks", "task", {"Disease Classification", "Inference Making"}), ("modalities", "modality", {"CT", "Fundus"}),
    ("sources", "source", {"embedded", "3mad"}), ("presets", "name", {"paper", "gpu"}),
    ("mismatch", "strategy", {"both", "uniform"})])
def test_every_list_prints_json_a_program_can_read(what, key, expected):
    result = runner.invoke(app, ["list", what, "--json"])
    assert result.exit_code == 0, result.output
    entries = json.loads(result.output)
    assert expected <= {e[key] for e in entries}
    if what == "attacks":  # settings with their defaults as JSON values
        gcg = next(e for e in entries if e["name"] == "gcg")
        assert gcg["kind"] == "white-box" and {s["name"]: s["default"] for s in gcg["settings"]}["search_width"] > 0


@pytest.mark.parametrize("command", [["build"], ["demo"], ["list", "tasks"], ["analyze", "attributes"],
                                     ["analyze", "prompts"]])
def test_every_command_has_an_example_in_its_help(command):
    result = runner.invoke(app, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0 and "Example" in result.output


def test_build_with_flags_and_overrides(tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, ["build", str(run), "--task", "Matching", "--task", "Selection",
                                 "--seed", "4", "--set", "max_images_per_category=1"], terminal_width=200)
    assert result.exit_code == 0, result.output
    stage = json.loads((run / "run.json").read_text())["stages"]["build"]["config"]
    assert stage["seed"] == 4 and stage["max_images_per_category"] == 1
    assert stage["tasks"] == ["Matching", "Selection"]
    assert "samples" in result.output


def test_build_reports_skipped_inputs_and_exit_codes(tmp_path, bad_inputs):
    result = runner.invoke(app, ["build", str(tmp_path / "ok"), "--source", f"folder:{bad_inputs}",
                                 "--task", "Matching"], terminal_width=300)
    assert result.exit_code == 0
    flat = result.output.replace("\n", "")  # rich wraps long lines
    assert "5 input(s) skipped" in flat and "huge.png" in flat and "ImageTooLarge" not in flat
    assert "exceeds" in flat
    (bad_inputs / "CT" / "Chest" / "good.png").unlink()
    result = runner.invoke(app, ["build", str(tmp_path / "none"), "--source", f"folder:{bad_inputs}"],
                           terminal_width=300)
    assert result.exit_code == 1


def test_usage_errors_exit_2_with_the_fix(tmp_path):
    result = runner.invoke(app, ["build", str(tmp_path / "r"), "--mismatch", "bothh"], terminal_width=300)
    assert result.exit_code == 2
    result = runner.invoke(app, ["build", str(tmp_path / "r"), "--set", "sed=1"], terminal_width=300)
    assert result.exit_code == 2


def test_demo_runs_every_stage_and_prints_the_report(tmp_path, monkeypatch):
    """The demo's wiring, on a demo config shrunk to the tiny model (CI runs the real `make demo`)."""
    import dataclasses

    from medattack import pipeline
    from medattack.models.targets import TargetConfig
    from medattack.stages.build import BuildConfig

    real = pipeline.demo_config

    def small(run_dir):
        config = real(run_dir)
        attack = dataclasses.replace(config.attacks[0], model="tiny", limit=1, options={"rounds": 1})
        return dataclasses.replace(config, build=BuildConfig(tasks=("Matching",)), attacks=(attack,),
                                   targets=(TargetConfig(model="tiny", max_new_tokens=4),))

    monkeypatch.setattr(pipeline, "demo_config", small)
    run = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--run", str(run)], terminal_width=300)
    assert result.exit_code == 0, result.output
    assert (run / "benchmark" / "samples.jsonl").exists()
    for name in ("attribute_relevance.csv", "attribute_relevance.png", "prompt_relevance.csv",
                 "prompt_relevance.png"):
        assert (run / "analysis" / name).exists()
    assert (run / "report" / "report.html").is_file()
    output = result.output.replace("\n", "")
    assert str((run / "report" / "report.html").resolve()) in output and str(run.resolve()) in output


def test_query_score_and_report_commands(tmp_path):
    run = tmp_path / "run"
    assert runner.invoke(app, ["build", str(run), "--task", "Matching"]).exit_code == 0
    asked = runner.invoke(app, ["query", str(run), "--target", "tiny", "--limit", "4", "--max-new-tokens", "3",
                                "--controls", "blank"], terminal_width=300)
    assert asked.exit_code == 0, asked.output
    assert "control:blank" in asked.output and "8 asked now" in asked.output
    assert runner.invoke(app, ["score", str(run)], terminal_width=300).exit_code == 0
    reported = runner.invoke(app, ["report", str(run), "--out", str(tmp_path / "out")], terminal_width=300)
    assert reported.exit_code == 0, reported.output
    assert (tmp_path / "out" / "report.html").is_file() and "8 scored response(s)" in reported.output
    missing = runner.invoke(app, ["report", str(tmp_path / "nothing")], terminal_width=300)
    assert missing.exit_code == 2 and "not a run directory" in missing.output


def test_attack_command_runs_and_resumes(tmp_path):
    run = tmp_path / "run"
    assert runner.invoke(app, ["build", str(run), "--task", "Matching", "--max-per-category", "1"]).exit_code == 0
    args = ["attack", str(run), "--model", "tiny", "--method", "gcg", "--limit", "2", "--set", "options.steps=2",
            "--set", "options.search_width=8", "--set", "options.topk=8"]
    first = runner.invoke(app, args, terminal_width=300)
    assert first.exit_code == 0, first.output
    assert "2 sample(s) attacked now" in first.output.replace("\n", " ")
    second = runner.invoke(app, args, terminal_width=300)
    assert "0 sample(s) attacked now" in second.output.replace("\n", " ")
    bad = runner.invoke(app, [*args[:-6], "--set", "options.stepz=2"], terminal_width=300)
    assert bad.exit_code == 2 and "did you mean 'steps'" in bad.output.replace("\n", " ").lower()


def test_score_command_on_a_run_and_on_a_file(tmp_path):
    run = tmp_path / "run"
    assert runner.invoke(app, ["build", str(run), "--task", "Matching", "--max-per-category", "1"]).exit_code == 0
    assert runner.invoke(app, ["attack", str(run), "--model", "tiny", "--method", "direct", "--limit", "2",
                               "--set", "options.max_new_tokens=6"]).exit_code == 0
    result = runner.invoke(app, ["score", str(run)], terminal_width=300)
    assert result.exit_code == 0, result.output
    scores = list((run / "scores").glob("attack__direct__*/scores.jsonl"))
    from medattack.stages.score import DEFAULT_METRICS

    assert len(scores) == 1 and len(scores[0].read_text().splitlines()) == 2 * len(DEFAULT_METRICS)
    again = runner.invoke(app, ["score", str(run)], terminal_width=300)
    assert "0 value(s) computed now" in again.output.replace("\n", " ")
    answers = tmp_path / "answers.jsonl"
    answers.write_text('{"question": "What is shown?", "response": "A chest CT.", "condition": "normal"}\n')
    result = runner.invoke(app, ["score", "--responses", str(answers)], terminal_width=300)
    assert result.exit_code == 0 and (tmp_path / "answers.scores" / "scores.jsonl").exists()
    assert runner.invoke(app, ["score"], terminal_width=300).exit_code == 2


def test_quiet_and_verbose_may_follow_the_subcommand():
    from medattack.cli.app import QUIET

    for args in (["list", "tasks", "-q"], ["-q", "list", "tasks"], ["list", "-q", "tasks"]):
        QUIET["on"] = False
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert QUIET["on"] is True
    QUIET["on"] = False
    assert CliRunner().invoke(app, ["list", "tasks", "--verbose"]).exit_code == 0


def test_progress_in_a_log_is_plain_timestamped_lines_at_least_every_30_seconds():
    from medattack.cli.app import plain_progress

    lines, now = [], [0.0]
    update = plain_progress(lines.append, every=30.0, clock=lambda: now[0])
    for step in range(0, 101):  # 100 steps, one per second
        now[0] = float(step)
        update("mcm on embedded | step", step, 100)
    update("asking embedded", 0, 10)
    assert [line.split(" ", 1)[1] for line in lines] == [
        "mcm on embedded | step: 0/100", "mcm on embedded | step: 30/100", "mcm on embedded | step: 60/100",
        "mcm on embedded | step: 90/100", "mcm on embedded | step: 100/100", "asking embedded: 0/10"]
    assert all(len(line.split(" ", 1)[0]) == 8 for line in lines)  # HH:MM:SS


def test_list_shows_whole_sentences():
    from medattack.cli.tools import first_paragraph

    assert first_paragraph("One line that goes\n    on here.\n\n    Details.") == "One line that goes on here."
    result = CliRunner().invoke(app, ["list", "targets"])
    said = " ".join(result.output.split())  # the console wraps at its width; the words must all be there
    assert "answering in batches (greedy, or sampled at the target's or the query's temperature). python:" in said


def test_a_phase_silent_for_30_seconds_still_gets_a_line_and_a_finished_one_none():
    from medattack.cli.app import plain_progress

    lines, now = [], [0.0]
    progress = plain_progress(lines.append, every=30.0, clock=lambda: now[0])
    progress("loading llava-med", 0, 1)  # a model load: no call until it is done
    for second in (10.0, 29.0):
        now[0] = second
        progress.beat()
    assert len(lines) == 1
    now[0] = 31.0
    progress.beat()
    now[0] = 45.0
    progress.beat()
    now[0] = 62.0
    progress.beat()
    assert [line.split(" ", 1)[1] for line in lines] == [
        "loading llava-med: 0/1", "loading llava-med: 0/1 (still working, 31 s on this step)",
        "loading llava-med: 0/1 (still working, 62 s on this step)"]
    progress("loading llava-med", 1, 1)
    now[0] = 200.0
    progress.beat()
    assert lines[-1].endswith("loading llava-med: 1/1")  # a finished phase is not beaten


def test_the_heartbeat_thread_writes_while_the_caller_is_busy():
    import time

    from medattack.cli.app import plain_progress

    lines: list[str] = []
    with plain_progress(lines.append, every=0.3) as progress:
        progress("asking embedded", 0, 4)
        time.sleep(1.0)  # the caller is stuck in one batch
    assert any("still working" in line for line in lines)
    count = len(lines)
    time.sleep(0.4)
    assert len(lines) == count  # the thread stopped with the context


def test_a_log_line_is_never_broken_mid_line(tmp_path):
    import subprocess
    import sys

    bank = tmp_path / "no-such-run"
    done = subprocess.run([sys.executable, "-m", "medattack.cli", "query", str(bank / ("x" * 120))],
                          capture_output=True, text=True, env={**__import__("os").environ, "COLUMNS": ""},
                          timeout=120)
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0 and len(errors) == 1 and errors[0].startswith("error:"), done.stderr


def test_a_folder_is_continued_with_the_settings_the_user_did_not_type(embedded_run, tmp_path):
    """After the demo (24 new tokens, one pair per category), `medattack query RUN --target embedded` continues its
    answers instead of refusing settings the user never typed; a typed setting that differs is still refused."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(embedded_run.run_dir, run)
    first = CliRunner().invoke(app, ["-q", "query", str(run), "--target", "embedded", "--max-new-tokens", "4",
                                     "--set", "pairs_per_category=1", "--controls", "none", "--no-attacks"])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(app, ["-q", "query", str(run), "--target", "embedded"])
    said = " ".join(again.output.split())
    assert again.exit_code == 0, again.output
    assert "continuing with the settings the folder holds:" in said and "target.max_new_tokens=4" in said
    assert "pairs_per_category=1" in said and "0 asked now" in said
    typed = CliRunner().invoke(app, ["-q", "query", str(run), "--target", "embedded", "--max-new-tokens", "5"])
    assert typed.exit_code == 2 and "stage.target.max_new_tokens: 4 -> 5" in " ".join(typed.output.split())
