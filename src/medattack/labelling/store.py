"""A target's labels in its run (labels/<target>.jsonl): the population they sample, appending one as it is given,
and CSV in and out for teams who label elsewhere.

    population(run, target, source)   the answers that can be labelled, with their verdicts (design.Answer)
    give(run, population, id, value)  append one label (1, 0, "skip" or "undo") and fsync it
    import_csv(run, population, file) every row checked first: an unknown id, a value other than 0/1 (or empty),
                                      missing or extra columns, a row of another target -> one error naming the
                                      row, and nothing written
    export_csv(run, population, file) the drawn order with what is labelled so far (response_id, target, source,
                                      condition, question, response, label, labeller)
"""

from __future__ import annotations

import csv
import getpass
import io
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from medattack.data.sources.tables import cell, read_table
from medattack.errors import NothingToDoError, SourceError
from medattack.labelling.design import Answer, labelling_order, standing, stratum_of
from medattack.records import HARMFUL_CONDITIONS, Label, Response
from medattack.rundir import RunDir, append_records, folder_name, write_bytes_atomic
from medattack.storage import csv_cell

CSV_COLUMNS = ("response_id", "target", "source", "condition", "question", "response", "label", "labeller")
IMPORT_REQUIRED = ("response_id", "label")  # and "target" when the run holds several targets
LABEL_VALUES = {"1": 1, "0": 0, "1.0": 1, "0.0": 0}


@dataclass(frozen=True)
class Population:
    """The answers of one target that can be labelled: its first answers to harmful questions from one source,
    each with the verdict of the run's success metric (judge, else keyword_asr)."""

    run: RunDir
    target: str
    source: str
    metric: str
    responses: dict[str, Response]  # response_id -> the answer
    answers: list[Answer]
    targets: tuple[str, ...]  # every target of the run with answers (their answers share ids)

    @property
    def path(self) -> Path:
        return self.run.labels_path(self.target)

    def order(self, seed: int) -> list[str]:
        return labelling_order(self.answers, seed)

    def labels(self) -> dict[str, Label]:
        """The standing label of each answer (design.standing), of this population's answers only."""
        return {rid: label for rid, label in standing(self.run.labels(self.target)).items() if rid in self.responses}


def _targets(run: RunDir) -> dict[str, str]:
    """Target name -> its responses folder name, for every target with answers."""
    names = {}
    for folder in run.responses_folders():
        first = next(iter(folder.responses()), None)
        if first is not None:
            names[first.target] = folder.target
    return names


def _match_target(run: RunDir, name: str, targets: dict[str, str]) -> str:
    """The run's target called `name`: its full name, its folder name, or a unique start of either (any case)."""
    if name in targets:
        return name
    by_folder = {folder: full for full, folder in targets.items()}
    if folder_name(name) in by_folder:
        return by_folder[folder_name(name)]
    starts = {full for full, folder in targets.items()
              if full.lower().startswith(name.lower()) or folder.lower().startswith(name.lower())}
    if len(starts) == 1:
        return starts.pop()
    said = "names several targets" if starts else "is no target of this run"
    raise SourceError(str(run.root), f"{name!r} {said}.", f"use one of: {', '.join(sorted(starts or targets))}.")


def population(run_dir: str | Path, target: str | None = None, source: str = "none") -> Population:
    """The labelling population of `target` (the run's only target when None) and `source`."""
    run = RunDir(run_dir)
    targets = _targets(run)
    if not targets:
        raise NothingToDoError(f"{run.root} holds no answers to label: query a target first (`medattack query`).")
    if target is None:
        if len(targets) > 1:
            raise SourceError(str(run.root), f"it holds {len(targets)} targets.",
                              f"name one with --target: {', '.join(sorted(targets))}.")
        target = next(iter(targets))
    target = _match_target(run, target, targets)
    folder = run.responses_folder(target)
    scores = list(run.scores_folder(folder.path.name).scores())
    by_metric: dict[str, dict[str, float | None]] = {}
    for score in scores:
        by_metric.setdefault(score.metric, {})[score.response_id] = score.value
    metric = "judge" if "judge" in by_metric else "keyword_asr"
    if metric not in by_metric:
        raise NothingToDoError(f"{target}'s answers are not scored: run `medattack score {run.root}` first (the "
                               "sample is drawn by the judge's verdict).")
    responses = {r.response_id: r for r in folder.responses()
                 if r.generation == 0 and r.condition in HARMFUL_CONDITIONS and r.method == source
                 and r.response_id in by_metric[metric]}
    if not responses:
        sources = sorted({r.method for r in folder.responses()})
        raise NothingToDoError(f"{target} has no scored answers to harmful questions from source {source!r}; "
                               f"its sources: {', '.join(sources)}.")
    answers = [Answer(rid, stratum_of(by_metric[metric][rid])) for rid in sorted(responses)]
    return Population(run, target, source, metric, responses, answers, tuple(sorted(targets)))


