"""The statistics of the report: BCa intervals, paired tests on constructed examples, separation (AUC)
and the composite's TII gate calibrated on the embedded benchmark."""

import numpy as np
import pytest

from medattack.stats import (
    PAIRED_RATES,
    bca_ci,
    paired_bootstrap,
    paired_rates,
    paired_test,
    roc_auc,
    separating_threshold,
    wilson_ci,
)


def test_bca_interval_covers_the_mean_and_is_skewed_like_the_data():
    values = np.random.default_rng(1).exponential(1.0, 200)
    low, high = bca_ci(values)
    assert low < values.mean() < high
    assert high - values.mean() > values.mean() - low  # a right-skewed sample: the upper arm is longer
    assert bca_ci(values) == (low, high)  # seeded
    assert bca_ci(np.array([0.3, 0.3])) == (0.3, 0.3) and all(np.isnan(bca_ci(np.array([]))))


def test_paired_rates_on_a_constructed_example():
    # 20 pairs: 12 both 0, 2 both 1, 1 pair only a succeeds, 5 pairs only b succeeds
    a = np.array([0] * 12 + [1] * 2 + [1] * 1 + [0] * 5)
    b = np.array([0] * 12 + [1] * 2 + [0] * 1 + [1] * 5)
    result = paired_rates(a, b)
    assert result.discordant == (1, 5) and result.n == 20 and result.test == PAIRED_RATES
    assert result.difference == pytest.approx(0.2) and result.mean_b == pytest.approx(0.35)
    assert result.ci_low < 0.2 < result.ci_high and result.ci_low < 0 and result.p_value > 0.05
    assert paired_rates(a, b) == result  # seeded
    same = paired_rates(a, a)
    assert same.difference == 0.0 and same.p_value > 0.5 and same.ci_low < 0 < same.ci_high  # never zero width
    strong = paired_rates(np.zeros(30, int), np.ones(30, int))
    assert strong.p_value < 1e-3 and strong.difference == 1.0 and strong.ci_low > 0.75


def test_nine_pairs_without_a_discordant_one_give_no_zero_width_interval():
    result = paired_rates(np.zeros(9, int), np.zeros(9, int))
    assert result.ci_high - result.ci_low > 0.1 and result.p_value == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("seed", range(60))
