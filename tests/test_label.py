"""`medattack label`: the labelling page in headless Chromium (keyboard, reload, resume, a killed server), CSV in
and out with errors that name the row, and the report's two-phase estimate from the labels."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medattack.cli import app
from medattack.errors import SourceError
from medattack.labelling.server import LabelServer
from medattack.labelling.store import export_csv, import_csv, population
from medattack.models.targets import LlavaTarget, TargetConfig
from medattack.stages.build import BuildConfig
from medattack.stages.build import run as build_benchmark
from medattack.stages.query import QueryConfig
from medattack.stages.query import run as run_query_stage
from medattack.stages.score import run as score

from browser import browser, find_chromium, page_errors


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_whitebox) -> Path:
    root = tmp_path_factory.mktemp("label") / "run"
    build_benchmark(root, BuildConfig(tasks=("Disease Classification", "Open-ended")))
    target = LlavaTarget(TargetConfig(model="tiny", max_new_tokens=6), model=tiny_whitebox)
    run_query_stage(root, QueryConfig(pairs_per_category=2), target=target)
    score(root)
    return root


@pytest.fixture
def run(scored, tmp_path) -> Path:
    """A copy of the scored run, so each test starts without labels."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(scored, copy)
    return copy


def _write_csv(path: Path, rows: list[dict[str, str]], columns: list[str] | None = None) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns or list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_export_import_and_the_report_then_stands_on_the_labels(run, tmp_path):
    pop = population(run)
    assert len(pop.answers) >= 12 and pop.metric == "judge"
    sample = tmp_path / "sample.csv"
    assert export_csv(pop, sample, seed=0, n=12) == 12
    rows = list(csv.DictReader(sample.open()))
    assert [r["response_id"] for r in rows] == pop.order(0)[:12] and all(r["label"] == "" for r in rows)
    assert "judge" not in rows[0] and "stratum" not in rows[0]  # the verdict is never shown to the labeller
    for k, row in enumerate(rows):
        row["label"] = "1" if k % 4 == 0 else "0"
    _write_csv(sample, rows)
    result = CliRunner().invoke(app, ["label", str(run), "--import", str(sample)], terminal_width=300)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "12 labels imported" in said and f"from 12 labels of this model's {len(pop.answers)} answers" in said
    assert {rid: label.label for rid, label in pop.labels().items()} == {
        r["response_id"]: int(r["label"]) for r in rows}

    again = CliRunner().invoke(app, ["label", str(run), "--import", str(sample)], terminal_width=300)
    assert "0 labels imported, 12 already there" in " ".join(again.output.split())  # nothing written twice
    assert len(pop.path.read_text().splitlines()) == 12

    summary = json.loads(CliRunner().invoke(app, ["results", str(run), "--json"]).output)
    head = summary["headline"][0]["estimate"]
    assert head["kind"] == "two-phase" and head["labels"] == 12 and head["labelled_positives"] == 3
    assert head["ci_low"] <= head["rate"] <= head["ci_high"] and sum(s["labelled"] for s in head["strata"]) == 12
    text = CliRunner().invoke(app, ["results", str(run)], terminal_width=300).output
    assert f"from 12 labels of this model's {len(pop.answers)} answers, their rate is" in " ".join(text.split())


@pytest.mark.parametrize(("rows", "columns", "said"), [
    ([{"response_id": "nope", "label": "1"}], None, "line 2: unknown response_id 'nope'"),
    ([{"response_id": "FIRST", "label": "yes"}], None, "line 2: label must be 0 or 1"),
    ([{"response_id": "FIRST", "label": "1"}, {"response_id": "FIRST", "label": "2"}], None, "line 3: label must"),
    ([{"response_id": "FIRST", "label": "0"}, {"response_id": "FIRST", "label": "1"}], None,
     "is labelled 0 on line 2 and 1 here"),
    ([{"response_id": "FIRST"}], None, "missing column(s) ['label']"),
    ([{"response_id": "FIRST", "label": "1", "verdict": "1"}], None, "unknown column(s) ['verdict']"),
    ([{"response_id": "FIRST", "label": "1", "target": "another-model"}], None,
     "a label of target 'another-model', not"),
])
def test_a_bad_import_names_the_row_and_writes_nothing(run, tmp_path, rows, columns, said):
    pop = population(run)
    first = pop.order(0)[0]
    rows = [{k: (first if v == "FIRST" else v) for k, v in row.items()} for row in rows]
    path = _write_csv(tmp_path / "bad.csv", rows, columns)
    with pytest.raises(SourceError) as error:
        import_csv(pop, path, "tester")
    assert said in str(error.value)
    assert not pop.path.exists()
    result = CliRunner().invoke(app, ["label", str(run), "--import", str(path)], terminal_width=400)
    assert result.exit_code != 0 and said in " ".join(result.output.split())


def _state(page) -> dict:
    return page.evaluate("JSON.stringify({item: document.body.dataset.item, "
                         "progress: document.getElementById('progress').textContent})")


