"""Error bars for the paper-figure experiments: runs over training seeds × estimator seeds, and their spread.

A number from one trained network and one estimator run cannot tell a finding from luck. Every paper-figure
script therefore trains one network per ``--train-seeds`` entry (weights, data order and data split all follow
the seed) and runs its estimator once per ``--estimator-seeds`` entry on each, then reports each measure as
mean ± sample standard deviation over all those runs (:class:`Spread`), draws the band in its plots
(:func:`band`), and marks the differences that are larger than the spread (:func:`clear`).

- :func:`add_seed_flags`, :func:`parse_seeds`: the two flags (``--quick``: one training seed, two estimator seeds).
- :class:`Spread`, :func:`spread`, :func:`curve_spread`, :func:`spread_rows`: mean ± sd, cell formatting, per-point
  and per-row aggregation; :func:`plural` for report lines.
- :func:`clear`: two measures differ by more than their spreads (``|Δmean| > sd_a + sd_b``).
- :func:`band`: a mean line with a ±1 sd band.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

TRAIN_SEEDS = "0,1,2"
ESTIMATOR_SEEDS = "0,1,2"
QUICK = {"train_seeds": "0", "estimator_seeds": "0,1"}  # --quick: one network, two estimator runs on it


def add_seed_flags(p: argparse.ArgumentParser, *, train: str = TRAIN_SEEDS, estimator: str = ESTIMATOR_SEEDS) -> None:
    """``--train-seeds`` (one network per seed) and ``--estimator-seeds`` (one estimator run per seed and network)."""
    p.add_argument("--train-seeds", default=train, help="training seeds, comma-separated (weights, data order, split)")
    p.add_argument("--estimator-seeds", default=estimator, help="estimator seeds run on every trained network")


def parse_seeds(text: str, flag: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> (0, 1, 2); ValueError naming the flag unless distinct non-negative integers (at least one)."""
    try:
        seeds = tuple(int(s) for s in str(text).split(","))
    except ValueError:
        raise ValueError(f"{flag}={text!r} must be comma-separated non-negative integers such as 0,1,2.") from None
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"{flag}={text!r} must be distinct non-negative integers such as 0,1,2.")
    return seeds


def finish_seed_args(args: argparse.Namespace) -> argparse.Namespace:
    """Turn the two flags into tuples ``args.train_seeds`` / ``args.estimator_seeds`` (after ``--quick``)."""
    args.train_seeds = parse_seeds(args.train_seeds, "--train-seeds")
    args.estimator_seeds = parse_seeds(args.estimator_seeds, "--estimator-seeds")
    return args


def plural(n: int, noun: str) -> str:
    """``"1 run"``, ``"3 runs"``."""
    return f"{n} {noun}{'s' * (n != 1)}"


def seed_note(args: argparse.Namespace) -> str:
    """One line for a report: how many runs each ± is over."""
    t, e = len(args.train_seeds), len(args.estimator_seeds)
    return (f"Each cell: mean ± sample standard deviation over {plural(t, 'training seed')} "
            f"({', '.join(map(str, args.train_seeds))}) × {plural(e, 'estimator seed')} = {t * e} runs.")


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
