"""Image-text relevance backends (TIO, TII and the dataset analyses).

- `proxy` (offline default): the image's known metadata (modality, body part, description) written
  as text and compared with the other text by a text embedder (cosine). It measures what the labels
  say, not what the pixels show; every output that uses it says "proxy".
- `biomedclip`, `clip`: open_clip models (`pip install 'medattack[clip]'`), scored as
  logit_scale * cosine(image, text) as in the paper; each distinct image is encoded once per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from medattack.errors import MissingDependencyError
from medattack.registry import Registry
from medattack.scoring.backends.text_embedders import TextEmbedder, dense_pair_scores, get_text_embedder


@dataclass(frozen=True)
class ImageInfo:
    """What an image-text backend may use about one image."""

    image_path: str  # absolute path of the image file
    modality: str
    body_part: str
    description: str


class ImageTextRelevance(Protocol):
    name: str
    is_proxy: bool
    label: str  # e.g. "proxy: image metadata text vs text (minilm cosine)"

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
        return dense_pair_scores(self.embedder, [metadata_text(i) for i in images], list(texts))


class OpenClipRelevance:
    """logit_scale * cos(image, text) with an open_clip model."""

    is_proxy = False
    model_id = ""

    def __init__(self, text_embedder: str = "minilm", device: str = "cpu", batch_size: int = 64,
                 parts: tuple | None = None) -> None:
        """Load `model_id` with open_clip, or take (model, preprocess, tokenizer) with its API as given."""
        import torch

        if parts is None:
            try:
                import open_clip
            except ImportError as exc:
                raise MissingDependencyError(
                    f"the {self.name} backend needs open_clip: pip install 'medattack[clip]' "
                    "(it brings torchvision; keep it out of an environment with PyPI's CPU torch)."
                ) from exc
            model, preprocess = open_clip.create_model_from_pretrained(self.model_id)
            parts = (model, preprocess, open_clip.get_tokenizer(self.model_id))
        self.model, self.preprocess, self.tokenizer = parts
        self.model = self.model.to(device).eval()
        self.dtype = next((p.dtype for p in self.model.parameters()), torch.float32)
        self.device, self.batch_size = device, batch_size
        self.label = f"{self.name}: logit_scale * cosine ({self.model_id})"

    def score(self, images: Sequence[ImageInfo], texts: Sequence[str]) -> np.ndarray:
        import torch
        from PIL import Image

        paths = list(dict.fromkeys(i.image_path for i in images))
        unique_texts = list(dict.fromkeys(texts))
        with torch.inference_mode():
            image_vectors = []
            for start in range(0, len(paths), self.batch_size):
                batch = torch.stack([self.preprocess(Image.open(p).convert("RGB"))
                                     for p in paths[start:start + self.batch_size]]).to(self.device)
                batch = batch.to(self.dtype)
                image_vectors.append(torch.nn.functional.normalize(self.model.encode_image(batch), dim=-1))
            text_vectors = []
            for start in range(0, len(unique_texts), self.batch_size):
                tokens = self.tokenizer(unique_texts[start:start + self.batch_size]).to(self.device)
                text_vectors.append(torch.nn.functional.normalize(self.model.encode_text(tokens), dim=-1))
            image_matrix, text_matrix = torch.cat(image_vectors), torch.cat(text_vectors)
            scale = float(self.model.logit_scale.exp())
        image_row = {p: i for i, p in enumerate(paths)}
        text_row = {t: i for i, t in enumerate(unique_texts)}
        a = image_matrix[[image_row[i.image_path] for i in images]]
        b = text_matrix[[text_row[t] for t in texts]]
        return (scale * (a * b).sum(-1)).float().cpu().numpy()


@IMAGE_TEXT_BACKENDS.register("biomedclip")
class BiomedCLIP(OpenClipRelevance):
    name = "biomedclip"
    model_id = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"


@IMAGE_TEXT_BACKENDS.register("clip")
class OpenAICLIP(OpenClipRelevance):
    name = "clip"
    model_id = "hf-hub:timm/vit_base_patch16_clip_224.openai"
