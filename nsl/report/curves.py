"""Removal curves: a game's value as the top-ranked filters are removed, next to random removal (paper Fig. 2a)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from nsl.games.base import Game


@dataclass(frozen=True)
class RemovalCurve:
    """Value after removing the first ``removed[j]`` players of a ranking; ``random`` averages random orders."""

    removed: list[int]
    ranked: list[float]
    random: list[float]
    random_std: list[float]

    def to_dict(self) -> dict[str, list]:
        return {"removed": self.removed, "ranked": self.ranked, "random": self.random, "random_std": self.random_std}

    def save(self, path: str | Path) -> Path:
        """Write the curve as plain lists with ``torch.save`` (``nsl-report`` plots it later); returns ``path``."""
        torch.save(self.to_dict(), path)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> RemovalCurve:
        """A curve written by :meth:`save` (loads with ``weights_only=True``)."""
        data = torch.load(path, weights_only=True)
        keys = ("removed", "ranked", "random", "random_std")
        if not isinstance(data, dict) or not set(keys) <= set(data):
            found = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{path} is not a saved removal curve: expected a dict with keys {keys}, found {found}.")
        return cls(*(list(data[k]) for k in keys))


def removal_values(game: Game, order: Tensor, steps: Sequence[int]) -> Tensor:
    """Values of the coalitions without ``order[:s]`` for each ``s`` in ``steps``, in one batched call."""
    n = game.n_players
    rank = torch.empty(n, dtype=torch.long)
    rank[order] = torch.arange(n)
    present = rank.unsqueeze(0) >= torch.as_tensor(list(steps)).unsqueeze(1)
    return game(present).double()


def removal_curve(
    game: Game, ranking: Tensor, *, max_removed: int | None = None, n_random: int = 3, seed: int = 0
) -> RemovalCurve:
    """Remove the ranked players one by one (``ranking`` best first) and ``n_random`` random orders likewise.

    Costs ``(max_removed + 1) · (1 + n_random)`` evaluations; random orders come from their own generator.
    """
    n = game.n_players
    ranking = torch.as_tensor(ranking, dtype=torch.long)
    if ranking.dim() != 1 or len(torch.unique(ranking)) != len(ranking) or len(ranking) == 0:
        raise ValueError("ranking must be a 1-d tensor of distinct player indices.")
    max_removed = min(len(ranking), n) if max_removed is None else min(max_removed, len(ranking), n)
    # Players not in a partial ranking come after it, in index order.
    rest = torch.tensor([i for i in range(n) if i not in set(ranking.tolist())], dtype=torch.long)
    order = torch.cat([ranking, rest])
    steps = list(range(max_removed + 1))
    ranked = removal_values(game, order, steps)
    generator = torch.Generator().manual_seed(seed)
    randoms = [removal_values(game, torch.randperm(n, generator=generator), steps) for _ in range(n_random)]
    if randoms:
        stacked = torch.stack(randoms)
        mean, std = stacked.mean(0), stacked.std(0) if n_random > 1 else torch.zeros(len(steps))
    else:
        mean = std = torch.full((len(steps),), float("nan"))
    return RemovalCurve(steps, ranked.tolist(), mean.tolist(), std.tolist())
