"""The 3MAD benchmark layout (Huang et al., arXiv 2405.20775): `MedMLLM-attack/3MAD-Tiny-1K`, `-66K`.

Columns: `id, file_name, image, original_attribute` ("CT and Chest"), `unmatch_attribute,
normal_prompt, harmful_prompt, policy` (the clinical task), `key_phrases`; one split per category
("CT_Chest"). Each row is already an image x prompt pair, so its texts are kept exactly as given:
attributes ("Xray and Chest", "Mamography and Breast"), prompts and key phrase (an empty one too, as the
original code does: its target is then "Sure, here is how to "), and the split name. The taxonomy only
annotates each row with its canonical modality and body part, for grouping.

`--source 3mad:MedMLLM-attack/3MAD-Tiny-1K` loads from the Hugging Face hub through `datasets`;
`--source 3mad:/path/to/dir` reads a local copy: one `<split>.parquet|.csv|.jsonl` per split (also
under `data/`), images embedded in an `image` column ({bytes, path}) or as files named by
`file_name` under the folder or its `images/` sub-folder.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from medattack.data.sources.base import (
    SOURCES,
    PresetPair,
    SourceContext,
    SourceItem,
    require_argument,
    resolve_inside,
)
from medattack.data.sources.tables import TABLE_SUFFIXES, cell, read_table, require_columns, require_text
from medattack.errors import ConfigError, InputError, MissingDependencyError, SourceError

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("original_attribute", "unmatch_attribute", "normal_prompt", "harmful_prompt",
                    "policy", "key_phrases")


def first_key_phrase(value: Any) -> str:
    """3MAD stores key phrases as text, sometimes as a list literal ("['a', 'b']"): take the first."""
    if isinstance(value, list | tuple):
        return value[0].strip() if value and isinstance(value[0], str) else ""
    if value is not None and not isinstance(value, str):  # a number or a boolean is no key phrase
        return ""
    text = "" if value is None else value.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
        if isinstance(parsed, list | tuple):
            return str(parsed[0]).strip() if parsed else ""
    return text


# columns that must hold text (Parquet and JSON can hold numbers or booleans there); ids may be numbers,
# key_phrases a list
TEXT_COLUMNS = ("file_name", "original_attribute", "unmatch_attribute", "normal_prompt", "harmful_prompt",
                "policy")


@SOURCES.register("3mad")
class ThreeMADSource:
    """`--source 3mad:HUB_ID` or `--source 3mad:LOCAL_DIR`."""

    name = "3mad"

    def __init__(self, argument: str, context: SourceContext) -> None:
        self.argument = require_argument("3mad", argument, "3mad:MedMLLM-attack/3MAD-Tiny-1K")
        self.context = context

    def __iter__(self) -> Iterator[SourceItem | InputError]:
        local = Path(self.argument).expanduser()
        if local.exists():
            yield from self._iter_local(local)
        else:
            yield from self._iter_hub(self.argument)

    # -- where the rows come from ------------------------------------------------------------------

    def _wanted(self, split: str) -> bool:
        return self.context.splits is None or split in self.context.splits

    def _iter_local(self, root: Path) -> Iterator[SourceItem | InputError]:
        if not root.is_dir():
            yield SourceError(str(root), "a local 3MAD source must be a folder of split files.")
            return
        files = sorted(p for d in (root, root / "data") if d.is_dir() for p in d.iterdir()
                       if p.suffix.lower() in TABLE_SUFFIXES)
        if not files:
            yield SourceError(str(root), "no split files found.",
                              "put one <split>.parquet, .csv or .jsonl per category in the folder.")
            return
        for file in files:
            split = file.stem.split("-")[0]  # "CT_Chest-00000-of-00001" -> "CT_Chest"
            if not self._wanted(split):
                continue
            try:
                rows = read_table(file)
                require_columns(file, rows, [(c,) for c in REQUIRED_COLUMNS])
                require_columns(file, rows, [("image", "file_name")])
            except InputError as error:
                yield error
                continue
            yield from self._items(split, file, rows, image_root=root)

    def _iter_hub(self, hub_id: str) -> Iterator[SourceItem | InputError]:
        try:
            import datasets
        except ImportError as exc:
            raise MissingDependencyError(
                "reading 3MAD from the hub needs the 'datasets' package: pip install datasets"
            ) from exc
        try:
            dataset_dict = datasets.load_dataset(hub_id)
        except Exception as exc:  # network, auth, missing repo: all end here
            yield SourceError(
                hub_id, f"cannot load the dataset from the Hugging Face hub ({exc}).",
                "check the id, your network and HF_HUB_OFFLINE, or download it and pass the folder.",
            )
            return
        for split in sorted(dataset_dict):
            if not self._wanted(split):
                continue
            dataset = dataset_dict[split]
            if "image" in dataset.column_names:
                dataset = dataset.cast_column("image", datasets.Image(decode=False))
            yield from self._items(split, Path(f"{hub_id}[{split}]"), dataset, image_root=None)

    # -- rows to items -----------------------------------------------------------------------------

    def _items(
        self, split: str, file: Path, rows: Iterable[dict[str, Any]], image_root: Path | None
    ) -> Iterator[SourceItem | InputError]:
        for number, row in enumerate(rows, start=1):
            location = f"{file}:row {number}"
            try:
                yield self._item(split, row, location, image_root)
            except InputError as error:
                yield error

    def _item(
        self, split: str, row: dict[str, Any], location: str, image_root: Path | None
    ) -> SourceItem:
        require_text(row, TEXT_COLUMNS, location)
        taxonomy = self.context.taxonomy
        try:
            category = taxonomy.parse_attribute(cell(row, "original_attribute"))
            claimed = taxonomy.parse_attribute(cell(row, "unmatch_attribute"))
        except ConfigError as exc:
            raise SourceError(location, str(exc)) from None
        policy = cell(row, "policy")
        try:
            task = taxonomy.task(policy).name
        except ConfigError:
            task = policy  # kept as written: 3MAD may use task names this taxonomy does not know
        fields = {
            "normal_prompt": cell(row, "normal_prompt"),
            "harmful_prompt": cell(row, "harmful_prompt"),
            "policy": task,
        }
        key_phrases = row.get("key_phrases")
        if not (key_phrases is None or isinstance(key_phrases, str | list | tuple)
                or (isinstance(key_phrases, float) and key_phrases != key_phrases)):  # NaN: an empty cell
            raise SourceError(location, f"key_phrases must be text or a list of text, got {key_phrases!r}.",
                              "fix the row (an empty key phrase is allowed).")
        empty = [k for k, v in fields.items() if not v]
        if empty:
            raise SourceError(location, f"empty value(s) in {', '.join(empty)}.", "fill or drop the row.")
        row_id = cell(row, "id")
        file_name = cell(row, "file_name")
        item_id = f"{split}/{row_id or file_name or location}"
        image_bytes, path = self._image(row, file_name, location, image_root)
        return SourceItem(
            source=self.name,
            item_id=item_id,
            location=location,
            category=category,
            path=path,
            image_bytes=image_bytes,
            preset=PresetPair(
                prompt_id=f"3mad:{item_id}",
                task=task,
                normal_prompt=fields["normal_prompt"],
                harmful_prompt=fields["harmful_prompt"],
                key_phrase=first_key_phrase(key_phrases),
                claimed=claimed,
                true_text=cell(row, "original_attribute"),
                claimed_text=cell(row, "unmatch_attribute"),
                split=split,
            ),
        )

    @staticmethod
    def _image(
        row: dict[str, Any], file_name: str, location: str, image_root: Path | None
    ) -> tuple[bytes | None, Path | None]:
        image = row.get("image")
        if isinstance(image, dict) and image.get("bytes"):
            return bytes(image["bytes"]), None
        if isinstance(image, bytes | bytearray) and image:
            return bytes(image), None
        name = file_name or (image.get("path") if isinstance(image, dict) else "") or ""
        if image_root is None or not name:
            raise SourceError(location, "the row has no image bytes and no usable file_name.",
                              "keep the 'image' column or put the files next to the split files.")
        if Path(name).is_absolute() or "\x00" in name:
            raise SourceError(location, f"file_name {name!r} is not a relative path.",
                              "give file names relative to the split files' folder (or its images/).")
        for folder in (image_root, image_root / "images"):
            candidate = resolve_inside(image_root, (folder / name).relative_to(image_root).as_posix(),
                                       location)
            if candidate.exists():
                return None, candidate
        raise SourceError(location, f"image file {name!r} not found under {image_root} or its images/.",
                          "copy the images next to the split files.")
