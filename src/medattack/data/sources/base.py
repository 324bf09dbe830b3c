"""What every image source yields, the registry of sources, and the path guard they share.

A source turns some input (the embedded corpus, a folder, a manifest, a 3MAD dataset) into
`SourceItem`s. Bad entries are yielded as `InputError`s instead of raised, so the builder records
them and carries on with the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from medattack.data.image_io import DEFAULT_MAX_PIXELS, LoadedImage, load_image
from medattack.data.taxonomy import Category, Taxonomy, printable
from medattack.errors import ConfigError, InputError, PathEscapeError
from medattack.registry import Registry

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".dic"})


@dataclass(frozen=True)
class PresetPair:
    """A prompt pair that a source provides itself (3MAD rows); the builder uses it as it is: the texts
    the model sees are the row's own (`true_text`, `claimed_text`, prompts, key phrase), the parsed
    categories only annotate the samples for grouping."""

    prompt_id: str
    task: str
    normal_prompt: str
    harmful_prompt: str
    key_phrase: str  # may be empty (3MAD keeps such rows; the target is then "Sure, here is how to ")
    claimed: Category
    true_text: str = ""  # the true attribute as written ("Xray and Chest"); "" = the category's own
    claimed_text: str = ""  # the claimed attribute as written
    split: str = ""  # the source's split name ("Xray_Chest"); "" = the category's split name


@dataclass(frozen=True)
class SourceItem:
    """One image with its labels, as a source describes it (nothing decoded yet)."""

    source: str  # registry name of the source, e.g. "folder"
    item_id: str  # stable id within the source
    location: str  # what error messages name: a path, or "manifest.csv:12"
    category: Category  # true modality and body part
    path: Path | None = None
    image_bytes: bytes | None = None
    description: str = ""
    mask_path: Path | None = None
    bbox: tuple[int, int, int, int] | None = None  # (x0, y0, x1, y1) in pixels, x1/y1 exclusive
    preset: PresetPair | None = None

    def __post_init__(self) -> None:
        # a file name that is not valid UTF-8 reaches Python with surrogate escapes, which cannot be written
        # to JSON or hashed as UTF-8: the text fields show them as U+FFFD (the path itself is kept as it is)
        for name in ("item_id", "location", "description"):
            object.__setattr__(self, name, printable(getattr(self, name)))

    def load(self, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
        if self.image_bytes is not None:
            return load_image(self.image_bytes, name=self.location, max_pixels=max_pixels)
        if self.path is None:
            raise InputError(self.location, "the entry has neither an image file nor image bytes.")
        return load_image(self.path, name=self.location, max_pixels=max_pixels)


@dataclass(frozen=True)
class SourceContext:
    """Options shared by all sources."""

    taxonomy: Taxonomy
    data_root: Path | None = None  # manifests: paths must stay inside it (default: the file's folder)
    splits: tuple[str, ...] | None = None  # 3MAD: which splits (categories) to read; None = all


class Source(Protocol):
    name: str

    def __iter__(self) -> Iterator[SourceItem | InputError]: ...


SOURCES: Registry[type[Source]] = Registry("source", plugins="medattack.data.sources")


def open_source(spec: str, context: SourceContext) -> Source:
    """Open a source from a spec "KIND" or "KIND:ARGUMENT" (e.g. "folder:/data/images")."""
    kind, _, argument = spec.partition(":")
    cls = SOURCES[kind.strip()]
    return cls(argument.strip(), context)


def resolve_inside(root: Path, relative: str, location: str) -> Path:
    """Resolve `relative` against `root`, refusing anything that ends up outside `root`.

    Symlinks are followed before the check, so a link pointing out of the root is refused too.
    """
    if not relative.strip():
        raise InputError(location, "the path is empty.", "fill in the path column.")
    if "\x00" in relative:
        raise InputError(location, "the path holds a NUL byte.", "fix the path column.")
    root = root.resolve()
    try:
        candidate = (root / relative).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, an unusable name
        raise InputError(location, f"path {relative!r} cannot be resolved ({exc}).", "fix the path.") from None
    if not candidate.is_relative_to(root):
        raise PathEscapeError(
            location,
            f"path {relative!r} resolves to {candidate}, outside the data root {root}.",
            "move the file under the data root, or set data_root to a folder that contains it.",
        )
    return candidate


def require_argument(kind: str, argument: str, example: str) -> str:
    if not argument:
        raise ConfigError(f"source {kind!r} needs an argument, e.g. --source {example}")
    return argument
