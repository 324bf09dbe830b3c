"""What every stage shares: one signature and one resumable map over an executor.

Each stage module (build, attack, query, score, report) defines a frozen `Config` dataclass and

    run(run_dir: RunDir | str | Path, config=None, *, executor=None, progress=None, force=False) -> <Stage>Result

(config None: the stage's defaults)

A stage claims its folder for its config (`claim`), lists the work its folder does not hold yet,
sends it through `resumable_map` (locally or on Ray actors) and writes each outcome as it arrives:
rows are appended atomically and failures rewritten as one file, so a killed stage resumes with the
same call, and nothing is lost or written twice.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from medattack.config import to_dict
from medattack.errors import RunDirError
from medattack.executor import Pool
from medattack.records import Condition, Record, Sample
from medattack.rundir import (
    AttackFolder,
    Progress,
    RunDir,
    SearchFolder,
    append_records,
    read_jsonl,
    write_jsonl_atomic,
    write_records_atomic,
)
from medattack.stamps import claim_folder

if TYPE_CHECKING:
    from medattack.defences.base import DefenceContext

log = logging.getLogger(__name__)
W = TypeVar("W")
R = TypeVar("R", bound=Record)


def as_run_dir(run_dir: RunDir | str | Path) -> RunDir:
    """The run directory, with a rebuild that was killed mid-swap finished first (RunDir.settle) and run.json's
    build record matching the benchmark that is there (RunDir.repair_build_record)."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    run.settle()
    run.repair_build_record()
    return run


_HELD: set[str] = set()  # folders whose writer lock this process holds


@contextmanager
def one_writer(folder: Path, stage: str) -> Iterator[None]:
    """Hold the folder's advisory lock (`.writer.lock`, fcntl) while a stage writes it: a second process
    that would write the same folder (two `query` on one target, `run` beside `score`) is refused at once with
    one line naming the first, instead of both appending every row. Nested use in one process is free; the
    lock goes with the process (a killed writer leaves nothing to clean up). Where fcntl is missing
    (Windows) there is no lock."""
    key = str(Path(folder).resolve())
    try:
        import fcntl
    except ImportError:  # no advisory locks here
        fcntl = None
    if key in _HELD or fcntl is None:
        yield
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    handle = open(Path(folder) / ".writer.lock", "a+")  # noqa: SIM115 - held open for the stage's whole call
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunDirError(f"{folder} is being written by {holder}: wait for it to end (or stop it) and run this "
                          "again; two writers on one folder would write every row twice.") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"medattack {stage} (pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')})")
    handle.flush()
    _HELD.add(key)
    try:
        yield
    finally:
        _HELD.discard(key)
        handle.seek(0)
        handle.truncate()
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()


def claim(run: RunDir, folder: Path, record: dict[str, Any], *, force: bool, change: str, stage: str,
          seed: int | None, defaults: dict[str, Any] | None = None) -> None:
    """Write the folder's config.json (refusing another config, or with `force` replacing its results after
    moving them to stale/; `defaults`: the record of the default config, for settings added since) and record
    the stage in run.json under `stage`."""
    moved = claim_folder(folder, record, force, change, defaults)
    if moved is not None:
        log.warning("--force: the results of %s's old configuration moved to %s (kept, never read)",
                    run.relative(folder), run.relative(moved))
    run.record_stage(stage, record, seed)


@contextmanager
def stage_folder(run: RunDir, folder: Path, record: dict[str, Any], *, defaults: dict[str, Any], writer: str,
                 stage: str, change: str, seed: int | None, force: bool) -> Iterator[None]:
    """The setup every stage that writes results shares, for the block: the folder's one writer (`writer` names
    this process to a second one), the folder claimed for `record` (`claim`: another config refused, or with
    `force` set aside) and the stage recorded in run.json under `stage`."""
    with one_writer(folder, writer):
        claim(run, folder, record, force=force, change=change, stage=stage, seed=seed, defaults=defaults)
        yield


def settings_record(config: Any) -> dict[str, Any]:
    """A stage config as its folder records it: every setting but `options` (recorded resolved, as the method's
    own settings beside it)."""
    return {k: v for k, v in to_dict(config).items() if k != "options"}


class Selection(Protocol):
    """The settings that choose a stage's samples."""

    @property
    def conditions(self) -> tuple[Condition, ...] | tuple[str, ...]: ...
    @property
    def tasks(self) -> tuple[str, ...] | None: ...
    @property
    def limit(self) -> int | None: ...


