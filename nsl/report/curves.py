"""Removal curves: a game's value as the top-ranked filters are removed, next to random removal (paper Fig. 2a)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nsl.games.base import Game

#: Why a curve ended before its planned steps: the time it was given ran out, or Ctrl-C stopped it.
STOPS = ("budget", "interrupted")


@dataclass(frozen=True)
class RemovalCurve:
    """Value after removing the first ``removed[j]`` players of a ranking; ``random`` averages random orders.

    ``planned`` is how many players the curve was to remove; a curve whose time ran out (or that Ctrl-C
    stopped) holds only the steps it reached, and ``stopped`` says why (``"budget"`` or ``"interrupted"``).
    """

    removed: list[int]
    ranked: list[float]
    random: list[float]
    random_std: list[float]
    planned: int | None = None
    stopped: str | None = None

    @property
    def reached(self) -> int:
        """The most players removed on this curve."""
        return self.removed[-1] if self.removed else 0

    @property
    def complete(self) -> bool:
        """Whether every planned step was evaluated."""
        return self.stopped is None

    def to_dict(self) -> dict[str, object]:
        return {
            "removed": self.removed, "ranked": self.ranked, "random": self.random, "random_std": self.random_std,
            "planned": self.planned, "stopped": self.stopped,
        }

    def save(self, path: str | Path) -> Path:
        """Write the curve as plain lists with ``torch.save`` (``nsl-report`` plots it later); returns ``path``."""
        torch.save(self.to_dict(), path)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> RemovalCurve:
        """A curve written by :meth:`save` (loads with ``weights_only=True``; files from before ``planned``
        and ``stopped`` existed load as complete curves)."""
        data = torch.load(path, weights_only=True)
        keys = ("removed", "ranked", "random", "random_std")
        if not isinstance(data, dict) or not set(keys) <= set(data):
            found = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{path} is not a saved removal curve: expected a dict with keys {keys}, found {found}.")
        return cls(*(list(data[k]) for k in keys), planned=data.get("planned"), stopped=data.get("stopped"))


def removal_values(game: Game, order: Tensor, steps: Sequence[int]) -> Tensor:
    """Values of the coalitions without ``order[:s]`` for each ``s`` in ``steps``, in one batched call."""
    n = game.n_players
    rank = torch.empty(n, dtype=torch.long)
    rank[order] = torch.arange(n)
    present = rank.unsqueeze(0) >= torch.as_tensor(list(steps)).unsqueeze(1)
    return game(present).double()


def removal_curve(
    game: Game,
    ranking: Tensor,
    *,
    max_removed: int | None = None,
    n_random: int = 3,
    seed: int = 0,
    deadline: float | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    desc: str = "removal curve",
) -> RemovalCurve:
    """Remove the ranked players one by one (``ranking`` best first) and ``n_random`` random orders likewise.

    Costs ``1 + max_removed · (1 + n_random)`` evaluations; random orders come from their own generator. The
    ranked and random orders advance together, ``batch_size`` coalitions per call (default: the game's chunk
    size), so a curve cut short still compares them step for step: once ``time.perf_counter()`` passes
    ``deadline`` no further call starts (the overshoot is at most one call), and Ctrl-C ends the curve with the
    steps it finished. ``progress`` shows a tqdm bar over evaluations.
    """
    n = game.n_players
    ranking = torch.as_tensor(ranking, dtype=torch.long)
    if ranking.dim() != 1 or len(torch.unique(ranking)) != len(ranking) or len(ranking) == 0:
        raise ValueError("ranking must be a 1-d tensor of distinct player indices.")
    max_removed = min(len(ranking), n) if max_removed is None else min(max_removed, len(ranking), n)
    # Players not in a partial ranking come after it, in index order.
    rest = torch.tensor([i for i in range(n) if i not in set(ranking.tolist())], dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    orders = [torch.cat([ranking, rest])] + [torch.randperm(n, generator=generator) for _ in range(n_random)]
    ranks = torch.empty(len(orders), n, dtype=torch.long)
    for j, order in enumerate(orders):
        ranks[j, order] = torch.arange(n)
    lines = len(orders)
    per_call = max(1, (batch_size or int(getattr(game, "chunk_size", 0) or 64)) // lines)  # steps per call
    stopped = None
    bar = _bar(progress, 1 + max_removed * lines, desc)
    try:
        full = float(game(torch.ones(1, n, dtype=torch.bool))[0])  # step 0: every line starts at v(N)
        values = [torch.full((lines,), full, dtype=torch.float64)]
        if bar is not None:
            bar.update(1)
        for start in range(1, max_removed + 1, per_call):
            if deadline is not None and time.perf_counter() >= deadline:
                stopped = "budget"
                break
            steps = torch.arange(start, min(start + per_call, max_removed + 1))
            present = ranks.unsqueeze(0) >= steps.view(-1, 1, 1)  # (steps, lines, N): without order[:s]
            try:
                block = game(present.reshape(-1, n)).double().reshape(len(steps), lines)
            except KeyboardInterrupt:
                stopped = "interrupted"
                break
            values += list(block)
            if bar is not None:
                bar.update(len(steps) * lines)
    finally:
        if bar is not None:
            bar.close()
    table = torch.stack(values)  # (steps reached + 1, lines)
    ranked = table[:, 0]
    if n_random:
        randoms = table[:, 1:]
        mean = randoms.mean(1)
        std = randoms.std(1) if n_random > 1 else torch.zeros(len(table), dtype=torch.float64)
    else:
        mean = std = torch.full((len(table),), float("nan"))
    return RemovalCurve(
        list(range(len(table))), ranked.tolist(), mean.tolist(), std.tolist(), planned=max_removed, stopped=stopped
    )


def _bar(enabled: bool, total: int, desc: str) -> Any:
    """A tqdm bar over the curve's evaluations (the bar the estimators and Lightning use), or None."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="eval", leave=False, dynamic_ncols=True)
