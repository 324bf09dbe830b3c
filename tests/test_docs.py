"""The documentation: the generated reference pages are current, and every relative link resolves."""

from __future__ import annotations

import re
from pathlib import Path

from medattack.cli import docs

ROOT = Path(__file__).resolve().parents[1]


def test_the_generated_pages_are_current(tmp_path):
    for path in docs.write(tmp_path):
        committed = ROOT / "docs" / path.name
        assert committed.is_file() and committed.read_text() == path.read_text(), (
            f"docs/{path.name} is stale: run `python -m medattack.cli.docs` and commit it")


def test_every_relative_link_of_the_readme_and_docs_resolves():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    checked = 0
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"
            checked += 1
    assert checked > 10


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
