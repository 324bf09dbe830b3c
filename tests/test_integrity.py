"""Result integrity under changed inputs, bad input and hostile requests, through the public commands.

Every case builds its own inputs at test time (no binary is committed). Stale results: an edited
response, a changed setting or a rebuilt benchmark recompute exactly what changed, and old values are
set aside, never reported as current. Nothing is written outside the run, nothing medattack did not
write is deleted, and bad input is recorded with the row and the fix while the rest goes on.
"""

import json
import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import write_png
from medattack.cli import app
from medattack.rundir import read_jsonl

runner = CliRunner()
SECRET = "sk-integrity-0123456789"


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], terminal_width=400)


def flat(result) -> str:
    return " ".join(result.output.split())


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- stale results -----------------------------------------------------------------------------------


def test_rescoring_an_edited_responses_file_recomputes_exactly_the_edited_row(tmp_path):
    rows = [{"id": f"r{k}", "question": "What does this chest CT show?", "response": f"A nodule, case {k}.",
             "condition": "normal"} for k in range(4)]
    answers = jsonl(tmp_path / "answers.jsonl", rows)
    first = invoke("score", "--responses", answers, "--set", "metrics=[keyword_asr, tto]")
    assert first.exit_code == 0, first.output
    rows[2]["response"] = "I'm sorry, I cannot help with that."
    jsonl(answers, rows)
    again = invoke("score", "--responses", answers, "--set", "metrics=[keyword_asr, tto]")
    assert "2 value(s) computed now" in flat(again) and "2 stale value(s)" in flat(again)
    scores = read_jsonl(tmp_path / "answers.scores" / "scores.jsonl")
    current = {(r["response_id"], r["metric"]): r["value"] for r in scores}
    assert len(scores) == len(current) == 8 and current[("r2", "keyword_asr")] == 0.0
    stale = read_jsonl(tmp_path / "answers.scores" / "stale.jsonl")
    assert {(r["response_id"], r["metric"]) for r in stale} == {("r2", "keyword_asr"), ("r2", "tto")}


def test_changing_a_metric_setting_recomputes_that_metric_only(tmp_path):
    answers = jsonl(tmp_path / "a.jsonl", [
        {"id": "x", "question": "Q?", "response": "Here is a long answer. I cannot say more than that.",
         "condition": "malicious"}])
    assert invoke("score", "--responses", answers, "--set", "metrics=[keyword_asr, tto]").exit_code == 0
    changed = invoke("score", "--responses", answers, "--set", "metrics={keyword_asr: {mode: anywhere}, tto: {}}")
    assert "1 value(s) computed now" in flat(changed)
    values = {r["metric"]: r["value"] for r in read_jsonl(tmp_path / "a.scores" / "scores.jsonl")}
    assert values["keyword_asr"] == 0.0  # the refusal later in the answer now counts


def test_two_files_with_one_stem_do_not_share_values(tmp_path):
    jsonl(tmp_path / "a.jsonl", [{"id": "1", "question": "Q?", "response": "Answer one is here."}])
    (tmp_path / "a.csv").write_text("id,question,response\n2,Q?,I cannot help with that.\n")
    assert invoke("score", "--responses", tmp_path / "a.jsonl").exit_code == 0
    second = invoke("score", "--responses", tmp_path / "a.csv")
    assert second.exit_code == 0, second.output
    ids = {r["response_id"] for r in read_jsonl(tmp_path / "a.scores" / "scores.jsonl")}
    assert ids == {"2"}  # the first file's rows were set aside, not reported with the second's


def test_a_responses_file_named_like_the_scores_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    jsonl(out / "scores.jsonl", [{"question": "Q?", "response": "A."}])
    result = invoke("score", "--responses", out / "scores.jsonl", "--out", out)
    assert result.exit_code == 2 and "another --out" in flat(result)


