"""The statistics of the report and of the scoring calibration: intervals, paired tests, separation.

    wilson_ci(k, n)               Wilson score interval of a rate (honest at small n and at 0 or 1)
    bca_ci(values)                BCa bootstrap interval of a mean (scipy), for continuous metrics
    bootstrap_ci(values)          percentile bootstrap (kept for what is not a mean of one sample)
    interval(values, clusters)    Wilson for 0/1 values, BCa otherwise; with clusters (the image x prompt
                                  pair of each answer) Wilson at the effective n, or a cluster bootstrap
    paired_rates(a, b, clusters)  difference of two paired 0/1 vectors (same inputs; clusters: their image x
                                  prompt pairs, the effective n): Dirichlet
                                  posterior interval and its tail probability, one method for both
    paired_bootstrap(a, b, clusters) interval and two-sided p of the mean paired difference from one set of
                                  resamples, continuous values
    two_sample_test(a, b)         unpaired: Beta posteriors for rates, a bootstrap otherwise, one method each
    roc_auc(pos, neg)             how well a score separates two groups (Mann-Whitney AUC)
    separating_threshold(pos, neg) the cut between them with the best balanced accuracy
    Confusion                     a judge against labels (its sensitivity and specificity); the rates a
                                  report states from a judge and labels are in estimate.py

Paired tests compare what changed on the *same* inputs (a condition against another on one image and
prompt, an attacked question against the clean one), which is far more sensitive than comparing two
rates as if their samples were unrelated.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

RESAMPLES = 1000
Z95 = 1.959963984540054


def wilson_ci(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default): honest at small n and at 0 or 1, where a
    bootstrap of 0/1 values collapses to a point (`1.00 [1.00, 1.00] n=1`)."""
    if n == 0:
        return float("nan"), float("nan")
    return wilson_from(successes / n, n, z)


