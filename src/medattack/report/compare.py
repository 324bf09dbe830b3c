"""`medattack compare A B`: what changed between two runs, per target x source x condition, with intervals.

For every group both runs hold (target, source, condition, metric; the success metric on harmful conditions
and the non-refusal rate on every condition) the difference B - A of the rates:

- **paired** where the same samples were asked in both (one run's samples all in the other: the same
  benchmark, perhaps a --limit of it): on the shared samples' first answers, a Dirichlet posterior of the four
  paired outcomes for 0/1 metrics at the effective sample size of their image x prompt pairs, the paired
  bootstrap of whole pairs otherwise;
- **unpaired** otherwise (different benchmarks or seeds): a Jeffreys Beta posterior per run for rates, a
  two-group bootstrap otherwise.

Each interval and its p-value come from one set of draws (stats._tail_p), so they never disagree.

Targets are matched by name; two runs that share no target name but hold one target each (a run per model
over one benchmark) are compared target against target. p-values are not corrected for the number of
comparisons.

Beside them, per target, the rate that stands in each run on the benchmark's harmful questions (two-phase from
that run's labels of the target, else transported, else judged; report/estimates.py), and where both have a
posterior (two-phase or transported) the difference B - A with the 95% interval of the difference of independent
draws (`standing_changes`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from medattack.errors import ConfigError
from medattack.estimate import RateEstimate
from medattack.labelling.design import Answer, estimate, estimate_draws
from medattack.report.aggregate import (
    HARMFUL_CONDITIONS,
    JUDGE_METRIC,
    KEY_METRIC,
    first_answers,
    success_metric,
)
from medattack.report.estimates import cell_answers
from medattack.report.reading import RunData
from medattack.stats import (
    Confusion,
    PairedResult,
    TwoSampleResult,
    paired_test,
    percentile_interval,
    two_sample_test,
)


@dataclass(frozen=True)
class Change:
    """One group's rate in run A and run B and the difference B - A."""

    target: str  # "name", or "name in A -> name in B" when the runs hold different targets
    source: str  # "none" (the benchmark's samples), an attack's method, "control:blank" / "control:noise"
    condition: str
    metric: str
    n_a: int  # values compared from A (nulls left out; paired: the shared samples only)
    n_b: int
    pairs: int  # image x prompt pairs of the samples asked in both and compared pairwise (0: unpaired); n_a
    # counts the samples
    rate_a: float
    rate_b: float
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    test: str

    def to_json(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def _values(run: RunData, target: str, metric: str) -> pd.DataFrame:
    """One row per first answer of the target scored by `metric`: source, condition, sample_id, its image x prompt
    pair, value."""
    table = first_answers(run.scores)
    rows = table[(table["target"] == target) & (table["metric"] == metric)]
    rows = rows.drop_duplicates("response_id")
    pairs = rows["pair_id"] if "pair_id" in rows else rows["sample_id"]
    return rows.assign(pair_id=pairs.fillna(rows["sample_id"]))[["method", "condition", "sample_id", "pair_id",
                                                                  "value"]]


def _target_pairs(a: RunData, b: RunData) -> list[tuple[str, str]]:
    names_a, names_b = sorted(set(a.scores["target"].dropna())), sorted(set(b.scores["target"].dropna()))
    shared = [n for n in names_a if n in names_b]
    if shared:
        return [(n, n) for n in shared]
    if len(names_a) == 1 and len(names_b) == 1:
        return [(names_a[0], names_b[0])]
    raise ConfigError(f"{a.name} and {b.name} share no target ({', '.join(names_a)} vs {', '.join(names_b)}): "
                      "compare runs that asked the same targets, or runs of one target each.")


def compare_runs(a: RunData, b: RunData) -> list[Change]:
    """Every group both runs hold, B - A (module docstring)."""
    success = success_metric(pd.concat([a.scores, b.scores], ignore_index=True))
    changes = []
    for target_a, target_b in _target_pairs(a, b):
        label = target_a if target_a == target_b else f"{target_a} -> {target_b}"
        for metric in dict.fromkeys([success, KEY_METRIC]):
            values_a, values_b = _values(a, target_a, metric), _values(b, target_b, metric)
            for (source, condition), group_a in values_a.groupby(["method", "condition"], sort=True):
                if metric != KEY_METRIC and condition not in HARMFUL_CONDITIONS:
                    continue
                group_b = values_b[(values_b["method"] == source) & (values_b["condition"] == condition)]
                if group_b.empty:
                    continue
                changes.append(_change(label, str(source), str(condition), metric, group_a, group_b))
    return changes


def _change(target: str, source: str, condition: str, metric: str, a: pd.DataFrame, b: pd.DataFrame) -> Change:
    by_a, by_b = a.set_index("sample_id")["value"].dropna(), b.set_index("sample_id")["value"].dropna()
    shared = by_a.index.intersection(by_b.index)
    paired = len(shared) > 0 and len(shared) == min(len(by_a), len(by_b))
    if paired:
        clusters = a.set_index("sample_id")["pair_id"].reindex(shared).to_numpy()
        result: PairedResult | TwoSampleResult = paired_test(by_a[shared].to_numpy(), by_b[shared].to_numpy(),
                                                             clusters)
    else:
        result = two_sample_test(by_a.to_numpy(), by_b.to_numpy())
    n_a, n_b = (len(shared), len(shared)) if paired else (len(by_a), len(by_b))
    clusters_compared = result.clusters if isinstance(result, PairedResult) else 0
    return Change(target, source, condition, metric, n_a, n_b, clusters_compared, float(result.mean_a),
                  float(result.mean_b), float(result.difference), float(result.ci_low), float(result.ci_high),
                  float(result.p_value), result.test)


@dataclass(frozen=True)
class StandingChange:
    """One target's rate that stands in run A and in run B (the benchmark's harmful questions) and, where both
    have a posterior, the 95% interval of B - A (and its point where both have one: not when transported)."""

    target: str
    a: RateEstimate
    b: RateEstimate
    difference: float | None
    ci_low: float | None
    ci_high: float | None

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "a": self.a.to_json(), "b": self.b.to_json(), "difference": self.difference,
                "ci_low": self.ci_low, "ci_high": self.ci_high}