def test_a_rebuilt_benchmark_reasks_and_rescores_only_what_changed(tmp_path):
    run = tmp_path / "run"
    common = ["--task", "Matching", "--max-per-category", "1"]
    assert invoke("build", run, *common).exit_code == 0
    old_ids = {r["sample_id"] for r in read_jsonl(run / "benchmark" / "samples.jsonl")}
    query = ["query", run, "--target", "tiny", "--max-new-tokens", "2", "--controls", "none", "--no-attacks"]
    assert invoke(*query).exit_code == 0
    assert invoke("score", run, "--set", "metrics=[keyword_asr]").exit_code == 0
    rebuilt = invoke("build", run, *common, "--mismatch", "modality", "--force")
    assert rebuilt.exit_code == 0, rebuilt.output
    new_ids = {r["sample_id"] for r in read_jsonl(run / "benchmark" / "samples.jsonl")}
    changed = new_ids - old_ids
    assert changed and len(changed) < len(new_ids)  # the mismatched questions changed, the others did not
    asked = invoke(*query)
    assert f"{len(changed)} asked now" in flat(asked)
    folder = next((run / "responses").iterdir())
    assert {r["sample_id"] for r in read_jsonl(folder / "responses.jsonl")} == new_ids
    assert {r["sample_id"] for r in read_jsonl(folder / "stale.jsonl")} == old_ids - new_ids
    scored = invoke("score", run, "--set", "metrics=[keyword_asr]")
    assert f"{len(changed)} value(s) computed now" in flat(scored)
    scores = read_jsonl(run / "scores" / folder.name / "scores.jsonl")
    assert {r["response_id"].split("|")[1] for r in scores} == new_ids


def test_duplicated_inputs_are_merged_and_counted(tmp_path):
    write_png(tmp_path / "data" / "a.png")
    manifest = tmp_path / "data" / "m.csv"
    manifest.write_text("path,modality,body_part\na.png,CT,Chest\na.png,CT,Chest\n")
    result = invoke("build", tmp_path / "run", "--source", f"manifest:{manifest}", "--task", "Matching")
    assert result.exit_code == 0, result.output
    samples = read_jsonl(tmp_path / "run" / "benchmark" / "samples.jsonl")
    assert len(samples) == len({s["sample_id"] for s in samples}) == 4
    failures = read_jsonl(tmp_path / "run" / "benchmark" / "failures.jsonl")
    assert [f["error"] for f in failures] == ["DuplicateInput"] and "4 sample(s)" in failures[0]["problem"]
    twice = invoke("build", tmp_path / "twice", "--source", "embedded", "--source", "embedded", "--task", "Matching")
    once = read_jsonl(tmp_path / "twice" / "benchmark" / "samples.jsonl")
    assert twice.exit_code == 0 and len(once) == len({s["sample_id"] for s in once})


def test_a_wide_responses_file_with_a_repeated_id_is_refused(tmp_path):
    path = tmp_path / "wide.csv"
    path.write_text("id,original_attribute,unmatch_attribute,normal_prompt,harmful_prompt,normal_response\n"
                    "1,CT and Chest,MRI and Brain,What?,How?,A.\n1,CT and Chest,MRI and Brain,What?,How?,B.\n")
    result = invoke("score", "--responses", path)
    assert result.exit_code == 2 and "repeat" in flat(result)


# --- nothing written outside the run, nothing of the user's deleted ---------------------------------


def test_names_from_data_never_become_paths_outside_the_run(tmp_path):
    write_png(tmp_path / "data" / "x.png")
    target = tmp_path / "abs" / "PWNED"
    manifest = jsonl(tmp_path / "data" / "m.jsonl", [
        {"path": "x.png", "modality": str(target), "body_part": "x"},
        {"path": "x.png", "attribute": "../../../../x/PWNED2 and x", "id": "two"},
        {"path": "x.png", "modality": "a\u0000b", "body_part": "..", "id": "three"},
        {"path": "x.png", "modality": "M" * 300, "body_part": "B", "id": "four"}])
    result = invoke("build", tmp_path / "run", "--source", f"manifest:{manifest}", "--task", "Matching")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "abs").exists()
    exports = list((tmp_path / "run" / "benchmark" / "export").iterdir())
    assert len(exports) == 4 and all(p.parent == tmp_path / "run" / "benchmark" / "export" for p in exports)
    assert all(len(p.name) <= 90 and not p.name.startswith(".") for p in exports)
    outside = [p for p in tmp_path.rglob("*") if "run" not in p.relative_to(tmp_path).parts[:1]
               and "data" not in p.relative_to(tmp_path).parts[:1]]
    assert outside == []


