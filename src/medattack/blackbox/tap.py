"""TAP (Mehrotra et al., 2023, arXiv 2312.02119): a tree of attempts. Each kept attempt branches, proposals
off the goal's topic are dropped before they cost a query, the `width` best by judge score survive each
level. Here each attempt also moves the image. The paper's budget: branching 4, width 10, depth 10.

The off-topic check is the cosine of the embedded MiniLM between the goal and the proposed question (the
paper asks the evaluator model); `on_topic_threshold: 0` turns it off."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from medattack.blackbox.base import BLACKBOX_ATTACKS
from medattack.blackbox.search import MAX_QUERIES_HELP, MAX_TOKENS_HELP, SUCCESS_RATE_HELP, SearchSettings
from medattack.config import option


@BLACKBOX_ATTACKS.register("tap", citation="Mehrotra et al. 2023, arXiv 2312.02119", modality="text+image",
                            access="black-box", needs=("attacker model",))
@dataclass(frozen=True)
class TAPConfig:
    """TAP: a tree of attempts; off-topic ones dropped unasked, the best branches kept."""

    checks_topic: ClassVar[bool] = True
    branching: int = option(4, "Children of each kept attempt (b in the paper).", low=1)
    width: int = option(10, "Attempts kept after each level (w in the paper).", low=1)
    depth: int = option(10, "Levels at most (d in the paper).", low=1)
    max_queries: int = option(100, MAX_QUERIES_HELP, low=1)
    max_tokens: int = option(0, MAX_TOKENS_HELP, low=0)
    success_rate: float = option(0.5, SUCCESS_RATE_HELP, low=0.0, high=1.0)
    on_topic_threshold: float = option(0.3, "Cosine (MiniLM) between goal and proposal below which a proposal "
                                            "is dropped unasked (0: keep all).", low=-1.0, high=1.0)

    def settings(self, generations: int) -> SearchSettings:
        return SearchSettings(depth=self.depth, width=self.width, branching=self.branching, streams=1,
                              max_queries=self.max_queries, max_tokens=self.max_tokens, generations=generations,
                              success_rate=self.success_rate)
