"""BGE-M3 (Chen et al., 2024, arXiv 2402.03216) with its three heads, on plain transformers.

FlagEmbedding does not import on transformers 5, so the heads are implemented here from the
checkpoint layout of `BAAI/bge-m3`: an XLM-RoBERTa encoder (`model.safetensors`), `colbert_linear.pt`
(hidden -> hidden) and `sparse_linear.pt` (hidden -> 1).

- dense: the normalised [CLS] state; score = dot product.
- sparse (lexical): relu(sparse_linear(h_t)) per token, max per token id, special tokens dropped;
  score = sum over shared token ids of w_left * w_right.
- colbert (multi-vector): normalised colbert_linear(h_t) for every token after [CLS]; score = mean
  over left tokens of the best dot product with a right token.

`pair_scores` fuses them as (w_dense * dense + w_sparse * sparse + w_colbert * colbert) / sum(w), the
paper's TTO with weights 0.4 / 0.2 / 0.4.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medattack.config import option
from medattack.scoring.backends.text_embedders import TEXT_EMBEDDERS


@dataclass(frozen=True)
class BGEM3Config:
    model: str = option("BAAI/bge-m3", "Hub id or local folder with the encoder and the two head files.")
    weights: tuple[float, float, float] = option((0.4, 0.2, 0.4), "Fusion weights: dense, sparse, colbert.")
    batch_size: int = option(32, "Texts per forward pass.")
    max_length: int = option(512, "Tokens per text; longer ones are truncated.")
    device: str = option("cpu", "torch device.")


@dataclass
class Encoded:
    dense: np.ndarray  # (N, D) unit rows
    sparse: list[dict[int, float]]  # per text: token id -> weight
    colbert: list[np.ndarray]  # per text: (T_i, D) unit rows


def _head_file(source: str, name: str) -> Path:
    local = Path(source) / name
    if local.exists():
        return local
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(source, name))


@TEXT_EMBEDDERS.register("bge-m3")
class BGEM3:
    name = "bge-m3"

    def __init__(self, config: BGEM3Config | None = None) -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.config = config or BGEM3Config()
        source = self.config.model
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.encoder = AutoModel.from_pretrained(source).to(self.config.device).eval()
        hidden = self.encoder.config.hidden_size
        self.colbert_linear = torch.nn.Linear(hidden, hidden).to(self.config.device)
        self.sparse_linear = torch.nn.Linear(hidden, 1).to(self.config.device)
        for head, file in ((self.colbert_linear, "colbert_linear.pt"), (self.sparse_linear, "sparse_linear.pt")):
            head.load_state_dict(torch.load(_head_file(source, file), map_location=self.config.device,
                                            weights_only=True))
            head.eval()
        self.special_ids = set(self.tokenizer.all_special_ids)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> Encoded:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding per batch
        dense = np.zeros((len(texts), self.encoder.config.hidden_size), dtype=np.float32)
        sparse: list[dict[int, float]] = [{} for _ in texts]
        colbert: list[np.ndarray] = [np.zeros((0, 0), dtype=np.float32) for _ in texts]
        for start in range(0, len(order), self.config.batch_size):
            index = order[start:start + self.config.batch_size]
            batch = self.tokenizer([texts[i] for i in index], padding=True, truncation=True,
                                   max_length=self.config.max_length, return_tensors="pt").to(self.config.device)
            hidden = self.encoder(**batch).last_hidden_state  # (B, T, D)
            mask = batch["attention_mask"]  # (B, T)
            cls = torch.nn.functional.normalize(hidden[:, 0], dim=-1)
            weights = torch.relu(self.sparse_linear(hidden)).squeeze(-1) * mask  # (B, T)
            vectors = torch.nn.functional.normalize(self.colbert_linear(hidden[:, 1:]), dim=-1)  # (B, T-1, D)
            for row, i in enumerate(index):
                dense[i] = cls[row].float().cpu().numpy()
                lexical: dict[int, float] = {}
                for token, weight in zip(batch["input_ids"][row].tolist(), weights[row].tolist(), strict=True):
                    if token not in self.special_ids and weight > lexical.get(token, 0.0):
                        lexical[token] = weight
                sparse[i] = lexical
                length = int(mask[row].sum()) - 1
                colbert[i] = vectors[row, :length].float().cpu().numpy()
        return Encoded(dense, sparse, colbert)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode(texts).dense

    def pair_parts(self, left: Sequence[str], right: Sequence[str]) -> dict[str, np.ndarray]:
        """Dense, sparse and colbert scores of each pair, (N,) each; distinct texts encoded once."""
        unique = list(dict.fromkeys([*left, *right]))
        position = {text: i for i, text in enumerate(unique)}
        encoded = self.encode(unique)
        a = [position[t] for t in left]
        b = [position[t] for t in right]
        dense = np.einsum("nd,nd->n", encoded.dense[a], encoded.dense[b])
        sparse = np.array([sum(w * encoded.sparse[j].get(t, 0.0) for t, w in encoded.sparse[i].items())
                           for i, j in zip(a, b, strict=True)], dtype=np.float32)
        colbert = np.array([
            float((encoded.colbert[i] @ encoded.colbert[j].T).max(axis=1).mean())
            if len(encoded.colbert[i]) and len(encoded.colbert[j]) else 0.0
            for i, j in zip(a, b, strict=True)
        ], dtype=np.float32)
        return {"dense": dense, "sparse": sparse, "colbert": colbert}

    def pair_scores(self, left: Sequence[str], right: Sequence[str]) -> np.ndarray:
        parts = self.pair_parts(left, right)
        w_dense, w_sparse, w_colbert = self.config.weights
        fused = w_dense * parts["dense"] + w_sparse * parts["sparse"] + w_colbert * parts["colbert"]
        return fused / (w_dense + w_sparse + w_colbert)
