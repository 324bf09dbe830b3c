"""What the score stage reads: the responses of a run, or a responses file from anywhere, as `ScoreInput`s.

A run's responses are the query stage's (responses/<target>) and the attack stage's own answers
(attacks/<method>/<model>, scored as target "attack__<method>__<model>"). A file is long (one response
per row: `question` or `attribute` + `prompt`, `response`, optional `condition`, `image`) or wide (the
3MAD columns plus one response column per condition); the format is told from its columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medattack.data.sources.tables import cell, read_table, require_columns
from medattack.errors import SourceError
from medattack.records import CONTROL_DESCRIPTIONS, AttackRecord, Response, Sample, question_text
from medattack.rundir import RunDir
from medattack.scoring.base import ScoreInput

WIDE_CONDITIONS = {  # condition -> (response column(s), attribute column, prompt column)
    "normal": (("normal_response",), "original_attribute", "normal_prompt"),
    "mismatch": (("unmatch_response", "mismatch_response"), "unmatch_attribute", "normal_prompt"),
    "malicious": (("malicious_response", "harmful_response"), "original_attribute", "harmful_prompt"),
    "both": (("both_response", "both_responses"), "unmatch_attribute", "harmful_prompt"),
}


def _image(root: Path | None, name: str) -> str | None:
    if not name:
        return None
    path = Path(name) if Path(name).is_absolute() or root is None else root / name
    return str(path)  # existence is checked by the image metrics, which count the missing ones


def answer_text(value: Any, where: str) -> str:
    """A stored answer as text ('' for none); an answer that is not text (a JSON object, number or list, which
    a careless writer or target left) is a SourceError naming `where`, never scored as if it were text."""
    if value is None or isinstance(value, str):
        return value or ""
    raise SourceError(where, f"the answer is a {type(value).__name__}, not text ({str(value)[:60]!r}).",
                      "store each answer as a string; this row is left out of the scores and counted as a failure.")


def read_responses_file(path: Path, images_root: Path | None = None,
                        unreadable: list[SourceError] | None = None) -> list[ScoreInput]:
    """Long format (one response per row) or wide format (3MAD columns + one response column per
    condition); the format is told from the columns. A row whose answer is not text fails with its line,
    or, given `unreadable`, is left out and its error appended there."""
    rows = read_table(path)
    if not rows:
        raise SourceError(str(path), "the file holds no rows.")
    columns = set(rows[0])
    root = images_root or path.parent
    wide = [c for c, (names, _, _) in WIDE_CONDITIONS.items() if columns & set(names)]
    inputs: list[ScoreInput] = []
    if wide:
        require_columns(path, rows, [("original_attribute",), ("unmatch_attribute",), ("normal_prompt",),
                                     ("harmful_prompt",)])
        for number, row in enumerate(rows, start=1):
            row_id = cell(row, "id") or str(number)
            for condition in wide:
                names, attribute_key, prompt_key = WIDE_CONDITIONS[condition]
                column = next(n for n in names if n in columns)
                prompt = cell(row, prompt_key)
                try:
                    response = answer_text(row.get(column), f"{path}:row {number}, column {column}").strip()
                except SourceError as error:
                    _unreadable(error, unreadable)
                    continue
                inputs.append(ScoreInput(
                    response_id=f"{row_id}:{condition}", condition=condition, prompt=prompt,
                    question=question_text(cell(row, attribute_key), prompt),
                    response=response, shown_attribute=cell(row, attribute_key),
                    true_attribute=cell(row, "original_attribute"),
                    image_path=_image(root, cell(row, "file_name") or cell(row, "image")),
                ))
        _refuse_repeated_ids(path, inputs)
        return inputs
    require_columns(path, rows, [("response",), ("question", "prompt")])
    for number, row in enumerate(rows, start=1):
        question = cell(row, "question")
        if not question:
            attribute = cell(row, "attribute") or cell(row, "shown_attribute")
            question = question_text(attribute, cell(row, "prompt")) if attribute else cell(row, "prompt")
        try:
            response = answer_text(row.get("response"), f"{path}:row {number}").strip()
        except SourceError as error:
            _unreadable(error, unreadable)
            continue
        inputs.append(ScoreInput(
            response_id=cell(row, "response_id") or cell(row, "id") or str(number),
            question=question, response=response, condition=cell(row, "condition"),
            prompt=cell(row, "prompt"), shown_attribute=cell(row, "attribute"),
            true_attribute=cell(row, "true_attribute"), description=cell(row, "description"),
            image_path=_image(root, cell(row, "image") or cell(row, "image_path") or cell(row, "file_name")),
        ))
    _refuse_repeated_ids(path, inputs)
    return inputs


def _unreadable(error: SourceError, unreadable: list[SourceError] | None) -> None:
    if unreadable is None:
        raise error
    unreadable.append(error)


def _refuse_repeated_ids(path: Path, inputs: list[ScoreInput]) -> None:
    seen: set[str] = set()
    repeated = sorted({i.response_id for i in inputs if i.response_id in seen or seen.add(i.response_id)})
    if repeated:
        raise SourceError(str(path), f"{len(repeated)} response id(s) repeat, e.g. {repeated[0]!r}.",
                          "give each row a unique id / response_id (or none: rows are then numbered).")


def read_run_responses(run: RunDir, unreadable: dict[str, list[SourceError]] | None = None,
                       ) -> dict[str, list[ScoreInput]]:
    """Every response a run holds, by the name of its scores folder: the query stage's (one per
    target) and the attack stage's own answers (one per attack folder). An answer that is not text is left
    out, its error added to `unreadable[folder]` (or raised without it)."""
    samples = {s.sample_id: s for s in run.samples()} if run.has_samples() else None
    current = (lambda sample_id: sample_id in samples) if samples is not None else (lambda _: True)
    targets: dict[str, list[ScoreInput]] = {}
    def clean(sample_id: str) -> str | None:
        sample = (samples or {}).get(sample_id)
        return str(run.benchmark / sample.image_file) if sample else None

    by_attack, by_sample = _injected(run)
    for folder in run.responses_folders():  # answers to samples a rebuilt benchmark no longer has are stale
        targets[folder.target] = []
        for number, r in enumerate(folder.responses(), start=1):
            if not current(r.sample_id):
                continue
            try:
                answer_text(r.response, f"{folder.responses_path}:{number}")
            except SourceError as error:
                _unreadable(error, None if unreadable is None else unreadable.setdefault(folder.target, []))
                continue
            injected = (by_attack.get((r.attack_method, r.attack_model, r.sample_id), "") if r.kind == "attack"
                        else by_sample.get(r.sample_id, "") if r.kind == "benchmark" else "")
            targets[folder.target].append(_response_input(r, str(run.root / r.image_file),
                                                          clean(r.sample_id) if r.kind == "attack" else None,
                                                          injected))
    for folder in run.attack_folders():
        targets[folder.target_name] = [
            _attack_input(record, (samples or {}).get(record.sample_id), str(folder.path / record.image_file),
                          clean(record.sample_id))
            for record in folder.results() if current(record.sample_id)]
    return targets


def _injected(run: RunDir) -> tuple[dict[tuple[str, str, str], str], dict[str, str]]:
    """The instruction template of every injected input (the inject attack's records): by (method, model, sample
    id), and by sample id (for the benchmark answer to the same sample: the injection metric's baseline)."""
    by_attack: dict[tuple[str, str, str], str] = {}
    templates: dict[str, set[str]] = {}
    for folder in run.attack_folders():
        for record in folder.results():
            template = record.info.get("template") if isinstance(record.info, dict) else None
            if isinstance(template, str) and template:
                by_attack[(record.method, record.model, record.sample_id)] = template
                templates.setdefault(record.sample_id, set()).add(template)
    # a sample injected with several instructions (inject folders of other settings) has no one baseline: none
    return by_attack, {sample: next(iter(found)) for sample, found in templates.items() if len(found) == 1}


def _response_input(row: Response, image: str, clean_image: str | None = None, injected: str = "") -> ScoreInput:
    """A query response as ScoreInput. A control image has no known attribute: the controls' own
    description stands in (so a metadata proxy gives null, and a pixel backend scores it)."""
    control = row.source.removeprefix("control:") if row.kind == "control" else ""
    is_control = control in CONTROL_DESCRIPTIONS
    return ScoreInput(
        response_id=row.response_id, question=row.question, response=row.response or "", condition=row.condition,
        prompt=row.prompt or "", shown_attribute=row.shown_attribute or "",
        true_attribute="" if is_control else row.true_attribute or "",
        description=CONTROL_DESCRIPTIONS[control] if is_control else row.description or "",
        image_path=image, clean_image_path=clean_image, injected=injected,
    )


def _attack_input(record: AttackRecord, sample: Sample | None, image: str, clean_image: str | None) -> ScoreInput:
    """An attack's own answer (to its question, not the replayed text) as ScoreInput."""
    return ScoreInput(
        response_id=record.sample_id, question=record.question, response=record.response or "",
        condition=record.condition, prompt=sample.prompt if sample else "",
        shown_attribute=sample.shown_attribute if sample else "",
        true_attribute=sample.true_attribute if sample else "", description=sample.description if sample else "",
        image_path=image, clean_image_path=clean_image,
        injected=str(record.info.get("template") or "") if isinstance(record.info, dict) else "",
    )
