"""A big game restricted to a few of its players, the others held fixed (all on, or all off)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from nsl.games.base import Game
from nsl.interactions.harsanyi import check_interaction_game

OTHERS = ("present", "absent")


def game_names(game: object, n: int) -> list[str]:
    """Player names of a game: its ``names``, its ``players.names``, or ``"0".."n-1"``."""
    names = getattr(game, "names", None)
    if names is None:
        names = getattr(getattr(game, "players", None), "names", None)
    if names is not None and len(names) == n:
        return [str(x) for x in names]
    return [str(i) for i in range(n)]


def check_players(players: Sequence[int] | Tensor, n_players: int, what: str = "players") -> list[int]:
    """Distinct player indices in [0, n_players), as a list of ints (ValueError otherwise)."""
    if isinstance(players, Tensor):
        if players.dtype.is_floating_point or players.dtype == torch.bool or players.dim() != 1:
            raise ValueError(f"{what} must be a 1-D integer tensor or a sequence of ints; got {players!r}.")
        players = players.tolist()
    if isinstance(players, (str, bytes)) or not isinstance(players, Sequence):
        raise ValueError(f"{what} must be a sequence of player indices, got {type(players).__name__}.")
    out = []
    for p in players:
        if isinstance(p, bool) or not isinstance(p, int):
            raise ValueError(f"{what} must hold ints, got {p!r}.")
        if not 0 <= p < n_players:
            raise ValueError(f"player {p} in {what} is out of range for a game of {n_players} players.")
        out.append(p)
    if not out:
        raise ValueError(f"{what} is empty; choose at least one player.")
    if len(set(out)) != len(out):
        raise ValueError(f"{what} holds a player twice: {out}.")
    return out


class SubGame:
    """``game`` played by ``players`` only: ``v'(S) = v(S ∪ R)`` with the rest R all on (or ``v(S)``, off).

    With ``others="present"`` (default) the interactions among, say, the top-k culprit filters of a CNN are
    measured in the trained network with every other filter working, which is where removing them matters.

    Args:
        game: any game.
        players: indices of the players that keep playing, in the order they get in the subgame.
        others: ``"present"`` (the rest switched on) or ``"absent"`` (switched off).
        names: names of the subgame's players (default: the game's names of the chosen players).
    """

    def __init__(
        self,
        game: Game,
        players: Sequence[int] | Tensor,
        others: str = "present",
        names: Sequence[str] | None = None,
    ) -> None:
        n = check_interaction_game(game, max_players=2**62)
        if others not in OTHERS:
            raise ValueError(f"others={others!r} is not supported; use one of {OTHERS}.")
        self.game = game
        self.indices = check_players(players, n)
        self.others = others
        self.n_players = len(self.indices)
        self.parent_players = n
        all_names = game_names(game, n)
        self.names = list(names) if names is not None else [all_names[i] for i in self.indices]
        if len(self.names) != self.n_players:
            raise ValueError(f"names has {len(self.names)} entries for {self.n_players} players.")
        self._base = torch.full((n,), others == "present", dtype=torch.bool)
        self._base[self.indices] = False
        self._index = torch.tensor(self.indices, dtype=torch.long)
        self.n_evals = 0

    def __repr__(self) -> str:
        return f"SubGame(players={self.indices}, others={self.others!r}, of {self.parent_players})"

    def full_coalitions(self, present: Tensor) -> Tensor:
        """Coalitions of the parent game, (K, N), for subgame coalitions ``present`` (K, n) or (n,)."""
        if not isinstance(present, Tensor) or present.dtype != torch.bool:
            got = getattr(present, "dtype", type(present).__name__)
            raise TypeError(f"present must be a torch.bool tensor, got {got}.")
        if present.dim() not in (1, 2) or present.shape[-1] != self.n_players:
            raise ValueError(
                f"present has shape {tuple(present.shape)}; expected ({self.n_players},) or "
                f"(K, {self.n_players}) for this subgame."
            )
        present = present.reshape(-1, self.n_players).cpu()
        full = self._base.expand(present.shape[0], -1).clone()
        full[:, self._index] = present
        return full

    def __call__(self, present: Tensor) -> Tensor:
        full = self.full_coalitions(present)
        self.n_evals += full.shape[0]
        return self.game(full)
