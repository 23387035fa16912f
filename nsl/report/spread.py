"""Mean ± sd over repeated runs (seeds), and when two such numbers clearly differ.

A number from one trained network cannot tell a finding from luck. Runs repeated over seeds are summarised as
mean ± sample standard deviation (:class:`Spread`); two summaries differ *clearly* when their means are further
apart than the sum of their spreads (:func:`clear`, ``|Δmean| > sd_a + sd_b``), a deliberately conservative rule
for the handful of seeds a study can afford. ``nsl-report`` pools a multirun's seeds with these, and so do the
paper-figure scripts.

    >>> from nsl.report.spread import clear, spread
    >>> a, b = spread([0.90, 0.92, 0.91]), spread([0.80, 0.83, 0.81])
    >>> f"{a:.3f}", clear(a, b), clear(a, spread([0.905, 0.93]))
    ('0.910 ± 0.010', True, False)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation of one measure over ``n`` runs (sd = 0 for one run)."""

    mean: float
    sd: float
    n: int

    def __format__(self, spec: str) -> str:
        spec = spec or ".3f"
        return f"{format(self.mean, spec)} ± {format(self.sd, spec)}"

    def __str__(self) -> str:
        return format(self, "")

    @property
    def low(self) -> float:
        return self.mean - self.sd

    @property
    def high(self) -> float:
        return self.mean + self.sd


def spread(values: Iterable[float]) -> Spread:
    """:class:`Spread` of ``values`` (NaNs dropped; a NaN mean when nothing is left)."""
    xs = [float(v) for v in values if not math.isnan(float(v))]
    if not xs:
        return Spread(math.nan, math.nan, 0)
    mean = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return Spread(mean, sd, len(xs))


def curve_spread(curves: Sequence[Sequence[float]]) -> list[Spread]:
    """Per point, the :class:`Spread` of equally long curves (one per run)."""
    return [spread(c[i] for c in curves) for i in range(len(curves[0]))]


def spread_rows(runs: Sequence[Sequence[Mapping[str, float]]]) -> list[dict[str, Spread]]:
    """Per row and key, the :class:`Spread` over runs of equally shaped row lists (e.g. metrics per k)."""
    return [{key: spread(run[i][key] for run in runs) for key in runs[0][i]} for i in range(len(runs[0]))]


def clear(a: Spread, b: Spread) -> bool:
    """Whether ``a`` and ``b`` differ by more than their spreads: ``|mean_a − mean_b| > sd_a + sd_b``."""
    return abs(a.mean - b.mean) > a.sd + b.sd


def mark(a: Spread, b: Spread, spec: str = ".3f") -> str:
    """``a`` formatted, in bold when it differs from ``b`` by more than their spreads (:func:`clear`)."""
    text = format(a, spec)
    return f"**{text}**" if clear(a, b) else text


def band(ax: Any, x: Sequence[float], runs: Sequence[Sequence[float]], *, color: Any = None, label: str | None = None,
         alpha: float = 0.18, **line: Any) -> None:
    """Plot the mean of ``runs`` (equal-length curves over ``x``) with a ±1 sd band in the same colour."""
    stats = curve_spread(runs)
    mean = [s.mean for s in stats]
    (drawn,) = ax.plot(x, mean, color=color, label=label, **line)
    ax.fill_between(x, [s.low for s in stats], [s.high for s in stats], color=drawn.get_color(), alpha=alpha,
                    linewidth=0)


__all__ = ["Spread", "band", "clear", "curve_spread", "mark", "spread", "spread_rows"]
