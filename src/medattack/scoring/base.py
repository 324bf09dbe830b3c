"""The scorer interface: every metric declares its range and direction, and may return null.

A scorer receives a batch of `ScoreInput`s (one response each, with the question, attributes and,
when available, the image) and returns one `Score` per input. `Score.value` is None when the metric
could not be computed, with the reason in `Score.null_reason`; reports count nulls, never drop them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

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


class Scorer(Protocol):
    spec: MetricSpec

    def score(self, inputs: Sequence[ScoreInput]) -> list[Score]: ...


SCORERS: Registry[type] = Registry("scorer")
