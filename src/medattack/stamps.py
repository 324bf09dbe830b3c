"""A stage folder's stamp (its config.json): the settings its results were made with.

`claim_folder` writes it, refusing a folder whose stamp holds other settings (an OtherConfigurationError naming
them; the CLI continues such a folder when the user typed none of them) or, with force, setting the old results
aside first. Settings that only choose items (`--limit`) and what a stamp says about the folder for readers
(`about`: the defences' traits the report marks) are never compared.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medattack.errors import OtherConfigurationError
from medattack.redaction import redact_record
from medattack.storage import canonical_json, content_hash, read_state, write_json_atomic

KEPT_ON_REPLACE = ("config.json", ".writer.lock", "stale")  # what --force leaves in place (caches: *.sqlite*)
# settings that choose which items a call works on, not how a result is made: a folder takes another value
# (a larger --limit adds samples; a smaller one leaves the others as they are)
SELECTION_KEYS = ("stage.limit",)
# what a stamp records about the folder for readers (the report), not a setting: never compared
ABOUT_KEY = "about"


def _without(record: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """`record` without the dotted `keys`."""
    out = dict(record)
    for key in keys:
        head, _, rest = key.partition(".")
        if rest and isinstance(out.get(head), dict):
            out[head] = _without(out[head], (rest,))
        elif not rest:
            out.pop(head, None)
    return out


def claim_folder(folder: Path, record: dict[str, Any], force: bool, change: str,
                 defaults: dict[str, Any] | None = None) -> Path | None:
    """Write a stage folder's config.json, refusing a folder that holds results of another config (settings other
    than SELECTION_KEYS); `change`
    says what to change instead, e.g. "the method or model". With `force` the old results are replaced, never
    mixed with the new: everything the folder holds except its content-keyed caches (*.sqlite: an answer is
    never paid for twice) moves to `stale/<UTC time>/` first, kept but never read; returns that folder (None
    when nothing moved). A stamp of an older schema version is read through its upgrade steps (schema.py: those
    of the unversioned stamps give settings added since their value in `defaults`; they did not exist, so they
    were not used), so a new setting left at its default does not orphan old results."""
    record = redact_record(record)  # no credentials from a URL on disk; compared as written
    stamp = folder / "config.json"
    moved = None
    if stamp.exists():
        previous = read_state(stamp, "delete it (the stage writes it again and keeps the results beside it, "
                              "checked by their own hashes), or restore it from a copy", "stage-config",
                              defaults=defaults or {})
        previous = _without(previous, (*SELECTION_KEYS, ABOUT_KEY))
        if content_hash(previous) != content_hash(_without(record, (*SELECTION_KEYS, ABOUT_KEY))):
            if not force:
                found = differences(previous, _without(record, (*SELECTION_KEYS, ABOUT_KEY)))
                changed = ", ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in found[:6])
                raise OtherConfigurationError(
                    f"{folder} holds results of another configuration ({changed}); run it with the settings it "
                    f"holds, change {change}, write to another run (a new RUN folder), or add --force to replace "
                    "them (the old results move to its stale/ folder).", previous, [key for key, _, _ in found])
            moved = _set_aside_folder(folder)
    write_json_atomic(stamp, record, "stage-config")
    return moved


def _set_aside_folder(folder: Path) -> Path | None:
    """Move a stage folder's results (all but KEPT_ON_REPLACE and its caches) to stale/<UTC time>/."""
    leaving = [p for p in sorted(folder.iterdir()) if p.name not in KEPT_ON_REPLACE and ".sqlite" not in p.name]
    if not leaving:
        return None
    target = folder / "stale" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    target.mkdir(parents=True)
    shutil.copy2(folder / "config.json", target / "config.json")
    for path in leaving:
        path.rename(target / path.name)
    return target


def differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) of every setting that differs between two records (None: absent)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for key in sorted(set(old) | set(new), key=str)
                for d in differences(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if canonical_json(old) == canonical_json(new) else [(prefix.rstrip("."), old, new)]
