"""Harsanyi dividends of a game by a fast Möbius transform, and the indices they give in closed form.

Coalitions are indexed by bitmask: entry ``m`` of a table of length 2ⁿ is the coalition holding player i
iff bit i of ``m`` is set. The dividend of S is ``I(S) = Σ_{T⊆S} (−1)^{|S|−|T|} v(T)``; the game is then
``v(S) = Σ_{T⊆S} I(T)``, and every index of the Shapley/Banzhaf family is a weighted sum of dividends.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nsl.games.base import Game, check_game
from nsl.games.counting import CountingGame
from nsl.shapley._common import check_positive_int
from nsl.shapley.exact import coalitions

MAX_PLAYERS = 20


class NotAGameError(TypeError, ValueError):
    """Raised for an object that does not follow the game protocol (both a TypeError and a ValueError)."""


def check_interaction_game(game: object, max_players: int = MAX_PLAYERS) -> int:
    """Validate ``game`` and return its number of players; raise before anything is evaluated."""
    try:
        n = check_game(game)
    except TypeError as err:
        raise NotAGameError(str(err)) from None
    if n > max_players:
        raise ValueError(
            f"the game has n={n} players; enumerating all 2^n coalitions is limited to n <= {max_players} "
            f"(2^{n} = {2**n:,} coalitions). Restrict it to a few players with "
            "SubGame(game, players) first."
        )
    return n


def n_players_of_table(table: Tensor, what: str = "values") -> int:
    """Number of players n of a bitmask-indexed table of length 2ⁿ (ValueError otherwise)."""
    if not isinstance(table, Tensor):
        raise TypeError(f"{what} must be a tensor of length 2^n, got {type(table).__name__}.")
    if table.dim() != 1 or table.numel() == 0 or table.numel() & (table.numel() - 1):
        raise ValueError(
            f"{what} must be a 1-D tensor of length 2^n (one entry per coalition, bitmask-indexed); "
            f"got shape {tuple(table.shape)}."
        )
    return table.numel().bit_length() - 1


def _butterfly(table: Tensor, sign: float, supersets: bool = False) -> Tensor:
    """One pass per player over a bitmask table (out of place, so autograd can follow it)."""
    n = n_players_of_table(table)
    x = table.to(torch.float64)
    for i in range(n):
        pairs = x.reshape(-1, 2, 2**i)
        low, high = pairs[:, 0], pairs[:, 1]
        if supersets:  # sums over supersets: the set without i collects the set with i
            x = torch.stack([low + sign * high, high], dim=1).reshape(-1)
        else:  # sums over subsets: the set with i collects the set without i
            x = torch.stack([low, high + sign * low], dim=1).reshape(-1)
    return x


def mobius(values: Tensor) -> Tensor:
    """Harsanyi dividends from the values of all 2ⁿ coalitions (Möbius transform), O(n·2ⁿ), float64."""
    return _butterfly(values, -1.0)


def inverse_mobius(dividends: Tensor) -> Tensor:
    """Values of all 2ⁿ coalitions from their dividends: ``v(S) = Σ_{T⊆S} I(T)`` (zeta transform)."""
    return _butterfly(dividends, 1.0)


def superset_sums(table: Tensor) -> Tensor:
    """``out[A] = Σ_{B⊇A} table[B]`` for every coalition A, O(n·2ⁿ): the step shared by all indices."""
    return _butterfly(table, 1.0, supersets=True)


def coalition_sizes(n_players: int) -> Tensor:
    """Size |S| of every coalition S, bitmask-indexed, shape (2ⁿ,), int64."""
    masks = torch.arange(2**n_players, dtype=torch.long)
    sizes = torch.zeros_like(masks)
    for i in range(n_players):
        sizes += (masks >> i) & 1
    return sizes


def harsanyi(game: Game, batch_size: int = 4096) -> Tensor:
    """All 2ⁿ Harsanyi dividends of ``game`` (bitmask-indexed, float64), for n ≤ 20 players.

    Evaluates every coalition once, ``batch_size`` coalitions per call to the game, then applies the
    fast Möbius transform. Entry 0 is v(∅); ``dividends.sum()`` is v(N).
    """
    n = check_interaction_game(game)
    check_positive_int("batch_size", batch_size)
    counted = CountingGame(game)
    total = 2**n
    chunks = [counted(coalitions(n, s, min(s + batch_size, total))) for s in range(0, total, batch_size)]
    return mobius(torch.cat(chunks))


def _weighted(dividends: Tensor, weight_of_size: Tensor) -> Tensor:
    n = n_players_of_table(dividends, "dividends")
    sizes = coalition_sizes(n)
    return dividends.double() * weight_of_size.to(torch.float64)[sizes]


def _at_singletons(table: Tensor) -> Tensor:
    n = n_players_of_table(table)
    return table[torch.tensor([1 << i for i in range(n)], dtype=torch.long)]


def shapley_from_dividends(dividends: Tensor) -> Tensor:
    """Shapley values ``φ_i = Σ_{S∋i} I(S)/|S|``, shape (n,): each dividend shared equally by its members."""
    n = n_players_of_table(dividends, "dividends")
    weight = torch.tensor([0.0] + [1.0 / s for s in range(1, n + 1)], dtype=torch.float64)
    return _at_singletons(superset_sums(_weighted(dividends, weight)))


def banzhaf_from_dividends(dividends: Tensor) -> Tensor:
    """Banzhaf values ``β_i = Σ_{S∋i} I(S)/2^{|S|−1}``, shape (n,): the mean marginal over all coalitions."""
    n = n_players_of_table(dividends, "dividends")
    weight = torch.tensor([0.0] + [0.5 ** (s - 1) for s in range(1, n + 1)], dtype=torch.float64)
    return _at_singletons(superset_sums(_weighted(dividends, weight)))


def pairwise_from_dividends(dividends: Tensor) -> Tensor:
    """Shapley interaction index of every pair, ``I_ij = Σ_{S⊇{i,j}} I(S)/(|S|−1)``, shape (n, n).

    The diagonal holds the Shapley values (the same index for the singleton {i}), so the matrix is the
    order-≤2 part of Grabisch's interaction index.
    """
    n = n_players_of_table(dividends, "dividends")
    weight = torch.tensor([0.0, 0.0] + [1.0 / (s - 1) for s in range(2, n + 1)], dtype=torch.float64)
    sums = superset_sums(_weighted(dividends, weight))
    bits = torch.tensor([1 << i for i in range(n)], dtype=torch.long)
    matrix = sums[bits[:, None] | bits[None, :]]
    matrix.fill_diagonal_(0.0)
    return matrix + torch.diag(shapley_from_dividends(dividends))


def interaction_index(dividends: Tensor, players: tuple[int, ...] | list[int]) -> float:
    """Grabisch's Shapley interaction index of one coalition A: ``Σ_{B⊇A} I(B)/(|B|−|A|+1)``."""
    n = n_players_of_table(dividends, "dividends")
    members = sorted(set(int(p) for p in players))
    if not members or members[0] < 0 or members[-1] >= n:
        raise ValueError(f"players={players!r} must be a non-empty set of players in [0, {n}).")
    mask = sum(1 << p for p in members)
    sizes = coalition_sizes(n)
    masks = torch.arange(2**n, dtype=torch.long)
    above = (masks & mask) == mask
    weight = 1.0 / (sizes[above] - len(members) + 1).double()
    return float((dividends.double()[above] * weight).sum())


def largest_dividends(
    dividends: Tensor, k: int = 10, min_order: int = 1
) -> list[tuple[tuple[int, ...], float]]:
    """The ``k`` dividends of largest magnitude among coalitions of at least ``min_order`` players."""
    n = n_players_of_table(dividends, "dividends")
    sizes = coalition_sizes(n)
    keep = torch.nonzero(sizes >= min_order).flatten()
    order = keep[torch.argsort(dividends[keep].abs(), descending=True)[:k]]
    return [(tuple(i for i in range(n) if (int(m) >> i) & 1), float(dividends[m])) for m in order]


def order_profile(dividends: Tensor) -> Tensor:
    """Sum of |I(S)| over coalitions of each size 0..n, shape (n+1,): how much of the game is interaction."""
    n = n_players_of_table(dividends, "dividends")
    sizes = coalition_sizes(n)
    out = torch.zeros(n + 1, dtype=torch.float64)
    return out.index_add_(0, sizes, dividends.double().abs())

