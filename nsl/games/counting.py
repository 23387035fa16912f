"""One meter for every estimator: a game wrapper that counts, times, checks and optionally records coalitions.

Estimators wrap the game they are given in it (``ShapleyResult.n_evals`` is its count), and benchmarks wrap a
game once and hand the same meter to every method, ours and the field's, so evaluations are counted alike.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from nsl.games.base import Game, check_game


class CountingGame:
    """Wraps ``game``: counts every coalition it evaluates, the calls and the seconds spent inside it.

    Values come back as float64 on the CPU, one per coalition, and must be finite. With ``record=True`` every
    coalition and its value are kept (:meth:`value_of` looks one up). The wrapped game's ``players`` and
    ``chunk_size`` are passed through, so estimators batch and name players as with the bare game.

    Example:
        >>> import torch
        >>> from nsl.games import CountingGame, additive_game
        >>> meter = CountingGame(additive_game([1.0, 2.0, 3.0]))
        >>> meter(torch.tensor([[True, False, True], [False, False, False]])).tolist()
        [4.0, 0.0]
        >>> meter.n_evals, meter.calls
        (2, 1)
    """

    def __init__(self, game: Game, record: bool = False) -> None:
        self.game = game
        self.n_players = check_game(game)
        self.n_evals = 0
        self.calls = 0
        self.seconds = 0.0
        self.record = record
        self._records: dict[bytes, float] = {}

    @property
    def players(self) -> Any:
        return getattr(self.game, "players", None)

    @property
    def chunk_size(self) -> Any:
        return getattr(self.game, "chunk_size", None)

    def __call__(self, present: Tensor) -> Tensor:
        present = torch.as_tensor(present)
        k = present.shape[0] if present.dim() == 2 else 1
        start = time.perf_counter()
        values = torch.as_tensor(self.game(present)).double().reshape(-1).cpu()
        self.seconds += time.perf_counter() - start
        if values.shape != (k,):
            raise ValueError(f"the game returned {tuple(values.shape)} values for {k} coalitions.")
        if not torch.isfinite(values).all():
            raise ValueError("the game returned NaN or inf for a coalition; its value must be finite.")
        self.n_evals += k
        self.calls += 1
        if self.record:
            rows = present.reshape(k, self.n_players).bool().cpu().numpy()
            for row, value in zip(rows, values.tolist(), strict=True):
                self._records[row.tobytes()] = value
        return values

    def value_of(self, present: Tensor) -> float:
        """The recorded value of one coalition (``record=True``); KeyError if it was never evaluated."""
        return self._records[self._key(present)]

    def was_evaluated(self, present: Tensor) -> bool:
        """Whether one coalition was evaluated since recording started (``record=True``)."""
        return self._key(present) in self._records

    def recorded_values(self) -> list[float]:
        """The value of every distinct coalition recorded so far (``record=True``), in evaluation order."""
        return list(self._records.values())

    def _key(self, present: Tensor) -> bytes:
        return torch.as_tensor(present).reshape(self.n_players).bool().cpu().numpy().tobytes()

    def full_and_empty(self) -> tuple[float, float]:
        """v(N) and v(∅), evaluated in one call (two coalitions counted)."""
        both = torch.stack(
            [torch.ones(self.n_players, dtype=torch.bool), torch.zeros(self.n_players, dtype=torch.bool)]
        )
        v = self(both)
        return float(v[0]), float(v[1])

    def reset(self) -> None:
        """Start counting (and recording) afresh."""
        self.n_evals, self.calls, self.seconds = 0, 0, 0.0
        self._records.clear()
