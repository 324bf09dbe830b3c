"""The rate a user can stand behind: what share of a target's answers really complied, from the judge's verdicts
and, where they exist, the user's own labels of that target's answers.

A judge is an instrument whose error differs from model to model, so a judged rate is not the finding. Three
estimates, in the order they stand:

    two_phase(strata)           labels of this target exist: a stratified two-phase estimate. The judge's verdict
                                splits the answers into strata (judged 1, judged 0, undecided); a random sample of
                                each stratum is labelled; the rate is the sum over strata of the stratum's share of
                                the answers times the labelled compliance rate in it (Cochran 1977, ch. 12,
                                double sampling for stratification).
    transported(k, n, confusions)
                                no labels of this target: the same strata, each stratum's compliance rate predicted
                                for a new model from the labelled models (a random-effects prediction interval), so
                                the interval carries how the judge's error varies between models. Only the interval
                                is given: where the judge's error on this model is unknown a point is no finding.
    judged_only(k, n)           no judge error known at all: the judged rate and its Wilson interval.

The two-phase interval is a Monte Carlo posterior of the finite population's rate, chosen because it is honest at
the counts a person labels (a handful of positives per stratum, often none): in each stratum the compliance rate
has the uniform-prior posterior Beta(k + 1, n - k + 1) of its k positives in n labels, and the answers of the stratum
that were not labelled comply as a binomial draw at that rate (the finite-population part: labelling every answer
of a stratum leaves no uncertainty in it); the interval is the draws' percentiles. Normal (Wald) intervals of the
stratified estimator collapse to a point when a stratum's labels are all 0, which is the usual case for the
judged-0 stratum. The uniform prior rather than Jeffreys' Beta(1/2, 1/2): simulated on the shared labels (each
labelled model as the user's, judged by the head trained without it), Jeffreys held RadFM's labelled rate in 92%
of 200 draws of 40 labels, the uniform prior in 95% of 1,000 (every model 95-98%; tests/test_estimate.py).

`further_labels` says how many more labels bring the two-phase interval's half-width to a goal, and where to take
them: labels go one at a time to the stratum whose next label shrinks the variance of the stratified estimator the
most (the discrete form of Neyman allocation, n_h proportional to W_h S_h), with finite-population corrections.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from medattack.numbers import finite
from medattack.stats import Z95, Confusion, holding, percentile_interval, wilson_ci

PRIOR = 1.0  # each stratum's rate: Beta(k + PRIOR, n - k + PRIOR) (see the module docstring)
DRAWS = 4000  # Monte Carlo draws of an interval
GOAL_HALF_WIDTH = 0.05  # the half-width `further_labels` aims for by default
KINDS = ("two-phase", "transported", "judged")


@dataclass(frozen=True)
class Stratum:
    """One judge verdict's share of a target's answers and the labels drawn from it."""

    name: str  # "judged 1", "judged 0", "undecided"
    size: int  # answers in the stratum (N_h)
    labelled: int = 0  # of them labelled (n_h), skipped items left out
    positives: int = 0  # of those, labelled as complying (k_h)

    @property
    def rate(self) -> float | None:
        """The labelled compliance rate k_h / n_h; None without labels."""
        return self.positives / self.labelled if self.labelled else None

    def smoothed(self) -> float:
        """The Jeffreys posterior mean (k + 1/2) / (n + 1): a rate for planning that is never exactly 0 or 1."""
        return (self.positives + 0.5) / (self.labelled + 1)


@dataclass(frozen=True)
class RateEstimate:
    """A target's compliance rate as the report states it: which estimate stands, its interval, the counts behind
    it, and how many further labels (per stratum) would bring the interval to +/- GOAL_HALF_WIDTH."""

    kind: str  # one of KINDS
    judged: float | None  # share of decided answers the judge called compliant
    n: int  # answers (decided or not)
    rate: float | None  # the point estimate; None for "transported" (no point is a finding there)
    ci_low: float | None
    ci_high: float | None
    labels: int = 0  # labels of this target's answers used (0 unless two-phase)
    labelled_positives: int = 0
    strata: list[Stratum] = field(default_factory=list)
    further: int | None = None  # more labels to reach +/- GOAL_HALF_WIDTH (None: cannot say)
    further_by_stratum: dict[str, int] = field(default_factory=dict)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("judged", "rate", "ci_low", "ci_high"):
            value = finite(data[key])
            data[key] = None if value is None else round(value, 6)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RateEstimate:
        return cls(**{**data, "strata": [Stratum(**s) for s in data.get("strata", [])]})

    def interval_text(self) -> str:
        """'0.21 [0.14, 0.29]' (two-phase, judged), 'in [0.05, 0.62]' (transported), '-' without a rate."""
        if self.ci_low is None or self.ci_high is None:
            return "-" if self.rate is None else f"{self.rate:.2f}"
        span = f"[{self.ci_low:.2f}, {self.ci_high:.2f}]"
        return f"in {span}" if self.rate is None else f"{self.rate:.2f} {span}"

    def describe(self) -> str:
        """One sentence on which estimate stands and what would narrow it."""
        judged = "-" if self.judged is None else f"{self.judged:.2f}"
        unlabelled = sum(s.size - s.labelled for s in self.strata)
        every = " (every one left)" if self.further and self.further >= unlabelled > 0 else ""
        more = (f"; label {self.further} more answers{every} (`medattack label`) to narrow it to "
                f"+/-{GOAL_HALF_WIDTH:.2f}" if self.further else "")
        if self.kind == "two-phase":
            off = ""
            if (self.judged is not None and self.ci_low is not None and self.ci_high is not None
                    and not self.ci_low <= self.judged <= self.ci_high):
                off = " (the judge's rate lies outside it: the judge misreads this model)"
            return (f"judged {judged}; from {self.labels} labels of this model's {self.n} answers, their rate is "
                    f"{self.interval_text()}{off} (95% posterior interval){more}")
        if self.kind == "transported":
            return (f"judged {judged}; without labels of this model the rate lies {self.interval_text()} (the "
                    f"judge's error as it varies between the labelled models){more}")
        return f"judged {judged}; the judge's error is not known, so this is what the judge counted{more}"


def two_phase(strata: Sequence[Stratum], judged: float | None = None, draws: int = DRAWS, seed: int = 0,
              level: float = 0.95, goal: float = GOAL_HALF_WIDTH, guess: Mapping[str, float] | None = None,
              ) -> RateEstimate:
    """The stratified two-phase estimate (module docstring) of the answers' compliance rate.

    A stratum with no labels contributes its prior Beta(1, 1): its share of the answers is then
    unknown between 0 and 1, and the interval is wide, as it should be.
    """
    strata = [s for s in strata if s.size > 0]
    total = sum(s.size for s in strata)
    labels, positives = sum(s.labelled for s in strata), sum(s.positives for s in strata)
    if total == 0:
        return RateEstimate("two-phase", judged, 0, None, None, None, labels, positives, list(strata),
                            note="no answers to estimate")
    point = sum(s.positives + (s.size - s.labelled) * (s.rate if s.rate is not None else 0.5) for s in strata)
    low, high = holding(point / total, *percentile_interval(two_phase_draws(strata, draws, seed), level))
    further, by_stratum = further_labels(strata, goal, guess=guess)
    unlabelled = [s.name for s in strata if s.labelled == 0]
    note = f"no labels yet in: {', '.join(unlabelled)}" if unlabelled else ""
    return RateEstimate("two-phase", judged, total, point / total, low, high, labels, positives, list(strata),
                        further, by_stratum, note)


def two_phase_draws(strata: Sequence[Stratum], draws: int = DRAWS, seed: int = 0) -> np.ndarray:
    """(draws,) of the population's compliance rate from the two-phase posterior (module docstring)."""
    rng = np.random.default_rng(seed)
    complying = np.zeros(draws)
    for s in strata:
        rate = rng.beta(s.positives + PRIOR, s.labelled - s.positives + PRIOR, draws)
        complying += s.positives + rng.binomial(s.size - s.labelled, rate)
    return complying / max(sum(s.size for s in strata), 1)


