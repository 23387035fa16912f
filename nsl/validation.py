"""Argument checks called at the door of every public class and function, so the math stays readable.

Each check raises ``ValueError`` naming the argument, the bad value and what is accepted, e.g.

    >>> from nsl.validation import check_int
    >>> check_int("top_k", 0, low=1)
    Traceback (most recent call last):
    ...
    ValueError: top_k=0 is not accepted; use an int ≥ 1.
    >>> check_int("eval_size", None, low=1, optional=True)  # None passes where it means "unset"
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any


def _fail(name: str, value: Any, accepted: str, optional: bool) -> None:
    accepted = f"None or {accepted}" if optional else accepted
    raise ValueError(f"{name}={value!r} is not accepted; use {accepted}.")


def _range(kind: str, low: float | None, high: float | None, high_open: bool = False, low_open: bool = False) -> str:
    article = "an" if kind == "int" else "a"
    if low is not None and high is not None:
        return f"{article} {kind} in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{article} {kind} {'>' if low_open else '≥'} {low}"
    if high is not None:
        return f"{article} {kind} ≤ {high}"
    return f"{article} {kind}"


def check_int(
    name: str, value: Any, *, low: int | None = None, high: int | None = None, optional: bool = False
) -> None:
    """``value`` is an int (not a bool) in ``[low, high]`` (either bound may be left out), or None if ``optional``."""
    if value is None and optional:
        return
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        _fail(name, value, _range("int", low, high), optional)


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    positive: bool = False,
    high_open: bool = False,
    low_open: bool = False,
    optional: bool = False,
) -> None:
    """``value`` is a finite real number (not a bool) within the bounds (> 0 with ``positive``; a bound excluded
    with ``low_open``/``high_open``), or None if ``optional``."""
    if value is None and optional:
        return
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (not positive or value > 0) and (low is None or (value > low if low_open else value >= low))
    ok = ok and (high is None or (value < high if high_open else value <= high))
    if not ok:
        accepted = (
            "a positive number" if positive and high is None else _range("number", low, high, high_open, low_open)
        )
        _fail(name, value, accepted, optional)


def check_probability(name: str, value: Any) -> None:
    """A drop probability in [0, 1) (1 would drop everything)."""
    check_number(name, value, low=0, high=1, high_open=True)


def check_bool(name: str, value: Any) -> None:
    """``value`` is True or False (a 0/1 or a string is a configuration mistake, not a flag)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is not accepted; use True or False.")


def check_choice(name: str, value: Any, choices: Iterable[str]) -> None:
    """``value`` is one of ``choices`` (a tuple of names, or a :class:`~nsl.registry.Registry`)."""
    names = tuple(choices)
    if not isinstance(value, str) or value not in names:
        raise ValueError(f"{name}={value!r} is not supported; use one of {names}.")


def check_options(what: str, options: dict[str, Any], accepted: Iterable[str]) -> None:
    """Every key of ``options`` is one of ``accepted`` (for mappings that come from YAML)."""
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"unknown {what} option(s) {unknown}; accepted: {sorted(accepted)}.")