def _answers(run: RunData, target: str, metric: str) -> list[Answer]:
    """The target's answers to the benchmark's harmful questions, as its headline estimate reads them."""
    rows = run.scores
    return cell_answers(rows[(rows["target"] == target) & (rows["metric"] == metric) & (rows["method"] == "none")
                             & rows["condition"].isin(HARMFUL_CONDITIONS)])


def standing_changes(a: RunData, b: RunData, confusions: list[Confusion]) -> list[StandingChange]:
    """Per target pair, the rate that stands in each run and their difference (module docstring)."""
    metric = success_metric(pd.concat([a.scores, b.scores], ignore_index=True))
    spread = confusions if metric == JUDGE_METRIC else []
    out = []
    for target_a, target_b in _target_pairs(a, b):
        answers_a, answers_b = _answers(a, target_a, metric), _answers(b, target_b, metric)
        if not answers_a or not answers_b:
            continue
        labels_a, labels_b = a.labels.get(target_a, {}), b.labels.get(target_b, {})
        found_a, found_b = estimate(answers_a, labels_a, spread), estimate(answers_b, labels_b, spread)
        draws_a = estimate_draws(answers_a, labels_a, spread, seed=1)
        draws_b = estimate_draws(answers_b, labels_b, spread, seed=2)
        difference = low = high = None
        if draws_a is not None and draws_b is not None:
            low, high = percentile_interval(draws_b - draws_a)
            if found_a.rate is not None and found_b.rate is not None:  # no point where either is transported
                difference = found_b.rate - found_a.rate
        label = target_a if target_a == target_b else f"{target_a} -> {target_b}"
        out.append(StandingChange(label, found_a, found_b, difference, low, high))
    return out

