"""Argument checks with messages that name the argument, the value and what was expected."""

from __future__ import annotations

import numbers
from collections.abc import Iterable


def check_positive_int(name: str, value, *, allow_zero: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is an int > 0 (>= 0 with ``allow_zero``)."""
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        kind = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"{name} must be {kind} integer, got {value!r}.")


def check_positive(name: str, value) -> None:
    """Raise ``ValueError`` unless ``value`` is a real number > 0."""
    # numbers.Real's stub declares only < and <=; the real types (int, float, numpy's) all have >.
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:  # type: ignore[operator]
        raise ValueError(f"{name} must be a positive number, got {value!r}.")


def check_non_negative(name: str, value) -> None:
    """Raise ``ValueError`` unless ``value`` is a real number >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:  # type: ignore[operator]
        raise ValueError(f"{name} must be a non-negative number, got {value!r}.")


def check_range(name: str, value) -> None:
    """Raise ``ValueError`` unless ``value`` is a pair ``(low, high)`` with ``low <= high``."""
    if not (isinstance(value, tuple) and len(value) == 2 and value[0] <= value[1]):
        raise ValueError(f"{name} must be a pair (low, high) with low <= high, got {value!r}.")


def check_choice(name: str, value, choices: Iterable) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}.")
