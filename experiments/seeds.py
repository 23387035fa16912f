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

The spread helpers are :mod:`nsl.report.spread`'s (``nsl-report`` pools a multirun's seeds with the same rule).
"""

from __future__ import annotations

import argparse

from nsl.report.spread import Spread, band, clear, curve_spread, mark, spread, spread_rows

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


__all__ = [
    "ESTIMATOR_SEEDS",
    "QUICK",
    "TRAIN_SEEDS",
    "Spread",
    "add_seed_flags",
    "band",
    "clear",
    "curve_spread",
    "finish_seed_args",
    "mark",
    "parse_seeds",
    "plural",
    "seed_note",
    "spread",
    "spread_rows",
]