def test_force_never_deletes_a_folder_medattack_did_not_write(tmp_path):
    run = tmp_path / "run"
    (run / "benchmark").mkdir(parents=True)
    (run / "benchmark" / "thesis.tex").write_text("my own work")
    result = invoke("build", run, "--task", "Matching", "--force")
    assert result.exit_code == 2 and "did not write" in flat(result)
    assert (run / "benchmark" / "thesis.tex").read_text() == "my own work"


def test_a_failed_rebuild_keeps_the_old_benchmark(tmp_path):
    run = tmp_path / "run"
    assert invoke("build", run, "--task", "Matching", "--max-per-category", "1").exit_code == 0
    before = (run / "benchmark" / "samples.jsonl").read_bytes()
    (tmp_path / "empty" / "CT" / "Chest").mkdir(parents=True)
    (tmp_path / "empty" / "CT" / "Chest" / "broken.png").write_bytes(b"not a png")
    failed = invoke("build", run, "--source", f"folder:{tmp_path / 'empty'}", "--force")
    assert failed.exit_code == 1 and "is kept" in flat(failed)
    assert (run / "benchmark" / "samples.jsonl").read_bytes() == before


# --- bad input is recorded, the rest goes on --------------------------------------------------------


def test_bad_rows_of_a_manifest_are_recorded_and_the_rest_builds(tmp_path):
    data = tmp_path / "data"
    write_png(data / "good.png")
    rows = [{"path": "good.png", "modality": "CT", "body_part": "Chest", "id": "good"}]
    rows += [{"path": "good.png", "modality": "CT", "body_part": "Chest", "id": f"bbox{k}", "bbox": bbox}
             for k, bbox in enumerate([5, True, "[1,2", "inf,0,10,10", {"x": 1}])]
    rows += [{"path": "a\u0000.png", "modality": "CT", "body_part": "Chest"},
             {"path": "good.png", "modality": 5, "body_part": "Chest"},
             {"path": "good.png", "modality": "CT", "body_part": {"x": 1}}]
    manifest = jsonl(data / "m.jsonl", rows)
    with manifest.open("a") as handle:
        handle.write('{"path": "good.png", "modality": \n')  # one broken line
    result = invoke("build", tmp_path / "run", "--source", f"manifest:{manifest}", "--task", "Matching")
    assert result.exit_code == 0, result.output
    failures = read_jsonl(tmp_path / "run" / "benchmark" / "failures.jsonl")
    assert len(failures) == 9 and all(f["problem"] for f in failures)
    samples = read_jsonl(tmp_path / "run" / "benchmark" / "samples.jsonl")
    assert {s["item_id"] for s in samples} == {"good"}
    assert all("{'x'" not in s["question"] and "about 5 " not in s["question"] for s in samples)


@pytest.mark.parametrize(("text", "expected"), [
    ("path,modality,body_part\n", "no rows"),
    ('path,modality,body_part\n"a.png,CT,Chest\nb.png,CT,Chest\n', "quote"),
])
def test_a_manifest_without_rows_or_with_an_open_quote_is_one_clear_failure(tmp_path, text, expected):
    manifest = tmp_path / "m.csv"
    manifest.write_text(text)
    result = invoke("build", tmp_path / "run", "--source", f"manifest:{manifest}")
    assert result.exit_code == 1 and expected in flat(result)


