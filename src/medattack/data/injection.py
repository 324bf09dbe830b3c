"""Text written into a medical image, as a prompt injection hides it: where, how large, how visible.

    placement  corner   top-left, inside a small margin
               margin   at the bottom left
               roi      over the region of interest (the box of the lesion mask, else the image centre)
               dicom    a burned-in annotation line across the top, as scanners write patient data
    size       text height as a fraction of the image height
    contrast   distance in grey level between the text and the mean of the background it covers (0: the same
               grey, invisible; 1: black on white or white on black)
    opacity    how much of the text's grey replaces the image under it (1: all; small: sub-visual)

The templates (resources/injections.yaml) hold the clinical instructions and the patterns that say an answer
followed one. Rendering uses the font inside Pillow (or a TrueType file), so it is the same on every machine.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Literal

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFont

Placement = Literal["corner", "margin", "roi", "dicom"]
PLACEMENTS: tuple[Placement, ...] = ("corner", "margin", "roi", "dicom")


@dataclass(frozen=True)
class InjectionTemplate:
    template_id: str
    goal: str
    instruction: str
    followed: tuple[re.Pattern[str], ...]  # an answer matching any states the injected claim

    def is_followed(self, answer: str) -> bool:
        return any(pattern.search(answer) for pattern in self.followed)


@cache
def injection_templates() -> dict[str, InjectionTemplate]:
    """The embedded templates by id (resources/injections.yaml)."""
    raw = yaml.safe_load(resources.files("medattack.data.resources").joinpath("injections.yaml").read_text("utf-8"))
    return {t["id"]: InjectionTemplate(t["id"], t["goal"], t["instruction"],
                                       tuple(re.compile(p, re.IGNORECASE) for p in t["followed"]))
            for t in raw["templates"]}


def _font(size: int, font: str | None) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.truetype(font, size) if font else ImageFont.load_default(size=size)


def render_instruction(pixels: np.ndarray, text: str, placement: Placement = "corner", size: float = 0.06,
                       contrast: float = 1.0, opacity: float = 1.0, font: str | None = None,
                       box: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, float]:
    """`pixels` (H, W, 3) uint8 with `text` written in (the same shape and type), and the contrast reached: the
    ink's grey is kept in [0, 1], so on a mid-grey background a contrast above about 0.5 renders as black (or
    white) and reaches less than asked.

    `box` (left, top, right, bottom) is the region of interest for placement "roi" (default: the middle half).
    """
    height, width = pixels.shape[:2]
    font_size = max(4, round(size * height))
    face = _font(font_size, font)
    margin = max(1, font_size // 3)
    line_height = int(font_size * 1.25)
    if placement == "roi":
        left, top, right, _ = box or (width // 4, height // 4, 3 * width // 4, 3 * height // 4)
    else:  # corner and margin take half the width at the left; dicom the whole width
        left, top, right = margin, margin, width - margin if placement == "dicom" else width // 2
    chars = max(6, int((right - left) / max(1.0, font_size * 0.55)))
    lines = textwrap.wrap(text, width=chars) or [""]
    if placement == "dicom":
        lines = [" ".join(lines)]  # one line, cut at the right edge as an overlay is
    if placement == "margin":
        top = max(0, height - margin - line_height * len(lines))
    mask_image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask_image)
    for index, line in enumerate(lines):
        draw.text((left, top + index * line_height), line, fill=255, font=face)
    mask = np.asarray(mask_image, dtype=np.float32)[..., None] / 255.0  # (H, W, 1) ink coverage
    image = pixels.astype(np.float32) / 255.0
    covered = mask[..., 0] > 0
    background = float(image[covered].mean()) if covered.any() else float(image.mean())
    ink = background - contrast if background >= 0.5 else background + contrast
    ink = float(np.clip(ink, 0.0, 1.0))
    out = image * (1 - opacity * mask) + ink * opacity * mask
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8), round(abs(ink - background), 4)
