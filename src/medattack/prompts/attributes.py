"""Step 1: read attributes off each image (colour, contrast, texture, lesion...).

Readers:
- `metadata` (offline default): only what is known without a model - the taxonomy labels, DICOM tags,
  the source's description, and measured pixel statistics (colour vs greyscale, brightness,
  contrast). Every answer is marked `origin: metadata`; nothing is guessed.
- `whitebox`: a LLaVA-family model through the attack engine's adapter (embedded, tiny, a hub id)
  asked each attribute question about the image.
- `hf`: any transformers image-text-to-text model by hub id or folder (SmolVLM, Qwen2.5-VL...).
- `api`: an OpenAI-compatible vision endpoint (the image sent as a data URL).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from medattack.config import NoOptions, option
from medattack.data.image_io import LoadedImage
from medattack.data.sources import SourceItem
from medattack.models.targets import ChatTarget, Query, TargetConfig, TargetError, load_target
from medattack.openai_client import APIConfig
from medattack.registry import Registry
from medattack.rundir import SqliteCache

DEFAULT_QUESTIONS: tuple[str, ...] = (
    "colour: Is this image in colour or greyscale?",
    "contrast: How would you describe the contrast of this image?",
    "brightness: How bright or dark is this image overall?",
    "texture: How would you describe the texture of the tissue in this image?",
    "lesion size: How large is the most prominent lesion or abnormality, if any?",
    "lesion location: Where in the image is the most prominent lesion or abnormality, if any?",
    "anatomical clarity: How clearly are the anatomical structures shown?",
)


@dataclass(frozen=True)
class Attribute:
    name: str
    question: str
    answer: str
    origin: str  # "metadata" or the reader's model name


class AttributeReader(Protocol):
    name: str

    def read(self, item: SourceItem, image: LoadedImage, questions: tuple[str, ...],
             image_hash: str | None = None) -> list[Attribute]: ...


ATTRIBUTE_READERS: Registry[type[AttributeReader]] = Registry("attribute reader", plugins="medattack.prompts")


def split_question(entry: str) -> tuple[str, str]:
    """"name: question" -> (name, question)."""
    name, _, question = entry.partition(":")
    return name.strip(), question.strip() or name.strip()


def pixel_attributes(pixels: np.ndarray) -> dict[str, str]:
    """Measured, not guessed: colour vs greyscale, brightness and contrast bands. pixels: (H, W, 3) uint8."""
    image = pixels.astype(np.float32)
    chroma = float(np.abs(image - image.mean(axis=-1, keepdims=True)).mean())
    grey = image.mean(axis=-1)
    mean, std = float(grey.mean()), float(grey.std())
    return {
        "colour": "colour" if chroma > 4.0 else "greyscale",
        "brightness": "dark" if mean < 85 else "bright" if mean > 170 else "medium",
        "contrast": "low" if std < 35 else "high" if std > 70 else "moderate",
    }


@ATTRIBUTE_READERS.register("metadata")
class MetadataReader:
    config_class = NoOptions
    name = "metadata"

    def __init__(self, **_: Any) -> None:
        pass

    def read(self, item: SourceItem, image: LoadedImage, questions: tuple[str, ...],
             image_hash: str | None = None) -> list[Attribute]:
        measured = pixel_attributes(image.pixels)
        out = []
        for entry in questions:
            name, question = split_question(entry)
            if name in measured:
                out.append(Attribute(name, question, measured[name], "metadata"))
        if item.description:
            out.append(Attribute("description", "What does the image show?", item.description, "metadata"))
        for tag in ("StudyDescription", "SeriesDescription"):
            if image.metadata.get(tag):
                out.append(Attribute(tag, f"DICOM {tag}", image.metadata[tag], "metadata"))
        return out


class ModelReader:
    """Shared by the readers that ask a model (a black-box target, models/targets.py): one question at
    a time, answers cached by content hash (reader, image pixels, question) in the step's calls.sqlite,
    blank answers and failed requests dropped."""

    name = ""
    suffix = " Answer in a few words."
    cache: SqliteCache = SqliteCache(None)
    target: ChatTarget

    def ask(self, image: np.ndarray, question: str) -> str:
        answer = self.target.answer([Query("attribute", question, image)])[0]
        return "" if isinstance(answer, TargetError) else answer

    def read(self, item: SourceItem, image: LoadedImage, questions: tuple[str, ...],
             image_hash: str | None = None) -> list[Attribute]:
        """`image_hash` is the pixel hash when the caller has it already (computed here otherwise)."""
        from medattack.data.expand import pixel_hash

        image_hash = image_hash or pixel_hash(image.pixels)
        out = []
        for entry in questions:
            name, question = split_question(entry)
            key = SqliteCache.key(self.name, image_hash, question)
            answer = self.cache.get(key)
            if answer is None:
                answer = " ".join(self.ask(image.pixels, question + self.suffix).split())
                self.cache.put(key, answer)
            if answer:
                out.append(Attribute(name, question, answer, self.name))
        return out


@dataclass(frozen=True)
class WhiteboxReaderConfig:
    model: str = option("embedded", "embedded | tiny | hub id or path of a LLaVA-family model.")
    max_new_tokens: int = option(24, "Tokens per answer.")


@ATTRIBUTE_READERS.register("whitebox")
class WhiteboxReader(ModelReader):
    """Ask a LLaVA-family model through the attack engine's adapter."""
    config_class = WhiteboxReaderConfig

    def __init__(self, config: WhiteboxReaderConfig | None = None, cache_path: Path | None = None, **_: Any) -> None:
        self.cache = SqliteCache(cache_path)
        self.config = config or WhiteboxReaderConfig()
        self.target = load_target(TargetConfig("llava", self.config.model, self.config.max_new_tokens))
        self.name = f"whitebox:{self.target.name}"