def test_odd_file_names_and_special_files_in_a_folder(tmp_path):
    folder = tmp_path / "data" / "CT" / "Chest"
    write_png(folder / "good.png")
    write_png(Path(os.fsdecode(bytes(folder) + b"/caf\xe9.png")), seed=1)  # not UTF-8
    (folder / "bad[bold]x.png").write_bytes(b"broken")
    (folder / "sub[").mkdir()
    (folder / "sub[" / "x].png").write_bytes(b"broken")
    if hasattr(os, "mkfifo"):
        os.mkfifo(folder / "pipe.png")
    started = time.monotonic()
    result = invoke("build", tmp_path / "run", "--source", f"folder:{tmp_path / 'data'}", "--task", "Matching")
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 120  # the pipe was not opened
    assert "bad[bold]x.png" in result.output.replace("\n", "")  # shown as written, not read as markup
    samples = read_jsonl(tmp_path / "run" / "benchmark" / "samples.jsonl")
    assert len({s["image_sha256"] for s in samples}) == 2
    failures = {Path(f["item"]).name: f for f in read_jsonl(tmp_path / "run" / "benchmark" / "failures.jsonl")}
    assert {"bad[bold]x.png", "x].png"} <= set(failures)
    if hasattr(os, "mkfifo"):
        assert "regular file" in failures["pipe.png"]["problem"]


def test_bad_3mad_rows_are_recorded_and_the_rest_builds(tmp_path):
    write_png(tmp_path / "elsewhere.png")
    split = tmp_path / "3mad"
    write_png(split / "images" / "good.png")
    row = {"id": "1", "file_name": "good.png", "original_attribute": "CT and Chest",
           "unmatch_attribute": "MRI and Brain", "normal_prompt": "What is shown?",
           "harmful_prompt": "How do I fake it?", "policy": "Matching", "key_phrases": "fake it"}
    jsonl(split / "CT_Chest.jsonl", [
        row,
        {**row, "id": "2", "file_name": str(tmp_path / "elsewhere.png")},  # absolute: outside the data
        {**row, "id": "3", "normal_prompt": 5},  # a number where a question is meant
        {**row, "id": "4", "key_phrases": True}])
    result = invoke("build", tmp_path / "run", "--source", f"3mad:{split}")
    assert result.exit_code == 0, result.output
    failures = {f["item"].rsplit(" ", 1)[-1]: f["problem"]
                for f in read_jsonl(tmp_path / "run" / "benchmark" / "failures.jsonl")}
    assert "not a relative path" in failures["2"] and "must be text" in failures["3"]
    assert "key_phrases" in failures["4"]
    samples = read_jsonl(tmp_path / "run" / "benchmark" / "samples.jsonl")
    assert {s["item_id"] for s in samples} == {"CT_Chest/1"}


# --- configs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [
    b"seed: \xff\xfe\n",
    ("x: " + "[" * 20000 + "]" * 20000 + "\n").encode(),
    b'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + b"".join(f"{chr(98 + k)}: &{chr(98 + k)} [{', '.join(['*' + chr(97 + k)] * 9)}]\n".encode() for k in range(9)),
    b"attacks: [5]\n",
])
def test_hostile_configs_are_one_line_errors_before_any_work(tmp_path, content):
    config = tmp_path / "run.yaml"
    config.write_bytes(content)
    started = time.monotonic()
    result = invoke("run", config, "--set", f"run_dir={tmp_path / 'run'}")
    assert result.exit_code == 2 and len(result.output) < 2000, result.output[:500]
    assert time.monotonic() - started < 10 and not (tmp_path / "run").exists()


def test_a_bad_set_value_is_one_line():
    result = invoke("build", "runs/never", "--set", "seed=[")
    assert result.exit_code == 2 and "not valid YAML" in flat(result)


# --- secrets, retries, report links ----------------------------------------------------------------


