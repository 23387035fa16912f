"""Games whose Shapley values are known in closed form: ground truth for estimators and benchmarks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


class HarsanyiGame:
    """A sum of unanimity games: ``v(S) = Σ_T a_T · [T ⊆ S]``.

    Every game is one of these (the ``a_T`` are its Harsanyi dividends), and the Shapley value is known in
    closed form: ``φ_i = Σ_{T ∋ i} a_T / |T|``. Additive games have singleton terms only; pairwise
    interaction games add terms of size two.

    Args:
        n_players: number of players N.
        dividends: mapping from a tuple of player indices T to its dividend a_T.
        offset: value of the empty coalition.
    """

    def __init__(self, n_players: int, dividends: Mapping[Sequence[int], float], offset: float = 0.0) -> None:
        self.n_players = n_players
        self.offset = offset
        self.terms = [tuple(sorted(set(t))) for t in dividends]
        for t in self.terms:
            if not t or min(t) < 0 or max(t) >= n_players:
                raise ValueError(f"term {t} must be a non-empty set of players in [0, {n_players}).")
        self.coef = torch.tensor(list(dividends.values()), dtype=torch.float64)
        self.members = torch.zeros(len(self.terms), n_players, dtype=torch.float64)
        for j, t in enumerate(self.terms):
            self.members[j, list(t)] = 1.0
        self.sizes = self.members.sum(dim=1)
        self.n_evals = 0

    def __call__(self, present: Tensor) -> Tensor:
        present = present.reshape(-1, self.n_players)
        inside = (present.double() @ self.members.T) == self.sizes  # (K, terms): T ⊆ S
        self.n_evals += present.shape[0]
        return self.offset + inside.double() @ self.coef

    def shapley(self) -> Tensor:
        """Exact Shapley values, shape (N,)."""
        return (self.members * (self.coef / self.sizes)[:, None]).sum(dim=0)


def additive_game(weights: Sequence[float] | Tensor) -> HarsanyiGame:
    """``v(S) = Σ_{i∈S} w_i``; Shapley value ``φ = w``."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    return HarsanyiGame(len(w), {(i,): float(x) for i, x in enumerate(w)})


def pairwise_game(weights: Sequence[float] | Tensor, interactions: Mapping[tuple[int, int], float]) -> HarsanyiGame:
    """Additive game plus pairwise terms; ``φ_i = w_i + ½ Σ_j W_ij``."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    terms: dict[tuple[int, ...], float] = {(i,): float(x) for i, x in enumerate(w)}
    for (i, j), x in interactions.items():
        terms[(i, j)] = terms.get((i, j), 0.0) + float(x)
    return HarsanyiGame(len(w), terms)