@dataclass(frozen=True)
class HFReaderConfig:
    model: str = option("HuggingFaceTB/SmolVLM-256M-Instruct", "Hub id or folder of an image-text-to-text model.")
    max_new_tokens: int = option(24, "Tokens per answer.")
    device: str = option("cpu", "torch device.")
    trust_remote_code: bool = option(False, "Allow the model's own code (only for models you trust).")


@ATTRIBUTE_READERS.register("hf")
class HFReader(ModelReader):
    """Any transformers image-text-to-text model (SmolVLM, Qwen2.5-VL, LLaVA...) with its processor."""
    config_class = HFReaderConfig

    def __init__(self, config: HFReaderConfig | None = None, cache_path: Path | None = None, **_: Any) -> None:
        self.cache = SqliteCache(cache_path)
        self.config = config or HFReaderConfig()
        self.target = load_target(TargetConfig("hf", self.config.model, self.config.max_new_tokens,
                                               device=self.config.device,
                                               trust_remote_code=self.config.trust_remote_code))
        self.name = self.target.name


@dataclass(frozen=True)
class APIReaderConfig:
    model: str = option("gpt-4o-mini", "Vision chat model at the endpoint.")
    api: APIConfig = option(APIConfig(), "Endpoint, key variable, retries, rate limit, concurrency.")


@ATTRIBUTE_READERS.register("api")
class APIReader(ModelReader):
    """An OpenAI-compatible vision endpoint."""
    config_class = APIReaderConfig

    def __init__(self, config: APIReaderConfig | None = None, cache_path: Path | None = None, **_: Any) -> None:
        self.cache = SqliteCache(cache_path)
        self.config = config or APIReaderConfig()
        self.target = load_target(TargetConfig("api", self.config.model, 60, api=self.config.api))
        self.name = self.target.name


def read_attributes(items: list[SourceItem], reader: AttributeReader, questions: tuple[str, ...],
                    max_pixels: int) -> Iterator[dict[str, Any] | Exception]:
    """One record per image (or the InputError of an image that could not be read)."""
    from medattack.data.expand import pixel_hash
    from medattack.errors import InputError

    for item in items:
        try:
            image = item.load(max_pixels)
        except InputError as error:
            yield error
            continue
        image_hash = pixel_hash(image.pixels)
        yield {
            "source": item.source, "item_id": item.item_id, "category": item.category.split_name,
            "modality": item.category.modality, "body_part": item.category.body_part,
            "image_sha256": image_hash, "reader": reader.name,
            "attributes": [vars(a) for a in reader.read(item, image, questions, image_hash)],
        }
