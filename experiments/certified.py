"""Certified analyses for the evidence experiments: one ``tmab`` run per (game, semivalue, seed), cached on disk.

The repair and removal experiments compare semivalues (Shapley, Banzhaf, Beta weighted toward the full model) on
the same games, each analysis certified (``tmab`` with its default ε-δ certificate) within a budget in rows. The
same trained network's accuracy game is analysed by several scripts (removal curves, filter dropout), so every
finished analysis is saved under ``--cache`` with a key naming everything it depends on, and a later script (or a
rerun) loads it instead of sampling again. Each saved analysis keeps its cost: rows, whether it was certified,
and the CPU seconds it took.

- :func:`add_semivalue_flags`: ``--semivalues``, ``--max-rows``, ``--cache``.
- :func:`certified`: run (or load) one analysis; :func:`method_name`: its column name in the tables.
- :func:`cost_cell`: "1.25 M rows, 9/9 certified, 46 s CPU" for a list of analyses.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from nsl import tmab
from nsl.games.base import Game
from nsl.shapley import ShapleyResult
from nsl.shapley.semivalues import parse_semivalue

SEMIVALUES = "shapley,banzhaf,beta(1,4),beta(1,16)"
MAX_ROWS = 3_000_000


def add_semivalue_flags(p: argparse.ArgumentParser, *, default: str = SEMIVALUES, max_rows: int = MAX_ROWS) -> None:
    """``--semivalues`` (comma-separated, e.g. ``shapley,banzhaf,beta(1,4)``), ``--max-rows`` (budget per analysis)
    and ``--cache`` (where finished analyses are kept; default ``<--out>/../analyses``)."""
    p.add_argument("--semivalues", default=default, help="semivalues tmab estimates, comma-separated")
    p.add_argument("--max-rows", type=int, default=max_rows, help="rows budget of each certified analysis")
    p.add_argument("--cache", type=Path, default=None, help="folder of saved analyses (default: <out>/../analyses)")


def parse_semivalues(text: str) -> tuple[str, ...]:
    """``"shapley,banzhaf,beta(1,4)"`` -> canonical names; ValueError naming the bad entry otherwise."""
    parts, depth, current = [], 0, ""
    for ch in str(text):  # commas inside beta(α,β) do not split
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    names = tuple(parse_semivalue(p.strip()).name for p in parts if p.strip())
    if not names or len(set(names)) != len(names):
        raise ValueError(f"--semivalues={text!r} must name distinct semivalues, e.g. shapley,banzhaf,beta(1,4).")
    return names


def finish_semivalue_args(args: argparse.Namespace) -> argparse.Namespace:
    """Parse ``--semivalues`` into ``args.semivalue_list``, check ``--max-rows``, default ``--cache``."""
    args.semivalue_list = parse_semivalues(args.semivalues)
    if args.max_rows < 1:
        raise ValueError(f"--max-rows={args.max_rows} must be a positive integer.")
    if args.cache is None:
        args.cache = Path(args.out).parent / "analyses"
    return args


def method_name(semivalue: str) -> str:
    """The table column of a tmab analysis with this semivalue: ``"tmab shapley"``, ``"tmab beta(1,4)"``."""
    return f"tmab {parse_semivalue(semivalue).name}"


def certified(
    game: Game,
    *,
    semivalue: str,
    seed: int,
    top_k: int,
    tail: str = "top",
    max_rows: int = MAX_ROWS,
    cache: Path | None = None,
    key: str = "",
    **options: Any,
) -> ShapleyResult:
    """``tmab`` on ``game`` with ``semivalue``, certified or stopped at ``max_rows`` rows; loaded from ``cache``
    when an analysis with the same ``key`` (which must name the network and the game) and settings was saved.

    The result's ``seconds`` is the wall time; the CPU seconds are kept in ``result.note`` as ``cpu=<s>`` (read them
    with :func:`cpu_seconds`)."""
    name = parse_semivalue(semivalue).name
    settings = f"{key}|{name}|seed={seed}|k={top_k}|tail={tail}|rows={max_rows}|{sorted(options.items())}"
    path = None
    if cache is not None and key:
        digest = hashlib.sha1(settings.encode()).hexdigest()[:16]
        path = Path(cache) / f"{digest}.pt"
        if path.exists():
            return ShapleyResult.load(path)
    cpu = time.process_time()
    result = tmab(game, top_k, tail=tail, semivalue=name, max_rows=max_rows, max_evals=None, seed=seed, **options)
    result.note = f"{result.note}; cpu={time.process_time() - cpu:.1f}".lstrip("; ")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        result.save(tmp)
        tmp.replace(path)
    return result


def cpu_seconds(result: ShapleyResult) -> float:
    """The CPU seconds :func:`certified` recorded for this analysis (0 when unknown)."""
    for part in result.note.split(";"):
        part = part.strip()
        if part.startswith("cpu="):
            return float(part[4:])
    return 0.0


def cost_cell(results: Sequence[ShapleyResult]) -> str:
    """Median rows, how many were certified, and total CPU seconds, e.g. ``1.25 M rows, 9/9 certified, 410 s CPU``."""
    if not results:
        return "–"
    rows = torch.tensor([float(r.n_rows or 0) for r in results]).median().item()
    done = sum(bool(r.converged) for r in results)
    cpu = sum(cpu_seconds(r) for r in results)
    return f"{rows / 1e6:.2f} M rows, {done}/{len(results)} certified, {cpu:.0f} s CPU"


__all__ = [
    "MAX_ROWS",
    "SEMIVALUES",
    "add_semivalue_flags",
    "certified",
    "cost_cell",
    "cpu_seconds",
    "finish_semivalue_args",
    "method_name",
    "parse_semivalues",
]
