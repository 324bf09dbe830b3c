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
from medattack.errors import ModelNotFoundError
from medattack.scoring.backends.memo import EncodingMemo
from medattack.scoring.backends.text_embedders import TEXT_EMBEDDERS


@dataclass(frozen=True)
class BGEM3Config:
    model: str = option("BAAI/bge-m3", "Hub id or local folder with the encoder and the two head files.")
    weights: tuple[float, float, float] = option((0.4, 0.2, 0.4), "Fusion weights: dense, sparse, colbert.")
    batch_size: int = option(32, "Texts per forward pass.")
    max_length: int = option(512, "Tokens per text; longer ones are truncated.")
    device: str = option("cpu", "torch device.")
    memo_mib: float = option(512.0, "Encodings kept in memory for reuse across metrics, batches and targets "
                             "(MiB); 0 keeps none.")


EncodedText = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""One text, unpadded: dense (D,), token ids (t,), lexical weights (t,), colbert rows (t - 1, D)."""


@dataclass
class Encoded:
    """Padded, on the model's device. T = longest text of the call (after truncation)."""

    dense: torch.Tensor  # (N, D) unit rows
    token_ids: torch.Tensor  # (N, T) long
    lexical: torch.Tensor  # (N, T) weight of each distinct non-special token at its first position, else 0
    colbert: torch.Tensor  # (N, T - 1, D) unit rows for the tokens after [CLS], zero where padded
    colbert_mask: torch.Tensor  # (N, T - 1) bool


def _head_file(source: str, name: str) -> Path:
    local = Path(source) / name
    if local.exists():
        return local
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(source, name))