def select_samples(samples: list[Sample], selection: Selection, pairs_per_category: int | None = None) -> list[Sample]:
    """The samples a stage works on, in table order: of the selected conditions and tasks; with
    `pairs_per_category` only that many image x prompt pairs per category (drawn by a hash of the pair id, so the
    same ones every call); then the first `limit`."""
    chosen = [s for s in samples if s.condition in selection.conditions
              and (selection.tasks is None or s.task in selection.tasks)]
    if pairs_per_category is not None:
        pairs: dict[str, list[str]] = {}
        for pair_id, category in sorted({(s.pair_id, s.category) for s in chosen},
                                        key=lambda p: hashlib.sha256(p[0].encode()).hexdigest()):
            pairs.setdefault(category, []).append(pair_id)
        keep = {p for members in pairs.values() for p in members[:pairs_per_category]}
        chosen = [s for s in chosen if s.pair_id in keep]
    return chosen[: selection.limit] if selection.limit is not None else chosen


@dataclass
class SampleWork:
    """What a per-sample stage (attack, blackbox) does in one call: the selected samples, those its folder does
    not hold a result of yet, and its failure log (the failures of the samples retried now dropped)."""

    chosen: list[Sample]
    todo: list[Sample]
    failures: FailureLog

    @property
    def done(self) -> int:
        """Selected samples finished by earlier calls."""
        return len(self.chosen) - len(self.todo)


def sample_work(folder: AttackFolder | SearchFolder, samples: list[Sample], selection: Selection) -> SampleWork:
    """The work of a per-sample stage on `folder` (see SampleWork)."""
    done = {r.sample_id for r in folder.results()}
    chosen = select_samples(samples, selection)
    todo = [s for s in chosen if s.sample_id not in done]
    return SampleWork(chosen, todo, FailureLog(folder.failures_path, "sample_id", retried=(s.sample_id for s in todo)))


def failure(item_key: str, item: str, error: BaseException | str, problem: str | None = None,
            **extra: Any) -> dict[str, Any]:
    """A failure row: which item, the error's class name, what went wrong (and any fix or file)."""
    name = error if isinstance(error, str) else type(error).__name__
    return {item_key: item, "error": name, "problem": str(error) if problem is None else problem, **extra}


class FailureLog:
    """A stage folder's failures.jsonl: the failures of earlier calls whose items are not retried now,
    plus this call's, rewritten whole after each change (a re-run retries what failed)."""

    def __init__(self, path: Path, key: str, retried: Iterable[str] = ()) -> None:
        self.path = path
        retry = set(retried)
        self.rows = [f for f in read_jsonl(path, "failure") if f.get(key) not in retry]

    def add(self, *rows: dict[str, Any]) -> None:
        self.rows.extend(rows)
        self.save()

    def save(self) -> None:
        write_jsonl_atomic(self.path, self.rows, "failure")


@contextmanager
def loading(progress: Progress | None, name: str) -> Iterator[None]:
    """Show the loading of a model on the progress line (a bar that fills when it is loaded)."""
    if progress:
        progress(f"loading {name}", 0, 1)
    yield
    if progress:
        progress(f"loading {name}", 1, 1)


def set_aside_stale(path: Path, rows: Sequence[R], expected: Callable[[R], str | None],
                    orphaned: Callable[[R], bool]) -> tuple[list[R], list[R]]:
    """Sort the rows read from a results file by what produced them. `expected(row)` is the input hash
    the row's item would have now (None: not planned in this call). A row is current when its hash is
    that; stale when it differs, or when the item is not planned and `orphaned(row)` (its sample is gone);
    otherwise kept as it is (e.g. an item a smaller --limit leaves out). Stale rows move to stale.jsonl
    beside the file, kept under their old hash but never read as current. Returns (current, stale)."""
    current, stale = [], []
    for row in rows:
        hash_now = expected(row)
        if hash_now is not None and row.input_hash == hash_now:  # type: ignore[attr-defined]
            current.append(row)
        elif hash_now is not None or orphaned(row):
            stale.append(row)
    if stale:
        gone = {id(r) for r in stale}
        append_records(path.with_name("stale.jsonl"), *stale)
        write_records_atomic(path, (r for r in rows if id(r) not in gone))
    return current, stale


def resumable_map(
    pool: Pool, method: str, work: Sequence[W], write: Callable[[W, Any], None], *, progress: Progress | None,
    label: str, done: int, total: int, size: Callable[[W], int] = lambda _: 1,
) -> None:
    """Call `method` of the pool's workers on every work item and `write(item, outcome)` as each one
    finishes (an outcome is the method's return value or the exception that lost its worker).

    `done` items of `total` were finished by earlier calls; `size(item)` is how many of the total an
    item stands for (a chunk of queries, a batch of responses). Progress is reported as
    `progress(label, finished, total)` before each write and once at the end.
    """
    finished = done
    for index, outcome in pool.map(method, work):
        if progress:
            progress(label, finished, total)
        finished += size(work[index])
        write(work[index], outcome)
    if progress:
        progress(label, total, total)


def defence_context(run: RunDir, device: str | None, seed: int) -> DefenceContext:
    """What a defence may calibrate on, read from the run: its benchmark samples and their images' folder."""
    from medattack.defences.base import DefenceContext

    return DefenceContext(run.samples(), str(run.benchmark), device, seed)