def test_a_key_echoed_by_a_server_never_reaches_disk(tmp_path, monkeypatch):
    import http.server
    import threading

    class Echo(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            body = f"invalid key: {self.headers['Authorization']}".encode()
            self.send_response(401)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("OPENAI_API_KEY", SECRET)
        run = tmp_path / "run"
        assert invoke("build", run, "--task", "Matching", "--max-per-category", "1").exit_code == 0
        result = invoke("query", run, "--target", "api:gpt-4o", "--base-url",
                        f"http://127.0.0.1:{server.server_address[1]}/v1", "--limit", "2", "--controls", "none")
        assert result.exit_code == 1, result.output  # every query failed: the command says so
        assert "every query of this call failed" in result.output
    finally:
        server.shutdown()
    failures = read_jsonl(next((run / "responses").iterdir()) / "failures.jsonl")
    assert len(failures) == 2 and "[REDACTED]" in failures[0]["problem"]
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_bytes().decode("utf-8", "replace"), path
    assert SECRET not in result.output


def test_a_retry_after_longer_than_a_minute_fails_at_once_instead_of_stalling(fake_api):
    import time

    from medattack.openai_client import APIClient, APIConfig, APIError

    fake_api.fail_next, fake_api.fail_status = 10, 429
    original = fake_api.httpd.RequestHandlerClass.send_header

    def hour(handler, name, value):
        original(handler, "Retry-After", "3600") if name == "retry-after-ms" else original(handler, name, value)

    fake_api.httpd.RequestHandlerClass.send_header = hour
    started = time.monotonic()
    client = APIClient(APIConfig(base_url=fake_api.base_url, max_retries=3))
    with pytest.raises(APIError, match="429"):
        client.post("chat/completions", {"messages": [{"role": "user", "content": "x"}]})
    assert fake_api.requests == 1 and client.stats["retries"] == 0 and time.monotonic() - started < 10


def test_report_markdown_neutralises_links_and_images_from_model_output():
    from medattack.report.render import Section, Table, to_markdown

    table = Table("t", ["response"], [["![x](http://evil.example/a.png) [y](javascript:alert(1))"]], name="t")
    markdown = to_markdown("r", [Section("s", tables=[table])])
    assert "![x](" not in markdown and "[y](" not in markdown and r"\[y\]" in markdown


# --- serve under hostile requests ------------------------------------------------------------------


class _SlowEcho:
    """A target that answers after a pause (so requests pile up) with the text it was asked."""

    name = "slow-echo"

    def __init__(self, pause: float = 0.0) -> None:
        self.pause = pause

    def answer(self, queries):
        time.sleep(self.pause)
        return [q.text[:20] for q in queries]


@pytest.fixture
def slow_server():
    from medattack.serve import ChatServer, ServeConfig

    servers = []

    def start(pause: float = 0.0, **options):
        server = ChatServer(_SlowEcho(pause), ServeConfig(port=0, **options)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def _raw(server, request: bytes, timeout: float = 10.0) -> tuple[int, dict]:
    import socket

    host, port = server.httpd.server_address[:2]
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < int(
                [h for h in data.split(b"\r\n") if h.lower().startswith(b"content-length")][0].split(b":")[1]
                if b"content-length" in data.lower() else 0):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body or b"{}")


def _post(body: bytes, length: str | None = None) -> bytes:
    size = str(len(body)) if length is None else length
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + size.encode() + b"\r\nConnection: close\r\n\r\n" + body)


def _chat(**fields) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": "hello"}], **fields}).encode()


@pytest.mark.parametrize(("request_bytes", "expected"), [
    (_post(b"{}", length="abc"), "Content-Length"),
    (_post(b"{}", length="-1"), "Content-Length"),
    (_post(_chat(max_tokens=1e999)), "max_tokens"),
    (_post(b"[" * 100_000 + b"]" * 100_000), "nested"),
    (_post(json.dumps({"messages": [{"role": "user", "content": "x" * 1_000_000}]}).encode()), "characters"),
    (_post(b"not json"), "not JSON"),
])
def test_every_malformed_request_gets_a_4xx_json_answer(slow_server, request_bytes, expected):
    server = slow_server()
    status, body = _raw(server, request_bytes)
    assert 400 <= status < 500 and expected in body["error"]["message"]
    assert _raw(server, _post(_chat()))[0] == 200  # and the server goes on


