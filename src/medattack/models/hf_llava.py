"""Loading any transformers LLaVA-family model as a white-box target (`--model HUB_ID_OR_PATH`)."""

from __future__ import annotations

from medattack.models.base import WHITEBOX_MODELS
from medattack.models.llava import LlavaWhiteBox, PromptLayout
from medattack.models.loading import hub_errors, local_device, torch_dtype


@WHITEBOX_MODELS.register("hf")
def load_hf_llava(
    model_id: str, *, dtype: str = "auto", device: str | None = None, max_batch: int = 512,
    trust_remote_code: bool = False, prompt_layout: PromptLayout = "chat-template",
) -> LlavaWhiteBox:
    """A LLaVA-family model from the hub or a local path (LLaVA-1.5, LLaVA-Med v1.5 HF format; with
    `prompt_layout="llava-med"` prompted as LLaVA-Med was trained and attacked in the paper)."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    device = local_device(device)
    with hub_errors(model_id):
        processor = AutoProcessor.from_pretrained(model_id, trust_remote_code=trust_remote_code)
        model = LlavaForConditionalGeneration.from_pretrained(
            model_id, dtype=torch_dtype(dtype, device), attn_implementation="sdpa", trust_remote_code=trust_remote_code,
        ).to(device).eval()
    image_processor = processor.image_processor
    crop = getattr(image_processor, "crop_size", None) or getattr(image_processor, "size", None) or {}
    if isinstance(crop, dict):
        side = crop.get("height") or crop.get("shortest_edge") or model.config.vision_config.image_size
        size = (int(crop.get("height", side)), int(crop.get("width", side)))
    else:
        size = (model.config.vision_config.image_size,) * 2
    return LlavaWhiteBox(
        model, processor.tokenizer, name=model_id, image_size=size,
        image_mean=tuple(image_processor.image_mean), image_std=tuple(image_processor.image_std),
        processor=processor, image_mark=getattr(processor, "image_token", "<image>"), max_batch=max_batch,
        prompt_layout=prompt_layout,
    )
