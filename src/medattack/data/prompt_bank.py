"""The prompt bank: per clinical task, triples of (normal question, harmful question, key phrase).

The embedded bank (`resources/prompt_bank_v1.yaml`) was written for medattack; users can supply their
own file in the same layout (and `medattack prompts ...` will generate one), or a table (CSV, JSONL,
Parquet) with a task column (`policy` or `task`), the questions (`normal_prompt` / `normal` /
`question`, `harmful_prompt` / `harmful` / `harmful_question`), and optionally `key_phrases` /
`key_phrase` and `id`: the paper's prompt files load as they are. Every bank is validated on load: ids
and questions unique, no empty field, no harmful question that names a modality or body part from the
taxonomy (harmful questions must transfer across images), and (unless `require_all_tasks` is off, as the
build sets it) every task covered. With `lenient`, these findings are warnings, kept in
`PromptBank.findings` and the build summary, and the bank is used as written (an empty key phrase stays
empty, as the original code kept it); a missing question or an unknown task still refuses the bank.

A bank that covers only some tasks builds those: `cover_tasks` splits the tasks to build into the ones the
bank has questions for and the ones skipped, and refuses only tasks the user named that the bank lacks.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from medattack.data.sources.tables import TABLE_SUFFIXES, cell, read_table
from medattack.data.sources.threemad import first_key_phrase
from medattack.data.taxonomy import Taxonomy, load_taxonomy, normalise_name
from medattack.errors import ConfigError, InputError, PromptBankError

log = logging.getLogger(__name__)

EMBEDDED_BANK = "prompt_bank_v1.yaml"
REQUIRED_FIELDS = ("id", "normal", "harmful", "key_phrase")
TABLE_COLUMNS = {  # bank field -> the table columns that may hold it, first found wins
    "task": ("policy", "task"), "normal": ("normal_prompt", "normal", "question"),
    "harmful": ("harmful_prompt", "harmful", "harmful_question"), "key_phrase": ("key_phrases", "key_phrase"),
}


@dataclass(frozen=True)
class PromptTriple:
    """One prompt-bank entry for one clinical task."""

    prompt_id: str
    task: str
    normal: str
    harmful: str
    key_phrase: str


@dataclass(frozen=True)
class PromptBank:
    version: str
    source: str  # where it was loaded from, for run.json
    sha256: str  # content hash of the file, so runs record exactly which bank they used
    triples: tuple[PromptTriple, ...]
    findings: tuple[str, ...] = field(default=())  # what a lenient load let through (warnings)

    def for_task(self, task: str) -> tuple[PromptTriple, ...]:
        return tuple(t for t in self.triples if t.task == task)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t.task for t in self.triples))


def vocabulary_pattern(taxonomy: Taxonomy) -> re.Pattern[str]:
    words = sorted(taxonomy.vocabulary(), key=len, reverse=True)
    return re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)


def validate(raw: object, where: str, taxonomy: Taxonomy, lenient: bool = False,
             require_all_tasks: bool = True) -> tuple[str, tuple[PromptTriple, ...], tuple[str, ...]]:
    """Check a parsed bank and return (version, triples, findings). Raises PromptBankError naming the
    entry; with `lenient`, the findings that do not stop a build are returned instead (module docstring).
    Without `require_all_tasks`, a task with no questions is no finding (the build skips it: `cover_tasks`)."""
    findings: list[str] = []

    def finding(message: str) -> None:
        if not lenient:
            raise PromptBankError(message)
        findings.append(message)

    if not isinstance(raw, dict) or not isinstance(raw.get("tasks"), dict):
        raise PromptBankError(f"{where}: expected a mapping with 'version' and 'tasks: {{task: [...]}}'.")
    version = str(raw.get("version", "")).strip()
    if not version:
        raise PromptBankError(f"{where}: the bank needs a 'version' so runs can record which one they used.")
    vocabulary = vocabulary_pattern(taxonomy)
    triples: list[PromptTriple] = []
    seen_ids: set[str] = set()
    seen_text: dict[str, str] = {}
    covered: set[str] = set()
    for task_name, entries in raw["tasks"].items():
        task = taxonomy.task(str(task_name)).name  # raises on an unknown task, listing the known
        if not isinstance(entries, list) or not entries:
            raise PromptBankError(f"{where}: task {task_name!r} has no entries.")
        for index, entry in enumerate(entries):
            label = f"{where}: task {task_name!r} entry {index + 1}"
            if not isinstance(entry, dict):
                raise PromptBankError(f"{label} must be a mapping with {', '.join(REQUIRED_FIELDS)}.")
            missing = [f for f in REQUIRED_FIELDS if not str(entry.get(f) or "").strip()]
            if set(missing) - {"key_phrase"}:
                raise PromptBankError(f"{label} has empty or missing field(s): {', '.join(missing)}.")
            if missing:
                finding(f"{label} has an empty key_phrase (its target would be 'Sure, here is how to ').")
            extra = set(entry) - set(REQUIRED_FIELDS)
            if extra:
                raise PromptBankError(f"{label} has unknown field(s): {', '.join(sorted(extra))}.")
            triple = PromptTriple(
                prompt_id=str(entry["id"]).strip(),
                task=task,
                normal=" ".join(str(entry["normal"]).split()),
                harmful=" ".join(str(entry["harmful"]).split()),
                key_phrase=" ".join(str(entry.get("key_phrase") or "").split()).rstrip("."),
            )
            if triple.prompt_id in seen_ids:
                raise PromptBankError(f"{label}: id {triple.prompt_id!r} is used twice.")
            seen_ids.add(triple.prompt_id)
            for text in (triple.normal, triple.harmful):
                key = normalise_name(text)
                if key in seen_text and not (text == triple.normal and lenient):  # tables repeat normal questions
                    finding(f"{label}: question {text!r} duplicates entry {seen_text[key]!r}.")
                seen_text.setdefault(key, triple.prompt_id)
            named = vocabulary.search(triple.harmful)
            if named:
                finding(f"{label}: harmful question names {named.group(0)!r}; harmful questions must not "
                        "name a modality or body part, so they transfer across images.")
            triples.append(triple)
            covered.add(task)
    uncovered = [t for t in taxonomy.task_names if t not in covered]
    if uncovered and require_all_tasks:
        finding(f"{where}: no prompts for task(s): {', '.join(uncovered)}.")
    return version, tuple(triples), tuple(findings)


def table_bank(path: Path) -> dict[str, object]:
    """A prompt table (one row per triple; TABLE_COLUMNS) in the YAML bank's layout."""
    try:
        rows = read_table(path)
    except InputError as error:
        raise PromptBankError(str(error)) from None
    columns = set(rows[0]) if rows else set()
    found = {name: next((c for c in options if c in columns), None) for name, options in TABLE_COLUMNS.items()}
    absent = [f"{name} ({' or '.join(TABLE_COLUMNS[name])})" for name in ("task", "normal", "harmful")
              if found[name] is None]
    if absent:
        raise PromptBankError(f"{path}: no column for {', '.join(absent)}.")
    tasks: dict[str, list[dict[str, str]]] = {}
    for number, row in enumerate(rows, start=1):
        key = first_key_phrase(row.get(found["key_phrase"])) if found["key_phrase"] else ""
        tasks.setdefault(cell(row, str(found["task"])), []).append({
            "id": cell(row, "id") or f"row{number}", "normal": _unquote(cell(row, str(found["normal"]))),
            "harmful": _unquote(cell(row, str(found["harmful"]))), "key_phrase": key})
    return {"version": f"table:{path.name}", "tasks": tasks}


