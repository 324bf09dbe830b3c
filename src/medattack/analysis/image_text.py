"""Image-text relevance backends for the dataset analyses.

`proxy` (offline default): the image's known metadata (modality, body part, description, DICOM tags)
written as text and compared with the attribute text by a text embedder, as cosine similarity.
It is a proxy: it measures what the labels say, not what the pixels show, and every output that
uses it says so. Pixel-based backends (BiomedCLIP, CLIP via open_clip) register here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from medattack.registry import Registry
from medattack.scoring.backends.text_embedders import TextEmbedder, get_text_embedder


@dataclass(frozen=True)
class ImageInfo:
    """What an image-text backend may use about one image."""

    image_path: str  # absolute path of the stored PNG
    modality: str
    body_part: str
    description: str


class ImageTextRelevance(Protocol):
    name: str
    is_proxy: bool
    label: str  # e.g. "proxy: metadata text vs attribute (minilm cosine)"

    def score(self, images: Sequence[ImageInfo], texts: Sequence[str]) -> np.ndarray:
        """Relevance of images[i] to texts[i]: (N,) float."""
        ...


IMAGE_TEXT_BACKENDS: Registry[type] = Registry("image-text backend")


def metadata_text(info: ImageInfo) -> str:
    text = f"{info.modality} image of the {info.body_part}."
    return f"{text} {info.description}" if info.description else text


@IMAGE_TEXT_BACKENDS.register("proxy")
class MetadataProxy:
    """Cosine of text embeddings: metadata text of the image vs the given text."""

    name = "proxy"
    is_proxy = True

    def __init__(self, text_embedder: str = "minilm", embedder: TextEmbedder | None = None) -> None:
        self.embedder = embedder or get_text_embedder(text_embedder)
        self.label = f"proxy: image metadata text vs text ({self.embedder.name} cosine)"

    def score(self, images: Sequence[ImageInfo], texts: Sequence[str]) -> np.ndarray:
        left = self.embedder.embed([metadata_text(i) for i in images])  # (N, D)
        right = self.embedder.embed(list(texts))  # (N, D)
        return np.einsum("nd,nd->n", left, right)
