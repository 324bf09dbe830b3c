"""Numbers as the records and the report show them: one place decides what is missing and how it reads.

    finite(value)          a float, or None for None, NaN, pandas' NA and infinities (JSON has no NaN)
    shown(value, spec)     the value formatted with `spec` (".3f", "g"), or `missing` ("-") when it is not finite
"""

from __future__ import annotations

import math
from typing import Any


def finite(value: Any) -> float | None:
    """`value` as a float, or None when it is missing or not finite (None, NaN, pandas.NA, +/-inf)."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def shown(value: Any, spec: str = ".3f", missing: str = "-") -> str:
    """`value` formatted with `spec`, or `missing` when it is not a finite number."""
    number = finite(value)
    return missing if number is None else format(number, spec)