def stratified_variance(strata: Sequence[Stratum], rates: Mapping[str, float] | None = None) -> float:
    """The variance of the estimated rate with the current labels: per stratum, the N_h - n_h unlabelled answers
    each comply at its rate p_h, itself estimated from n_h labels, so (N_h - n_h) p_h (1 - p_h) (1 + (N_h - n_h) /
    n_h) / N^2, which is the stratified estimator's variance with its finite-population correction, W_h^2 p_h
    (1 - p_h) / n_h (1 - n_h / N_h), and 0 once the stratum is labelled whole. A stratum without labels counts as
    one label's; p_h is its smoothed rate, or `rates[name]` where given."""
    total = sum(s.size for s in strata)
    variance = 0.0
    for s in strata:
        rest = s.size - s.labelled
        if rest <= 0:
            continue
        p = (rates or {}).get(s.name, s.smoothed())
        variance += rest * p * (1 - p) * (1 + rest / max(s.labelled, 1)) / total ** 2
    return variance


def further_labels(strata: Sequence[Stratum], goal: float = GOAL_HALF_WIDTH, z: float = Z95,
                   guess: Mapping[str, float] | None = None) -> tuple[int | None, dict[str, int]]:
    """How many more labels bring the 95% half-width to `goal`, and from which strata: a stratum without labels
    gets one first, then each label goes to the stratum whose next label lowers `stratified_variance` the most
    (Neyman allocation, one label at a time), each stratum's rate held at its smoothed rate (at `guess`, by
    stratum name, while it has no labels). (0, {}) when the goal is met; (None, {}) when labelling every answer
    would not meet it."""
    current = {s.name: s for s in strata if s.size > 0}
    rates = {name: s.smoothed() if s.labelled or not guess else guess.get(name, 0.5) for name, s in current.items()}
    target = (goal / z) ** 2
    added: dict[str, int] = {}

    def add(name: str) -> None:
        s = current[name]
        current[name] = Stratum(s.name, s.size, s.labelled + 1, s.positives)
        added[name] = added.get(name, 0) + 1

    for name, s in list(current.items()):
        if s.labelled == 0 and stratified_variance(list(current.values()), rates) > target:
            add(name)
    while stratified_variance(list(current.values()), rates) > target:
        trials = {name: stratified_variance([Stratum(o.name, o.size, o.labelled + 1, o.positives) if n == name else o
                                             for n, o in current.items()], rates)
                  for name, s in current.items() if s.labelled < s.size}
        if not trials:
            return None, {}
        add(min(trials, key=trials.__getitem__))
    return sum(added.values()), added


