"""The prompt bank: per clinical task, triples of (normal question, harmful question, key phrase).

The embedded bank (`resources/prompt_bank_v1.yaml`) was written for medattack; users can supply their
own file in the same layout (and `medattack prompts ...` will generate one). Every bank is validated
on load: all tasks covered, ids and questions unique, no empty field, and no harmful question that
names a modality or body part from the taxonomy (harmful questions must transfer across images).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from medattack.data.taxonomy import Taxonomy, load_taxonomy, normalise_name
from medattack.errors import PromptBankError

EMBEDDED_BANK = "prompt_bank_v1.yaml"
REQUIRED_FIELDS = ("id", "normal", "harmful", "key_phrase")


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

    def for_task(self, task: str) -> tuple[PromptTriple, ...]:
        return tuple(t for t in self.triples if t.task == task)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t.task for t in self.triples))


def vocabulary_pattern(taxonomy: Taxonomy) -> re.Pattern[str]:
    words = sorted(taxonomy.vocabulary(), key=len, reverse=True)
    return re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)


def validate(raw: object, where: str, taxonomy: Taxonomy) -> tuple[str, tuple[PromptTriple, ...]]:
    """Check a parsed bank and return (version, triples). Raises PromptBankError naming the entry."""
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
            if missing:
                raise PromptBankError(f"{label} has empty or missing field(s): {', '.join(missing)}.")
            extra = set(entry) - set(REQUIRED_FIELDS)
            if extra:
                raise PromptBankError(f"{label} has unknown field(s): {', '.join(sorted(extra))}.")
            triple = PromptTriple(
                prompt_id=str(entry["id"]).strip(),
                task=task,
                normal=" ".join(str(entry["normal"]).split()),
                harmful=" ".join(str(entry["harmful"]).split()),
                key_phrase=" ".join(str(entry["key_phrase"]).split()).rstrip("."),
            )
            if triple.prompt_id in seen_ids:
                raise PromptBankError(f"{label}: id {triple.prompt_id!r} is used twice.")
            seen_ids.add(triple.prompt_id)
            for text in (triple.normal, triple.harmful):
                key = normalise_name(text)
                if key in seen_text:
                    raise PromptBankError(
                        f"{label}: question {text!r} duplicates entry {seen_text[key]!r}."
                    )
                seen_text[key] = triple.prompt_id
            named = vocabulary.search(triple.harmful)
            if named:
                raise PromptBankError(
                    f"{label}: harmful question names {named.group(0)!r}; harmful questions must not "
                    "name a modality or body part, so they transfer across images."
                )
            triples.append(triple)
            covered.add(task)
    uncovered = [t for t in taxonomy.task_names if t not in covered]
    if uncovered:
        raise PromptBankError(f"{where}: no prompts for task(s): {', '.join(uncovered)}.")
    return version, tuple(triples)


def load_prompt_bank(path: str | Path | None = None, taxonomy: Taxonomy | None = None) -> PromptBank:
    """Load and validate the embedded bank, or a user file in the same layout."""
    taxonomy = taxonomy or load_taxonomy()
    if path is None:
        text = resources.files("medattack.data.resources").joinpath(EMBEDDED_BANK).read_text(
            encoding="utf-8"
        )
        where = f"embedded {EMBEDDED_BANK}"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise PromptBankError(f"cannot read prompt bank {path}: {exc.strerror}.") from exc
        where = str(path)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PromptBankError(f"{where} is not valid YAML: {exc}") from exc
    version, triples = validate(raw, where, taxonomy)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return PromptBank(version=version, source=where, sha256=digest, triples=triples)
