"""What every defence shares: the registry, the context it is calibrated on, and the defended target.

A defence is `XConfig` (frozen dataclass, defaults only there) + `X` (registered in `DEFENCES`), built as
`X(config, context)` and asked through

    answer(queries, ask) -> one answer (or TargetError) per query

where `ask` answers queries with whatever it wraps (the target, or the next defence). A defence may change a
query before asking (strip a claim, purify the image, add a reminder), ask several variants and choose (SmoothLLM),
or not ask at all and refuse (a detector): a refusal it decides itself is a `Flagged` answer, which names it.

A defended target is a target (`DefendedTarget`): `medattack query RUN --defence NAME` asks it the same samples,
attack replays and controls as the undefended one, under the name "<target>+<defence>", so every stage after
query (score, report, compare) reads it like any target and the report pairs it with the undefended one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medattack.errors import ConfigError, TargetError
from medattack.models.targets import ChatTarget, Query, TargetConfig
from medattack.records import QUESTION_TEMPLATE, Sample, defended_name
from medattack.registry import Registry

Answer = str | TargetError
Ask = Callable[[Sequence[Query]], list[Answer]]  # answers queries with what the defence wraps

# What a detecting defence answers instead of the target: a plain refusal, which the refusal matcher and the
# judges read as one (so a blocked attack counts as failed and a blocked benign question as over-refused).
REFUSAL = "I'm sorry, but I can't help with that request."


class Flagged(str):
    """An answer a defence gave itself after flagging the input (its refusal), naming the defences that flagged
    it; an ordinary `str` everywhere else."""

    by: tuple[str, ...]

    def __new__(cls, text: str, by: tuple[str, ...]) -> Flagged:
        answer = super().__new__(cls, text)
        answer.by = by
        return answer

    def __getnewargs__(self) -> tuple[str, tuple[str, ...]]:  # type: ignore[override]
        return str(self), self.by


def flagged_by(answer: Answer) -> list[str]:
    """The defences that flagged the input of an answer ([] when none did)."""
    return list(answer.by) if isinstance(answer, Flagged) else []


@dataclass
class DefenceContext:
    """What a defence may calibrate on: the run's benchmark samples (benign questions, images and their true
    attributes), the folder of its images, the device for a model it loads, and the seed of its random choices."""

    samples: list[Sample] = field(default_factory=list)
    benchmark_root: str = ""  # the folder the samples' image files are relative to
    device: str | None = None
    seed: int = 0

    def normal_questions(self) -> list[str]:
        """The benchmark's benign questions that claim the image's true attribute (condition normal)."""
        return [s.question for s in self.samples if s.condition == "normal"]


class Defence:
    """Base of every defence: built as `cls(config, context)`; subclasses set `config_class` and `answer`."""

    config_class: ClassVar[type]
    detects: ClassVar[bool] = False  # may refuse an input it flags (detection and false-alarm rates are reported)
    adaptive: ClassVar[str] = ""  # how `attack --defence` optimises through it ("": it cannot; transfer only)

    def __init__(self, config: Any, context: DefenceContext) -> None:
        self.config, self.context = config, context

    def configure(self, target: TargetConfig) -> TargetConfig:
        """The target's settings with what the defence changes before it is loaded (default: none)."""
        return target

    def answer(self, queries: Sequence[Query], ask: Ask) -> list[Answer]:
        """One answer per query, in order, asking `ask` for what it lets through."""
        raise NotImplementedError

    @classmethod
    def target_calls(cls, config: Any) -> int:
        """Target calls the defence makes per question it lets through (1; SmoothLLM: its copies): the query
        stage previews the cost before asking."""
        return 1

    @property
    def is_proxy(self) -> bool:
        """Whether the defence decides by a proxy (labels, not what a model sees); the report marks its rows."""
        return False

    def calibrated(self) -> dict[str, Any]:
        """What the defence measured on the run when it was built (a threshold), for a caller to inspect."""
        return {}

    def attacked_question(self, question: str) -> str:
        """The question as a white-box attack optimises it behind this defence: what the defended target will
        ask its model, with `{optim_str}` where the suffix goes (only for an `adaptive` defence)."""
        raise ConfigError(f"an attack cannot be optimised through the defence {type(self).__name__}; ask the "
                          "defended target the undefended attack's inputs instead (query --defence: transfer).")


