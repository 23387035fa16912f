"""Pieces shared by the estimators: argument checks and player names."""

from __future__ import annotations

from nsl.games.base import Game
from nsl.games.counting import CountingGame

__all__ = ["CountingGame"]


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


TAILS = ("top", "bottom", "both")


def check_tail(tail: object) -> None:
    """``tail`` names which end of the ranking to resolve: the top-k, the bottom-k (culprits) or both."""
    if tail not in TAILS:
        raise ValueError(f"tail={tail!r} is not supported; use one of {TAILS}.")


def default_batch_size(game: Game) -> int:
    """Coalitions per call: the game's own chunk size when it has one, else 64."""
    return int(getattr(game, "chunk_size", 64) or 64)
