"""A folder laid out `<Modality>/<BodyPart>/<files>` (files may sit in deeper sub-folders).

Folder names are matched to the taxonomy through its aliases ("MR" -> "MRI", "Xray" -> "X-ray");
names the taxonomy does not know are kept as written, so new categories need no code.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from medattack.data.sources.base import (
    IMAGE_SUFFIXES,
    SOURCES,
    SourceContext,
    SourceItem,
    require_argument,
    resolve_inside,
)
from medattack.errors import InputError, SourceError


def _visible_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


@SOURCES.register("folder")
class FolderSource:
    """`--source folder:PATH`."""

    name = "folder"

    def __init__(self, argument: str, context: SourceContext) -> None:
        self.root = Path(require_argument("folder", argument, "folder:/data/images")).expanduser()
        self.context = context

    def __iter__(self) -> Iterator[SourceItem | InputError]:
        if not self.root.is_dir():
            yield SourceError(str(self.root), "folder not found.", "check the path after 'folder:'.")
            return
        found = False
        for modality_dir in _visible_dirs(self.root):
            for part_dir in _visible_dirs(modality_dir):
                category = self.context.taxonomy.category(modality_dir.name, part_dir.name)
                for file in sorted(part_dir.rglob("*")):
                    if file.name.startswith(".") or file.is_dir():
                        continue
                    if file.suffix and file.suffix.lower() not in IMAGE_SUFFIXES:
                        continue
                    found = True
                    relative = file.relative_to(self.root).as_posix()
                    try:
                        path = resolve_inside(self.root, relative, str(file))
                    except InputError as error:
                        yield error
                        continue
                    yield SourceItem(
                        source=self.name,
                        item_id=relative,
                        location=str(file),
                        category=category,
                        path=path,
                    )
        if not found:
            yield SourceError(
                str(self.root), "no image files found.",
                "lay the folder out as <Modality>/<BodyPart>/<image files>.",
            )