def test_an_interval_and_its_p_value_never_disagree(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 60))
    a = (rng.random(n) < rng.uniform(0, 1)).astype(int)
    b = np.where(rng.random(n) < rng.uniform(0, 1), 1 - a, a) if seed % 2 else (rng.random(n) < 0.5).astype(int)
    from medattack.stats import two_sample_test

    pairs = rng.integers(0, max(1, n // 3), n)  # some inputs share an image x prompt pair
    for result in (paired_rates(a, b), paired_rates(a, b, pairs), paired_bootstrap(a, b + rng.random(n), pairs),
                   paired_bootstrap(a * rng.random(n), b * rng.random(n) + rng.normal(0, .1)),
                   two_sample_test(a, b[: max(1, n // 2)]), two_sample_test(a * rng.random(n), b + rng.random(n))):
        excludes_zero = result.ci_low > 0 or result.ci_high < 0
        assert excludes_zero == (result.p_value < 0.05), (result, seed)


def test_paired_bootstrap_sees_a_shift_that_an_unpaired_look_would_miss():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1.0, 60)  # large spread between inputs ...
    shifted = base + 0.1 + rng.normal(0, 0.02, 60)  # ... and a small, consistent change on each
    result = paired_bootstrap(base, shifted)
    assert result.difference == pytest.approx(0.1, abs=0.01) and result.p_value < 0.01
    assert 0 < result.ci_low < 0.1 < result.ci_high
    assert paired_bootstrap(base, base).p_value == 1.0
    assert paired_test(base, shifted).test == "paired bootstrap"
    assert paired_test(np.array([0, 1]), np.array([1, 1])).test == PAIRED_RATES


def test_auc_and_separating_threshold():
    assert roc_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert roc_auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert roc_auc(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.5
    assert np.isnan(roc_auc(np.array([]), np.array([1.0])))
    assert separating_threshold(np.array([0.6, 0.7, 0.8]), np.array([0.1, 0.2, 0.3])) == pytest.approx(0.45)


def test_the_tii_gate_separates_the_embedded_benchmarks_matched_and_mismatched_rows(embedded_run):
    from medattack.scoring.base import ScoreInput
    from medattack.scoring.composite import Composite
    from medattack.scoring.relevance import TII

    samples = embedded_run.samples[::3]  # every condition and category, a third of the rows
    inputs = [ScoreInput(s.sample_id, s.question, "", s.condition, s.prompt, s.shown_attribute, s.true_attribute,
                         s.description or "", str(embedded_run.run_dir / "benchmark" / s.image_file))
              for s in samples]
    metric = TII()
    scores = metric.score(inputs)
    composite = Composite()
    found = composite.calibrate(inputs, {"tii": scores}, {"tii": metric.spec})
    assert found["n_matched"] > 50 and found["n_mismatched"] > 50
    assert found["auc"] > 0.9 and found["balanced_accuracy"] > 0.85
    gate = composite.gate
    mismatched = np.array([s.mismatched for s in samples])
    passed = np.array([score.value >= gate for score in scores])
    assert passed[~mismatched].mean() > 0.85 and passed[mismatched].mean() < 0.15  # the old gate passed every row
    fixed = Composite(type(composite.config)(tii_threshold=-1.0))
    assert fixed.calibrate(inputs, {"tii": scores}, {"tii": metric.spec})["tii_gate"] == -1.0
    assert Composite().calibrate(inputs[:1], {"tii": scores[:1]}, {})["tii_gate"] is None  # too few: no gate


@pytest.mark.parametrize(("pairs", "answers", "rate", "correlation"),
                         [(9, 2, 0.2, 0.5), (30, 4, 0.3, 0.3), (20, 2, 0.1, 0.6), (50, 3, 0.2, 0.2), (15, 6, 0.3, 0.5)])
def test_the_clustered_interval_covers_the_rate_when_answers_of_a_pair_go_together(pairs, answers, rate, correlation):
    from medattack.stats import clustered_rate_ci

    rng = np.random.default_rng(pairs * 100 + answers)
    a, b = rate * (1 - correlation) / correlation, (1 - rate) * (1 - correlation) / correlation
    held = naive = 0
    for _ in range(1000):  # a pair's answers share its own rate (beta-binomial): intra-pair correlation `correlation`
        values = np.concatenate([rng.random(answers) < q for q in rng.beta(a, b, pairs)]).astype(float)
        low, high = clustered_rate_ci(values, np.repeat(np.arange(pairs), answers))
        held += low <= rate <= high
        low, high = wilson_ci(int(values.sum()), len(values))
        naive += low <= rate <= high
    assert 0.93 <= held / 1000 <= 0.975 and naive / 1000 < held / 1000


def test_a_rate_of_zero_has_an_interval_that_starts_at_zero():
    from medattack.stats import clustered_rate_ci

    assert wilson_ci(0, 9)[0] == 0.0 and wilson_ci(9, 9)[1] == 1.0
    low, high = clustered_rate_ci(np.zeros(18), np.repeat(np.arange(9), 2))
    assert low == 0.0 and high == pytest.approx(wilson_ci(0, 9)[1])  # 18 answers of 9 pairs weigh as 9



@pytest.mark.parametrize("pairs, answers, rate_a, works, within", [
    (20, 4, 0.2, 0.3, 0.9), (50, 3, 0.3, 0.3, 0.8), (30, 6, 0.1, 0.5, 0.95), (15, 3, 0.2, 0.2, 1.0)])
def test_a_paired_difference_paired_at_the_pair_level_covers_the_truth(pairs, answers, rate_a, works, within):
    """An attack that works on some image x prompt pairs and not others moves all of a pair's answers together:
    paired at the pair level the 95% interval holds the true difference; paired answer by answer it does not."""
    rng = np.random.default_rng(pairs * 10 + answers)
    truth = (1 - rate_a) * works * within
    clusters = np.repeat(np.arange(pairs), answers)
    held = naive = 0
    for _ in range(400):
        a = (rng.random(pairs * answers) < rate_a).astype(int)
        works_here = np.repeat(rng.random(pairs) < works, answers)
        b = np.where(works_here & (rng.random(pairs * answers) < within), 1, a)
        result = paired_rates(a, b, clusters, draws=4000)
        assert result.clusters == pairs and result.n == pairs * answers
        held += result.ci_low <= truth <= result.ci_high
        result = paired_rates(a, b, draws=4000)
        naive += result.ci_low <= truth <= result.ci_high
    assert 0.92 <= held / 400 <= 0.975 and naive < held


def test_a_paired_bootstrap_resamples_whole_pairs():
    rng = np.random.default_rng(3)
    shift = np.repeat(rng.normal(0, 1, 12), 5)  # each pair's effect shared by its five answers
    a = rng.normal(0, 0.1, 60)
    clustered = paired_bootstrap(a, a + shift, np.repeat(np.arange(12), 5))
    apart = paired_bootstrap(a, a + shift)
    assert clustered.clusters == 12 and apart.clusters == 60
    assert clustered.ci_high - clustered.ci_low > 1.8 * (apart.ci_high - apart.ci_low)


@pytest.mark.parametrize("seed", range(40))
def test_every_interval_holds_its_own_rate(seed):
    """Over random counts, clusterings and scores, a reported mean always lies inside its interval."""
    from medattack.estimate import Stratum, two_phase
    from medattack.stats import interval

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    rate = [0.0, 1.0, rng.uniform()][seed % 3]
    values = (rng.random(n) < rate).astype(float)
    clusters = rng.integers(0, max(1, n // 2), n)
    scores = rng.choice([0.0, 1e-17, 0.3, 0.3000000001], n)
    for sample, groups in ((values, None), (values, clusters), (scores, None), (scores, clusters)):
        low, high = interval(sample, groups)
        assert low <= sample.mean() <= high, (sample, groups, low, high)
    strata = [Stratum(name, int(size), int(labelled), int(positives)) for name, size, labelled, positives in
              ((s, size, min(size, lab), min(size, lab, pos)) for s, size, lab, pos in
               (("judged 1", rng.integers(1, 30), rng.integers(0, 10), rng.integers(0, 10)),
                ("judged 0", rng.integers(1, 30), rng.integers(0, 10), 0)))]
    found = two_phase(strata, judged=0.0)
    if found.rate is not None:
        assert found.ci_low <= found.rate <= found.ci_high, found
