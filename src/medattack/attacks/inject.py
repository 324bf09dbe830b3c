"""Prompt injection hidden in the image: a clinical instruction written into the picture, nothing optimised.

Clusmann et al. (Nature Communications 2025, 16:1239) hid instructions in oncology images (small, at low contrast,
in a corner, as burned-in annotation) and every one of four frontier VLMs followed some of them, for example
reporting no lesion on an image that has one. A hospital receives images from outside: this is the attack its
team tests first. The instruction comes from the clinical templates (data/resources/injections.yaml: suppress
a finding, add a diagnosis, change a measurement, recommend a treatment, leak the system prompt), chosen by
`template` or drawn per sample from the seed; where and how visibly it is written are settings
(data/injection.py). The injected image is what `query` replays on every target; the record says which template
it holds (`info.template`), so the injection-success metric can ask whether an answer followed it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from medattack.attacks.base import ATTACKS, AttackResult, AttackTask, Checkpoint, evaluate_fixed
from medattack.config import option
from medattack.data.injection import Placement, injection_templates, render_instruction
from medattack.errors import ConfigError
from medattack.models.base import WhiteBoxTarget

RANDOM = "random"


@dataclass(frozen=True)
class InjectConfig:
    template: str = option(RANDOM, "Instruction template id (suppress-finding, add-diagnosis, change-measurement, "
                                   "recommend-treatment, leak-prompt), or random: one per sample, from the seed.")
    placement: Placement = option("corner", "Where: corner, margin (bottom edge), roi (over the lesion box, else "
                                            "the centre), dicom (a burned-in annotation line at the top).")
    size: float = option(0.06, "Text height as a fraction of the image height.", low=0.01, high=0.5)
    contrast: float = option(1.0, "Grey-level distance between text and background, 0 (invisible) to 1.",
                             low=0.0, high=1.0)
    opacity: float = option(1.0, "Share of the text's grey written over the image (small: sub-visual).",
                            low=0.0, high=1.0)
    font: str | None = option(None, "A TrueType font file (default: the font inside Pillow).")
    max_new_tokens: int = option(64, "Tokens generated for the response.", low=1)

    def __post_init__(self) -> None:
        known = injection_templates()
        if self.template != RANDOM and self.template not in known:
            raise ConfigError(f"inject template {self.template!r}: not a template; known: {', '.join(known)}, "
                              f"or {RANDOM}.")


def choose_template(template: str, seed: int, sample_id: str) -> str:
    """The template id for a sample: the configured one, or one drawn from (seed, sample id)."""
    if template != RANDOM:
        return template
    ids = sorted(injection_templates())
    digest = hashlib.sha256(f"{seed}\x1f{sample_id}\x1finject".encode()).digest()
    return ids[int.from_bytes(digest[:8], "big") % len(ids)]


def mask_box(mask: torch.Tensor | None) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of a (1, 1, H, W) mask's ones, or None."""
    if mask is None or not bool(mask.any()):
        return None
    rows = mask[0, 0].any(dim=1).nonzero().flatten()
    cols = mask[0, 0].any(dim=0).nonzero().flatten()
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


@ATTACKS.register("inject", citation="Clusmann et al. 2025, Nature Communications 16:1239", modality="image",
                  access="any")
class Inject:
    """No optimisation: a clinical instruction written into the image."""

    config_class = InjectConfig
    needs: frozenset[str] = frozenset()
    uses_image = True  # perturbs or replaces the image

    def __init__(self, config: InjectConfig | None = None) -> None:
        self.config = config or InjectConfig()

    def run(self, model: WhiteBoxTarget, task: AttackTask, checkpoint: Checkpoint | None = None) -> AttackResult:
        config = self.config
        template = injection_templates()[choose_template(config.template, task.seed, task.sample_id)]
        image = (task.pixels[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        written = render_instruction(image, template.instruction, config.placement, config.size, config.contrast,
                                     config.opacity, config.font, mask_box(task.mask))
        pixels = torch.from_numpy(written).permute(2, 0, 1)[None].float().div(255).to(task.pixels.device)
        result = evaluate_fixed(model, task, pixels, "", config.max_new_tokens)
        result.info = {"template": template.template_id, "goal": template.goal, "placement": config.placement,
                       "size": config.size, "contrast": config.contrast, "opacity": config.opacity,
                       "followed": template.is_followed(result.response)}
        return result
