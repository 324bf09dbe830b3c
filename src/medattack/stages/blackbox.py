"""The black-box stage: search for a jailbreak of any target with an attacker model and a judge.

    runs/<name>/blackbox/<method>/<target>/      (rundir.SearchFolder)
      config.json               method, target, attacker, judge and budgets (no secrets)
      results.jsonl             one BlackBoxRecord per finished sample: best attempt, queries, tokens, cost
      nodes/<sample>.jsonl      every attempt as it is made (SearchNode): question, image move, answers,
                                verdicts, the attacker's rationale
      images/<sample>/<node>.png  the image an attempt showed, when its move changed the picture
      attacker.sqlite, judge.sqlite   content-hash caches of the attacker's and an API judge's calls
      failures.jsonl            samples that could not be searched, with the reason

The target is any kind (`api`, `hf`, `llava`, `python`; `medattack serve` or vLLM through `api`); its
API answers are cached in the run's responses/api_cache.sqlite. A finished sample is never redone; an
interrupted one resumes from its node log, making exactly the attempts an uninterrupted search would and
asking nothing twice. With `generations` N > 1 each attempt is answered N times, sampled at
`temperature` with seeds seed..seed+N-1 (part of each request, so the cache keeps them apart), and
judged as a distribution (`success_rate` of the method). Token counts are estimated from text length
(4 characters a token; images not counted); `prices` turn them into dollars. Runs in this process (no
Ray): the search is sequential by nature, and a remote target answers each level's attempts concurrently.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medattack.blackbox.attacker import Attacker, AttackerConfig, Goal
from medattack.blackbox.base import BLACKBOX_ATTACKS
from medattack.blackbox.moves import MoveContext
from medattack.blackbox.search import SearchOutcome, SearchSettings, TreeSearch, estimate_tokens
from medattack.config import from_mapping, option, to_dict
from medattack.data.image_io import encode_png, load_image
from medattack.errors import ConfigError, MedattackError
from medattack.executor import ExecutorConfig, runs_here
from medattack.models.targets import ChatTarget, Query, TargetConfig, TargetError, load_target
from medattack.records import BlackBoxRecord, Sample, SearchNode, check_conditions
from medattack.rundir import Progress, RunDir, SearchFolder, append_records, write_bytes_atomic
from medattack.scoring.judge import JudgeConfig
from medattack.scoring.judges.base import Judge
from medattack.stages.base import as_run_dir, failure, loading, sample_work, settings_record, stage_folder

log = logging.getLogger(__name__)
ROLES = ("attacker", "target", "judge")


@dataclass(frozen=True)
class BlackBoxConfig:
    method: str = option("pair", "Black-box method: pair or tap (see `medattack list attacks`).")
    target: TargetConfig = option(TargetConfig(), "The model attacked (any kind: api, hf, llava, python).")
    attacker: AttackerConfig = option(AttackerConfig(), "The attacker model (local or api) and its settings.")
    judge: JudgeConfig = option(JudgeConfig(), "The judge that scores each answer (embedded, api or hf).")
    conditions: tuple[str, ...] = option(("malicious", "both"), "Sample conditions searched (harmful ones).")
    tasks: tuple[str, ...] | None = option(None, "Only samples of these clinical tasks.")
    limit: int | None = option(None, "Search at most this many samples (in table order).", low=1)
    seed: int = option(0, "Seed of the built-in strategies and of the target's sampling.")
    generations: int = option(1, "Answers per attempt; > 1 samples the target at `temperature` (seed + k).",
                              low=1, high=100)
    temperature: float = option(0.7, "The target's sampling temperature when generations > 1.", low=0.0, high=2.0)
    prices: dict[str, float] = field(default_factory=dict, metadata={
        "help": "USD per million tokens by role (attacker, target, judge), e.g. {target: 10, attacker: 10}; "
                "a role on a local model costs nothing."})
    options: dict[str, Any] | None = option(None, "Method settings, e.g. {streams: 5, depth: 3, max_queries: 15} "
                                            "(on the command line --set options.depth=3).")

    def __post_init__(self) -> None:
        check_conditions(self.conditions, "blackbox conditions")
        self.method_config().settings(self.generations)  # checks the budgets and generations now
        unknown = sorted(set(self.prices) - set(ROLES))
        if unknown:
            raise ConfigError(f"prices: unknown role(s) {unknown}; the roles are {', '.join(ROLES)}.")

    def method_config(self) -> Any:
        return from_mapping(BLACKBOX_ATTACKS[self.method], self.options or {}, f"{self.method} options")

    def remote_roles(self) -> set[str]:
        """The roles answered by an API (they cost money; a local model's tokens are free)."""
        return ({"target"} if self.target.kind == "api" else set()) | (
            {"attacker"} if self.attacker.generator == "api" else set()) | (
            {"judge"} if self.judge.backend == "api" else set())

    def cost(self, tokens: dict[str, int]) -> float | None:
        """Dollars for these token counts; None when a remote role in use has no price."""
        remote = self.remote_roles()
        if any(role in remote and tokens.get(role, 0) and role not in self.prices for role in ROLES):
            return None
        return round(sum(tokens.get(role, 0) * self.prices.get(role, 0.0) for role in remote) / 1e6, 6)


@dataclass
class BlackBoxStageResult:
    folder: Path
    results: list[BlackBoxRecord]
    failures: list[dict[str, Any]]
    attempted: int  # samples searched in this call
    estimate: dict[str, Any]  # the budget before starting: queries, calls, tokens, cost at most
    api_usage: dict[str, dict[str, int]] = field(default_factory=dict)  # what each API reported this call


def _history(folder: SearchFolder) -> tuple[float, float, int]:
    """The folder's earlier attempts: (share of asked attempts that succeeded, share of proposals on topic,
    attempts made); (0, 1, 0) when it has none."""
    nodes = folder.all_nodes()
    asked = [node for node in nodes if node.target_queries]
    successes, on_topic = sum(node.success for node in asked), sum(node.on_topic for node in nodes)
    return (successes / len(asked) if asked else 0.0), (on_topic / len(nodes) if nodes else 1.0), len(nodes)


def estimate(config: BlackBoxConfig, settings: SearchSettings, attacker: Attacker, samples: list[Sample],
             checks_topic: bool = False, history: tuple[float, float, int] = (0.0, 1.0, 0)) -> dict[str, Any]:
    """What a search can use per sample and in all, from its shape (SearchSettings.level_sizes): target answers,
    attacker calls, tokens and dollars at most, and the target answers expected (with the per-attempt success
    and on-topic rates of `history`, the folder's earlier attempts, else as if no attempt succeeds)."""
    question = max((len(s.question) for s in samples), default=200)
    attempts = sum(settings.level_sizes())
    queries = settings.most_queries()
    # every proposal costs an attacker call; without a topic check each asked one costs `generations` answers,
    # so the cap stops proposals one past it; off-topic ones cost no answer, so only the shape bounds them
    attacker_calls = attempts if checks_topic else min(attempts, queries // settings.generations + 1)
    per_call = estimate_tokens(attacker.system, "x" * (1200 + question * 3)) + 300
    tokens = {"attacker": attacker_calls * per_call,
              "target": queries * (question * 2 // 4 + config.target.max_new_tokens),
              "judge": queries * (question // 4 + config.target.max_new_tokens)}
    total = {role: n * len(samples) for role, n in tokens.items()}
    success, on_topic, seen = history
    expected = settings.expected_queries(success, on_topic if checks_topic else 1.0)
    return {"samples": len(samples), "target_queries": queries * len(samples),
            "expected_queries": round(expected * len(samples), 1), "expected_from": seen,
            "attempts_per_sample": attempts, "max_queries": settings.max_queries,
            "attacker_calls": attacker_calls * len(samples), "tokens": total, "cost_usd": config.cost(total)}


def _seed_key(config: BlackBoxConfig, sample: Sample) -> str:
    return f"{config.seed}|{config.method}|{sample.sample_id}"


def _other_image(run: RunDir, samples: list[Sample], sample: Sample) -> np.ndarray | None:
    """An image of another category (for the mismatch move), the same for a sample on every run."""
    others = sorted((s for s in samples if s.category != sample.category),
                    key=lambda s: hashlib.sha256(f"{sample.sample_id}|{s.image_file}".encode()).hexdigest())
    return load_image(run.benchmark_file(others[0].image_file)).pixels if others else None


class Searcher:
    """Holds the target, attacker and judge, and searches one sample per call."""

    def __init__(self, config: BlackBoxConfig, run: RunDir, folder: SearchFolder, target: ChatTarget,
                 attacker: Attacker, judge: Judge) -> None:
        self.config, self.run, self.folder = config, run, folder
        self.target, self.attacker, self.judge = target, attacker, judge
        method = config.method_config()
        self.settings = method.settings(config.generations)
        self.on_topic = _topic_check(method.on_topic_threshold) if method.checks_topic and getattr(
            method, "on_topic_threshold", 0) > 0 else None

    def respond(self, attempts: list[tuple[str, str, np.ndarray]]) -> list[list[str | Exception]]:
        """Every attempt answered `generations` times, in one call to the target."""
        n, sampled = self.config.generations, self.config.generations > 1
        queries = [Query(f"{node_id}#{k}", question, image,
                         temperature=self.config.temperature if sampled else None,
                         seed=self.config.target.seed + k if sampled else None)
                   for node_id, question, image in attempts for k in range(n)]
        try:
            answers: list[str | Exception] = list(self.target.answer(queries))
        except MedattackError as error:  # a target that fails as a whole fails every attempt of the level
            answers = [TargetError(str(error))] * len(queries)
        return [answers[i * n:(i + 1) * n] for i in range(len(attempts))]

    def search(self, samples: list[Sample], sample: Sample) -> tuple[BlackBoxRecord, SearchOutcome]:
        started = time.perf_counter()
        image = load_image(self.run.benchmark_file(sample.image_file)).pixels
        context = MoveContext(sample.true_attribute, _other_image(self.run, samples, sample))
        nodes_path = self.folder.nodes_path(sample.sample_id)
        # attempts made before (a failed one, e.g. an API error, is asked again)
        known = {node.node_id: node for node in self.folder.nodes(sample.sample_id) if node.problem is None}

        def save_image(node_id: str, pixels: np.ndarray) -> str:
            name = SearchFolder.image_name(sample.sample_id, node_id)
            write_bytes_atomic(self.folder.path / name, encode_png(pixels))
            return name

        def record(node: SearchNode) -> None:
            append_records(nodes_path, node)

        goal = Goal(sample.question, sample.key_phrase, sample.true_attribute, sample.task)
        search = TreeSearch(self.settings, self.attacker, self.respond, self.judge, record, save_image, self.on_topic)
        outcome = search.run(goal, image, context, _seed_key(self.config, sample), known)
        asked = [n for n in outcome.nodes if n.target_queries]
        if asked and all(n.problem is not None for n in asked):  # nothing was answered: retried on a re-run
            raise TargetError(f"every attempt failed; the first: {asked[0].problem}")
        tokens = {role: sum(n.tokens.get(role, 0) for n in outcome.nodes) for role in ROLES}
        best = outcome.best
        return BlackBoxRecord(
            sample_id=sample.sample_id, pair_id=sample.pair_id, condition=sample.condition, task=sample.task,
            category=sample.category, method=self.config.method, target=self.target.name, attacker=self.attacker.name,
            judge=self.judge.name, seed=self.config.seed, goal=sample.question, success=_success(outcome),
            best_node=best.node_id if best else None, question=best.question if best else "",
            move=best.move if best else {}, image_file=best.image_file if best else "",
            response=best.responses[0] if best and best.responses else "", score=best.score if best else None,
            jailbroken_rate=best.jailbroken_rate if best else None, queries=outcome.queries,
            queries_to_success=outcome.queries_to_success, nodes=len(outcome.nodes), depth=outcome.depth,
            stop_reason=outcome.stop_reason,
            proposals_parsed=sum(n.proposer == "attacker" for n in outcome.nodes),
            tokens=tokens, cost_usd=self.config.cost(tokens), seconds=round(time.perf_counter() - started, 3),
        ), outcome


def _topic_check(threshold: float) -> Any:
    """Goal vs proposals: cosine of the embedded MiniLM at least `threshold` (TAP's off-topic pruning)."""
    from medattack.scoring.backends.text_embedders import get_text_embedder

    embedder = get_text_embedder("minilm")

    def on_topic(goal: str, questions: list[str]) -> list[bool]:
        vectors = embedder.embed([goal, *questions])  # unit rows
        return [bool(float(np.dot(vectors[0], v)) >= threshold) for v in vectors[1:]]

    return on_topic


def _success(outcome: SearchOutcome) -> bool | None:
    """Whether the search jailbroke the target; None when the judge decided none of its answers (an unreadable
    verdict is undecided, never "not jailbroken")."""
    if outcome.best is not None and outcome.best.success:
        return True
    decided = any(verdict is not None for node in outcome.nodes for verdict in node.verdicts)
    return False if decided else None


def run(run_dir: RunDir | str | Path, config: BlackBoxConfig | None = None, *, executor: ExecutorConfig | None = None,
        progress: Progress | None = None, force: bool = False, target: ChatTarget | None = None,
        announce: Callable[[dict[str, Any]], None] | None = None) -> BlackBoxStageResult:
    """Search the selected samples; resumable, see the module docstring. `target` reuses a loaded target;
    `announce(estimate)` is called with the budget before any query is made."""
    if not runs_here(executor):
        raise ConfigError("blackbox runs in this process (a search is sequential; a remote target answers each "
                          "level concurrently): drop --executor ray.")
    config = config or BlackBoxConfig()
    run_dir = as_run_dir(run_dir)
    samples = run_dir.samples()
    with loading(progress if target is None else None, config.target.name):
        target = target or load_target(config.target, cache_path=run_dir.api_cache_path)
    folder = run_dir.search_folder(config.method, target.name)
    record = {"stage": settings_record(config), "method": to_dict(config.method_config()),
              "target_name": target.name}
    defaults = {"stage": settings_record(BlackBoxConfig()), "method": to_dict(BLACKBOX_ATTACKS[config.method]())}
    with stage_folder(run_dir, folder.path, record, defaults=defaults,
                      writer=f"blackbox {config.method} on {target.name}",
                      stage=f"blackbox/{folder.method}/{folder.target}",
                      change="the method, target, attacker, judge or budgets", seed=config.seed, force=force):
        return _search_into(run_dir, folder, samples, config, target, progress, announce)


def _search_into(run_dir: RunDir, folder: SearchFolder, samples: list[Sample], config: BlackBoxConfig,
                 target: ChatTarget, progress: Progress | None,
                 announce: Callable[[dict[str, Any]], None] | None) -> BlackBoxStageResult:
    with loading(progress, "attacker and judge"):
        attacker = Attacker(config.attacker, cache_path=folder.cache_path("attacker"))
        judge = config.judge.build(cache_path=folder.cache_path("judge"))
    searcher = Searcher(config, run_dir, folder, target, attacker, judge)

    work = sample_work(folder, samples, config)
    todo, failures = work.todo, work.failures
    budget = estimate(config, searcher.settings, attacker, todo, searcher.on_topic is not None,
                      _history(folder))
    if announce:
        announce(budget)
    label = f"{config.method} on {target.name}"
    for index, sample in enumerate(todo):
        if progress:
            progress(label, work.done + index, len(work.chosen))
        try:
            result, _ = searcher.search(samples, sample)
        except MedattackError as exc:
            log.warning("sample %s failed: %s", sample.sample_id, exc)
            failures.add(failure("sample_id", sample.sample_id, exc))
            continue
        append_records(folder.results_path, result)
    if progress:
        progress(label, len(work.chosen), len(work.chosen))
    failures.save()
    usage = {role: dict(client.stats) for role, client in (("target", getattr(target, "client", None)),
                                                           ("attacker", getattr(attacker.generator, "client", None)),
                                                           ("judge", getattr(judge, "client", None))) if client}
    return BlackBoxStageResult(folder.path, folder.results(), failures.rows, len(todo), budget, usage)
