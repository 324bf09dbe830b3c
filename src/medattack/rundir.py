"""The run directory: the one place that knows its layout; atomic writes, append-only records, run.json.

    runs/<name>/
      run.json                         resolved config per stage, package versions, seed, git sha (no secrets)
      benchmark/                       build: samples.jsonl (Sample), failures.jsonl (inputs that could not be
                                       used, with the fix), summary.json (counts), build.json (config stamp),
                                       images/<sha256>.png (plus masks, typographic variants),
                                       export/<split>.parquet (the 3MAD layout)
      attacks/<method>/<model>/        attack: config.json, results.jsonl (AttackRecord), failures.jsonl,
                                       steps/<sample>.jsonl, images/<sample>.png,
                                       tensors/<sample>.safetensors, checkpoints/<sample>.pt
      blackbox/<method>/<target>/      blackbox: config.json, results.jsonl (BlackBoxRecord), failures.jsonl,
                                       nodes/<sample>.jsonl (SearchNode), images/<sample>/<node>.png,
                                       attacker.sqlite, judge.sqlite (the attacker's and judge's caches)
      responses/<target>/              query: config.json, responses.jsonl (Response), failures.jsonl,
                                       stale.jsonl (answers whose inputs changed: kept, never read); a target
                                       behind defences is the target "<target>+<defence>" (folder <target>_<defence>)
      responses/api_cache.sqlite       API answers by request hash, shared by every API target
      controls/blank.png, noise.png    the image-reliance control images
      scores/<target>/                 score: scores.jsonl (ScoreRecord), summary.json (metrics, calibration,
                                       the judge's validity), failures.jsonl, stale.jsonl
      scores/cache.sqlite              scores by content hash, shared by every target of the run
      labels/<target>.jsonl            label: a person's labels of the target's answers (Label), appended as
                                       given; the report's two-phase estimate reads them
      report/                          report.html, report.md, summary.json (schema medattack.summary),
                                       samples/*.html (drill-down), figures/*.png, tables/*.csv|tex
      analysis/                        the dataset analyses (CSV + PNG)

Every stage folder may also hold `.writer.lock` (the one writer's advisory lock) and `stale/<UTC time>/` (the
results of an older configuration, moved there by `--force`: kept, never read). `.benchmark.building/` is a
rebuild in progress, swapped in whole when it completes.

Every record row and state file carries its schema version (schema.py), and readers upgrade older ones.

Stages reach every path through `RunDir` and its folder types; nothing else joins these names.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import medattack
from medattack.errors import CorruptFileError, RunDirError
from medattack.folders import (  # noqa: F401 (the folder types RunDir returns)
    AttackFolder,
    MethodFolder,
    ResponsesFolder,
    ScoresFolder,
    SearchFolder,
    StageFolder,
)
from medattack.records import AttackRecord, BlackBoxRecord, Label, Response, Sample, ScoreRecord
from medattack.redaction import redact_record
from medattack.storage import (  # noqa: F401 (re-exported: the run directory's file helpers)
    SqliteCache,
    append_jsonl,
    append_records,
    canonical_json,
    content_hash,
    read_jsonl,
    read_records,
    read_state,
    write_bytes_atomic,
    write_json_atomic,
    write_jsonl_atomic,
    write_records_atomic,
)

Progress = Callable[[str, int, int], None]  # stage progress callback: (phase, done, total)

TRACKED_PACKAGES = ("torch", "transformers", "pydicom", "pillow", "numpy", "datasets", "scikit-image")


def folder_name(name: str) -> str:
    """A name from user data or a model (a target, a model, a split) as one safe file or folder name:
    letters, digits, '.', '_' and '-' only, never starting with a dot (no '..', no hidden file), at most
    80 characters, never empty. Separators, NUL, absolute paths and undecodable bytes cannot survive it,
    so nothing named from data is ever written outside its folder."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_").lstrip(".")[:80].rstrip(".")
    return safe or "_"


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` (created if needed) for the block (POSIX flock)."""
    import fcntl

    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(medattack.__file__).parent, capture_output=True,
            text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment_manifest() -> dict[str, Any]:
    versions = {"medattack": medattack.__version__, "python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"versions": versions, "git_sha": _git_sha(), "platform": platform.platform()}


class RunDir:
    """Every path of one run (module docstring) and the run.json manifest that every stage updates."""

    def __init__(self, root: str | Path, benchmark_folder: str = "benchmark") -> None:
        self.root = Path(root)
        self._benchmark_folder = benchmark_folder

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    # --- run.json ---------------------------------------------------------------------------------

    @property
    def manifest_path(self) -> Path:
        return self.root / "run.json"

    def read_manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {}
        return read_state(self.manifest_path, "restore it from a copy, or delete it: the next stage writes it "
                          "again with its own record (the records of earlier stages are lost, their results are not)",
                          "run-manifest")

    def record_stage(self, stage: str, config: dict[str, Any], seed: int | None) -> None:
        """Store a stage's resolved config and the environment in run.json (no secrets). The read, change
        and write hold an exclusive lock on run.json.lock, so two processes recording stages at once (a
        query per GPU) both keep their record."""
        config = redact_record(config)
        record = {"config": config, "config_hash": content_hash(config), "seed": seed,
                  "finished": datetime.now(UTC).isoformat(timespec="seconds"), **environment_manifest()}
        self.root.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self.root / "run.json.lock"):
            manifest = self.read_manifest()
            manifest.setdefault("name", self.root.name)
            manifest.setdefault("run_id", uuid.uuid4().hex)  # the run's identity, kept by every later stage
            manifest.setdefault("created", datetime.now(UTC).isoformat(timespec="seconds"))
            manifest.setdefault("stages", {})[stage] = record
            write_json_atomic(self.manifest_path, manifest, "run-manifest")

    # --- benchmark/ -------------------------------------------------------------------------------

    @property
    def benchmark(self) -> Path:
        return self.root / self._benchmark_folder

    def settle(self) -> None:
        """Finish a rebuild that was killed between its two renames (`.benchmark.old` and no `benchmark/`): the
        staged build goes in when it is complete (its build.json names its config), else the old one goes back."""
        old = self.root / ".benchmark.old"
        if self.benchmark.exists() or not old.is_dir():
            return
        staged = self.staging()
        try:
            complete = "config_hash" in json.loads(staged.build_stamp_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            complete = False
        if complete:
            staged.benchmark.rename(self.benchmark)
            shutil.rmtree(old)
        else:
            old.rename(self.benchmark)

    def repair_build_record(self) -> None:
        """Write run.json's build record from the benchmark's build.json when a kill left them apart (the new
        benchmark swapped in, its record not yet written): run.json always names the benchmark that is there. A
        damaged run.json or build.json is left for the command that reads it to report."""
        try:
            stamp = json.loads(self.build_stamp_path.read_text(encoding="utf-8"))
            recorded = (self.read_manifest().get("stages") or {}).get("build") or {}
        except (OSError, ValueError, CorruptFileError):
            return
        config = stamp.get("config") if isinstance(stamp, dict) else None
        if isinstance(config, dict) and recorded.get("config_hash") != content_hash(redact_record(config)):
            seed = config.get("seed")
            self.record_stage("build", config, seed if isinstance(seed, int) else None)

    def staging(self) -> RunDir:
        """The same run with its benchmark in .benchmark.building/: a build writes there and is swapped in
        only once complete, so a failed or killed rebuild leaves the old benchmark as it was."""
        return RunDir(self.root, ".benchmark.building")

    @property
    def samples_path(self) -> Path:
        return self.benchmark / "samples.jsonl"

    @property
    def failures_path(self) -> Path:
        """The build's failures (benchmark/failures.jsonl)."""
        return self.benchmark / "failures.jsonl"

    @property
    def build_stamp_path(self) -> Path:
        return self.benchmark / "build.json"

    @property
    def summary_path(self) -> Path:
        return self.benchmark / "summary.json"

    @property
    def images(self) -> Path:
        return self.benchmark / "images"

    @property
    def export(self) -> Path:
        return self.benchmark / "export"

    def has_samples(self) -> bool:
        return self.samples_path.exists()

    def require_benchmark(self) -> None:
        """Refuse a run whose benchmark was built and is gone (its answers and scores cannot be told current or
        stale without it, and scoring on would move every valid score aside), or whose run.json is damaged."""
        built = "build" in self.read_manifest().get("stages", {})  # a damaged run.json stops here, named
        if built and not self.has_samples():
            raise RunDirError(f"{self.benchmark} is gone (run.json records a build): restore it, or build it again "
                              f"with the same settings (`medattack build {self.root}`, the same sample ids), then "
                              "run this again.")

    def samples(self) -> list[Sample]:
        """The samples of the built benchmark (RunDirError when the run has none)."""
        if not self.samples_path.exists():
            raise RunDirError(f"{self.root} has no benchmark yet; run `medattack build {self.root}` first.")
        return read_records(self.samples_path, Sample)

    def benchmark_file(self, name: str) -> Path:
        """A file a sample names (image_file, mask_file...), relative to benchmark/."""
        return self.benchmark / name

    # --- attacks/ ---------------------------------------------------------------------------------

    def attack_folder(self, method: str, model_name: str) -> AttackFolder:
        return AttackFolder(self.root / "attacks" / method / folder_name(model_name), self.root)

    def attack_folders(self) -> list[AttackFolder]:
        """Every attack folder that holds results, in name order."""
        return [AttackFolder(p.parent, self.root) for p in sorted((self.root / "attacks").glob("*/*/results.jsonl"))]

    def iter_attack_results(self) -> Iterator[tuple[AttackFolder, AttackRecord]]:
        for folder in self.attack_folders():
            for record in folder.results():
                yield folder, record

    # --- blackbox/ -----------------------------------------------------------------------------------

    def search_folder(self, method: str, target_name: str) -> SearchFolder:
        return SearchFolder(self.root / "blackbox" / method / folder_name(target_name))

    def search_folders(self) -> list[SearchFolder]:
        """Every black-box folder that holds results, in name order."""
        return [SearchFolder(p.parent) for p in sorted((self.root / "blackbox").glob("*/*/results.jsonl"))]

    # --- responses/ and controls/ ----------------------------------------------------------------

    def responses_folder(self, target_name: str) -> ResponsesFolder:
        return ResponsesFolder(self.root / "responses" / folder_name(target_name))

    def responses_folders(self) -> list[ResponsesFolder]:
        """Every target folder that holds responses, in name order."""
        return [ResponsesFolder(p.parent) for p in sorted((self.root / "responses").glob("*/responses.jsonl"))]

    @property
    def api_cache_path(self) -> Path:
        return self.root / "responses" / "api_cache.sqlite"

    def control_image(self, name: str) -> Path:
        return self.root / "controls" / f"{name}.png"

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    # --- scores/, report/, analysis/ --------------------------------------------------------------

    def scores_folder(self, target_folder: str) -> ScoresFolder:
        """scores/<target>/, named like the target's responses folder (or attack__<method>__<model>)."""
        return ScoresFolder(self.root / "scores" / target_folder)

    @property
    def score_cache_path(self) -> Path:
        return self.root / "scores" / "cache.sqlite"

    # --- labels/ ------------------------------------------------------------------------------------

    def labels_path(self, target_name: str) -> Path:
        """labels/<target>.jsonl: the labels of one target's answers, named like its responses folder."""
        return self.root / "labels" / f"{folder_name(target_name)}.jsonl"

    def labels(self, target_name: str) -> list[Label]:
        """Every label row of the target, in the order given (none when it has no labels file)."""
        path = self.labels_path(target_name)
        return read_records(path, Label) if path.exists() else []

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def analysis(self) -> Path:
        return self.root / "analysis"


@dataclass
class RunRecords:
    """Everything a run directory holds, as typed records (`medattack.read_run`): for notebooks.

    Attacks and searches are keyed "<method>/<model or target folder>"; responses, scores and labels by the
    target's name as its answers give it ("smollm2-135m-llava-random-vision (not a medical model)", "gpt-4o+reminder"),
    never by its folder name."""

    root: Path
    samples: list[Sample]
    attacks: dict[str, list[AttackRecord]]
    searches: dict[str, list[BlackBoxRecord]]
    responses: dict[str, list[Response]]
    scores: dict[str, list[ScoreRecord]]
    labels: dict[str, list[Label]]


def read_run(path: str | Path) -> RunRecords:
    """Read a run directory's records (samples, attack and search results, responses, scores, labels), typed."""
    run = RunDir(path)
    run.settle()
    samples = run.samples() if run.has_samples() else []
    responses = {}
    names = {}  # folder name -> target name
    for folder in run.responses_folders():
        answers = folder.responses()
        names[folder.path.name] = answers[0].target if answers else folder.path.name
        responses[names[folder.path.name]] = answers
    scores_root = run.root / "scores"
    return RunRecords(
        root=run.root, samples=samples,
        attacks={f"{f.method}/{f.model}": f.results() for f in run.attack_folders()},
        searches={f"{f.method}/{f.target}": f.results() for f in run.search_folders()},
        responses=responses,
        scores={names.get(p.parent.name, p.parent.name): ScoresFolder(p.parent).scores()
                for p in sorted(scores_root.glob("*/scores.jsonl"))},
        labels={target: found for target in responses if (found := run.labels(target))})
