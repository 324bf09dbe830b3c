"""A CSV or JSONL manifest: one image per row.

Columns: `path` (required, relative to the data root), then either `modality` and `body_part` or one
`attribute` like "CT and Chest"; optional `id`, `description`, `mask_path` (lesion mask image, non-zero
= lesion) and `bbox` ("x0,y0,x1,y1" in pixels). The data root defaults to the manifest's folder;
every path, masks included, must resolve inside it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medattack.data.sources.base import (
    SOURCES,
    SourceContext,
    SourceItem,
    require_argument,
    resolve_inside,
)
from medattack.data.sources.tables import cell, read_table, require_columns, require_text
from medattack.errors import ConfigError, InputError, SourceError


def parse_bbox(value: Any, location: str) -> tuple[int, int, int, int] | None:
    """Parse "x0,y0,x1,y1", "[x0, y0, x1, y1]" or a list; empty means no box."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        if isinstance(value, str):
            text = value.strip()
            parts = json.loads(text) if text.startswith("[") else text.split(",")
        elif isinstance(value, list | tuple):
            parts = list(value)
        else:  # a bare number, true/false, a mapping
            raise TypeError
        if len(parts) != 4 or any(isinstance(p, bool) for p in parts):
            raise ValueError
        x0, y0, x1, y1 = (int(float(p)) for p in parts)  # inf and nan raise here too
    except (TypeError, ValueError, OverflowError, json.JSONDecodeError):
        raise SourceError(location, f"bbox {value!r} is not four finite numbers.",
                          "write it as x0,y0,x1,y1 in pixels.") from None
    if x1 <= x0 or y1 <= y0 or min(x0, y0) < 0:
        raise SourceError(location, f"bbox {value!r} is empty or negative.",
                          "x1 must exceed x0 and y1 must exceed y0, all >= 0.")
    return x0, y0, x1, y1


TEXT_COLUMNS = ("path", "modality", "body_part", "attribute", "description", "mask_path")  # ids may be numbers


@SOURCES.register("manifest")
class ManifestSource:
    """`--source manifest:FILE.csv|FILE.jsonl`."""

    name = "manifest"

    def __init__(self, argument: str, context: SourceContext) -> None:
        self.path = Path(require_argument("manifest", argument, "manifest:images.csv")).expanduser()
        self.root = (context.data_root or self.path.parent).expanduser()
        self.context = context

    def __iter__(self) -> Iterator[SourceItem | InputError]:
        try:
            rows = read_table(self.path, keep_bad_lines=True)
            good = [r for r in rows if not isinstance(r, InputError)]
            if not rows:
                raise SourceError(str(self.path), "the manifest has no rows.", "add one row per image.")
            if good:
                require_columns(self.path, good, [("path",), ("modality", "attribute")])
                if "modality" in good[0]:
                    require_columns(self.path, good, [("body_part",)])
        except InputError as error:
            yield error
            return
        for number, row in enumerate(rows, start=1):
            if isinstance(row, InputError):  # one bad line of a JSONL manifest: the others go on
                yield row
                continue
            location = f"{self.path}:row {number}"
            try:
                yield self._item(row, location, number)
            except InputError as error:
                yield error

    def _item(self, row: dict[str, Any], location: str, number: int) -> SourceItem:
        require_text(row, TEXT_COLUMNS, location)
        relative = cell(row, "path")
        path = resolve_inside(self.root, relative, location)
        taxonomy = self.context.taxonomy
        if cell(row, "modality") and cell(row, "body_part"):
            category = taxonomy.category(cell(row, "modality"), cell(row, "body_part"))
        elif cell(row, "attribute"):
            try:
                category = taxonomy.parse_attribute(cell(row, "attribute"))
            except ConfigError as exc:
                raise SourceError(location, str(exc)) from None
        else:
            raise SourceError(location, "modality/body_part (or attribute) is empty.",
                              "label every row, e.g. modality=CT, body_part=Chest.")
        mask = cell(row, "mask_path")
        return SourceItem(
            source=self.name,
            item_id=cell(row, "id") or relative,
            location=location,
            category=category,
            path=path,
            description=cell(row, "description"),
            mask_path=resolve_inside(self.root, mask, location) if mask else None,
            bbox=parse_bbox(row.get("bbox"), location),
        )
