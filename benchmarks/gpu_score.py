"""GPU benchmark of batched scoring: BiomedCLIP-shaped TIO and BGE-M3-shaped TTO (random weights).

    python3 benchmarks/gpu_score.py --tokenizer DIR [--device cuda] [--shape full|small]

- BiomedCLIP-shaped: ViT-B/16 at 224 px and a 12-layer 768-wide text tower (transformers CLIPModel),
  scored through medattack's OpenClipRelevance (each distinct image and text encoded once).
- BGE-M3-shaped: XLM-RoBERTa-large shape (24 layers, 1024 wide) with the colbert and sparse heads,
  through medattack's BGEM3 at 128 tokens per text.
Both are compared with one pair at a time through the same code, in the same process. The tokenizer
is the embedded MiniLM one (vocab 30522; BGE-M3 has 250002, which changes only the embedding table).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medattack.scoring.backends.bge_m3 import BGEM3, BGEM3Config
from medattack.scoring.backends.image_text import BiomedCLIP, ImageInfo
from medattack.scoring.backends.memo import EncodingMemo

MEAN, STD = (0.481, 0.458, 0.408), (0.269, 0.261, 0.276)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class ClipShim(torch.nn.Module):
    """open_clip's model API (encode_image, encode_text, logit_scale) over a transformers CLIPModel."""

    def __init__(self, model) -> None:
        super().__init__()
        self.inner = model
        self.logit_scale = model.logit_scale

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.inner.visual_projection(self.inner.vision_model(pixel_values=pixels).pooler_output)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.inner.text_projection(self.inner.text_model(input_ids=tokens).pooler_output)


def words(rng: random.Random, tokenizer, n_tokens: int) -> str:
    vocab = [w for w in tokenizer.get_vocab() if w.isalpha() and len(w) > 3]
    return " ".join(rng.choice(vocab) for _ in range(n_tokens))


def rate(fn, n: int, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return n / (time.perf_counter() - start)


def batched_vs_loop(score, left: list, right: list, device: str, set_memo_mib) -> tuple[float, float]:
    """pairs/s of `score(left, right)` on all pairs at once starting from an empty memo, and one pair
    per call on the first 64 with no memo (each call encodes both sides, as the original loop did)."""
    score(left[:8], right[:8])  # warm-up
    set_memo_mib(4096)  # empty, large enough to keep everything of the batched call
    batched = rate(lambda: score(left, right), len(left), device)
    set_memo_mib(0)
    n = min(64, len(left))
    single = rate(lambda: [score([a], [b]) for a, b in zip(left[:n], right[:n], strict=True)], n, device)
    return batched, single


def clip_benchmark(args, tokenizer, dtype) -> None:
    from transformers import CLIPConfig, CLIPModel

    width, layers = (768, 12) if args.shape == "full" else (64, 2)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width,
                         num_hidden_layers=layers, num_attention_heads=max(1, width // 64),
                         max_position_embeddings=256, eos_token_id=tokenizer.sep_token_id,
                         bos_token_id=tokenizer.cls_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                           num_attention_heads=max(1, width // 64), image_size=224, patch_size=16),
        projection_dim=512)
    torch.manual_seed(0)
    model = ClipShim(CLIPModel(config)).to(args.device, dtype)

    def preprocess(image: Image.Image) -> torch.Tensor:
        array = np.asarray(image.resize((224, 224), Image.Resampling.BICUBIC), dtype=np.float32) / 255
        return ((torch.from_numpy(array) - torch.tensor(MEAN)) / torch.tensor(STD)).permute(2, 0, 1)

    def tokenize(texts):
        return tokenizer(texts, padding="max_length", truncation=True, max_length=args.tokens,
                         return_tensors="pt")["input_ids"]

    scorer = BiomedCLIP(device=args.device, batch_size=256, parts=(model, preprocess, tokenize))
    rng = random.Random(0)
    folder = Path(tempfile.mkdtemp())
    images = []
    for i in range(args.images):
        path = folder / f"{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(path)
        images.append(ImageInfo(str(path), "CT", "Chest", ""))
    per_image = args.pairs // args.images  # responses per image (conditions x targets)
    infos = [info for info in images for _ in range(per_image)]
    texts = [words(rng, tokenizer, args.tokens) for _ in infos]

    def set_memo_mib(mib: float) -> None:
        scorer.image_memo, scorer.text_memo = EncodingMemo(mib), EncodingMemo(mib)

    batched, single = batched_vs_loop(scorer.score, infos, texts, args.device, set_memo_mib)
    print(f"[clip] BiomedCLIP-shaped ({args.shape}), {len(infos)} pairs = {args.images} images x {per_image} "
          f"texts of {args.tokens} tokens: batched {batched:.0f} pairs/s, one at a time {single:.0f} pairs/s, "
          f"ratio {batched / single:.1f}x (target >= 2000 pairs/s)", flush=True)


def m3_benchmark(args, tokenizer, dtype) -> None:
    from transformers import XLMRobertaConfig, XLMRobertaModel

    width, layers = (1024, 24) if args.shape == "full" else (64, 2)
    config = XLMRobertaConfig(vocab_size=len(tokenizer), hidden_size=width, num_hidden_layers=layers,
                              num_attention_heads=max(1, width // 64), intermediate_size=4 * width,
                              max_position_embeddings=8194, pad_token_id=tokenizer.pad_token_id)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    encoder = XLMRobertaModel(config).to(args.device, dtype).eval()
    heads = (torch.nn.Linear(width, width).to(args.device, dtype), torch.nn.Linear(width, 1).to(args.device, dtype))
    m3 = BGEM3(BGEM3Config(model="random", device=args.device, batch_size=256, max_length=args.tokens),
               modules=(tokenizer, encoder, *heads))
    rng = random.Random(1)
    questions = [words(rng, tokenizer, args.tokens) for _ in range(args.pairs // 4)]
    left = [q for q in questions for _ in range(4)]  # each question answered by 4 targets
    right = [words(rng, tokenizer, args.tokens) for _ in left]

    def set_memo_mib(mib: float) -> None:
        m3.memo = EncodingMemo(mib)

    batched, single = batched_vs_loop(m3.pair_scores, left, right, args.device, set_memo_mib)
    print(f"[bge-m3] BGE-M3-shaped ({args.shape}), {len(left)} pairs at {args.tokens} tokens (colbert+sparse+dense): "
          f"batched {batched:.0f} pairs/s, one at a time {single:.0f} pairs/s, ratio {batched / single:.1f}x "
          f"(target >= 1000 pairs/s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", required=True, help="folder of the MiniLM (BERT) tokenizer")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shape", choices=("full", "small"), default="full")
    parser.add_argument("--pairs", type=int, default=4096)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    print(f"[env] {torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'} | torch {torch.__version__} "
          f"| dtype {dtype}", flush=True)
    with torch.inference_mode():
        clip_benchmark(args, tokenizer, dtype)
        m3_benchmark(args, tokenizer, dtype)


if __name__ == "__main__":
    sys.exit(main())
