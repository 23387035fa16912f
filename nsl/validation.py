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
import warnings
from collections.abc import Iterable
from typing import Any, overload


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


#: How many players a ranking separates when ``top_k`` is None, capped at N − 1 (see :func:`resolve_top_k`).
DEFAULT_TOP_K = 10


@overload
def resolve_top_k(top_k: Any, n_players: int, *, name: str = "top_k") -> int: ...
@overload
def resolve_top_k(top_k: Any, n_players: None, *, name: str = "top_k") -> int | None: ...


def resolve_top_k(top_k: Any, n_players: int | None, *, name: str = "top_k") -> int | None:
    """The k of a top-k: ``top_k`` checked against the N players, or ``min(10, N − 1)`` when it is None.

    The one place every estimator, metric and the callback resolve and check a ``top_k``: it must leave at least
    one player outside it, so it is an int in [1, N − 1]. Before N is known (a constructor, a config) pass
    ``n_players=None``: the type and the lower end are checked and ``top_k`` comes back as given (None stays None).

        >>> resolve_top_k(None, 104), resolve_top_k(None, 6), resolve_top_k(3, 6)
        (10, 5, 3)
        >>> resolve_top_k(6, 6)
        Traceback (most recent call last):
        ...
        ValueError: top_k=6 is not accepted for N=6 players; use an int in [1, 5] or None (min(10, N − 1)).
    """
    if n_players is not None and top_k is None:
        return max(1, min(DEFAULT_TOP_K, n_players - 1))  # a lone player is its own top-1
    if top_k is None:
        return None
    ok = isinstance(top_k, numbers.Integral) and not isinstance(top_k, bool) and top_k >= 1
    if ok and (n_players is None or top_k <= n_players - 1):
        return int(top_k)
    where = "" if n_players is None else f" for N={n_players} players"
    high = "N − 1" if n_players is None else n_players - 1
    accepted = "None (one player has no top-k to choose)" if n_players is not None and n_players < 2 else (
        f"an int in [1, {high}] or None (min(10, N − 1))"
    )
    raise ValueError(f"{name}={top_k!r} is not accepted{where}; use {accepted}.")


def renamed_argument(old: str, old_value: Any, new: str, new_value: Any, default: Any) -> Any:
    """The value of an argument renamed from ``old`` to ``new``, for callers and configs that still use the old name.

    ``old_value`` is None unless the caller used the old name; then it wins, with a ``FutureWarning`` (shown by
    default, so a user whose YAML config still says ``old`` sees it; a ``DeprecationWarning`` would stay hidden).
    Giving both names (``new_value`` other than its ``default``) is a mistake, not a choice between them.
    """
    if old_value is None:
        return new_value
    if new_value != default:
        raise TypeError(f"{old}={old_value!r} and {new}={new_value!r} are the same option; give only {new}.")
    warnings.warn(f"{old}= is renamed {new}= (same meaning); {old}= will be removed.", FutureWarning, stacklevel=3)
    return old_value


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