def _unquote(text: str) -> str:
    """Some prompt tables wrap each question in single quotes inside the CSV quotes: drop them."""
    return text[1:-1].strip() if len(text) > 1 and text[0] == text[-1] == "'" else text


@dataclass(frozen=True)
class TaskCoverage:
    """Which of the tasks to build a prompt bank has questions for."""

    built: tuple[str, ...]  # the tasks to build, in the order given
    skipped: tuple[str, ...]  # the tasks the bank has no questions for (never one the user named)


def more_rows_fix(source: str) -> str:
    """How to give the build questions for tasks a bank lacks (`source`: `PromptBank.source`)."""
    if source.startswith("embedded "):
        return "pass --prompt-bank FILE with rows for them"
    return f"add rows for them to {source}"


def skipped_message(skipped: tuple[str, ...], source: str) -> str:
    """The one line that says which tasks a build skipped for want of questions, and how to build them."""
    count = f"{len(skipped)} task" + ("" if len(skipped) == 1 else "s")
    return (f"skipped {count} the prompt bank has no questions for: {', '.join(skipped)} "
            f"({more_rows_fix(source)} and rebuild with --force to build them)")


def cover_tasks(bank: PromptBank, tasks: tuple[str, ...], named: bool) -> TaskCoverage:
    """Split `tasks` (canonical names) into those `bank` has questions for and those it lacks; logs one
    warning naming the skipped ones.

    Args:
        bank: the loaded bank.
        tasks: the tasks to build, canonical names.
        named: the user named `tasks` (--task, config `tasks`), so each of them must be built.

    Raises:
        ConfigError: the user named tasks the bank has no questions for, or it has questions for none of `tasks`.
    """
    built = tuple(t for t in tasks if bank.for_task(t))
    skipped = tuple(t for t in tasks if t not in built)
    covers = ", ".join(bank.tasks) or "no task"
    if named and skipped:
        raise ConfigError(f"prompt bank {bank.source} has no questions for the task(s) you asked for: "
                          f"{', '.join(skipped)} (it has questions for: {covers}). Fix: {more_rows_fix(bank.source)}, "
                          "or leave them out of --task (config `tasks`).")
    if not built:
        raise ConfigError(f"prompt bank {bank.source} has no questions for any task to build (it has questions for: "
                          f"{covers}). Fix: add rows whose task is one of: {', '.join(tasks)}.")
    if skipped:
        log.warning("%s", skipped_message(skipped, bank.source))
    return TaskCoverage(built=built, skipped=skipped)


def load_prompt_bank(path: str | Path | None = None, taxonomy: Taxonomy | None = None,
                     lenient: bool = False, require_all_tasks: bool = True) -> PromptBank:
    """Load and validate the embedded bank, a user file in the same layout, or a prompt table. Without
    `require_all_tasks`, a bank may leave tasks out (the build skips them: `cover_tasks`)."""
    taxonomy = taxonomy or load_taxonomy()
    if path is None:
        data = resources.files("medattack.data.resources").joinpath(EMBEDDED_BANK).read_bytes()
        where = f"embedded {EMBEDDED_BANK}"
    else:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise PromptBankError(f"cannot read prompt bank {path}: {exc.strerror}.") from exc
        where = str(path)
    if path is not None and Path(path).suffix.lower() in TABLE_SUFFIXES:
        raw: object = table_bank(Path(path))
    else:
        try:
            raw = yaml.safe_load(data.decode("utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise PromptBankError(f"{where} is not valid UTF-8 YAML: {exc}") from exc
    version, triples, findings = validate(raw, where, taxonomy, lenient, require_all_tasks)
    for message in findings:
        log.warning("prompt bank: %s", message)
    return PromptBank(version=version, source=where, sha256=hashlib.sha256(data).hexdigest(), triples=triples,
                      findings=findings)
