"""Typographic variant: the key phrase rendered in a text band under the image.

Uses the scalable font that ships inside Pillow (`ImageFont.load_default(size=...)`), so the output is
the same on every machine with the same Pillow.
"""

from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def render_text_band(pixels: np.ndarray, text: str) -> np.ndarray:
    """Return the image with `text` written in black on a white band appended below it.

    Args:
        pixels: (H, W, 3) uint8.
        text: the phrase to render; wrapped to the image width.

    Returns:
        (H + band, W, 3) uint8.
    """
    height, width = pixels.shape[:2]
    font_size = max(12, width // 24)
    font = ImageFont.load_default(size=font_size)
    chars_per_line = max(8, int(width / (font_size * 0.55)))
    lines = textwrap.wrap(text, width=chars_per_line) or [""]
    line_height = int(font_size * 1.3)
    margin = max(4, font_size // 2)
    band = 2 * margin + line_height * len(lines)
    canvas = Image.new("RGB", (width, height + band), "white")
    canvas.paste(Image.fromarray(pixels, mode="RGB"), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for index, line in enumerate(lines):
        draw.text((margin, height + margin + index * line_height), line, fill="black", font=font)
    return np.asarray(canvas)
