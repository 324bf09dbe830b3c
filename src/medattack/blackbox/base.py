"""The registry of black-box attack methods: each is a config class whose `settings()` gives the search's
budgets and shape, and whether it drops off-topic proposals before asking the target."""

from __future__ import annotations

from typing import ClassVar, Protocol

from medattack.blackbox.search import SearchSettings
from medattack.registry import Registry


class BlackBoxMethod(Protocol):
    """A registered method: its frozen config dataclass (defaults only there)."""

    checks_topic: ClassVar[bool]  # drop proposals off the goal's topic before they cost a query

    def settings(self, generations: int) -> SearchSettings: ...


BLACKBOX_ATTACKS: Registry[type[BlackBoxMethod]] = Registry("black-box attack", plugins="medattack.blackbox")