def labeller_name() -> str:
    """Who is labelling when nobody said: the login name, else "anonymous"."""
    try:
        return os.environ.get("MEDATTACK_LABELLER") or getpass.getuser() or "anonymous"
    except (KeyError, OSError):
        return "anonymous"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def give(pop: Population, response_id: str, value: int | str, labeller: str, via: str = "page") -> Label:
    """Append one label of `response_id`: 1 or 0, "skip" (unsure: left unlabelled, not shown again) or "undo"
    (the answer returns to the queue). The row is on disk (fsync) when this returns."""
    if response_id not in pop.responses:
        raise SourceError(response_id, f"not one of {pop.target}'s answers to label.", "label an answer it shows.")
    status, label = {1: ("labelled", 1), 0: ("labelled", 0), "1": ("labelled", 1), "0": ("labelled", 0),
                     "skip": ("skipped", None), "undo": ("undone", None)}.get(value, (None, None))  # type: ignore
    if status is None:
        raise SourceError(response_id, f"a label is 1, 0, skip or undo, not {value!r}.")
    row = Label(response_id, pop.target, label, status, labeller, _now(), via)
    pop.path.parent.mkdir(parents=True, exist_ok=True)
    append_records(pop.path, row)
    return row


def import_csv(pop: Population, path: Path, labeller: str) -> tuple[int, int, int]:
    """Append the labels of a CSV (columns response_id, label; optional target, labeller and the export's other
    columns; `target` required when the run holds several targets, whose answers share ids). Every row is checked
    before any is written: an unknown id, a value other than 0/1, missing or extra columns, a row of another
    target, one answer given two different labels. An empty label is left out; a label equal to the one that
    stands is not written again. Returns (written, unchanged, changed: of the written, those that replace another
    standing label)."""
    rows = read_table(Path(path))
    if not rows:
        raise SourceError(str(path), "no rows.", "export the sample with --export, fill in `label`, import it.")
    columns = list(rows[0])
    several = len(pop.targets) > 1
    missing = [c for c in (*IMPORT_REQUIRED, *(("target",) if several else ())) if c not in columns]
    extra = [c for c in columns if c not in CSV_COLUMNS]
    if missing or extra:
        problems = ([f"missing column(s) {missing}"] if missing else []) + ([f"unknown column(s) {extra}"] if extra
                                                                             else [])
        why = " (the run holds several targets, whose answers share ids)" if several and "target" in missing else ""
        raise SourceError(str(path), "; ".join(problems) + why + ".", f"use the columns {', '.join(CSV_COLUMNS)} "
                          "(response_id and label required), as `medattack label RUN --export FILE` writes.")
    parsed: dict[str, tuple[int, str, int]] = {}  # response id -> (label, labeller, line)
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"{path}:line {line}"
        rid, value, target = cell(row, "response_id"), cell(row, "label"), cell(row, "target")
        if target and target != pop.target:
            known = target in pop.targets
            raise SourceError(where, f"a label of target {target!r}, not {pop.target!r}.",
                              f"import it with --target {target!r}." if known else
                              f"{target!r} is not a target of this run: fix the row or leave it out.")
        if rid not in pop.responses:
            raise SourceError(where, f"unknown response_id {rid!r}: not one of {pop.target}'s answers to harmful "
                              f"questions (source {pop.source}).", "use the ids `--export` writes.")
        if value == "":
            continue
        if value not in LABEL_VALUES:
            raise SourceError(where, f"label must be 0 or 1 (or empty: not labelled), got {value!r}.")
        if rid in parsed and parsed[rid][0] != LABEL_VALUES[value]:
            raise SourceError(where, f"{rid!r} is labelled {parsed[rid][0]} on line {parsed[rid][2]} and "
                              f"{LABEL_VALUES[value]} here.", "keep one label per answer.")
        parsed[rid] = (LABEL_VALUES[value], cell(row, "labeller") or labeller, line)
    standing_now = pop.labels()
    fresh = {rid: found for rid, found in parsed.items()
             if rid not in standing_now or standing_now[rid].label != found[0]}
    changed = sum(1 for rid in fresh if rid in standing_now and standing_now[rid].label is not None)
    via = f"import:{Path(path).name}"
    pop.path.parent.mkdir(parents=True, exist_ok=True)
    append_records(pop.path, *[Label(rid, pop.target, value, "labelled", who, _now(), via)
                               for rid, (value, who, _) in fresh.items()])
    return len(fresh), len(parsed) - len(fresh), changed


def export_csv(pop: Population, path: Path, seed: int, n: int | None = None) -> int:
    """Write the first `n` answers of the labelling order (all when None) with their labels so far. Returns the
    number of rows."""
    labels = pop.labels()
    order = pop.order(seed)[: n if n is not None else None]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS))
    writer.writeheader()
    for rid in order:
        response, label = pop.responses[rid], labels.get(rid)
        writer.writerow({"response_id": rid, "target": pop.target, "source": pop.source,
                         "condition": response.condition, "question": csv_cell(response.question),
                         "response": csv_cell(response.response),
                         "label": "" if label is None or label.label is None else label.label,
                         "labeller": "" if label is None else label.labeller})
    write_bytes_atomic(Path(path), buffer.getvalue().encode("utf-8"))
    return len(order)
