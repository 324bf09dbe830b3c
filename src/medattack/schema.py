"""Versions of everything medattack writes, and the steps that read older versions.

Every record row and state file carries `"schema_version": N`, its kind's current version when it was written
(`versioned`). A reader takes an older version up one step at a time (`upgraded`): one small function per step,
registered for the version it reads (`@step(kind, from_version)`), so a change of a record is one new step and
a version bump, never "rebuild with --force" or a one-off patch. A version newer than this medattack knows is
refused, naming the file and the fix. Caches (SQLite) keep their version in `PRAGMA user_version` (storage.py).

Version 1 is every row and file written before versions were written (no `schema_version` key): the layouts of
all earlier releases, which the 1 -> 2 steps read by giving each field added since the value that means what
those releases did.

    kind               what                                      where
    Sample             a benchmark sample                        benchmark/samples.jsonl
    AttackRecord       one attacked sample                       attacks/<method>/<model>/results.jsonl
    SearchNode         one attempt of a black-box search         blackbox/<method>/<target>/nodes/<sample>.jsonl
    BlackBoxRecord     one searched sample                       blackbox/<method>/<target>/results.jsonl
    Response           one answer of a target                    responses/<target>/responses.jsonl, stale.jsonl
    ScoreRecord        one response x metric                     scores/<target>/scores.jsonl, stale.jsonl
    failure            an input that could not be used           <stage folder>/failures.jsonl
    attack-step        one optimisation step                     attacks/<method>/<model>/steps/<sample>.jsonl
    stage-config       the settings a stage folder holds         <stage folder>/config.json
    build-stamp        the settings a benchmark was built with   benchmark/build.json
    run-manifest       every stage's settings and environment    run.json
    benchmark-summary  the build's counts                        benchmark/summary.json
    score-summary      metrics, calibration, judge validity      scores/<target>/summary.json
    Label              one person's label of one answer          labels/<target>.jsonl
    universal-input    a universal attack's one input            attacks/<method>/<model>/universal.json
    report-summary     what a report found (for programs)        report/summary.json (medattack.summary;
                                                                 medattack writes it, programs read it)

Adding a setting to a stage's config is a change of `stage-config` too: bump its version and add a step that
gives stamps written before it the value that reproduces their results (tests/test_schema.py pins the settings of
the current version and says so when they change).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from medattack.errors import RecordError

VERSION_KEY = "schema_version"

# step(row, context) -> the row at the next version; `context` carries what a step needs beyond the row
# (the stage-config step: the current defaults)
Step = Callable[[dict[str, Any], Mapping[str, Any]], dict[str, Any]]

CURRENT: dict[str, int] = {
    "Sample": 2, "AttackRecord": 2, "SearchNode": 2, "BlackBoxRecord": 2, "Response": 3, "ScoreRecord": 2,
    "failure": 2, "attack-step": 2, "stage-config": 5, "build-stamp": 2, "run-manifest": 2,
    "benchmark-summary": 2, "score-summary": 2,
    "Label": 1, "report-summary": 2, "universal-input": 1,
}
STEPS: dict[tuple[str, int], Step] = {}  # (kind, version it reads) -> the step to the next version


def step(kind: str, from_version: int) -> Callable[[Step], Step]:
    """Register the function that takes a `kind` row from `from_version` to `from_version + 1`."""
    def register(function: Step) -> Step:
        if (kind, from_version) in STEPS:
            raise ValueError(f"two upgrade steps for {kind} version {from_version}")
        STEPS[(kind, from_version)] = function
        return function
    return register


def versioned(kind: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """The row as written: its fields and the kind's current version."""
    return {**row, VERSION_KEY: CURRENT[kind]}


def version_of(row: Mapping[str, Any]) -> int:
    """The version a row or file was written at (1: before versions were written)."""
    version = row.get(VERSION_KEY, 1)
    return version if isinstance(version, int) and not isinstance(version, bool) else -1


def upgraded(kind: str, row: Mapping[str, Any], where: str, **context: Any) -> dict[str, Any]:
    """The row at the current version of `kind`, without its version key: each step from the version it was
    written at applied in turn. `where` (a file, or "file:line") names it in the error for a version this
    medattack cannot read."""
    version, current = version_of(row), CURRENT[kind]
    if version > current or version < 1:
        newer = version > current
        raise RecordError(
            f"{where}: {kind} schema version {row.get(VERSION_KEY)!r}; this medattack reads versions 1 to {current}. "
            + ("It was written by a newer medattack: upgrade medattack (`pip install -U medattack`), or read it "
               "with the version that wrote it." if newer else
               "The version is not one medattack writes: restore the file from a copy, or fix the row."))
    out = {k: v for k, v in row.items() if k != VERSION_KEY}
    for old in range(version, current):
        out = STEPS[(kind, old)](out, context)
    return out


def fill_missing(record: Any, defaults: Any) -> Any:
    """`record` with the keys it lacks (at any depth) taken from `defaults`."""
    if not isinstance(record, dict) or not isinstance(defaults, dict):
        return record
    return {**{k: v for k, v in defaults.items() if k not in record},
            **{k: fill_missing(v, defaults.get(k)) for k, v in record.items()}}


# --- 1 -> 2: from the unversioned layouts of earlier releases --------------------------------------------------

