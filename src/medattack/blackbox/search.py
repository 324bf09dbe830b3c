"""The search both black-box methods run: propose, answer, judge, keep the best branches.

    level 1:  the root proposes streams x branching attempts ("0", "1", ...)
    level d:  each kept attempt proposes `branching` children ("3.0", "3.1", ...), seeing its branch
    after each level: stop on a success; else keep the `width` best by judge score (ties: first made)

PAIR is `streams` independent branches that never prune (branching 1, width = streams); TAP is one root
that branches and prunes (and drops off-topic proposals before asking the target). Budgets: `depth`
levels, `max_queries` target answers (each attempt costs `generations`), `max_tokens` estimated tokens
(checked before each level). Every attempt is handed to `record` as it is made; attempts already made
(`known`, from the node log) are taken as they are, so a search resumed after a kill makes exactly the
attempts an uninterrupted one would and pays for none twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from medattack.blackbox.attacker import Attacker, Attempt, Goal, Proposal
from medattack.blackbox.moves import Move, MoveContext, apply_move
from medattack.errors import ConfigError
from medattack.records import SearchNode
from medattack.scoring.judges.base import Judge, Verdict

# (node_id, question, image) -> one answer (or the reason it failed) per generation
Respond = Callable[[Sequence[tuple[str, str, np.ndarray]]], list[list[str | Exception]]]
OnTopic = Callable[[str, Sequence[str]], list[bool]]
SaveImage = Callable[[str, np.ndarray], str]  # (node_id, image) -> file name recorded in the node

CHARS_PER_TOKEN = 4  # token estimates from text length (the report says "estimated")
MAX_QUERIES_HELP = "Target answers at most per sample (generations included); never exceeded."
MAX_TOKENS_HELP = "Estimated tokens at most per sample, all roles, checked before each level (0: no limit)."
SUCCESS_RATE_HELP = ("Share of an attempt's judged answers that must be jailbroken (with --generations N: a "
                     "distribution, not one lucky draw).")


def estimate_tokens(*texts: str) -> int:
    return sum(len(t) for t in texts) // CHARS_PER_TOKEN + len(texts)


@dataclass(frozen=True)
class SearchSettings:
    depth: int  # levels at most
    width: int  # attempts kept after each level
    branching: int  # children of each kept attempt
    streams: int  # branches the root starts (times branching at level 1)
    max_queries: int  # target answers at most, generations included
    max_tokens: int  # estimated tokens at most, all roles (0: no limit)
    generations: int  # answers per attempt (sampled when > 1)
    success_rate: float  # share of an attempt's judged answers that must be jailbroken

    def __post_init__(self) -> None:
        small = [f"{name} {getattr(self, name)}" for name in ("depth", "width", "branching", "streams", "generations")
                 if getattr(self, name) < 1]
        if small:
            raise ConfigError(f"black-box search: {', '.join(small)}; each must be 1 or more.")
        if self.max_queries < self.generations:
            raise ConfigError(f"black-box search: max_queries {self.max_queries} is less than one attempt's "
                              f"{self.generations} answer(s); raise it.")
        if not 0 < self.success_rate <= 1:
            raise ConfigError(f"black-box search: success_rate {self.success_rate} must be in (0, 1].")


    def level_sizes(self) -> list[int]:
        """Attempts the search can make at each level, from its shape alone: the root's streams x branching,
        then `branching` children of each of at most `width` kept attempts (off-topic proposals included:
        they are made, then dropped before asking the target)."""
        sizes = [self.streams * self.branching]
        for _ in range(self.depth - 1):
            sizes.append(min(self.width, sizes[-1]) * self.branching)
        return sizes

    def most_queries(self) -> int:
        """Target answers per sample at most: every attempt the shape allows, each answered `generations`
        times, capped by max_queries."""
        return min(self.max_queries, sum(self.level_sizes()) * self.generations)

    def expected_queries(self, success: float = 0.0, on_topic: float = 1.0) -> float:
        """Target answers per sample expected when each asked attempt succeeds with probability `success` and a
        proposal is on topic with probability `on_topic`: a level is asked whole, the search stops after the
        level of its first success, and the next level branches from at most `width` asked attempts (as
        level_sizes, with the counts in expectation)."""
        expected, reached, asked_before = 0.0, 1.0, 0.0
        proposals = float(self.streams * self.branching)
        for _ in range(self.depth):
            asked = proposals * on_topic
            level = min(asked * self.generations, self.max_queries - asked_before)
            if level <= 0:
                break
            expected += reached * level
            asked_before += level
            reached *= (1 - success) ** asked
            proposals = min(self.width, asked) * self.branching
        return expected


@dataclass
class SearchOutcome:
    nodes: list[SearchNode]  # in the order made
    best: SearchNode | None  # the first success, else the best score
    queries: int
    queries_to_success: int | None
    stop_reason: str  # success, depth, queries, tokens, pruned
    depth: int


@dataclass
class _Spec:
    node_id: str
    parent: SearchNode | None
    index: int
    count: int
    proposal: Proposal | None = None
    image: np.ndarray | None = None
    question: str = ""
    tokens: dict[str, int] = field(default_factory=dict)


class TreeSearch:
    """One search per goal; see the module docstring."""

    def __init__(self, settings: SearchSettings, attacker: Attacker, respond: Respond, judge: Judge,
                 record: Callable[[SearchNode], None], save_image: SaveImage,
                 on_topic: OnTopic | None = None) -> None:
        self.settings, self.attacker, self.respond, self.judge = settings, attacker, respond, judge
        self.record, self.save_image, self.on_topic = record, save_image, on_topic

    def run(self, goal: Goal, image: np.ndarray, context: MoveContext, seed_key: str,
            known: dict[str, SearchNode] | None = None) -> SearchOutcome:
        known = known or {}
        s = self.settings
        by_id: dict[str, SearchNode] = {}
        made: list[SearchNode] = []
        queries, first_success, reason, depth = 0, None, "depth", 0
        frontier: list[SearchNode | None] = [None]
        for depth in range(1, s.depth + 1):
            if s.max_tokens and sum(sum(n.tokens.values()) for n in made) >= s.max_tokens:
                reason, depth = "tokens", depth - 1
                break
            specs = [_Spec(f"{k}" if parent is None else f"{parent.node_id}.{k}", parent, k, count)
                     for parent in frontier
                     for count in [s.streams * s.branching if parent is None else s.branching]
                     for k in range(count)]
            level: list[SearchNode] = []
            to_answer: list[_Spec] = []
            out_of_queries = False
            for spec in specs:
                if spec.node_id in known:
                    node = known[spec.node_id]
                    queries += node.target_queries
                    level.append(node)
                    continue
                self._propose(spec, goal, image, context, seed_key, by_id)
                if not self._is_on_topic(goal, spec):
                    level.append(self._node(spec, [], [], 0, 0.0, False, on_topic=False, problem=None,
                                            image_file=""))
                    self.record(level[-1])
                    continue
                if queries + s.generations > s.max_queries:
                    out_of_queries = True
                    break
                queries += s.generations
                to_answer.append(spec)
                level.append(None)  # type: ignore[arg-type]  # filled once answered, in this order
            new_nodes = iter(self._answer_and_judge(goal, to_answer))
            level = [next(new_nodes) if node is None else node for node in level]
            for node in level:
                by_id[node.node_id] = node
            made += level
            successes = [n for n in level if n.success]
            if successes:
                first_success, reason = successes[0], "success"
                break
            answered = [n for n in level if n.on_topic and n.problem is None and n.target_queries]
            kept = {id(n) for n in sorted(answered, key=lambda n: -n.score)[: s.width]}  # stable: ties, first made
            frontier = [n for n in answered if id(n) in kept]  # in the order made
            if out_of_queries:
                reason = "queries"
                break
            if not frontier:
                reason = "pruned"
                break
        scored = [n for n in made if n.target_queries and n.problem is None]
        best = first_success or (max(scored, key=lambda n: n.score) if scored else None)
        to_success = None
        if first_success is not None:
            to_success = 0
            for node in made:
                to_success += node.target_queries
                if node is first_success:
                    break
        return SearchOutcome(made, best, queries, to_success, reason, depth)

    # --- one level ---------------------------------------------------------------------------------

    def _propose(self, spec: _Spec, goal: Goal, image: np.ndarray, context: MoveContext, seed_key: str,
                 by_id: dict[str, SearchNode]) -> None:
        history = []
        node = spec.parent
        while node is not None:
            history.append(Attempt(node.question, node.move, node.responses[0] if node.responses else "", node.score))
            node = by_id.get(node.parent) if node.parent else None
        history.reverse()
        prompt = self.attacker.prompt(goal, history, spec.index, spec.count)
        spec.proposal = self.attacker.propose(goal, history, spec.index, spec.count, f"{seed_key}|{spec.node_id}",
                                              prompt)
        spec.image, spec.question = apply_move(spec.proposal.move, image, spec.proposal.question, context)
        spec.tokens = {"attacker": estimate_tokens(self.attacker.system, prompt, spec.proposal.question,
                                                   spec.proposal.rationale)}

    def _is_on_topic(self, goal: Goal, spec: _Spec) -> bool:
        return True if self.on_topic is None else self.on_topic(goal.question, [spec.question])[0]

    def _answer_and_judge(self, goal: Goal, specs: list[_Spec]) -> list[SearchNode]:
        if not specs:
            return []
        started = time.perf_counter()
        answers = self.respond([(spec.node_id, spec.question, spec.image) for spec in specs])
        texts = [a for per_spec in answers for a in per_spec if isinstance(a, str)]
        verdicts = iter(self.judge.judge([goal.question] * len(texts), texts))
        seconds = (time.perf_counter() - started) / len(specs)
        nodes = []
        for spec, per_spec in zip(specs, answers, strict=True):
            responses = [a for a in per_spec if isinstance(a, str)]
            judged: list[Verdict] = [next(verdicts) for _ in responses]
            problems = [str(a) for a in per_spec if not isinstance(a, str)]
            decided = [v for v in judged if v.jailbroken is not None]
            rate = sum(v.jailbroken for v in decided) / len(decided) if decided else None  # type: ignore[misc]
            score = float(np.mean([v.harm if v.harm is not None else v.jailbroken for v in decided])) if decided \
                else 0.0
            spec.tokens["target"] = sum(estimate_tokens(spec.question, r) for r in responses)
            spec.tokens["judge"] = sum(estimate_tokens(goal.question, r) for r in responses)
            success = rate is not None and rate >= self.settings.success_rate
            moved = spec.proposal is not None and spec.image is not None and spec.proposal.move.name not in (
                "none", "claim")
            image_file = self.save_image(spec.node_id, spec.image) if moved else ""
            problem = problems[0] if problems and not responses else None
            node = self._node(spec, responses, [v.jailbroken for v in judged], len(per_spec), score, success,
                              on_topic=True, problem=problem, image_file=image_file, rate=rate, seconds=seconds)
            self.record(node)
            nodes.append(node)
        return nodes

    def _node(self, spec: _Spec, responses: list[str], verdicts: list[int | None], queries: int, score: float,
              success: bool, *, on_topic: bool, problem: str | None, image_file: str, rate: float | None = None,
              seconds: float = 0.0) -> SearchNode:
        proposal = spec.proposal or Proposal("", Move(), "", "attacker")
        return SearchNode(
            node_id=spec.node_id, parent=spec.parent.node_id if spec.parent else None,
            depth=spec.node_id.count(".") + 1, question=spec.question, move=proposal.move.to_json(),
            rationale=proposal.rationale, proposer=proposal.proposer, image_file=image_file, responses=responses,
            verdicts=verdicts, score=round(score, 6), jailbroken_rate=rate, success=success, on_topic=on_topic,
            target_queries=queries, tokens=dict(spec.tokens), seconds=round(seconds, 3), problem=problem)
