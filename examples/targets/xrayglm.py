"""XrayGLM (a VisualGLM-6B fine-tune on chest X-ray reports, github.com/WangRongsheng/XrayGLM) as a
medattack target.

    medattack query runs/x --target python:examples/targets/xrayglm.py:load --device cuda
    medattack query runs/x --target python:examples/targets/xrayglm.py:load_stand_in   # offline dry run

Weights and code (fetch once): the XrayGLM repository (its `finetune_XrayGLM.py` and `model/` folder), its
released checkpoint folder (`checkpoints/XrayGLM`), and the ChatGLM-6B tokenizer (`THUDM/chatglm-6b`,
remote code). Packages: `pip install SwissArmyTransformer` and the repository's requirements. Point
`XRAYGLM_DIR` at the repository and `XRAYGLM_CKPT` at the checkpoint folder. Memory: about 15 GB in fp16.

Usage as the authors publish it (their cli_demo): the fine-tuned VisualGLM model class loaded with
`from_pretrained(checkpoint, args)` in fp16, the ChatGLM-6B tokenizer with remote code, and the
repository's `chat(image_path, model, tokenizer, question, history=[])`, which takes an image file and
returns the answer first. Written from that description and not run here (no weights, no GPU): check the
arguments against your checkout's cli_demo before trusting its answers.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

# what `medattack query` names when this recipe fails to load
NEEDS = ("pip install SwissArmyTransformer and the XrayGLM repository's requirements; XRAYGLM_DIR: the "
         "repository; XRAYGLM_CKPT: the checkpoint folder (checkpoints/XrayGLM)")


def load(device: str = "cuda", dtype: str = "auto") -> Any:
    from transformers import AutoTokenizer

    repo = Path(os.environ.get("XRAYGLM_DIR", "XrayGLM"))
    sys.path.insert(0, str(repo))
    from finetune_XrayGLM import FineTuneVisualGLMModel  # the repository's own code
    from model import chat

    args = argparse.Namespace(fp16=True, skip_init=True, use_gpu_initialization=device.startswith("cuda"),
                              device=device)
    model, _ = FineTuneVisualGLMModel.from_pretrained(os.environ.get("XRAYGLM_CKPT", "checkpoints/XrayGLM"),
                                                      args=args)
    tokenizer = AutoTokenizer.from_pretrained("THUDM/chatglm-6b", trust_remote_code=True)
    return XrayGLM(model.eval(), tokenizer, chat)


class XrayGLM:
    needs_image = True

    def __init__(self, model: Any, tokenizer: Any, chat: Any) -> None:
        self.model, self.tokenizer, self.chat = model, tokenizer, chat

    def generate(self, images: list[Any], questions: list[str], max_new_tokens: int) -> list[str]:
        answers = []
        with tempfile.TemporaryDirectory() as folder:  # the authors' chat reads the image from a file
            for k, (image, question) in enumerate(zip(images, questions, strict=True)):
                path = Path(folder) / f"{k}.png"
                image.convert("RGB").save(path)
                answer = self.chat(str(path), self.model, self.tokenizer, question, history=[])[0]
                answers.append(str(answer).strip())
        return answers


def load_stand_in(device: str = "cpu", dtype: str = "auto") -> Any:
    """No weights: a deterministic stand-in that answers through the same interface (tests, dry runs)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _stand_in import StandIn

    return StandIn("XrayGLM stand-in")
