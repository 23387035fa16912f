"""Exact Shapley values by evaluating all 2ᴺ coalitions (N ≤ 20)."""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from nsl.games.base import Game
from nsl.shapley._common import CountingGame, check_positive_int, check_tail, player_names
from nsl.shapley.registry import ESTIMATORS
from nsl.shapley.result import ShapleyResult
from nsl.shapley.semivalues import Semivalue, parse_semivalue
from nsl.validation import resolve_top_k

MAX_EXACT_PLAYERS = 20


def coalitions(n_players: int, start: int = 0, stop: int | None = None) -> Tensor:
    """Coalitions ``start..stop-1`` of all 2ᴺ as a bool matrix; row m has player i present iff bit i of m."""
    stop = 2**n_players if stop is None else stop
    masks = torch.arange(start, stop, dtype=torch.long)
    return ((masks.unsqueeze(1) >> torch.arange(n_players)) & 1).bool()


def all_values(game: Game, batch_size: int = 4096) -> Tensor:
    """Values of all 2ᴺ coalitions, indexed by bitmask (bit i = player i), float64."""
    n = game.n_players
    chunks = [game(coalitions(n, s, min(s + batch_size, 2**n))) for s in range(0, 2**n, batch_size)]
    return torch.cat([torch.as_tensor(c).double().reshape(-1).cpu() for c in chunks])


def shapley_from_values(values: Tensor, semivalue: str | Semivalue = "shapley") -> Tensor:
    """Shapley values (or another semivalue's) from the values of all 2ᴺ coalitions (bitmask-indexed)."""
    n = int(math.log2(len(values)))
    masks = torch.arange(2**n)
    sizes = torch.zeros(2**n, dtype=torch.long)
    for i in range(n):
        sizes += (masks >> i) & 1
    # weight of one coalition S of size s not containing i: ω(s) / C(n-1, s) (Shapley: s!(n-s-1)!/n!)
    omega = parse_semivalue(semivalue).size_weights(n)
    weight = torch.tensor([float(omega[s]) / math.comb(n - 1, s) for s in range(n)], dtype=torch.float64)
    phi = torch.empty(n, dtype=torch.float64)
    for i in range(n):
        without = masks[((masks >> i) & 1) == 0]
        phi[i] = (weight[sizes[without]] * (values[without | (1 << i)] - values[without])).sum()
    return phi


def leave_one_out_values(game: Game, batch_size: int | None = None) -> tuple[Tensor, float]:
    """``v(N) − v(N ∖ i)`` for each player of any game and v(N), from N + 1 coalitions in batched calls."""
    n = game.n_players
    present = torch.ones(n + 1, n, dtype=torch.bool)
    present[1:] &= ~torch.eye(n, dtype=torch.bool)
    step = batch_size or (n + 1)
    values = torch.cat([torch.as_tensor(game(present[s : s + step])).double().reshape(-1).cpu()
                        for s in range(0, n + 1, step)])
    return values[0] - values[1:], float(values[0])


@ESTIMATORS.register("exact")
def exact(
    game: Game,
    *,
    top_k: int | None = None,
    tail: str = "top",
    batch_size: int = 4096,
    names: list[str] | None = None,
    semivalue: str | Semivalue = "shapley",
) -> ShapleyResult:
    """Exact Shapley values (or ``semivalue``'s: ``"banzhaf"``, ``"beta(α,β)"``) of a game with at most 20 players,
    by enumerating every coalition.

    Costs 2ᴺ evaluations, ``batch_size`` coalitions per call to the game. ``top_k`` sets how many players the
    result's ``top_k`` lists (default ``min(10, N − 1)``); ``tail`` is accepted for a uniform signature.
    """
    counted = CountingGame(game)
    n = counted.n_players
    if n > MAX_EXACT_PLAYERS:
        raise ValueError(
            f"exact() enumerates 2^N coalitions and accepts N <= {MAX_EXACT_PLAYERS} players; this game has "
            f"N={n}. Use monte_carlo() or tmab() instead, or select fewer layers."
        )
    check_positive_int("batch_size", batch_size)
    check_tail(tail)
    value = parse_semivalue(semivalue)
    k = resolve_top_k(top_k, n)  # before the 2ᴺ evaluations
    start = time.perf_counter()
    values = all_values(counted, batch_size)
    phi = shapley_from_values(values, value)
    return ShapleyResult(
        values=phi,
        stderr=torch.zeros(n, dtype=torch.float64),
        counts=torch.full((n,), 2 ** (n - 1), dtype=torch.int64),
        n_evals=counted.n_evals,
        converged=True,
        k=k,
        names=player_names(game, names),
        method="exact",
        seconds=time.perf_counter() - start,
        full_value=float(values[-1]),
        empty_value=float(values[0]),
        semivalue=value.name,
    )
