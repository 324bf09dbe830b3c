"""Versioned records: every past version's fixture reads as the current records, a newer version is refused,
what is written carries its version, and a change of a stage's settings cannot land without an upgrade step.

tests/fixtures/schema/v1/: files as releases before versions wrote them (a demo run, plus the earliest layouts of
rows that gained fields); v2/: the same content as version 2 writes it."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from medattack.attacks.base import ATTACKS
from medattack.blackbox.base import BLACKBOX_ATTACKS
from medattack.config import to_dict
from medattack.errors import RecordError
from medattack.records import AttackRecord, BlackBoxRecord, Response, Sample, ScoreRecord, SearchNode
from medattack.rundir import RunDir
from medattack.schema import CURRENT, STEPS, VERSION_KEY, upgraded
from medattack.stages.attack import AttackStageConfig
from medattack.stages.blackbox import BlackBoxConfig
from medattack.stages.build import BuildConfig
from medattack.stages.query import QueryConfig
from medattack.stamps import claim_folder
from medattack.storage import SqliteCache, append_records, read_jsonl, read_records, read_state, write_json_atomic

FIXTURES = Path(__file__).parent / "fixtures" / "schema"
VERSIONS = sorted(p.name for p in FIXTURES.glob("v*"))
RECORD_FILES = {"samples.jsonl": Sample, "attack-results.jsonl": AttackRecord, "responses.jsonl": Response,
                "scores.jsonl": ScoreRecord, "search-nodes.jsonl": SearchNode, "search-results.jsonl": BlackBoxRecord}
ROW_FILES = {"failures.jsonl": "failure", "attack-steps.jsonl": "attack-step"}
STATE_FILES = {"run.json": "run-manifest", "build.json": "build-stamp", "benchmark-summary.json": "benchmark-summary",
               "score-summary.json": "score-summary"}


def test_there_is_a_fixture_of_every_version_and_a_step_from_every_past_one():
    assert [f"v{n}" for n in range(1, max(CURRENT.values()) + 1)] == VERSIONS
    for kind, current in CURRENT.items():
        assert all((kind, old) in STEPS for old in range(1, current)), kind


@pytest.mark.parametrize("version", VERSIONS)
def test_records_of_every_version_read_as_the_current_records(version):
    for name, record in RECORD_FILES.items():
        rows = read_records(FIXTURES / version / name, record)
        assert rows and all(isinstance(r, record) for r in rows), name
        latest = read_records(FIXTURES / VERSIONS[-1] / name, record)
        assert rows == latest, f"{version}/{name} reads otherwise than {VERSIONS[-1]}/{name}"


def test_fields_added_before_versions_read_as_what_those_releases_did():
    early = read_records(FIXTURES / "v1" / "responses.jsonl", Response)[1]
    assert (early.input_hash, early.generation, early.truncated_from, early.attack_method) == ("", 0, None, None)
    score = read_records(FIXTURES / "v1" / "scores.jsonl", ScoreRecord)[1]
    assert score.detail == {} and score.input_hash == ""  # unknown provenance: scored again, never trusted
    assert read_records(FIXTURES / "v1" / "attack-results.jsonl", AttackRecord)[1].info == {}
    assert read_records(FIXTURES / "v1" / "search-nodes.jsonl", SearchNode)[1].problem is None


@pytest.mark.parametrize("version", VERSIONS)
def test_rows_and_state_files_of_every_version_read_at_the_current_version(version):
    for name, kind in ROW_FILES.items():
        rows = read_jsonl(FIXTURES / version / name, kind)
        assert rows == read_jsonl(FIXTURES / VERSIONS[-1] / name, kind) and all(VERSION_KEY not in r for r in rows)
    for name, kind in STATE_FILES.items():
        state = read_state(FIXTURES / version / name, "fix", kind, defaults=to_dict(BuildConfig()))
        assert VERSION_KEY not in state
        assert state == read_state(FIXTURES / VERSIONS[-1] / name, "fix", kind, defaults=to_dict(BuildConfig()))


def test_what_is_written_carries_its_kinds_current_version(tmp_path):
    record = read_records(FIXTURES / "v1" / "responses.jsonl", Response)[0]
    append_records(tmp_path / "responses.jsonl", record)
    row = json.loads((tmp_path / "responses.jsonl").read_text())
    assert row[VERSION_KEY] == CURRENT["Response"]
    write_json_atomic(tmp_path / "summary.json", {"n": 1}, "score-summary")
    assert json.loads((tmp_path / "summary.json").read_text())[VERSION_KEY] == CURRENT["score-summary"]


def test_a_row_written_by_a_newer_medattack_is_refused_with_its_file_and_line(tmp_path):
    path = tmp_path / "responses.jsonl"
    shutil.copy(FIXTURES / VERSIONS[-1] / "responses.jsonl", path)
    rows = path.read_text().splitlines()
    newer = json.loads(rows[1]) | {VERSION_KEY: CURRENT["Response"] + 1}
    path.write_text(rows[0] + "\n" + json.dumps(newer) + "\n")
    with pytest.raises(RecordError, match=rf"responses.jsonl:2: Response schema version {CURRENT['Response'] + 1}"
                                          r".*newer medattack: upgrade medattack"):
        read_records(path, Response)
    with pytest.raises(RecordError, match="not one medattack writes"):
        upgraded("Response", {VERSION_KEY: "2"}, "row")


def test_a_stage_folder_of_an_earlier_version_is_claimed_by_its_own_settings(tmp_path):
    folder = tmp_path / "attacks" / "mcm" / "embedded"
    folder.mkdir(parents=True)
    shutil.copy(FIXTURES / "v1" / "attack-config-early.json", folder / "config.json")
    current = read_state(FIXTURES / VERSIONS[-1] / "attack-config.json", "fix")
    record = {k: v for k, v in current.items() if k != VERSION_KEY}
    defaults = {"stage": {k: v for k, v in to_dict(AttackStageConfig()).items() if k != "options"},
                "method": to_dict(ATTACKS["mcm"].config_class())}
    assert claim_folder(folder, record, force=False, change="the method", defaults=defaults) is None  # not refused
    assert json.loads((folder / "config.json").read_text())[VERSION_KEY] == CURRENT["stage-config"]
    other = {**record, "stage": {**record["stage"], "max_batch": 8}}
    with pytest.raises(Exception, match=r"stage.max_batch: 512 -> 8"):
        claim_folder(folder, other, force=False, change="the method", defaults=defaults)


def test_a_cache_written_before_versions_is_imported_once_and_a_newer_one_refused(tmp_path):
    shutil.copy(FIXTURES / "v1" / "api_cache.jsonl", tmp_path / "api_cache.jsonl")
    cache = SqliteCache(tmp_path / "api_cache.sqlite")
    assert cache.get("k1") == {"text": "paid for once"}
    with sqlite3.connect(tmp_path / "api_cache.sqlite") as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 1
        connection.execute("PRAGMA user_version = 99")
    with pytest.raises(RecordError, match=r"api_cache.sqlite: cache schema version 99.*newer medattack"):
        SqliteCache(tmp_path / "api_cache.sqlite").get("k1")


def _setting_keys(value: object, prefix: str = "") -> list[str]:
    if isinstance(value, dict):
        return sorted(k for key, v in value.items() for k in _setting_keys(v, f"{prefix}{key}."))
    return [prefix.rstrip(".")]


def current_settings() -> dict[str, list[str]]:
    """The settings every stage folder's config.json records: stage configs and each method's options."""
    stages = {"build": BuildConfig(), "attack": AttackStageConfig(), "blackbox": BlackBoxConfig(),
              "query": QueryConfig()}
    out = {f"stage:{name}": _setting_keys({k: v for k, v in to_dict(c).items() if k != "options"})
           for name, c in stages.items()}
    out |= {f"attack:{name}": _setting_keys(to_dict(ATTACKS[name].config_class())) for name in ATTACKS}
    out |= {f"blackbox:{name}": _setting_keys(to_dict(BLACKBOX_ATTACKS[name]())) for name in BLACKBOX_ATTACKS}
    return out


def test_settings_change_only_with_a_new_version_and_its_upgrade_step():
    """A setting added to (or removed from) a stage or method changes what its config.json holds: a folder written
    before must read as the results it holds. Pinned: the settings at the current versions."""
    pinned = json.loads((FIXTURES / "settings.json").read_text())
    versions = {"stage-config": CURRENT["stage-config"], "build-stamp": CURRENT["build-stamp"]}
    now = current_settings()
    changed = sorted(name for name in set(pinned["settings"]) & set(now) if pinned["settings"][name] != now[name])
    assert not changed or pinned["versions"] != versions, (
        f"the settings of {changed} changed: raise the stage-config (build: build-stamp) version in schema.py, add "
        "the step that gives folders written before the value that reproduces their results, then pin the new "
        "settings: python -c 'import json, tests.test_schema as t; print(json.dumps(t.pinned(), indent=1))' > "
        "tests/fixtures/schema/settings.json")


def pinned() -> dict[str, object]:
    """What tests/fixtures/schema/settings.json holds (refresh it with this after a version bump)."""
    return {"versions": {"stage-config": CURRENT["stage-config"], "build-stamp": CURRENT["build-stamp"]},
            "settings": current_settings()}


def test_read_run_reads_a_run_written_before_versions(tmp_path):
    run = RunDir(tmp_path / "run")
    run.benchmark.mkdir(parents=True)
    shutil.copy(FIXTURES / "v1" / "samples.jsonl", run.samples_path)
    shutil.copy(FIXTURES / "v1" / "run.json", run.manifest_path)
    folder = run.responses_folder("embedded")
    folder.path.mkdir(parents=True)
    shutil.copy(FIXTURES / "v1" / "responses.jsonl", folder.responses_path)
    from medattack import read_run
    records = read_run(run.root)
    assert [s.sample_id for s in records.samples] == [json.loads((FIXTURES / "v1" / "samples.jsonl").read_text())[
        "sample_id"]]
    [(target, answers)] = records.responses.items()
    assert len(answers) == 2 and target == answers[0].target  # keyed by the target's name, not its folder
    run.record_stage("score", {"metrics": ["keyword_asr"]}, 0)  # an old run.json is upgraded and kept
    manifest = json.loads(run.manifest_path.read_text())
    assert manifest[VERSION_KEY] == CURRENT["run-manifest"] and {"build", "score"} <= set(manifest["stages"])


def test_a_query_folder_written_before_defences_reads_as_asked_undefended(tmp_path):
    folder = tmp_path / "responses" / "embedded"
    folder.mkdir(parents=True)
    shutil.copy(FIXTURES / "v2" / "query-config.json", folder / "config.json")
    record = {k: v for k, v in read_state(FIXTURES / "v3" / "query-config.json", "fix").items() if k != VERSION_KEY}
    assert record["stage"]["defences"] == []
    assert claim_folder(folder, record, force=False, change="the target", defaults={"stage": to_dict(QueryConfig())}) \
        is None
    defended = {**record, "stage": {**record["stage"], "defences": ["purify"]}}
    with pytest.raises(Exception, match=r"stage.defences: \[\] -> \['purify'\]"):
        claim_folder(folder, defended, force=False, change="the target", defaults={"stage": to_dict(QueryConfig())})


def test_a_report_summary_of_version_1_reads_with_its_correction_as_an_estimate_of_its_kind():
    from medattack.report.summary import SCHEMA_VERSION, read_summary

    old_file = json.loads((FIXTURES / "v1" / "report-summary.json").read_text())
    old, new = read_summary(FIXTURES / "v1" / "report-summary.json"), read_summary(FIXTURES / "v4" /
                                                                                   "report-summary.json")
    assert old_file["schema_version"] == 1 and SCHEMA_VERSION == 2 == CURRENT["report-summary"]
    was = old_file["headline"][0]["corrected"]
    estimate = old["headline"][0]["estimate"]
    assert "corrected" not in old["headline"][0] and estimate["kind"] == "corrected (v1)"
    assert (estimate["rate"], estimate["ci_low"], estimate["ci_high"]) == (was["rate"], was["ci_low"], was["ci_high"])
    assert all("estimate" in r and "corrected" not in r for r in old["rates"])
    assert new["headline"][0]["estimate"]["kind"] == "transported" and set(old) == set(new)