def test_a_stalled_upload_times_out_and_does_not_hold_the_server(slow_server):
    import socket

    server = slow_server(read_timeout_s=0.5)
    host, port = server.httpd.server_address[:2]
    stalled = [socket.create_connection((host, port)) for _ in range(5)]
    for sock in stalled:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{")
    time.sleep(1.5)
    try:
        assert _raw(server, _post(_chat()))[0] == 200
        for sock in stalled:
            sock.settimeout(2)
            assert sock.recv(100) == b""  # closed by the server
    finally:
        for sock in stalled:
            sock.close()


def test_a_full_queue_answers_503_with_retry_after_instead_of_resetting(slow_server):
    from concurrent.futures import ThreadPoolExecutor

    server = slow_server(pause=0.3, max_batch=1, max_queue=2, batch_wait_ms=0)
    with ThreadPoolExecutor(16) as pool:
        statuses = [s for s, _ in pool.map(lambda _: _raw(server, _post(_chat())), range(16))]
    assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses


def test_a_setting_added_since_a_folder_was_written_reads_as_its_default(tmp_path):
    from medattack.errors import RunDirError
    from medattack.stamps import claim_folder

    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "config.json").write_text('{"stage": {"target": {"kind": "llava"}}}')
    record = {"stage": {"target": {"kind": "llava", "auto_class": "image-text-to-text"}}}
    defaults = {"stage": {"target": {"kind": "llava", "auto_class": "image-text-to-text"}}}
    claim_folder(folder, record, False, "x", defaults)  # the new setting at its default: the same config
    (folder / "config.json").write_text('{"stage": {"target": {"kind": "llava"}}}')
    with pytest.raises(RunDirError, match="another configuration"):
        claim_folder(folder, {"stage": {"target": {"kind": "llava", "auto_class": "causal-lm"}}}, False, "x",
                     defaults)


class _Killed(BaseException):
    """A kill -9 at one point of a rebuild: nothing after it runs (not an Exception: no handler catches it)."""


@pytest.mark.parametrize("point", ["before the swap", "between the renames", "before the old is removed",
                                   "before run.json"])
def test_a_rebuild_killed_at_any_point_leaves_run_json_naming_the_benchmark_that_is_there(tmp_path, monkeypatch,
                                                                                          point):
    import shutil

    from medattack.stages import build as stage
    from medattack.stages.build import BuildConfig

    run = tmp_path / "run"
    small = {"tasks": ("Matching",), "max_images_per_category": 1}
    stage.run(run, BuildConfig(**small, mismatch_strategy="both"))

    def die(*args, **kwargs):
        raise _Killed(point)

    if point == "before the swap":
        monkeypatch.setattr(stage, "_swap_in", die)
    elif point == "between the renames":
        original_rename = Path.rename
        monkeypatch.setattr(Path, "rename", lambda self, target: (
            die() if self.name == ".benchmark.building" else original_rename(self, target)))
    elif point == "before the old is removed":
        monkeypatch.setattr(shutil, "rmtree", lambda path, *a, **k: die() if ".benchmark.old" in str(path) and
                            (Path(path).parent / "benchmark").exists() else None)
    else:
        monkeypatch.setattr(stage.RunDir, "record_stage", lambda self, name, *a: die() if name == "build" else None)
    with pytest.raises(_Killed):
        stage.run(run, BuildConfig(**small, mismatch_strategy="modality"), force=True)
    monkeypatch.undo()

    def recorded() -> str:
        return json.loads((run / "run.json").read_text())["stages"]["build"]["config"]["mismatch_strategy"]

    CliRunner().invoke(app, ["results", str(run)])  # any next command settles the run (this one then finds no scores)
    installed = json.loads((run / "benchmark" / "build.json").read_text())["config"]["mismatch_strategy"]
    assert recorded() == installed, point
    again = stage.run(run, BuildConfig(**small, mismatch_strategy=installed))
    assert again.reused and recorded() == installed
