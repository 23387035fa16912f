"""Pieces shared by the estimators: argument checks and a game wrapper that counts evaluations."""

from __future__ import annotations

import torch
from torch import Tensor

from nsl.games.base import Game, check_game


class CountingGame:
    """Wraps a game and counts every coalition it is asked to evaluate; checks its answers."""

    def __init__(self, game: Game) -> None:
        self.game = game
        self.n_players = check_game(game)
        self.n_evals = 0

    def __call__(self, present: Tensor) -> Tensor:
        values = torch.as_tensor(self.game(present)).double().reshape(-1).cpu()
        k = present.shape[0] if present.dim() == 2 else 1
        if values.shape != (k,):
            raise ValueError(f"the game returned {tuple(values.shape)} values for {k} coalitions.")
        if not torch.isfinite(values).all():
            raise ValueError("the game returned NaN or inf for a coalition; its value must be finite.")
        self.n_evals += k
        return values

    def full_and_empty(self) -> tuple[float, float]:
        both = torch.stack(
            [torch.ones(self.n_players, dtype=torch.bool), torch.zeros(self.n_players, dtype=torch.bool)]
        )
        v = self(both)
        return float(v[0]), float(v[1])


def player_names(game: Game, names: list[str] | None) -> list[str] | None:
    if names is not None:
        return list(names)
    players = getattr(game, "players", None)
    return list(players.names) if players is not None and hasattr(players, "names") else None


def check_positive_int(name: str, value: object, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        accepted = "None or a positive int" if allow_none else "a positive int"
        raise ValueError(f"{name}={value!r} is not accepted; use {accepted}.")


def check_top_k(top_k: object, n_players: int) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 < top_k < n_players:
        raise ValueError(
            f"top_k={top_k!r} is not accepted for {n_players} players; use an int in [1, {n_players - 1}]."
        )


def resolve_top_k(top_k: int | None, n_players: int) -> int:
    """``top_k`` checked against N, or ``min(10, N − 1)`` when it is None (every estimator's default)."""
    if top_k is None:
        return max(1, min(10, n_players - 1))
    check_top_k(top_k, n_players)
    return top_k


TAILS = ("top", "bottom", "both")


def check_tail(tail: object) -> None:
    """``tail`` names which end of the ranking to resolve: the top-k, the bottom-k (culprits) or both."""
    if tail not in TAILS:
        raise ValueError(f"tail={tail!r} is not supported; use one of {TAILS}.")


def default_batch_size(game: Game) -> int:
    """Coalitions per call: the game's own chunk size when it has one, else 64."""
    return int(getattr(game, "chunk_size", 64) or 64)
