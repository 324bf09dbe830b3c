"""The README's commands after `make demo` run as written on a demo-shaped run, and a stage folder never holds
two configurations: asking it with other settings names what differs, and --force replaces its results."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medattack.cli import app
from medattack.pipeline import demo_config, run_all

README = Path(__file__).resolve().parents[1] / "README.md"


def after_demo_commands() -> list[list[str]]:
    """The medattack commands of the README's after-demo block, each as its words (comments dropped)."""
    block = README.read_text().split("<!-- after-demo:start -->")[1].split("<!-- after-demo:end -->")[0]
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(line, comments=True) for line in lines if line.startswith("medattack ")]


@pytest.fixture(scope="module")
def demo_shaped(tmp_path_factory) -> Path:
    """The demo's run (same stages and settings), on the tiny model instead of the embedded one."""
    root = tmp_path_factory.mktemp("after-demo") / "demo"
    config = demo_config(root)
    config = replace(config, attacks=tuple(replace(a, model="tiny") for a in config.attacks),
                     targets=tuple(replace(t, model="tiny") for t in config.targets))
    run_all(config)
    return root


def test_the_readme_commands_after_the_demo_run_as_written(demo_shaped):
    commands = after_demo_commands()
    hint = " ".join((demo_shaped / "report" / "report.md").read_text().split())
    assert "without labels of this model the rate lies in" in hint and "(\\`medattack label\\`)" in hint
    assert [c[1] for c in commands] == ["results", "results", "label", "results", "attack", "query", "score", "report"]
    for words in commands:
        words = [str(demo_shaped) if w == "runs/demo" else "tiny" if w == "embedded" else w for w in words[1:]]
        result = CliRunner().invoke(app, words, terminal_width=200)
        assert result.exit_code == 0, (words, result.output)
        if words[0] == "query":  # the demo's own settings, taken from its folder: only the new GCG inputs are asked
            assert re.search(r"[1-9]\d* asked now; 0 failed", result.output), result.output
            assert "continuing with the settings the folder holds:" in result.output
            assert "target.max_new_tokens=24" in result.output and "pairs_per_category=1" in result.output
        if words[0] == "label":  # the shipped labels are of the demo's own answers
            assert "8 labels imported" in result.output
    summary = json.loads((demo_shaped / "report" / "summary.json").read_text())
    standing = summary["headline"][0]["estimate"]
    assert standing["kind"] == "two-phase" and standing["labels"] == 8
    config = json.loads((demo_shaped / "responses" / "tiny-random-llava_unit_tests" / "config.json").read_text())
    assert config["stage"]["target"]["max_new_tokens"] == 24 and config["stage"]["pairs_per_category"] == 1
    assert "gcg" in (demo_shaped / "report" / "report.md").read_text()


def test_other_settings_are_refused_naming_them_and_force_replaces_instead_of_mixing(demo_shaped):
    folder = demo_shaped / "attacks" / "mcm" / "tiny-random-llava_unit_tests"
    command = ["attack", str(demo_shaped), "--method", "mcm", "--model", "tiny", "--limit", "3",
               "--set", "options.rounds=2"]
    refused = CliRunner().invoke(app, command, terminal_width=400)
    said = " ".join(refused.output.split())
    assert refused.exit_code != 0 and "method.rounds: 4 -> 2" in said and "limit" not in said
    assert "--force" in said and "another run" in said
    untyped = CliRunner().invoke(app, command[:8], terminal_width=400)  # rounds not typed: the folder's 4 stand
    said = " ".join(untyped.output.split())
    assert untyped.exit_code == 0 and "continuing with the settings the folder holds: options.rounds=4" in said
    before = sorted(p.name for p in folder.iterdir())
    old_results = (folder / "results.jsonl").read_text()
    forced = CliRunner().invoke(app, [*command, "--force"], terminal_width=400)
    assert forced.exit_code == 0, forced.output
    stale = list((folder / "stale").iterdir())
    assert len(stale) == 1 and (stale[0] / "results.jsonl").read_text() == old_results  # kept, never read
    assert json.loads((stale[0] / "config.json").read_text())["stage"]["limit"] == 3  # as the continued call left it
    assert set(before) - {"config.json", ".writer.lock"} <= {p.name for p in stale[0].iterdir()}
    rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 3  # only the new configuration's results, none of the old
    assert json.loads((folder / "config.json").read_text())["stage"]["limit"] == 3