@step("Response", 1)
def _response_1(row: dict[str, Any], _: Mapping[str, Any]) -> dict[str, Any]:
    """Fields added to Response before versions: the attack it replays (none), what produced the answer ("":
    unknown, so the query asks it again rather than trust it), which sampled answer (the first), cut (no)."""
    return fill_missing(row, {"attack_method": None, "attack_model": None, "attack_success": None,
                                "input_hash": "", "generation": 0, "truncated_from": None})


@step("ScoreRecord", 1)
def _score_1(row: dict[str, Any], _: Mapping[str, Any]) -> dict[str, Any]:
    """Fields added to ScoreRecord before versions: no detail; what produced the value unknown (scored again)."""
    return fill_missing(row, {"detail": {}, "input_hash": ""})


@step("AttackRecord", 1)
def _attack_1(row: dict[str, Any], _: Mapping[str, Any]) -> dict[str, Any]:
    """The method's extra information was added to AttackRecord before versions: none."""
    return fill_missing(row, {"info": {}})


@step("SearchNode", 1)
def _node_1(row: dict[str, Any], _: Mapping[str, Any]) -> dict[str, Any]:
    """The reason a target gave no answer was added to SearchNode before versions: none (it answered)."""
    return fill_missing(row, {"problem": None})


def _unchanged(row: dict[str, Any], _: Mapping[str, Any]) -> dict[str, Any]:
    """Version 2 only adds the version key."""
    return row


for _kind in ("Sample", "BlackBoxRecord", "failure", "attack-step", "run-manifest", "benchmark-summary",
              "score-summary"):
    step(_kind, 1)(_unchanged)


@step("stage-config", 1)
def _stage_config_1(row: dict[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
    """A setting added before versions reads as its default there (it did not exist, so it was not used);
    `context["defaults"]`: the record of the stage's default config."""
    return fill_missing(row, context.get("defaults") or {})


@step("build-stamp", 1)
def _build_stamp_1(row: dict[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
    """The same rule for the build's settings (`context["defaults"]`: the default BuildConfig's record); a
    stamp of a build still in progress ({"building": true}) stays as it is."""
    if "config" not in row:
        return row
    return {**row, "config": fill_missing(row["config"], context.get("defaults") or {})}


# --- 2 -> 3 -----------------------------------------------------------------------------------------------------

@step("Response", 2)
def _response_2(row: dict[str, Any], _: Mapping[str, Any]) -> dict[str, Any]:
    """Defences (medattack query --defence) came in version 3: an answer of version 2 had none in front of it."""
    return fill_missing(row, {"defences": [], "flagged_by": []})


UNDEFENDED = {"stage": {"defences": [], "defence_options": None}}  # a stage asked without defences


@step("stage-config", 2)
def _stage_config_2(row: dict[str, Any], _: Mapping[str, Any]) -> dict[str, Any]:
    """The query stage's defences came in version 3: a query folder of version 2 asked the target undefended."""
    is_query = "target_name" in row and "method" not in row  # a black-box folder names its method
    return fill_missing(row, UNDEFENDED) if is_query else row


# --- 3 -> 4 -----------------------------------------------------------------------------------------------------

@step("stage-config", 3)
def _stage_config_3(row: dict[str, Any], _: Mapping[str, Any]) -> dict[str, Any]:
    """Adaptive attacks (attack --defence) came in version 4: an attack folder of version 3 attacked the model
    undefended."""
    return fill_missing(row, UNDEFENDED) if "model_name" in row else row


# --- 4 -> 5 -----------------------------------------------------------------------------------------------------

@step("stage-config", 4)
def _stage_config_4(row: dict[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
    """GCG's and MCM's search options (history, buffer, mellowmax, the replacement schedule, a confirmed early
    stop) came in version 5, off by default: an attack folder of version 4 searched without them, as the defaults
    (`context["defaults"]`) say."""
    return fill_missing(row, context.get("defaults") or {}) if "model_name" in row else row


# --- report-summary 1 -> 2 -------------------------------------------------------------------------------------

def _corrected_as_estimate(row: dict[str, Any]) -> dict[str, Any]:
    """A row's `corrected` (Rogan-Gladen with the judge's pooled error) as the `estimate` of version 2, of kind
    "corrected (v1)": a point and interval that version 2 no longer presents as the finding."""
    out = {k: v for k, v in row.items() if k != "corrected"}
    old = row.get("corrected")
    out["estimate"] = None if old is None else {
        "kind": "corrected (v1)", "judged": row.get("rate", (row.get("attack_success") or {}).get("rate")),
        "n": row.get("n", (row.get("attack_success") or {}).get("n", 0)), "rate": old.get("rate"),
        "ci_low": old.get("ci_low"), "ci_high": old.get("ci_high"), "labels": 0, "labelled_positives": 0,
        "strata": [], "further": None, "further_by_stratum": {}, "note": old.get("note", "")}
    return out


@step("report-summary", 1)
def _report_summary_1(row: dict[str, Any], _: Mapping[str, Any]) -> dict[str, Any]:
    """Version 2 replaced each headline and rate row's `corrected` by `estimate` (report/summary.py)."""
    return {**row, "headline": [_corrected_as_estimate(r) for r in row.get("headline", [])],
            "rates": [_corrected_as_estimate(r) for r in row.get("rates", [])]}

