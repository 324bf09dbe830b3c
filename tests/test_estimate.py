"""The rate that stands: the two-phase estimate from a target's labels, the transported interval without them, and
their coverage of the truth on the shared labelled answers (each labelled model in turn as the user's model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medattack.estimate import Stratum, further_labels, judged_only, stratified_variance, transported, two_phase
from medattack.labelling.design import MIN_SHARE, Answer, labelling_order, shares
from medattack.stats import Z95, Confusion

SHARED_LABELS = Path(__file__).resolve().parents[2] / "shared" / "data" / "judge-labels"


def test_every_answer_labelled_gives_the_exact_rate_with_no_width():
    found = two_phase([Stratum("judged 1", 10, 10, 7), Stratum("judged 0", 30, 30, 3)])
    assert found.rate == pytest.approx(0.25) and found.ci_low == found.ci_high == pytest.approx(0.25)
    assert found.further == 0


def test_the_point_is_the_weighted_stratum_rates_and_the_interval_holds_it():
    strata = [Stratum("judged 1", 40, 10, 6), Stratum("judged 0", 160, 20, 2)]
    found = two_phase(strata, judged=0.2)
    assert found.rate == pytest.approx((6 + 30 * 0.6 + 2 + 140 * 0.1) / 200)
    assert found.ci_low < found.rate < found.ci_high
    assert found.labels == 30 and found.labelled_positives == 8 and found.kind == "two-phase"


def test_more_labels_narrow_the_interval_and_a_stratum_without_labels_widens_it():
    def width(labelled_0: int, positives_0: int, labelled_1: int = 10) -> float:
        found = two_phase([Stratum("judged 1", 40, labelled_1, labelled_1 // 2),
                           Stratum("judged 0", 160, labelled_0, positives_0)])
        return found.ci_high - found.ci_low

    assert width(40, 4) < width(20, 2) < width(10, 1)
    unmeasured = two_phase([Stratum("judged 1", 40, 10, 5), Stratum("judged 0", 160, 0, 0)])
    assert unmeasured.ci_high - unmeasured.ci_low > 0.6 and "judged 0" in unmeasured.note


def test_further_labels_reach_the_goal_and_go_where_they_shrink_the_variance_most():
    strata = [Stratum("judged 1", 100, 10, 5), Stratum("judged 0", 900, 10, 1)]
    more, where = further_labels(strata, goal=0.05)
    assert more == sum(where.values()) > 0
    after = [Stratum(s.name, s.size, s.labelled + where.get(s.name, 0), s.positives) for s in strata]
    rates = {s.name: s.smoothed() for s in strata}
    assert stratified_variance(after, rates) <= (0.05 / Z95) ** 2
    one_fewer = [Stratum(s.name, s.size, s.labelled + where.get(s.name, 0) - (s.name == "judged 0"), s.positives)
                 for s in strata]
    assert stratified_variance(one_fewer, rates) > (0.05 / Z95) ** 2  # no label more than needed
    assert where["judged 0"] > where.get("judged 1", 0)  # the big stratum carries most of the variance
    assert further_labels([Stratum("judged 1", 5, 5, 2)], goal=0.05) == (0, {})


def test_without_labels_no_point_is_given_and_the_interval_spans_the_models_errors():
    alike = [Confusion(30, 10, 10, 150), Confusion(28, 12, 9, 151), Confusion(32, 8, 12, 148)]
    found = transported(20, 100, alike)
    assert found.kind == "transported" and found.rate is None and found.ci_low < 0.2 < found.ci_high
    four_alike = transported(20, 100, [*alike, Confusion(29, 11, 11, 149)])
    one_unlike = transported(20, 100, [*alike, Confusion(8, 27, 3, 162)])  # a model the judge barely reads
    assert one_unlike.ci_high - one_unlike.ci_low > four_alike.ci_high - four_alike.ci_low
    assert four_alike.ci_high - four_alike.ci_low < found.ci_high - found.ci_low  # a fourth model narrows it
    assert transported(20, 100, alike[:1]).kind == "judged"  # one model says nothing of the spread
    assert judged_only(0, 0).rate is None and judged_only(3, 10).ci_low < 0.3 < judged_only(3, 10).ci_high


def test_the_labelling_order_is_a_stratified_sample_at_every_prefix_and_fixed_by_the_seed():
    answers = [Answer(f"r{k:03d}", "judged 1" if k % 10 == 0 else "judged 0") for k in range(300)]
    order = labelling_order(answers, seed=3)
    assert sorted(order) == sorted(a.response_id for a in answers)
    assert order == labelling_order(list(reversed(answers)), seed=3)  # the order on disk does not matter
    assert order != labelling_order(answers, seed=4)
    target = shares({"judged 1": 30, "judged 0": 270})
    assert target["judged 1"] >= MIN_SHARE
    stratum = {a.response_id: a.stratum for a in answers}
    for prefix in (10, 20, 40):
        taken = sum(stratum[r] == "judged 1" for r in order[:prefix])
        assert abs(taken - target["judged 1"] * prefix) <= 1


@pytest.fixture(scope="module")
def held_out():
    """Each labelled model judged by the embedded judge's head trained without it: (verdicts, labels, models,
    features, rule verdicts)."""
    if not SHARED_LABELS.is_dir():
        pytest.skip(f"the shared labels are not at {SHARED_LABELS}")
    from medattack.scoring.judges.head import L2, grouped_out_of_fold
    from medattack.scoring.judges.labels import labels_features, read_labels, rule_verdicts

    labels = read_labels(sorted(SHARED_LABELS.glob("*.csv")))
    x, ruled = labels_features(labels), rule_verdicts(labels)
    models = np.asarray(labels.models)
    _, judged = grouped_out_of_fold(x, labels.jailbroken, models, L2, ruled)
    return judged, labels.jailbroken, models, x, ruled


def _two_phase_draw(verdicts: np.ndarray, truth: np.ndarray, labels: int, seed: int):
    names = np.where(verdicts == 1, "judged 1", "judged 0")
    answers = [Answer(str(k), str(name)) for k, name in enumerate(names)]
    drawn = [int(rid) for rid in labelling_order(answers, seed)[:labels]]
    strata = [Stratum(name, int((names == name).sum()), sum(names[k] == name for k in drawn),
                      int(sum(truth[k] for k in drawn if names[k] == name))) for name in ("judged 1", "judged 0")]
    return two_phase(strata, float(verdicts.mean()), draws=2000, seed=seed)


def test_forty_labels_hold_each_models_labelled_rate_in_at_least_93_percent_of_draws(held_out, capsys):
    judged, truth, models, _, _ = held_out
    widths = {}
    for model in sorted(set(models)):
        mine = models == model
        rate = truth[mine].mean()
        for labels in (20, 40, 60):
            found = [_two_phase_draw(judged[mine], truth[mine], labels, seed) for seed in range(200)]
            held = np.mean([f.ci_low <= rate <= f.ci_high for f in found])
            widths[(model, labels)] = (float(np.mean([f.ci_high - f.ci_low for f in found])), float(held))
            if labels == 40:
                assert held >= 0.93, (model, held)
    with capsys.disabled():
        print("\ntwo-phase, mean 95% width (share of 200 draws holding the labelled rate):")
        for (model, labels), (width, held) in sorted(widths.items()):
            print(f"  {model:10s} {labels} labels: {width:.3f} ({held:.3f})")


def test_without_labels_the_transported_interval_holds_every_held_out_models_rate(held_out):
    from medattack.scoring.judges.head import L2, grouped_out_of_fold

    judged, truth, models, x, ruled = held_out
    for model in sorted(set(models)):
        rest = models != model  # the head and the spread both measured without the user's model
        _, inner = grouped_out_of_fold(x[rest], truth[rest], models[rest], L2, ruled[rest])
        spread = [Confusion.of(truth[rest][models[rest] == m], inner[models[rest] == m])
                  for m in sorted(set(models[rest]))]
        mine = models == model
        found = transported(int(judged[mine].sum()), int(mine.sum()), spread)
        assert found.kind == "transported" and found.ci_low <= truth[mine].mean() <= found.ci_high, model