@pytest.mark.skipif(find_chromium() is None and not os.environ.get("CI"), reason="chromium is not installed")
def test_the_page_labels_with_the_keyboard_and_resumes_after_a_reload(run):
    pop = population(run)
    order = pop.order(5)
    server = LabelServer(pop, goal=5, seed=5, labeller="tester").start()
    try:
        with browser() as page:
            page.goto(server.url)
            page.wait_until(f"document.body.dataset.item === {json.dumps(order[0])}")
            answer = page.evaluate("document.getElementById('answer').textContent")
            assert answer == pop.responses[order[0]].response  # the whole answer, as text
            assert "complies" in page.evaluate("document.getElementById('rubric').textContent")
            for key, then in (("1", 1), ("0", 2), ("s", 3), ("u", 2), ("1", 3), ("x", 3)):
                page.press(key)
                page.wait_until(f"document.body.dataset.item === {json.dumps(order[then])}")
            assert json.loads(_state(page))["progress"].startswith("3 / 5 labelled")
            page.reload()
            page.wait_until(f"document.body.dataset.item === {json.dumps(order[3])}")  # resumes where it was
            page.press("0")
            page.wait_until(f"document.body.dataset.item === {json.dumps(order[4])}")
            assert json.loads(_state(page))["progress"].startswith("4 / 5 labelled")
            page.wait_until("(() => { const i = document.getElementById('image'); "
                            "return i.complete && i.naturalWidth > 0; })()")  # the shown answer's image loads
            assert page_errors(page) == []
    finally:
        server.close()
    labels = {rid: label.label for rid, label in pop.labels().items()}
    assert labels == {order[0]: 1, order[1]: 0, order[2]: 1, order[3]: 0}  # exactly what was typed, undo undone
    rows = [json.loads(line) for line in pop.path.read_text().splitlines()]
    assert [r["status"] for r in rows] == ["labelled", "labelled", "skipped", "undone", "labelled", "labelled"]
    assert all(r["labeller"] == "tester" and r["schema_version"] == 1 for r in rows)


def test_the_api_needs_the_token_and_never_sends_the_verdict(run):
    pop = population(run)
    server = LabelServer(pop, goal=3, seed=0, labeller="tester").start()
    try:
        base = server.url.split("?")[0]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + "api/state?token=wrong")
        assert refused.value.code == 403
        state = json.loads(urllib.request.urlopen(server.url.replace("/?", "/api/state?")).read())
        assert set(state["item"]) == {"response_id", "position", "condition", "task", "question", "answer"}
        first = state["item"]["response_id"]
        assert _post(server.url, "/api/label", {"response_id": first, "value": 1})["labelled"] == 1
        with pytest.raises(urllib.error.HTTPError) as twice:  # a second tab, a double press: never a silent change
            _post(server.url, "/api/label", {"response_id": first, "value": 0})
        assert twice.value.code == 409 and pop.labels()[first].label == 1
        shown = json.loads(urllib.request.urlopen(server.url.replace("/?", "/api/state?")).read())["item"]
        token = server.url.split("?")[1]
        assert urllib.request.urlopen(f"{base}image/{shown['position']}?{token}").status == 200
        with pytest.raises(urllib.error.HTTPError) as other:  # only the image of the answer shown
            urllib.request.urlopen(f"{base}image/{state['item']['position']}?{token}")
        assert other.value.code == 404
    finally:
        server.close()


def _post(url: str, path: str, body: dict) -> dict:
    base, token = url.split("/?")
    request = urllib.request.Request(f"{base}{path}?{token}", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(request, timeout=10).read())


def _start(run: Path) -> tuple[subprocess.Popen, str, list[str]]:
    process = subprocess.Popen([sys.executable, "-m", "medattack.cli", "label", str(run), "--no-browser",
                                "--labeller", "tester"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "COLUMNS": "300"})
    found: list[str] = []
    lines: list[str] = []

    def read() -> None:
        for line in process.stdout:
            lines.append(line)
            if match := re.search(r"(http://127\.0\.0\.1:\d+/\?token=\S+)", line):
                found.append(match.group(1))

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 60
    while not found and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    assert found, "the label command printed no address"
    return process, found[0], lines


def test_a_killed_server_loses_no_label_given_and_the_command_resumes(run):
    order = population(run).order(0)
    process, url, _ = _start(run)
    try:
        state = None
        for rid, value in zip(order[:3], (1, 0, 1), strict=True):
            state = _post(url, "/api/label", {"response_id": rid, "value": value})
        assert state["labelled"] == 3 and state["item"]["response_id"] == order[3]
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    again, url, lines = _start(run)
    try:
        state = json.loads(urllib.request.urlopen(url.replace("/?", "/api/state?"), timeout=10).read())
        assert state["labelled"] == 3 and state["item"]["response_id"] == order[3]
    finally:
        again.send_signal(signal.SIGINT)
        again.wait(timeout=30)
    time.sleep(0.2)  # the reader thread takes the last lines
    assert "from 3 labels of " in " ".join("".join(lines).split())


def test_compare_states_each_runs_standing_rate_and_their_difference(run, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(run, other)
    pop = population(other)
    for rid in pop.order(0)[:10]:
        from medattack.labelling.store import give

        give(pop, rid, 0, "tester")
    result = CliRunner().invoke(app, ["compare", str(run), str(other), "--json"])
    assert result.exit_code == 0, result.output
    standing = json.loads(result.output)["standing"]
    assert len(standing) == 1
    change = standing[0]
    assert change["a"]["kind"] == "transported" and change["b"]["kind"] == "two-phase"
    assert change["b"]["labels"] == 10 and change["ci_low"] <= change["ci_high"]
    assert change["difference"] is None  # A is transported: an interval of the change, no point
    text = " ".join(CliRunner().invoke(app, ["compare", str(run), str(other)], terminal_width=300).output.split())
    assert "the rate that stands (harmful questions): A in [" in text and "two-phase; B - A" in text
