"""The scorer interface: every metric declares its range and direction, and may return null.

A scorer receives a batch of `ScoreInput`s (one response each, with the question, attributes and,
when available, the image) and returns one `Score` per input. `Score.value` is None when the metric
could not be computed, with the reason in `Score.null_reason`; reports count nulls, never drop them.

Every metric is one file of this package that registers its class in `SCORERS` with a `config_class`
(its own settings: the score config's `metrics: {name: options}`); every scorer is built as
`cls(config, encoders=..., cache_path=...)`, where `Encoders` are the text and image-text encoders
the stage shares between metrics. A metric computed from other metrics' scores of the same response
(the composite) registers in `DERIVED` instead, with `combine(scores, specs)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from medattack.config import NoOptions, option
from medattack.storage import SURROGATE, readable

__all__ = ["NoOptions"]  # re-exported for the metrics
from medattack.registry import Registry


@dataclass(frozen=True)
class ScoreInput:
    """One response to score, with what the metrics may compare it to."""

    response_id: str  # unique per response (sample x condition x attack x target)
    question: str  # the full input text: "This image is about {attribute}. {prompt}"
    response: str
    condition: str = ""
    prompt: str = ""
    shown_attribute: str = ""  # the attribute the question claims
    true_attribute: str = ""  # what the image really is
    description: str = ""  # known description of the image (metadata)
    image_path: str | None = None  # absolute path of the image file, when there is one
    clean_image_path: str | None = None  # the benchmark's own image when `image_path` is an attacked one
    injected: str = ""  # the template id of an instruction written into the image (or into the same sample's
    # injected variant, for its benchmark answer): what the injection metric checks the answer against

    def __post_init__(self) -> None:
        # metrics read text: lone surrogates a model returned (kept as they were in the stored answer) become
        # U+FFFD here, since tokenizers and encoders refuse them
        for name in ("question", "response", "prompt"):
            value = getattr(self, name)
            if isinstance(value, str) and SURROGATE.search(value):
                object.__setattr__(self, name, readable(value))


@dataclass(frozen=True)
class Score:
    value: float | None
    null_reason: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)  # e.g. judge label and reason, fused parts

    @classmethod
    def null(cls, reason: str) -> Score:
        return cls(None, reason)


@dataclass(frozen=True)
class MetricSpec:
    """What a metric's numbers mean."""

    name: str
    low: float
    high: float
    higher_means: str  # e.g. "the attack succeeded", "more relevant to the input text"
    description: str
    is_proxy: bool = False
    # how a judge metric agrees with labelled data, where known: {"source", "kappa", "n", "confusion": {...}}
    validity: dict[str, Any] | None = None


IMAGE_TEXT_MODEL_HELP = ("Hub id (hf-hub:org/repo) or local folder (the hub repo as downloaded: open_clip_config.json "
                         "and the weights) of the image-text backend; None = its default on the hub.")


@dataclass(frozen=True)
class Encoders:
    """The encoders shared by the relevance metrics (one instance per name and settings, so each text
    and image is encoded once however many metrics read it)."""

    text_embedder: str = option("minilm", "Text embedder for TTO (minilm offline, bge-m3 when installed).")
    image_text: str = option("proxy", "Image-text backend for TIO/TII (proxy offline, biomedclip, clip).")
    device: str = option("cpu", "torch device of the scoring encoders (cpu, cuda, cuda:1).")
    text_model: str | None = option(None, "Hub id or local folder of the text embedder; None = its default "
                                    "(the embedded MiniLM, BAAI/bge-m3).")
    memo_mib: float | None = option(None, "Encodings kept per encoder for reuse across metrics, batches and "
                                    "targets (MiB); None = each encoder's default, 0 = none.")
    image_text_model: str | None = option(None, IMAGE_TEXT_MODEL_HELP)


class Scorer(Protocol):
    config_class: ClassVar[type]
    spec: MetricSpec

    def __init__(self, config: Any = None, *, encoders: Encoders | None = None,
                 cache_path: Path | None = None) -> None: ...

    def score(self, inputs: Sequence[ScoreInput]) -> list[Score]: ...


class DerivedMetric(Protocol):
    """A metric computed from the other metrics' scores of one response, after every response of the
    run has its other scores: `calibrate` sees them all once (and returns what it fixed, e.g. a
    threshold, which is written to the summary and keys the derived rows), then `combine` runs per response."""

    config_class: ClassVar[type]
    spec: MetricSpec

    def __init__(self, config: Any = None) -> None: ...

    def calibrate(self, inputs: Sequence[ScoreInput], scores: dict[str, list[Score]],
                  specs: dict[str, MetricSpec]) -> dict[str, Any]: ...

    def combine(self, scores: dict[str, Score], specs: dict[str, MetricSpec]) -> Score: ...


SCORERS: Registry[type[Scorer]] = Registry("scorer", plugins="medattack.scoring")
DERIVED: Registry[type[DerivedMetric]] = Registry("derived metric", plugins="medattack.scoring")
