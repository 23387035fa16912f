"""One meter for every estimator: a game wrapper that counts, times, checks and optionally records coalitions.

Estimators wrap the game they are given in it (``ShapleyResult.n_evals`` is its count), and benchmarks wrap a
game once and hand the same meter to every method, ours and the field's, so evaluations are counted alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from nsl.games.base import Game, check_game


class CountingGame:
    """Wraps ``game``: counts every coalition it evaluates, the rows through the model, the calls and the seconds.

    Values come back as float64 on the CPU, one per coalition, and must be finite. With ``record=True`` every
    coalition and its value are kept (:meth:`value_of` looks one up). The wrapped game's ``players`` and
    ``chunk_size`` are passed through, so estimators batch and name players as with the bare game, and so is its
    decomposition over examples (``example_weights``, ``example_offset``, ``why_not_decomposable`` and
    :meth:`example_values`, counted and checked like full-set calls).

    Rows are the cost unit: a full-set call of K coalitions costs K × the game's ``rows_per_eval`` (1 for a game
    that does not say), a per-example call of R (coalition, example) pairs costs R.

    Example:
        >>> import torch
        >>> from nsl.games import CountingGame, additive_game, network_examples_game
        >>> meter = CountingGame(additive_game([1.0, 2.0, 3.0]))
        >>> meter(torch.tensor([[True, False, True], [False, False, False]])).tolist()
        [4.0, 0.0]
        >>> meter.n_evals, meter.calls, meter.n_rows
        (2, 1, 2)
        >>> meter = CountingGame(network_examples_game(40, 8))   # a mean over 8 examples
        >>> _ = meter(torch.ones(1, 40, dtype=torch.bool)); meter.n_rows
        8
        >>> _ = meter.example_values(torch.ones(3, 40, dtype=torch.bool), torch.tensor([0, 5, 7])); meter.n_rows
        11
    """

    def __init__(self, game: Game, record: bool = False) -> None:
        self.game = game
        self.n_players = check_game(game)
        self.n_evals = 0
        self.n_rows = 0  # (coalition, example) pairs: K × rows_per_eval per full-set call, R per per-example call
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

    @property
    def rows_per_eval(self) -> int:
        """Rows one full-set evaluation of the wrapped game costs (1 where it does not say)."""
        return int(getattr(self.game, "rows_per_eval", 1))

    @property
    def example_weights(self) -> Tensor | None:
        """The wrapped game's example weights (``None``: it does not decompose over examples)."""
        return getattr(self.game, "example_weights", None)

    @property
    def example_offset(self) -> float:
        return float(getattr(self.game, "example_offset", 0.0))

    @property
    def why_not_decomposable(self) -> str:
        """Why the wrapped game does not decompose over examples ("" when it does)."""
        if self.example_weights is not None and callable(getattr(self.game, "example_values", None)):
            return ""
        reason = getattr(self.game, "why_not_decomposable", "")
        return reason or f"{type(self.game).__name__} declares no per-example value"

    @property
    def n_examples(self) -> int:
        """Examples in the wrapped game's value: its number of example weights, else its ``rows_per_eval``."""
        weights = self.example_weights
        return len(weights) if weights is not None else self.rows_per_eval

    def _timed_values(self, call: Callable[[], Tensor], count: int, what: str, unit: str, one: str) -> Tensor:
        """``call()``'s values as float64 on the CPU, timed into ``seconds``: ``count`` finite values, or an error."""
        start = time.perf_counter()
        values = torch.as_tensor(call()).double().reshape(-1).cpu()
        self.seconds += time.perf_counter() - start
        if values.shape != (count,):
            raise ValueError(f"the game returned {tuple(values.shape)} {what} for {count} {unit}.")
        if not torch.isfinite(values).all():
            raise ValueError(f"the game returned NaN or inf for {one}; its value must be finite.")
        return values

    def example_values(self, present: Tensor, examples: Tensor) -> Tensor:
        """u_e(S) of R (coalition, example) pairs from the wrapped game, counted (R rows), timed and checked."""
        if self.example_weights is None or not callable(getattr(self.game, "example_values", None)):
            name = type(self.game).__name__
            raise TypeError(f"{name} does not decompose over examples: {self.why_not_decomposable}.")
        present, examples = torch.as_tensor(present), torch.as_tensor(examples)
        r = present.shape[0] if present.dim() == 2 else 1
        values = self._timed_values(
            lambda: self.game.example_values(present, examples), r, "per-example values", "rows",
            "a (coalition, example) pair",
        )
        self.n_rows += r
        self.calls += 1
        return values

    def __call__(self, present: Tensor) -> Tensor:
        present = torch.as_tensor(present)
        k = present.shape[0] if present.dim() == 2 else 1
        values = self._timed_values(lambda: self.game(present), k, "values", "coalitions", "a coalition")
        self.n_evals += k
        self.n_rows += k * self.rows_per_eval
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
        self.n_evals, self.n_rows, self.calls, self.seconds = 0, 0, 0, 0.0
        self._records.clear()
