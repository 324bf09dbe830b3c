"""RadFM (Wu et al., "Towards Generalist Foundation Model for Radiology") as a medattack target.

    medattack query runs/x --target python:examples/targets/radfm.py:load --device cuda
    medattack query runs/x --target python:examples/targets/radfm.py:load_stand_in   # offline dry run

Weights and code (fetch once): the RadFM repository (github.com/chaoyi-wu/RadFM), whose `Quick_demo`
folder holds `Model/RadFM/` and `Language_files/` (the LLaMA-13B tokenizer and config); the checkpoint
`pytorch_model.bin` from the authors' release, put in `Quick_demo/`. Packages: torch, torchvision,
transformers, einops and the repository's requirements. Point `RADFM_DIR` at the `Quick_demo` folder.
Memory: a 13B language model plus a 3D vision encoder, about 30 GB in bf16.

Usage as the authors publish it: MultiLLaMAForCausalLM(lang_model_path=Language_files) with the
checkpoint's state dict; a LLaMA tokenizer extended with "<image>", "</image>" and 32 image-patch tokens
per image ("<image0>" ... "<image31>" for the first); each 2D image resized to 512 x 512 and given a depth
of 4 slices, as a (1, images, 3, 512, 512, 4) tensor; the question follows the image tokens; greedy
generation. Written from that description and not run here (no weights, no GPU): check it against your
checkout of the repository before trusting its answers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

# what `medattack query` names when this recipe fails to load
NEEDS = ("the RadFM repository (github.com/chaoyi-wu/RadFM) and its requirements (torch, torchvision, "
         "transformers, einops); RADFM_DIR: its Quick_demo folder, holding pytorch_model.bin")

IMAGE_TOKENS = 32  # patch tokens per image in RadFM's prompt


def load(device: str = "cuda", dtype: str = "auto") -> Any:
    import torch
    from torchvision import transforms
    from transformers import LlamaTokenizer

    root = Path(os.environ.get("RADFM_DIR", "RadFM/Quick_demo"))
    sys.path.insert(0, str(root))
    from Model.RadFM.multimodality_model import MultiLLaMAForCausalLM  # the repository's own code

    language = root / "Language_files"
    tokenizer = LlamaTokenizer.from_pretrained(str(language))
    patches = [f"<image{k}>" for k in range(IMAGE_TOKENS)]
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>", "</image>", *patches]})
    model = MultiLLaMAForCausalLM(lang_model_path=str(language))
    model.load_state_dict(torch.load(root / "pytorch_model.bin", map_location="cpu"))
    model = model.to(device, dtype=torch.bfloat16 if dtype in ("auto", "bfloat16") else torch.float32).eval()
    resize = transforms.Compose([transforms.Resize((512, 512)), transforms.ToTensor()])
    return RadFM(model, tokenizer, resize, device, "<image>" + "".join(patches) + "</image>")


class RadFM:
    needs_image = True

    def __init__(self, model: Any, tokenizer: Any, resize: Any, device: str, image_text: str) -> None:
        self.model, self.tokenizer, self.resize, self.device, self.image_text = model, tokenizer, resize, device, \
            image_text

    def generate(self, images: list[Any], questions: list[str], max_new_tokens: int) -> list[str]:
        import torch

        answers = []
        for image, question in zip(images, questions, strict=True):  # one at a time, as the authors run it
            pixels = self.resize(image.convert("RGB"))  # (3, 512, 512)
            volume = pixels.unsqueeze(-1).repeat(1, 1, 1, 4)[None, None].to(self.device)  # (1, 1, 3, 512, 512, 4)
            ids = self.tokenizer(self.image_text + question, return_tensors="pt")["input_ids"].to(self.device)
            with torch.inference_mode():
                output = self.model.generate(ids, volume.to(next(self.model.parameters()).dtype))
            # RadFM's generate keeps its own length limit; max_new_tokens is not passed on
            answers.append(self.tokenizer.batch_decode(output, skip_special_tokens=True)[0].strip())
        return answers


def load_stand_in(device: str = "cpu", dtype: str = "auto") -> Any:
    """No weights: a deterministic stand-in that answers through the same interface (tests, dry runs)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _stand_in import StandIn

    return StandIn("RadFM stand-in")