def bootstrap_means(values: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """(resamples,) means of `values` (N,) resampled with replacement, drawn in blocks to bound memory."""
    n = len(values)
    rng = np.random.default_rng(seed)
    block = max(1, min(resamples, 4_000_000 // n))
    return np.concatenate([values[rng.integers(0, n, (min(block, resamples - start), n))].mean(axis=1)
                           for start in range(0, resamples, block)])


def bootstrap_ci(values: np.ndarray, resamples: int = RESAMPLES, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (N,), resampled in blocks to bound memory."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    if n == 1 or np.all(values == values[0]):
        return float(values[0]), float(values[0])
    return percentile_interval(bootstrap_means(values, resamples, seed), level)


def percentile_interval(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central `level` share of `draws` (bootstrap means, posterior draws): their percentiles."""
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def bca_ci(values: np.ndarray, resamples: int = RESAMPLES, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Bias-corrected and accelerated bootstrap interval of the mean of `values` (N,) (scipy.stats.bootstrap).
    It corrects the percentile interval's bias and skew, which matter for the bounded, skewed relevance
    scores. Constant or single values give the point; where BCa is undefined the percentile interval."""
    from scipy.stats import bootstrap

    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return float("nan"), float("nan")
    if len(values) == 1 or np.all(values == values[0]):
        return float(values[0]), float(values[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns, and returns nan, when BCa's acceleration is undefined
        result = bootstrap((values,), np.mean, n_resamples=resamples, confidence_level=level, method="BCa",
                           random_state=np.random.default_rng(seed), vectorized=True)
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return (low, high) if np.isfinite(low) and np.isfinite(high) else bootstrap_ci(values, resamples, seed, level)


def wilson_from(rate: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson's interval of a rate observed over `n` (possibly fractional: an effective sample size)."""
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low, high = float(max(0.0, centre - half)), float(min(1.0, centre + half))
    return (0.0 if rate <= 0 else low), (1.0 if rate >= 1 else high)  # the rate itself, never a rounding off it


def cluster_sums(values: np.ndarray, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per cluster (K,): the sum of its `values` (N,) and its size, from one id per value."""
    if len(values) == 0:
        return np.zeros(0), np.zeros(0)
    _, index = np.unique(np.asarray(clusters), return_inverse=True)
    return np.bincount(index, weights=np.asarray(values, dtype=float)), np.bincount(index).astype(float)


def clustered_rate_ci(values: np.ndarray, clusters: np.ndarray) -> tuple[float, float]:
    """95% interval of a rate whose 0/1 `values` (N,) come in `clusters` (N,) (the answers of one image x prompt
    pair: its conditions and generations are not independent): Wilson's interval at the effective sample size
    N / design effect, the design effect from the ratio estimator's cluster-robust variance (Kish 1965;
    Korn and Graubard 1998 for Wilson at an effective n). The effective size lies between the number of clusters
    and N; at a rate of 0 or 1 the variance says nothing of the clustering, so the number of clusters is used.
    One value per cluster: Wilson's interval as is. On simulated pairs with a known intra-pair correlation (0.2 to
    0.6, 9 to 50 pairs of 2 to 6 answers) it held the rate 93.5-97% of the time, Wilson on the answers 70-91%."""
    values, clusters = np.asarray(values, dtype=float), np.asarray(clusters)
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    hits, sizes = cluster_sums(values, clusters)
    k = len(sizes)
    if k == n or k < 2:
        return wilson_ci(int(values.sum()), n)
    rate = float(values.mean())
    if rate in (0.0, 1.0):
        return wilson_from(rate, k)
    variance = k / (k - 1) * float(((hits - rate * sizes) ** 2).sum()) / n ** 2
    effective = n if variance <= 0 else min(float(n), max(float(k), rate * (1 - rate) / variance))
    return wilson_from(rate, effective)


def cluster_bootstrap_ci(values: np.ndarray, clusters: np.ndarray, resamples: int = RESAMPLES, seed: int = 0,
                         level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of `values` (N,) with whole `clusters` (N,) resampled (the pairs, not the
    answers); one value per cluster: the BCa interval of the values."""
    values = np.asarray(values, dtype=float)
    sums, sizes = cluster_sums(values, clusters)
    k = len(sizes)
    if k == len(values) or k < 2:
        return bca_ci(values)
    picks = np.random.default_rng(seed).integers(0, k, (resamples, k))
    return percentile_interval(sums[picks].sum(axis=1) / sizes[picks].sum(axis=1), level)


def holding(point: float, low: float, high: float) -> tuple[float, float]:
    """An interval widened, where floating point or a posterior's draws left it short, to hold its own point
    estimate: a reported rate always lies inside its interval (nan stays nan)."""
    if not (math.isfinite(point) and math.isfinite(low) and math.isfinite(high)):
        return low, high
    return min(low, point), max(high, point)


def interval(values: np.ndarray, clusters: np.ndarray | None = None) -> tuple[float, float]:
    """95% interval of the mean: Wilson for 0/1 values (rates), BCa bootstrap otherwise; with `clusters` (one
    id per value: the image x prompt pair) the clustered forms (`clustered_rate_ci`, `cluster_bootstrap_ci`).
    It always holds the mean (`holding`)."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return float("nan"), float("nan")
    rates = np.isin(values, (0.0, 1.0)).all()
    if clusters is not None:
        low, high = clustered_rate_ci(values, clusters) if rates else cluster_bootstrap_ci(values, clusters)
    elif rates:
        low, high = wilson_ci(int(values.sum()), len(values))
    else:
        low, high = bca_ci(values)
    return holding(float(values.mean()), low, high)


@dataclass(frozen=True)
class PairedResult:
    """Two measurements on the same n inputs: their means, the mean difference (b - a) with a 95%
    interval, and the two-sided p-value of "no difference"."""

    n: int
    mean_a: float
    mean_b: float
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    test: str  # PAIRED_RATES or PAIRED_SCORES
    discordant: tuple[int, int] | None = None  # 0/1 outcomes: (a=1 b=0, a=0 b=1)
    clusters: int = 0  # the image x prompt pairs the n inputs came from (n when each is its own)


PAIRED_RATES = "paired Dirichlet (Jeffreys)"
PAIRED_SCORES = "paired bootstrap"


def _tail_p(draws: np.ndarray) -> float:
    """Twice the smaller share of `draws` on either side of 0 (at most 1): the two-sided tail probability of "no
    difference" that agrees with the draws' equal-tailed interval (it excludes 0 exactly when this is below
    1 - level)."""
    if np.all(draws == 0):
        return 1.0
    return float(min(1.0, 2 * min((draws <= 0).mean(), (draws >= 0).mean())))


def _equal_tailed(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The draws' equal-tailed interval, each end an order statistic taken from its own side (so it excludes 0
    exactly when `_tail_p` is below 1 - level)."""
    ordered = np.sort(draws)
    k = max(1, math.ceil((1 - level) / 2 * len(ordered) - 1e-9))  # the k-th draw from each end
    return float(ordered[k - 1]), float(ordered[len(ordered) - k])


def _effective_share(differences: np.ndarray, clusters: np.ndarray | None) -> tuple[float, int]:
    """(effective n / n, number of clusters) of paired `differences` (N,) that come in `clusters` (N,): the design
    effect is the ratio of the mean difference's cluster-robust variance to its variance as if independent
    (Kish 1965), kept between 1 and N / K; when the differences do not vary it cannot be estimated and the worst
    case, N / K (every pair's answers alike), is taken. No clusters, or one value per cluster: (1, N)."""
    n = len(differences)
    if clusters is None:
        return 1.0, n
    sums, sizes = cluster_sums(differences, clusters)
    k = len(sizes)
    if k == n or k < 2:
        return 1.0, k
    mean = float(differences.mean())
    independent = float(((differences - mean) ** 2).mean()) / n
    if independent <= 0:
        return k / n, k
    robust = k / (k - 1) * float(((sums - mean * sizes) ** 2).sum()) / n ** 2
    return 1.0 / min(n / k, max(1.0, robust / independent)), k


def paired_rates(a: np.ndarray, b: np.ndarray, clusters: np.ndarray | None = None, draws: int = 20_000,
                 seed: int = 0) -> PairedResult:
    """Paired 0/1 outcomes `a`, `b` (N,) on the same inputs, `clusters` (N,) the image x prompt pair of each (its
    conditions and generations are not independent; None: every input its own): the difference of rates b - a
    with one method for its interval and its p-value. The four outcome cells (both 1, a only, b only, both 0) get
    a Dirichlet posterior with Jeffreys' prior (counts + 1/2), the counts scaled to the effective sample size
    (`_effective_share`: as the clustered rate intervals do); the interval is the equal-tailed 95% of the
    posterior difference (b only - a only), and p is its two-sided tail probability at 0 (`_tail_p`), so the
    interval excludes 0 exactly when p < 0.05. Unlike a Wald interval it never has zero width at small n (9 pairs
    and no discordant one still leave the discordant cells possible), and unlike McNemar's exact test beside a
    Wald interval the two never disagree."""
    a, b = np.asarray(a, dtype=int), np.asarray(b, dtype=int)
    n = len(a)
    only_a, only_b = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    if n == 0:
        nan = float("nan")
        return PairedResult(0, nan, nan, nan, nan, nan, nan, PAIRED_RATES, (0, 0), 0)
    share, k = _effective_share((b - a).astype(float), clusters)
    both = int(((a == 1) & (b == 1)).sum())
    cells = np.array([both, only_a, only_b, n - both - only_a - only_b], dtype=float) * share + 0.5
    posterior = np.random.default_rng(seed).dirichlet(cells, draws)
    difference = posterior[:, 2] - posterior[:, 1]
    low, high = _equal_tailed(difference)
    return PairedResult(n, float(a.mean()), float(b.mean()), (only_b - only_a) / n, float(low), float(high),
                        _tail_p(difference), PAIRED_RATES, (only_a, only_b), k)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, clusters: np.ndarray | None = None,
                     resamples: int = RESAMPLES * 4, seed: int = 0) -> PairedResult:
    """Paired bootstrap of the mean difference b - a over the same inputs (N,): the pairs are resampled together,
    whole `clusters` (N,: the image x prompt pair of each) at a time when given; the interval is the resampled
    means' equal-tailed 95% and p their two-sided tail probability at 0 (`_tail_p`): one set of resamples gives
    both, so they never disagree."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n = len(a)
    if n == 0:
        nan = float("nan")
        return PairedResult(0, nan, nan, nan, nan, nan, nan, PAIRED_SCORES, None, 0)
    differences = b - a
    sums, sizes = cluster_sums(differences, clusters if clusters is not None else np.arange(n))
    k = len(sizes)
    if k == n:
        means = bootstrap_means(differences, resamples, seed)
    else:
        picks = np.random.default_rng(seed).integers(0, k, (resamples, k))
        means = sums[picks].sum(axis=1) / sizes[picks].sum(axis=1)
    low, high = _equal_tailed(means)
    return PairedResult(n, float(a.mean()), float(b.mean()), float(differences.mean()), low, high,
                        _tail_p(means), PAIRED_SCORES, None, k)


def paired_test(a: np.ndarray, b: np.ndarray, clusters: np.ndarray | None = None) -> PairedResult:
    """`paired_rates` for 0/1 outcomes, `paired_bootstrap` otherwise; `clusters` (N,): the image x prompt pair of
    each input (None: each its own)."""
    both = np.concatenate([np.asarray(a, dtype=float), np.asarray(b, dtype=float)])
    if len(both) and np.isin(both, (0.0, 1.0)).all():
        return paired_rates(a, b, clusters)
    return paired_bootstrap(a, b, clusters)


@dataclass(frozen=True)
class TwoSampleResult:
    """Two independent groups of measurements (n_a and n_b values): their means, the difference (b - a) with
    a 95% interval, and the two-sided p-value of "no difference"."""

    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    test: str  # UNPAIRED_RATES or UNPAIRED_SCORES


UNPAIRED_RATES = "Beta posteriors (Jeffreys)"
UNPAIRED_SCORES = "bootstrap"


def two_sample_test(a: np.ndarray, b: np.ndarray, resamples: int = RESAMPLES * 4, seed: int = 0,
                    ) -> TwoSampleResult:
    """Unpaired, with the interval and p from one set of draws (`_equal_tailed`, `_tail_p`), so they never
    disagree: for 0/1 outcomes each group's rate from its Jeffreys posterior Beta(k + 1/2, n - k + 1/2) (honest at
    small n and at 0 or 1); otherwise each group resampled on its own (the difference of resampled means)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    nan = float("nan")
    if len(a) == 0 or len(b) == 0:
        return TwoSampleResult(len(a), len(b), nan, nan, nan, nan, nan, nan, "none (an empty group)")
    difference = float(b.mean() - a.mean())
    rng = np.random.default_rng(seed)
    if np.isin(np.concatenate([a, b]), (0.0, 1.0)).all():
        def rate(x: np.ndarray) -> np.ndarray:
            return rng.beta(x.sum() + 0.5, len(x) - x.sum() + 0.5, resamples)

        draws, test = rate(b) - rate(a), UNPAIRED_RATES
    else:
        draws = rng.choice(b, (resamples, len(b))).mean(axis=1) - rng.choice(a, (resamples, len(a))).mean(axis=1)
        test = UNPAIRED_SCORES
    low, high = _equal_tailed(draws)
    return TwoSampleResult(len(a), len(b), float(a.mean()), float(b.mean()), difference, low, high, _tail_p(draws),
                           test)


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve of a score that should be higher for `positive` than for `negative`
    (the Mann-Whitney probability that a random positive outscores a random negative, ties count half);
    nan when either side is empty."""
    positive, negative = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([positive, negative]))
    u = ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2
    return float(u / (len(positive) * len(negative)))


def separating_threshold(positive: np.ndarray, negative: np.ndarray) -> float:
    """The cut that best separates higher `positive` from lower `negative` scores: the midpoint between
    neighbouring values that maximises balanced accuracy (Youden's J); ties go to the lower cut."""
    positive, negative = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    values = np.unique(np.concatenate([positive, negative]))
    if len(values) == 1:
        return float(values[0])
    cuts = (values[:-1] + values[1:]) / 2
    j = [(positive >= c).mean() + (negative < c).mean() for c in cuts]
    return float(cuts[int(np.argmax(j))])


@dataclass(frozen=True)
class Confusion:
    """A judge measured against labels: counts of (labelled, judged) pairs."""

    true_positive: int  # labelled 1, judged 1
    false_negative: int  # labelled 1, judged 0
    false_positive: int  # labelled 0, judged 1
    true_negative: int  # labelled 0, judged 0

    @property
    def sensitivity(self) -> float:
        """Share of labelled positives the judge finds (recall); nan without positives."""
        positives = self.true_positive + self.false_negative
        return self.true_positive / positives if positives else float("nan")

    @property
    def specificity(self) -> float:
        """Share of labelled negatives the judge leaves alone; nan without negatives."""
        negatives = self.true_negative + self.false_positive
        return self.true_negative / negatives if negatives else float("nan")

    @property
    def kappa(self) -> float:
        """Cohen's kappa of the judged against the labelled answers; nan without answers."""
        n = self.true_positive + self.false_negative + self.false_positive + self.true_negative
        if n == 0:
            return float("nan")
        observed = (self.true_positive + self.true_negative) / n
        labelled = (self.true_positive + self.false_negative) / n
        judged = (self.true_positive + self.false_positive) / n
        chance = labelled * judged + (1 - labelled) * (1 - judged)
        return (observed - chance) / (1 - chance) if chance < 1 else 1.0

    @classmethod
    def of(cls, truth: np.ndarray, judged: np.ndarray) -> Confusion:
        truth, judged = np.asarray(truth).astype(int), np.asarray(judged).astype(int)
        return cls(int(((truth == 1) & (judged == 1)).sum()), int(((truth == 1) & (judged == 0)).sum()),
                   int(((truth == 0) & (judged == 1)).sum()), int(((truth == 0) & (judged == 0)).sum()))
