"""Strategies that choose the claimed (false) attribute for the `mismatch` and `both` conditions.

Every strategy returns a category different from the true one:

- `both` (default): another listed category whose modality and body part both differ,
  e.g. "CT and Chest" -> "Fundus and Retina", so the claim is false on both counts.
- `uniform` (3MAD's rule, `--preset paper`): uniformly any other category *present in the run's data*,
  so some claims share the modality or the body part (in 3MAD-Tiny-1K 11% share the modality, 4% the
  body part).
- `modality`: another modality, same body part ("CT and Chest" -> "X-ray and Chest"), preferring
  categories the taxonomy lists; otherwise the body part is kept with any other modality.
- `body_part`: same modality, another body part ("CT and Chest" -> "CT and Brain"), preferring the
  modality's own body parts; otherwise any other body part of the taxonomy.
- `any`: any other category the taxonomy lists (also those with no image in the run).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from medattack.data.taxonomy import Category
from medattack.errors import ConfigError
from medattack.registry import Registry

MismatchStrategy = Callable[[Category, Sequence[Category], random.Random], Category]
MISMATCH_STRATEGIES: Registry[MismatchStrategy] = Registry("mismatch strategy", plugins="medattack.data.mismatch")
FROM_DATA = frozenset({"uniform"})  # strategies whose catalogue is the categories present in the run's data


def _pick(options: Sequence[Category], rng: random.Random, true: Category, strategy: str) -> Category:
    options = sorted(set(options) - {true}, key=lambda c: (c.modality, c.body_part))
    if not options:
        raise ConfigError(
            f"mismatch strategy {strategy!r} found no other category for {true.attribute!r}; "
            "add categories to the taxonomy or choose another strategy."
        )
    return rng.choice(options)


@MISMATCH_STRATEGIES.register("both")
def other_modality_and_body_part(
    true: Category, catalogue: Sequence[Category], rng: random.Random
) -> Category:
    options = [c for c in catalogue if c.modality != true.modality and c.body_part != true.body_part]
    return _pick(options, rng, true, "both")


@MISMATCH_STRATEGIES.register("modality")
def other_modality(true: Category, catalogue: Sequence[Category], rng: random.Random) -> Category:
    listed = [c for c in catalogue if c.body_part == true.body_part and c.modality != true.modality]
    if not listed:
        modalities = {c.modality for c in catalogue} - {true.modality}
        listed = [Category(m, true.body_part) for m in modalities]
    return _pick(listed, rng, true, "modality")


@MISMATCH_STRATEGIES.register("body_part")
def other_body_part(true: Category, catalogue: Sequence[Category], rng: random.Random) -> Category:
    listed = [c for c in catalogue if c.modality == true.modality and c.body_part != true.body_part]
    if not listed:
        parts = {c.body_part for c in catalogue} - {true.body_part}
        listed = [Category(true.modality, p) for p in parts]
    return _pick(listed, rng, true, "body_part")


@MISMATCH_STRATEGIES.register("any")
def any_other(true: Category, catalogue: Sequence[Category], rng: random.Random) -> Category:
    return _pick(list(catalogue), rng, true, "any")


@MISMATCH_STRATEGIES.register("uniform")
def uniform_other(true: Category, catalogue: Sequence[Category], rng: random.Random) -> Category:
    """3MAD's rule; the builder gives it the categories present in the data (FROM_DATA)."""
    return _pick(list(catalogue), rng, true, "uniform")