def _predictive_logits(events: np.ndarray, totals: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """(draws,) logits of a rate for a new model, from `events` of `totals` (K,) in K labelled models: the
    random-effects prediction interval of a new study (Higgins, Thompson and Spiegelhalter 2009): the logits'
    DerSimonian-Laird mean mu and between-model variance tau^2, and a Student t with K - 2 degrees of freedom
    scaled by sqrt(tau^2 + SE(mu)^2). With two models there is no such interval: the draws span logit(0.001) to
    logit(0.999), a rate that could be anything."""
    logits = np.log((events + 0.5) / (totals - events + 0.5))
    within = 1 / (events + 0.5) + 1 / (totals - events + 0.5)
    if len(logits) < 3:
        return rng.uniform(-6.9, 6.9, draws)
    weights = 1 / within
    fixed = float((weights * logits).sum() / weights.sum())
    q = float((weights * (logits - fixed) ** 2).sum())
    tau2 = max(0.0, (q - (len(logits) - 1)) / (weights.sum() - (weights ** 2).sum() / weights.sum()))
    weights = 1 / (within + tau2)
    mean = float((weights * logits).sum() / weights.sum())
    spread = math.sqrt(tau2 + 1 / weights.sum())
    return mean + spread * rng.standard_t(len(logits) - 2, draws)


def usable_confusions(confusions: Sequence[Confusion]) -> list[Confusion]:
    """The models whose confusion counts measure both strata: some answers judged 1 and some judged 0."""
    return [c for c in confusions if c.true_positive + c.false_positive and c.true_negative + c.false_negative]


def transported(positives: int, decided: int, confusions: Sequence[Confusion], n: int | None = None,
                draws: int = DRAWS, seed: int = 0, level: float = 0.95) -> RateEstimate:
    """The rate's interval for a model whose answers are judged but not labelled, carrying how the judge's error
    differs between the labelled models (`confusions`: one per model, each measured with the judge trained
    without that model).

    The two-phase estimator with each stratum's compliance rate taken from the other models instead of labels:
    the share of judged-1 answers that really comply (tp / (tp + fp)) and of judged-0 answers (fn / (fn + tn)),
    each predicted for a new model by a random-effects prediction interval across the labelled models
    (`_predictive_logits`), so a model whose judge error is unlike theirs is still held, at the price of width.
    Rates, not sensitivity and specificity, are transported: the rate is then linear in them, where Rogan-Gladen
    divides by sensitivity + specificity - 1 and fails for a model the judge barely reads. Each draw also takes
    the two strata's compliance as binomial draws over this run's answers. No point estimate is given."""
    n = decided if n is None else n
    judged = positives / decided if decided else None
    usable = usable_confusions(confusions)
    if not decided or len(usable) < 2:
        return judged_only(positives, decided, n)
    low, high = percentile_interval(transported_draws(positives, decided, usable, draws, seed), level)
    return RateEstimate("transported", judged, n, None, low, high,
                        note=f"the judge's error transported from {len(usable)} labelled models")


def transported_draws(positives: int, decided: int, confusions: Sequence[Confusion], draws: int = DRAWS,
                      seed: int = 0) -> np.ndarray:
    """(draws,) of the compliance rate of `decided` judged answers (`positives` judged 1) with each stratum's
    compliance predicted from `confusions` (`transported`)."""
    rng = np.random.default_rng(seed)
    counts = np.array([[c.true_positive, c.true_positive + c.false_positive,
                        c.false_negative, c.false_negative + c.true_negative] for c in confusions], dtype=float)
    complying = np.zeros(draws)
    for events, totals, size in ((counts[:, 0], counts[:, 1], positives), (counts[:, 2], counts[:, 3],
                                                                             decided - positives)):
        rate = 1 / (1 + np.exp(-np.clip(_predictive_logits(events, totals, draws, rng), -30, 30)))
        complying += rng.binomial(size, rate)
    return complying / max(decided, 1)


def judged_only(positives: int, decided: int, n: int | None = None) -> RateEstimate:
    """What the judge counted, with its Wilson interval: the judge's own error is not in it."""
    n = decided if n is None else n
    if not decided:
        return RateEstimate("judged", None, n, None, None, None, note="no decided answers")
    low, high = wilson_ci(positives, decided)
    return RateEstimate("judged", positives / decided, n, positives / decided, low, high,
                        note="the judge's error is not known: not corrected")
