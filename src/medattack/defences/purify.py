"""`purify`: image purification against pixel attacks: JPEG re-encoding (Dziugaite et al. 2016, arXiv 1608.00853;
Guo et al. 2018, ICLR) and random resize-and-pad (Xie et al. 2018, ICLR, "Mitigating adversarial effects through
randomization"), seeded per question so a run is repeatable.

The target sees the purified pixels of the query's image (never an attack's exact float tensor). Known weakness:
an adaptive attacker optimises through it (BPDA, Athalye et al. 2018; expectation over the randomness), and
heavy purification blurs the fine detail a medical image is read by.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from medattack.config import option
from medattack.defences.base import DEFENCES, Answer, Ask, Defence, seeded
from medattack.errors import ConfigError
from medattack.models.targets import Query


@dataclass(frozen=True)
class PurifyConfig:
    jpeg_quality: int | None = option(75, "JPEG quality of the re-encoding, 1-95 (None: no re-encoding).",
                                      low=1, high=95)
    min_scale: float | None = option(0.9, "Random resize to a scale in [min_scale, 1] then pad back to the size at "
                                          "a random offset (None: no resize).", low=0.0, high=1.0)

    def __post_init__(self) -> None:
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 95:
            raise ConfigError(f"purify jpeg_quality must be 1-95 (or null), got {self.jpeg_quality}.")
        if self.min_scale is not None and not 0.2 <= self.min_scale <= 1.0:
            raise ConfigError(f"purify min_scale must be in [0.2, 1] (or null), got {self.min_scale}.")


def jpeg(pixels: np.ndarray, quality: int) -> np.ndarray:
    """(H, W, 3) uint8 through a JPEG encode and decode at `quality`."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def resize_and_pad(pixels: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 resized by `scale` (bilinear) and padded back to (H, W) with black at a random offset."""
    from PIL import Image

    height, width = pixels.shape[:2]
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    small = np.asarray(Image.fromarray(pixels).resize((new_w, new_h), Image.BILINEAR))
    out = np.zeros_like(pixels)
    top, left = int(rng.integers(0, height - new_h + 1)), int(rng.integers(0, width - new_w + 1))
    out[top:top + new_h, left:left + new_w] = small
    return out


@DEFENCES.register("purify", citation="Guo et al. 2018 (ICLR); Xie et al. 2018 (ICLR)", modality="image",
                   access="black-box")
class Purify(Defence):
    """JPEG re-encoding and seeded random resize-and-pad of the image."""

    config_class = PurifyConfig
    config: PurifyConfig

    def purified(self, query: Query) -> Query:
        if query.image is None:
            return query
        pixels = query.image
        if self.config.min_scale is not None and self.config.min_scale < 1.0:
            rng = seeded(self.context.seed, query.query_id)
            pixels = resize_and_pad(pixels, float(rng.uniform(self.config.min_scale, 1.0)), rng)
        if self.config.jpeg_quality is not None:
            pixels = jpeg(pixels, self.config.jpeg_quality)
        return replace(query, image=pixels, exact_pixels=None)

    def answer(self, queries: Sequence[Query], ask: Ask) -> list[Answer]:
        return ask([self.purified(q) for q in queries])
