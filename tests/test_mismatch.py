import random

import pytest

from medattack.data.mismatch import MISMATCH_STRATEGIES
from medattack.data.taxonomy import Category, load_taxonomy
from medattack.errors import ConfigError

CATALOGUE = list(load_taxonomy().categories)


@pytest.mark.parametrize("name", list(MISMATCH_STRATEGIES))
def test_every_strategy_claims_another_category(name):
    strategy = MISMATCH_STRATEGIES[name]
    for true in CATALOGUE:
        for seed in range(5):
            assert strategy(true, CATALOGUE, random.Random(seed)) != true


def test_strategy_constraints():
    rng = random.Random(0)
    for true in CATALOGUE:
        both = MISMATCH_STRATEGIES["both"](true, CATALOGUE, rng)
        assert both.modality != true.modality and both.body_part != true.body_part
        modality = MISMATCH_STRATEGIES["modality"](true, CATALOGUE, rng)
        assert modality.modality != true.modality and modality.body_part == true.body_part
        body_part = MISMATCH_STRATEGIES["body_part"](true, CATALOGUE, rng)
        assert body_part.modality == true.modality and body_part.body_part != true.body_part


def test_strategies_are_deterministic_per_seed():
    true = Category("CT", "Chest")
    for name in MISMATCH_STRATEGIES:
        picks = {MISMATCH_STRATEGIES[name](true, CATALOGUE, random.Random(3)) for _ in range(3)}
        assert len(picks) == 1


def test_no_alternative_is_a_clear_error():
    with pytest.raises(ConfigError, match="found no other category"):
        MISMATCH_STRATEGIES["any"](Category("CT", "Chest"), [Category("CT", "Chest")], random.Random(0))