DEFENCES: Registry[type[Defence]] = Registry("defence", plugins="medattack.defences")


def build_defences(configs: Sequence[tuple[str, Any]], context: Callable[[], DefenceContext],
                   ) -> list[tuple[str, Defence]]:
    """Each configured defence (read_defences), built on what `context()` gives (the run's benchmark, read by the
    stage that asks: a defence never reads a run directory); nothing is read when there are none."""
    if not configs:
        return []
    given = context()
    return [(name, DEFENCES[name](settings, given)) for name, settings in configs]


def ask_rest(items: Sequence[Query | Answer], ask: Ask) -> list[Answer]:
    """The answers of a defence that decided some inputs itself: each item is a query to ask (all in one call to
    `ask`) or the answer it already gave; answers come back in the items' order."""
    asked = iter(ask([item for item in items if isinstance(item, Query)]))
    return [next(asked) if isinstance(item, Query) else item for item in items]


def seeded(*parts: object) -> np.random.Generator:
    """A generator seeded from the parts' text ("|"-joined; stable across processes, unlike hash())."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def read_defences(names: Sequence[str], options: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """(name, settings) of each named defence, outermost first: names checked (each once, known), options read
    into each defence's config class (unknown keys and bad values refused), options of defences not named refused."""
    from medattack.config import from_mapping

    if len(set(names)) != len(names):
        raise ConfigError(f"defences: each defence once, got {list(names)}.")
    stray = sorted(set(options or {}) - set(names))
    if stray:
        raise ConfigError(f"defence_options for {stray}, which are not among the defences {list(names)}; add them "
                          "with --defence, or drop their options.")
    return [(name, from_mapping(DEFENCES[name].config_class, (options or {}).get(name) or {}, f"{name} options"))
            for name in names]


class DefendedTarget:
    """A target behind defences, itself a target. The first defence named is the outermost: it sees the question
    first and its answer is the one returned."""

    takes_whitebox: ClassVar[bool] = False

    def __init__(self, inner: ChatTarget, defences: Sequence[tuple[str, Defence]]) -> None:
        self.inner, self.defences = inner, list(defences)
        self.names = [name for name, _ in self.defences]
        self.name = defended_name(inner.name, self.names)
        self.client = getattr(inner, "client", None)  # an API target's usage, as the undefended one reports it

    def traits(self) -> list[dict[str, Any]]:
        """What the report needs to know of each defence, outermost first (it never imports defence code):
        its name, whether it may flag and refuse an input, whether it decides by a proxy."""
        return [{"name": name, "detects": defence.detects, "is_proxy": defence.is_proxy}
                for name, defence in self.defences]

    def answer(self, queries: Sequence[Query]) -> list[Answer]:
        ask: Ask = self.inner.answer
        for _, defence in reversed(self.defences):
            ask = _bound(defence, ask)
        return ask(queries)


def _bound(defence: Defence, ask: Ask) -> Ask:
    return lambda queries: defence.answer(queries, ask)


def about_image(sample: Sample, image_file: Path | str) -> dict[str, str]:
    """What is known of a sample's image, as a query carries it for defences (Query.about)."""
    return {"image_file": str(image_file), "modality": sample.modality, "body_part": sample.body_part,
            "description": sample.description}


_CLAIM = re.compile(re.escape(QUESTION_TEMPLATE.split("{attribute}")[0]) + r"(?P<attribute>.+?)\.\s+(?P<rest>.*)\Z",
                    re.DOTALL)


def split_claim(question: str) -> tuple[str, str] | None:
    """(claimed attribute, the rest) of a question that opens with the benchmark's claim ("This image is about
    {attribute}. {prompt}"); None for any other question."""
    match = _CLAIM.match(question)
    return (match["attribute"], match["rest"]) if match else None


def target_calls(configs: Sequence[tuple[str, Any]]) -> int:
    """Target calls per question behind these defences (read_defences' output): the product of each one's."""
    calls = 1
    for name, settings in configs:
        calls *= DEFENCES[name].target_calls(settings)
    return calls
