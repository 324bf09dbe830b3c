"""Image-text relevance backends (TIO, TII and the dataset analyses).

- `proxy` (offline default): the image's known metadata (modality, body part, description) written
  as text and compared with the other text by a text embedder (cosine). It measures what the labels
  say, not what the pixels show; every output that uses it says "proxy".
- `biomedclip`, `clip`: open_clip models (`pip install 'medattack[clip]'`), scored as
  logit_scale * cosine(image, text) as in the paper; each distinct image and text is encoded once
  and kept for the other metrics, batches and targets (up to a memory budget).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from medattack.errors import ConfigError, MissingDependencyError
from medattack.models.loading import hub_errors
from medattack.registry import Registry
from medattack.scoring.backends.memo import EncodingMemo
from medattack.scoring.backends.text_embedders import (
    TextEmbedder,
    dense_pair_scores,
    embedder_options,
    get_text_embedder,
)

if TYPE_CHECKING:
    import torch


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
    label: str  # e.g. "proxy: image metadata text vs text (minilm cosine: <model id>)"

    def score(self, images: Sequence[ImageInfo], texts: Sequence[str]) -> np.ndarray:
        """Relevance of images[i] to texts[i]: (N,) float."""
        ...


IMAGE_TEXT_BACKENDS: Registry[type[ImageTextRelevance]] = Registry(
    "image-text backend", plugins="medattack.scoring.backends")


def metadata_text(info: ImageInfo) -> str:
    text = f"{info.modality} image of the {info.body_part}."
    return f"{text} {info.description}" if info.description else text


@IMAGE_TEXT_BACKENDS.register("proxy")
class MetadataProxy:
    """Cosine of text embeddings: metadata text of the image vs the given text."""

    name = "proxy"
    is_proxy = True

    def __init__(self, text_embedder: str = "minilm", device: str = "cpu", text_model: str | None = None,
                 memo_mib: float | None = None, embedder: TextEmbedder | None = None, model: str | None = None) -> None:
        """`model` is not used: the proxy reads no pixels."""
        self.embedder = embedder or get_text_embedder(text_embedder, **embedder_options(device, text_model, memo_mib))
        self.label = f"proxy: image metadata text vs text ({self.embedder.name} cosine: {self.embedder.model_id})"

    def score(self, images: Sequence[ImageInfo], texts: Sequence[str]) -> np.ndarray:
        return dense_pair_scores(self.embedder, [metadata_text(i) for i in images], list(texts))


class OpenClipRelevance:
    """logit_scale * cos(image, text) with an open_clip model."""

    is_proxy = False
    model_id = ""

    def __init__(self, text_embedder: str = "minilm", device: str = "cpu", text_model: str | None = None,
                 memo_mib: float | None = None, batch_size: int = 64, parts: tuple | None = None,
                 model: str | None = None) -> None:
        """Load `model` (an open_clip name such as hf-hub:org/repo, or a local folder holding
        open_clip_config.json and the weights; None: the class's `model_id`) with open_clip, or take
        (model, preprocess, tokenizer) with its API as given. Image and text encodings are kept for reuse up
        to `memo_mib` MiB each (None: 256; 0 keeps none). `text_embedder` and `text_model` are not used:
        the model has its own text tower."""
        import torch

        self.model_id = open_clip_name(model) if model else self.model_id

        if parts is None:
            try:
                import open_clip
            except ImportError as exc:
                raise MissingDependencyError(
                    f"the {self.name} backend needs open_clip: pip install 'medattack[clip]' "
                    "(it brings torchvision; keep it out of an environment with PyPI's CPU torch)."
                ) from exc
            with hub_errors(self.model_id):
                model, preprocess = open_clip.create_model_from_pretrained(self.model_id)
            parts = (model, preprocess, open_clip.get_tokenizer(self.model_id))
        self.model, self.preprocess, self.tokenizer = parts
        self.model = self.model.to(device).eval()
        self.dtype = next((p.dtype for p in self.model.parameters()), torch.float32)
        self.device, self.batch_size = device, batch_size
        self.logit_scale = float(self.model.logit_scale.exp())
        budget = 256.0 if memo_mib is None else memo_mib
        self.image_memo: EncodingMemo[tuple[str, int, int], torch.Tensor] = EncodingMemo(budget)
        self.text_memo: EncodingMemo[str, torch.Tensor] = EncodingMemo(budget)
        self.label = f"{self.name}: logit_scale * cosine ({self.model_id})"

    def score(self, images: Sequence[ImageInfo], texts: Sequence[str]) -> np.ndarray:
        import torch

        keys = {path: _file_key(path) for path in dict.fromkeys(i.image_path for i in images)}  # one stat a file
        image_vectors = torch.stack(self.image_memo.encode([keys[i.image_path] for i in images],
                                                           self._encode_images))  # (N, D)
        text_vectors = torch.stack(self.text_memo.encode(list(texts), self._encode_texts))  # (N, D)
        return (self.logit_scale * (image_vectors * text_vectors).sum(-1)).numpy()

    def _encode_images(self, keys: Sequence[tuple[str, int, int]]) -> list[torch.Tensor]:
        """Unit (D,) float32 rows on the CPU, one per image file, in batches."""
        import torch
        from PIL import Image

        out: list[torch.Tensor] = []
        with torch.inference_mode():
            for start in range(0, len(keys), self.batch_size):
                batch = torch.stack([self.preprocess(Image.open(path).convert("RGB"))
                                     for path, _, _ in keys[start:start + self.batch_size]])
                vectors = self.model.encode_image(batch.to(self.device, self.dtype))
                out.extend(torch.nn.functional.normalize(vectors, dim=-1).float().cpu())
        return [row.clone() for row in out]

    def _encode_texts(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """Unit (D,) float32 rows on the CPU, one per text, in batches."""
        import torch

        out: list[torch.Tensor] = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                tokens = self.tokenizer(list(texts[start:start + self.batch_size])).to(self.device)
                vectors = self.model.encode_text(tokens)
                out.extend(torch.nn.functional.normalize(vectors, dim=-1).float().cpu())
        return [row.clone() for row in out]


def open_clip_name(model: str) -> str:
    """open_clip's name for a model setting: a folder on disk becomes `local-dir:FOLDER` (air-gapped
    machines: the hub repo downloaded beforehand), anything else (hf-hub:org/repo, a built-in name) is kept.
    A folder without open_clip_config.json fails here, naming what it needs."""
    folder = Path(model).expanduser()
    if model.startswith(("hf-hub:", "local-dir:")) or not folder.exists():
        return model
    if not (folder / "open_clip_config.json").is_file():
        raise ConfigError(f"{folder} has no open_clip_config.json: point image_text_model at the folder of the "
                          "downloaded hub repo (huggingface-cli download microsoft/BiomedCLIP-PubMedBERT_256-"
                          "vit_base_patch16_224 --local-dir FOLDER).")
    return f"local-dir:{folder.resolve()}"


def _file_key(path: str) -> tuple[str, int, int]:
    """An image file as memo key: a file rewritten in place is encoded again."""
    stat = Path(path).stat()
    return path, stat.st_mtime_ns, stat.st_size


@IMAGE_TEXT_BACKENDS.register("biomedclip")
class BiomedCLIP(OpenClipRelevance):
    """BiomedCLIP through open_clip (the `clip` extra): logit_scale x cosine of image and text."""

    name = "biomedclip"
    model_id = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"


@IMAGE_TEXT_BACKENDS.register("clip")
class OpenAICLIP(OpenClipRelevance):
    """OpenAI CLIP through open_clip (the `clip` extra): logit_scale x cosine of image and text."""

    name = "clip"
    model_id = "hf-hub:timm/vit_base_patch16_clip_224.openai"