@TEXT_EMBEDDERS.register("bge-m3")
class BGEM3:
    """BAAI/bge-m3: dense + sparse + colbert relevance fused 0.4 / 0.2 / 0.4 (the paper's TTO)."""

    name = "bge-m3"
    config_class = BGEM3Config

    def __init__(self, config: BGEM3Config | None = None, modules: tuple | None = None) -> None:
        """Load `config.model`, or take (tokenizer, encoder, colbert_linear, sparse_linear) as given."""
        self.config = config or BGEM3Config()
        self.model_id = self.config.model
        if modules is None:
            try:
                modules = self._load(self.config.model, self.config.device)
            except OSError as exc:
                raise ModelNotFoundError(
                    f"BGE-M3 weights not found for {self.config.model!r} (offline, or no such folder): "
                    f"{str(exc).splitlines()[0]} Download BAAI/bge-m3 on a connected machine and pass the "
                    "folder with --set text_model=/path/to/bge-m3 (score config key `text_model`).") from None
        self.tokenizer, self.encoder, self.colbert_linear, self.sparse_linear = modules
        self.tokenizer.padding_side = "right"  # [CLS] at position 0 and each text's tokens first
        self.special_ids = torch.tensor(sorted(self.tokenizer.all_special_ids), device=self.config.device)
        self.memo: EncodingMemo[str, EncodedText] = EncodingMemo(self.config.memo_mib)

    @staticmethod
    def _load(source: str, device: str) -> tuple:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        tokenizer = AutoTokenizer.from_pretrained(source)
        encoder = AutoModel.from_pretrained(source).to(device).eval()
        hidden = encoder.config.hidden_size
        colbert_linear, sparse_linear = torch.nn.Linear(hidden, hidden), torch.nn.Linear(hidden, 1)
        for head, file in ((colbert_linear, "colbert_linear.pt"), (sparse_linear, "sparse_linear.pt")):
            head.load_state_dict(torch.load(_head_file(source, file), map_location="cpu", weights_only=True))
        return tokenizer, encoder, colbert_linear.to(device).eval(), sparse_linear.to(device).eval()

    def encode(self, texts: Sequence[str]) -> Encoded:
        """Encode texts (each distinct one once, reusing the memo); padded tensors in input order."""
        rows = self.memo.encode(texts, self._encode_rows)
        width = max(len(row[1]) for row in rows)
        n, hidden_size, device = len(texts), self.encoder.config.hidden_size, self.config.device
        out = Encoded(
            dense=torch.zeros((n, hidden_size), device=device),
            token_ids=torch.full((n, width), -1, dtype=torch.long, device=device),
            lexical=torch.zeros((n, width), device=device),
            colbert=torch.zeros((n, width - 1, hidden_size), device=device),
            colbert_mask=torch.zeros((n, width - 1), dtype=torch.bool, device=device),
        )
        for k, (dense, ids, lexical, colbert) in enumerate(rows):
            t = len(ids)
            out.dense[k] = dense
            out.token_ids[k, :t] = ids
            out.lexical[k, :t] = lexical
            out.colbert[k, : t - 1] = colbert
            out.colbert_mask[k, : t - 1] = True
        return out

    @torch.inference_mode()
    def _encode_rows(self, texts: Sequence[str]) -> list[EncodedText]:
        """Encode texts in length-sorted batches; one unpadded row per text, in input order."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding per batch
        rows: list[EncodedText | None] = [None] * len(texts)
        for start in range(0, len(order), self.config.batch_size):
            index = order[start:start + self.config.batch_size]
            batch = self.tokenizer([texts[i] for i in index], padding=True, truncation=True,
                                   max_length=self.config.max_length, return_tensors="pt").to(self.config.device)
            hidden = self.encoder(**batch).last_hidden_state  # (B, T, D)
            ids, mask = batch["input_ids"], batch["attention_mask"].bool()  # (B, T)
            dense = torch.nn.functional.normalize(hidden[:, 0], dim=-1).float()
            weights = torch.relu(self.sparse_linear(hidden)).squeeze(-1)  # (B, T)
            valid = mask & ~torch.isin(ids, self.special_ids)
            same = (ids[:, :, None] == ids[:, None, :]) & valid[:, :, None] & valid[:, None, :]  # (B, T, T)
            best = (weights[:, None, :] * same).amax(dim=-1)  # max weight over positions of the same id
            position = torch.arange(ids.shape[1], device=ids.device)
            first = ~(same & (position[None, :, None] > position[None, None, :])).any(dim=-1)
            lexical = torch.where(valid & first, best, torch.zeros_like(best)).float()
            colbert = torch.nn.functional.normalize(self.colbert_linear(hidden[:, 1:]), dim=-1).float()
            for b, i in enumerate(index):
                t = int(mask[b].sum())
                rows[i] = (dense[b].clone(), ids[b, :t].clone(), lexical[b, :t].clone(), colbert[b, : t - 1].clone())
        return rows  # type: ignore[return-value]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode(texts).dense.cpu().numpy()

    @torch.inference_mode()
    def pair_parts(self, left: Sequence[str], right: Sequence[str], chunk: int = 256) -> dict[str, np.ndarray]:
        """Dense, sparse and colbert scores of each pair, (N,) each; distinct texts encoded once, and the
        pair scores computed in batched tensor operations on the model's device."""
        unique = list(dict.fromkeys([*left, *right]))
        position = {text: i for i, text in enumerate(unique)}
        encoded = self.encode(unique)
        a_all = torch.tensor([position[t] for t in left], device=self.config.device)
        b_all = torch.tensor([position[t] for t in right], device=self.config.device)
        out: dict[str, list[torch.Tensor]] = {"dense": [], "sparse": [], "colbert": []}
        for start in range(0, len(left), chunk):
            a, b = a_all[start:start + chunk], b_all[start:start + chunk]
            out["dense"].append((encoded.dense[a] * encoded.dense[b]).sum(-1))
            match = encoded.token_ids[a][:, :, None] == encoded.token_ids[b][:, None, :]  # (P, T, T)
            pair_weights = encoded.lexical[a][:, :, None] * encoded.lexical[b][:, None, :]
            out["sparse"].append((pair_weights * match).sum(dim=(1, 2)))
            similarity = torch.einsum("ptd,psd->pts", encoded.colbert[a], encoded.colbert[b])
            similarity = similarity.masked_fill(~encoded.colbert_mask[b][:, None, :], float("-inf"))
            best = similarity.amax(dim=-1).masked_fill(~encoded.colbert_mask[a], 0.0)  # (P, T)
            count = encoded.colbert_mask[a].sum(-1).clamp(min=1)
            out["colbert"].append(best.sum(-1) / count)
        return {name: torch.cat(values).float().cpu().numpy() for name, values in out.items()}

    def pair_scores(self, left: Sequence[str], right: Sequence[str]) -> np.ndarray:
        parts = self.pair_parts(left, right)
        w_dense, w_sparse, w_colbert = self.config.weights
        fused = w_dense * parts["dense"] + w_sparse * parts["sparse"] + w_colbert * parts["colbert"]
        return fused / (w_dense + w_sparse + w_colbert)
