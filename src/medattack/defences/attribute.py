"""`attribute`: check the attribute a question claims for its image against the image, before the target sees it
(this project's defence against the paper's mismatched attack, arXiv 2405.20775: a false claimed attribute).

An image-text model scores the claim ("This image is about {attribute}.") against the image: BiomedCLIP or CLIP
read the pixels; the offline proxy compares the image's known metadata with the claim as text (it checks the
labels, not the pixels, and says so). The gate is the TII gate of the composite metric: unless set, calibrated on
the run's benchmark as the cut that best separates each image's true attribute from the false ones claimed for it.
Below the gate the claim contradicts the image, and the defence (`action`) refuses, strips the claim from the
question, or rewrites it to the attribute the model finds best for the image (among the run's attributes).
A question with no claim passes unchanged. Known weakness: a claim written another way ("In this CT of the
chest...") is not parsed, and the check is only as good as the image-text model on that modality.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medattack.config import option
from medattack.defences.base import (
    DEFENCES,
    REFUSAL,
    Answer,
    Ask,
    Defence,
    DefenceContext,
    Flagged,
    about_image,
    ask_rest,
    split_claim,
)
from medattack.errors import ConfigError
from medattack.models.targets import Query
from medattack.records import question_text
from medattack.scoring.backends.image_text import IMAGE_TEXT_BACKENDS, ImageInfo
from medattack.stats import roc_auc, separating_threshold

CLAIM = "This image is about {attribute}."


@dataclass(frozen=True)
class AttributeConfig:
    action: Literal["refuse", "strip", "rewrite"] = option(
        "refuse", "On a contradiction: refuse; strip the claim (ask the rest); or rewrite it to the predicted "
                  "attribute.")
    backend: str = option("proxy", "Image-text model: proxy (offline, image metadata), biomedclip, clip.")
    model: str | None = option(None, "Hub id or local folder of the backend's model (default: its own).")
    threshold: float | None = option(None, "Gate in the backend's units below which a claim contradicts the image; "
                                           "None: calibrated on the run's benchmark.")


@DEFENCES.register("attribute", citation="this project, against the mismatched attack of arXiv 2405.20775",
                   modality="text+image", access="black-box")
class AttributeConsistency(Defence):
    """Check the claimed attribute against the image with the calibrated TII gate."""

    config_class = AttributeConfig
    config: AttributeConfig
    detects = True

    def __init__(self, config: AttributeConfig, context: DefenceContext) -> None:
        super().__init__(config, context)
        self.backend = IMAGE_TEXT_BACKENDS[config.backend](device=context.device or "cpu", model=config.model)
        self.attributes = sorted({s.true_attribute for s in context.samples} |
                                 {s.claimed_attribute for s in context.samples})
        self.gate, self.auc = (config.threshold, None) if config.threshold is not None else self._calibrate()

    @property
    def is_proxy(self) -> bool:
        return bool(self.backend.is_proxy)

    def _info(self, about: dict[str, str] | None) -> ImageInfo | None:
        """What the backend reads of the query's image (None: nothing to check it by)."""
        if not about or not about.get("image_file") or not Path(about["image_file"]).is_file():
            return None
        if self.backend.is_proxy and not about.get("modality"):
            return None  # the proxy knows an image only by its labels (a control image has none)
        return ImageInfo(about["image_file"], about.get("modality", ""), about.get("body_part", ""),
                         about.get("description", ""))

    def _calibrate(self) -> tuple[float, float | None]:
        """The cut between the scores of each image's true attribute and the false ones claimed for it (every
        image's pair of claims scored in one call)."""
        pairs = [(sample, info) for sample in {s.pair_id: s for s in self.context.samples if s.mismatched}.values()
                 if (info := self._info(about_image(sample, Path(self.context.benchmark_root) / sample.image_file)))]
        if len(pairs) < 2:
            raise ConfigError("defence attribute: fewer than 2 benchmark images with a mismatched claim to calibrate "
                              "the gate on; build a benchmark with mismatch samples, or set "
                              "defence_options.attribute.threshold.")
        scores = self.backend.score([info for _, info in pairs for _ in (0, 1)],
                                    [CLAIM.format(attribute=a) for sample, _ in pairs
                                     for a in (sample.true_attribute, sample.claimed_attribute)])
        matched, mismatched = np.asarray(scores[0::2], dtype=float), np.asarray(scores[1::2], dtype=float)
        return separating_threshold(matched, mismatched), roc_auc(matched, mismatched)

    def predicted(self, info: ImageInfo) -> str:
        """The run's attribute the backend finds best for the image."""
        scores = self.backend.score([info] * len(self.attributes),
                                    [CLAIM.format(attribute=a) for a in self.attributes])
        return self.attributes[int(np.argmax(scores))]

    def answer(self, queries: Sequence[Query], ask: Ask) -> list[Answer]:
        """Every claim that can be checked is scored in one call; a contradicted one is refused, or its query is
        asked stripped or rewritten and its answer marked flagged."""
        found = [(k, claim, info) for k, query in enumerate(queries)
                 if (claim := split_claim(query.text)) and (info := self._info(query.about))]
        scores = self.backend.score([info for _, _, info in found],
                                    [CLAIM.format(attribute=claim[0]) for _, claim, _ in found]) if found else []
        items: list[Query | Answer] = list(queries)
        changed: set[int] = set()
        for (k, (_, rest), info), score in zip(found, scores, strict=True):
            if float(score) >= self.gate:
                continue
            if self.config.action == "refuse":
                items[k] = Flagged(REFUSAL, ("attribute",))
                continue
            text = rest if self.config.action == "strip" else question_text(self.predicted(info), rest)
            items[k] = replace(queries[k], text=text)
            changed.add(k)
        return [Flagged(str(answer), ("attribute",)) if k in changed and not isinstance(answer, Exception) else answer
                for k, answer in enumerate(ask_rest(items, ask))]

    def calibrated(self) -> dict[str, Any]:
        return {"gate": round(float(self.gate), 6), "auc": None if self.auc is None else round(self.auc, 4),
                "backend": self.backend.label}

