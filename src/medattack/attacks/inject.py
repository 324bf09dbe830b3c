"""Prompt injection hidden in the image: a clinical instruction written into the picture, nothing optimised.

Clusmann et al. (Nature Communications 2025, 16:1239) hid instructions in oncology images (small, at low contrast,
in a corner, as burned-in annotation) and every one of four frontier VLMs followed some of them, for example
reporting no lesion on an image that has one. A hospital receives images from outside: this is the attack its
team tests first. The instruction comes from the clinical templates (data/resources/injections.yaml: suppress
a finding, add a diagnosis, change a measurement, recommend a treatment, leak the system prompt), chosen by
`template` or drawn per sample from the seed; where and how visibly it is written are settings
(data/injection.py), each one value or several (a grid: each sample gets one of its points, drawn from the seed,
so one run measures a dose-response). The injected image is what `query` replays on every target; the record
says which template it holds and where (`info`), so the injection-success metric can ask whether an answer
followed it.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

import numpy as np
import torch

from medattack.attacks.base import ATTACKS, AttackResult, AttackTask, Checkpoint, evaluate_fixed
from medattack.config import option
from medattack.data.injection import PLACEMENTS, Placement, injection_templates, render_instruction
from medattack.errors import ConfigError
from medattack.models.base import WhiteBoxTarget

RANDOM = "random"


@dataclass(frozen=True)
class InjectConfig:
    template: str = option(RANDOM, "Instruction template id (suppress-finding, add-diagnosis, change-measurement, "
                                   "recommend-treatment, leak-prompt), or random: one per sample, from the seed.")
    placement: tuple[Placement, ...] = option(
        ("corner",), "Where: corner, margin (bottom left), roi (over the lesion box, else the centre), dicom (a "
                     "burned-in annotation line at the top); several: each sample gets one of the grid.")
    size: tuple[float, ...] = option((0.06,), "Text height as a fraction of the image height (several: a grid).")
    contrast: tuple[float, ...] = option(
        (1.0,), "Grey-level distance between text and background, 0 (invisible) to 1 (several: a grid, e.g. "
                "[0.05, 0.2, 1.0] for a dose-response).")
    opacity: float = option(1.0, "Share of the text's grey written over the image (small: sub-visual).",
                            low=0.0, high=1.0)
    font: str | None = option(None, "A TrueType font file (default: the font inside Pillow).")
    max_new_tokens: int = option(64, "Tokens generated for the response.", low=1)

    def __post_init__(self) -> None:
        known = injection_templates()
        if self.template != RANDOM and self.template not in known:
            raise ConfigError(f"inject template {self.template!r}: not a template; known: {', '.join(known)}, "
                              f"or {RANDOM}.")
        for name, values, low, high in (("size", self.size, 0.01, 0.5), ("contrast", self.contrast, 0.0, 1.0)):
            if not values or any(not low <= v <= high for v in values):
                raise ConfigError(f"inject {name}: give values from {low} to {high} (got {list(values)}).")
        if not self.placement or any(p not in PLACEMENTS for p in self.placement):
            raise ConfigError(f"inject placement: one or more of {', '.join(PLACEMENTS)} (got {list(self.placement)}).")

    def grid(self) -> list[tuple[Placement, float, float]]:
        """Every (placement, size, contrast) the settings name."""
        return list(itertools.product(self.placement, self.size, self.contrast))


def _draw(seed: int, sample_id: str, what: str, n: int) -> int:
    digest = hashlib.sha256(f"{seed}\x1f{sample_id}\x1f{what}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % n


def choose_template(template: str, seed: int, sample_id: str) -> str:
    """The template id for a sample: the configured one, or one drawn from (seed, sample id)."""
    if template != RANDOM:
        return template
    ids = sorted(injection_templates())
    return ids[_draw(seed, sample_id, "inject", len(ids))]


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
        grid = config.grid()
        placement, size, contrast = grid[_draw(task.seed, task.sample_id, "grid", len(grid))]
        image = (task.pixels[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        written, reached = render_instruction(image, template.instruction, placement, size, contrast, config.opacity,
                                              config.font, mask_box(task.mask))
        pixels = torch.from_numpy(written).permute(2, 0, 1)[None].float().div(255).to(task.pixels.device)
        result = evaluate_fixed(model, task, pixels, "", config.max_new_tokens)
        result.info = {"template": template.template_id, "goal": template.goal, "placement": placement,
                       "size": size, "contrast": contrast, "contrast_reached": reached, "opacity": config.opacity,
                       "followed": template.is_followed(result.response)}
        return result
