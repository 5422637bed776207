"""Argument checks shared by the data modules' public functions (samplers, datasets, augmentation, synthesis): a
bool is not an int here, since `True` passed as a batch size or seed is a caller's mistake, not a 1."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any


def is_int(value: Any) -> bool:
    """An integer (numpy's included), but not a bool."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def is_positive_number(value: Any) -> bool:
    """A finite real number above zero, but not a bool."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0
