"""Med-Flamingo (Moor et al., 2023; OpenFlamingo on LLaMA-7B) as a medattack target.

    medattack query runs/x --target python:examples/targets/med_flamingo.py:load --device cuda
    medattack query runs/x --target python:examples/targets/med_flamingo.py:load_stand_in   # offline dry run

Weights (fetch once): LLaMA-7B (v1) in transformers format, its folder in `LLAMA_7B_DIR`; the Med-Flamingo
checkpoint `model.pt` from the hub repository `med-flamingo/med-flamingo` (downloaded on first use, or put
its path in `MED_FLAMINGO_CKPT`); the CLIP ViT-L/14 (openai) vision encoder through open_clip. Packages:
`pip install open-flamingo einops` (open_flamingo brings open_clip and torchvision: keep it out of an
environment with PyPI's CPU torch). Memory: about 18 GB in bf16.

Usage as the authors publish it: open_flamingo's create_model_and_transforms with the ViT-L-14 (openai)
vision encoder, the LLaMA-7B language model and tokenizer and a cross-attention layer every 4 layers; the
checkpoint loaded non-strictly; images as a (batch, images, frames=1, 3, H, W) tensor after the model's
image processor; a prompt with one "<image>" per image and the question as "Question: ... Answer:";
greedy generation. Written from that description and not run here (no weights, no GPU): check it against
the authors' demo before trusting its answers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

# what `medattack query` names when this recipe fails to load
NEEDS = ("pip install open-flamingo einops (in an environment whose torch matches torchvision); LLAMA_7B_DIR: "
         "the LLaMA-7B folder in transformers format; MED_FLAMINGO_CKPT: the model.pt (else fetched from the hub)")

PREAMBLE = "You are a helpful medical assistant. Answer the question about the image. "


def load(device: str = "cuda", dtype: str = "auto") -> Any:
    import torch
    from huggingface_hub import hf_hub_download
    from open_flamingo import create_model_and_transforms

    llama = os.environ.get("LLAMA_7B_DIR", "llama-7b-hf")
    model, image_processor, tokenizer = create_model_and_transforms(
        clip_vision_encoder_path="ViT-L-14", clip_vision_encoder_pretrained="openai", lang_encoder_path=llama,
        tokenizer_path=llama, cross_attn_every_n_layers=4)
    checkpoint = os.environ.get("MED_FLAMINGO_CKPT") or hf_hub_download("med-flamingo/med-flamingo", "model.pt")
    model.load_state_dict(torch.load(checkpoint, map_location="cpu"), strict=False)
    dtype_ = torch.bfloat16 if dtype in ("auto", "bfloat16") and device.startswith("cuda") else torch.float32
    tokenizer.padding_side = "left"
    return MedFlamingo(model.to(device, dtype=dtype_).eval(), image_processor, tokenizer, device, dtype_)


class MedFlamingo:
    needs_image = True

    def __init__(self, model: Any, image_processor: Any, tokenizer: Any, device: str, dtype: Any) -> None:
        self.model, self.image_processor, self.tokenizer = model, image_processor, tokenizer
        self.device, self.dtype = device, dtype

    def generate(self, images: list[Any], questions: list[str], max_new_tokens: int) -> list[str]:
        import torch

        pixels = torch.stack([self.image_processor(image.convert("RGB")) for image in images])  # (B, 3, H, W)
        vision = pixels[:, None, None].to(self.device, self.dtype)  # (B, images=1, frames=1, 3, H, W)
        prompts = [f"{PREAMBLE}<image>Question: {question} Answer:" for question in questions]
        text = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.device)
        with torch.inference_mode():
            output = self.model.generate(vision_x=vision, lang_x=text["input_ids"],
                                         attention_mask=text["attention_mask"], max_new_tokens=max_new_tokens)
        new = output[:, text["input_ids"].shape[1]:]
        return [answer.strip() for answer in self.tokenizer.batch_decode(new, skip_special_tokens=True)]


def load_stand_in(device: str = "cpu", dtype: str = "auto") -> Any:
    """No weights: a deterministic stand-in that answers through the same interface (tests, dry runs)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _stand_in import StandIn

    return StandIn("Med-Flamingo stand-in")
