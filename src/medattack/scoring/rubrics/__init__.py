"""The prompts of the judge-model metrics (graded harm, injection success), written for medattack."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def rubric_text(path: str | None, shipped: str) -> str:
    """The user's rubric file at `path`, else the shipped one named `shipped` (e.g. "cares.txt")."""
    if path:
        return Path(path).read_text(encoding="utf-8")
    return resources.files(__name__).joinpath(shipped).read_text("utf-8")
