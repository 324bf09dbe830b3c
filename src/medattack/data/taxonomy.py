"""The taxonomy as data: imaging modalities x body parts, and 18 clinical tasks in 4 groups.

Loaded from `resources/taxonomy.yaml` (or a user file with the same layout). Attributes are written
"{Modality} and {BodyPart}", e.g. "CT and Chest", exactly as in the 3MAD benchmark.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from medattack.errors import ConfigError

ATTRIBUTE_JOINER = " and "


def normalise_name(name: str) -> str:
    """Key for case-, space-, dash- and underscore-insensitive matching ("X-ray" == "xray")."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def slug(text: str) -> str:
    """A filename-safe lowercase slug ("Open-ended" -> "open_ended")."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


@dataclass(frozen=True)
class Category:
    """One modality x body part pair."""

    modality: str
    body_part: str

    @property
    def attribute(self) -> str:
        """The attribute text used in questions, e.g. "CT and Chest"."""
        return f"{self.modality}{ATTRIBUTE_JOINER}{self.body_part}"

    @property
    def split_name(self) -> str:
        """The 3MAD-style split name, e.g. "CT_Chest", "X-ray_Chest"."""
        return f"{self.modality}_{self.body_part}".replace(" ", "-")


@dataclass(frozen=True)
class Task:
    name: str
    group: str
    description: str

    @property
    def slug(self) -> str:
        return slug(self.name)


def printable(text: str) -> str:
    """Text with undecodable bytes (surrogate escapes from file and folder names) replaced by U+FFFD, so
    that it can be stored as JSON and hashed as UTF-8."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


@dataclass(frozen=True)
class Taxonomy:
    """Modalities, their body parts, aliases and the clinical tasks."""

    modalities: dict[str, tuple[str, ...]]  # modality -> body parts
    modality_aliases: dict[str, str]  # normalised alias -> modality
    body_part_aliases: dict[str, str]  # normalised alias -> body part
    tasks: tuple[Task, ...]

    @property
    def categories(self) -> tuple[Category, ...]:
        return tuple(Category(m, b) for m, parts in self.modalities.items() for b in parts)

    @property
    def body_parts(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for parts in self.modalities.values():
            seen.update(dict.fromkeys(parts))
        return tuple(seen)

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    def task(self, name: str) -> Task:
        """Look up a task by name, slug or a case/punctuation variant ("open ended")."""
        key = normalise_name(name)
        for task in self.tasks:
            if normalise_name(task.name) == key:
                return task
        raise ConfigError(
            f"unknown clinical task {name!r}. Known tasks: {', '.join(self.task_names)}."
        )

    def canonical_modality(self, name: str) -> str | None:
        """The taxonomy's spelling of a modality name or alias, or None when unknown."""
        return self.modality_aliases.get(normalise_name(name))

    def canonical_body_part(self, name: str) -> str | None:
        return self.body_part_aliases.get(normalise_name(name))

    def category(self, modality: str, body_part: str) -> Category:
        """A category with canonical spelling where known; unknown names are kept as written."""
        mod = self.canonical_modality(modality) or printable(modality.strip())  # unknown: kept as written
        part = self.canonical_body_part(body_part) or printable(body_part.strip())
        return Category(mod, part)

    def parse_attribute(self, attribute: str) -> Category:
        """Parse "CT and Chest" (or a split name like "CT_Chest") into a Category."""
        text = attribute.strip()
        if ATTRIBUTE_JOINER in text:
            modality, _, body_part = text.partition(ATTRIBUTE_JOINER)
            return self.category(modality, body_part)
        for sep in ("_", "/"):
            if sep in text:
                modality, _, body_part = text.partition(sep)
                return self.category(modality, body_part.replace("-", " "))
        raise ConfigError(
            f"cannot read attribute {attribute!r}: write it as '<Modality> and <BodyPart>', "
            "e.g. 'CT and Chest'."
        )

    def vocabulary(self) -> tuple[str, ...]:
        """Every modality and body-part name and alias (for checks that prompts stay generic)."""
        names = set(self.modalities) | set(self.body_parts)
        return tuple(sorted(names))


def _build(raw: dict, where: str) -> Taxonomy:
    try:
        modalities: dict[str, tuple[str, ...]] = {}
        modality_aliases: dict[str, str] = {}
        body_part_aliases: dict[str, str] = {}
        for entry in raw["modalities"]:
            name = entry["name"]
            modalities[name] = tuple(entry["body_parts"])
            for alias in [name, *entry.get("aliases", [])]:
                modality_aliases[normalise_name(alias)] = name
            for part in entry["body_parts"]:
                body_part_aliases[normalise_name(part)] = part
        for part, aliases in (raw.get("body_part_aliases") or {}).items():
            for alias in aliases:
                body_part_aliases[normalise_name(alias)] = part
        tasks = tuple(
            Task(name=t["name"], group=group["name"], description=t["description"])
            for group in raw["task_groups"]
            for t in group["tasks"]
        )
    except (KeyError, TypeError) as exc:
        raise ConfigError(
            f"{where}: malformed taxonomy ({exc!r}); it needs 'modalities' (name, body_parts) "
            "and 'task_groups' (name, tasks with name and description)."
        ) from exc
    if len({normalise_name(t.name) for t in tasks}) != len(tasks):
        raise ConfigError(f"{where}: a task name appears twice.")
    return Taxonomy(modalities, modality_aliases, body_part_aliases, tasks)


@functools.cache
def load_taxonomy(path: str | None = None) -> Taxonomy:
    """Load the embedded taxonomy, or a user YAML file with the same layout."""
    if path is None:
        text = resources.files("medattack.data.resources").joinpath("taxonomy.yaml").read_text(
            encoding="utf-8"
        )
        where = "embedded taxonomy.yaml"
    else:
        text = Path(path).read_text(encoding="utf-8")
        where = str(path)
    return _build(yaml.safe_load(text), where)
