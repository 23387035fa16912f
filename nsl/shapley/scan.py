"""Permutation scans: remove players one at a time and record each removal's drop in value.

Coalition ``t`` of a scan along ``order`` is the grand coalition without ``order[:t]``; a player at position
``p`` gets the marginal ``v(t=p) − v(t=p+1)``. Removing along a uniformly random order samples the same
marginals as adding along the reversed order, so the mean is an unbiased Shapley estimate. Only the
coalitions around the players that still need samples are evaluated, several per forward pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from nsl.games.base import Game
from nsl.shapley._common import check_positive_int
from nsl.shapley.distributed import Collective
from nsl.shapley.result import ShapleyResult
from nsl.shapley.sampler import Sampler, SampleState


@dataclass(frozen=True)
class Truncation:
    """Stop a scan once the value stays within ``tolerance`` of the empty-coalition value.

    After ``patience`` consecutive evaluated coalitions within tolerance, the players not yet reached get
    the marginal 0 (the original TMAB-Shapley rule, relative to v(∅) instead of a chance level).
    """

    tolerance: float
    patience: int = 5


def check_fraction(name: str, value: float | None, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        accepted = "None or a number in [0, 1)" if allow_none else "a number in [0, 1)"
        raise ValueError(f"{name}={value!r} is not accepted; use {accepted}.")


def removal_scan(
    game: Game,
    order: Tensor,
    active: Tensor,
    *,
    v_full: float,
    v_empty: float,
    truncation: Truncation | None,
    batch_size: int,
    evals_left: int | None = None,
    deadline: float | None = None,
) -> tuple[Tensor, Tensor, int, Tensor]:
    """Scan along ``order``; return the active players, their marginals, the coalitions evaluated and the
    coalition values known on the scan (evaluated, or v(N), v(∅) and the truncation value).

    ``evals_left`` and ``deadline`` (a ``time.perf_counter()`` value) cut a scan short, so a budget holds
    even when one scan is longer than the budget (thousands of players); a cut scan returns only the
    marginals it completed, those of the players removed first.
    """
    n = len(order)
    positions = torch.nonzero(active[order]).squeeze(1)
    if len(positions) == 0:
        return positions, torch.zeros(0, dtype=torch.float64), 0, torch.zeros(0, dtype=torch.float64)
    needed = torch.unique(torch.cat([positions, positions + 1]))
    values = torch.full((n + 1,), float("nan"), dtype=torch.float64)
    values[0] = v_full
    values[n] = v_empty
    to_eval = needed[(needed > 0) & (needed < n)]
    rank = torch.empty(n, dtype=torch.long)
    rank[order] = torch.arange(n)
    evaluated = 0
    run = 0
    for chunk in to_eval.split(batch_size):
        if evals_left is not None:
            chunk = chunk[: max(0, evals_left - evaluated)]
        if len(chunk) == 0 or (deadline is not None and evaluated and time.perf_counter() >= deadline):
            break
        present = rank.unsqueeze(0) >= chunk.unsqueeze(1)  # (k, N): still present after removing order[:t]
        v = game(present).double().reshape(-1)
        evaluated += len(chunk)
        values[chunk] = v
        if truncation is None:
            continue
        stop = None
        for t, value in zip(chunk.tolist(), v.tolist(), strict=True):
            run = run + 1 if abs(value - v_empty) <= truncation.tolerance else 0
            if run >= truncation.patience:
                stop = t
                break
        if stop is not None:
            # Every later coalition takes the truncation value, whatever the chunk evaluated past it,
            # so the result does not depend on the batch size.
            values[needed[needed > stop]] = values[stop].item()
            break
    marginals = values[positions] - values[positions + 1]
    done = ~torch.isnan(marginals)  # all, unless the budget cut the scan
    return order[positions[done]], marginals[done], evaluated, values[~torch.isnan(values)]


class PermutationSampler(Sampler):
    """Removal scans along random orders: every scan gives each active player one marginal at a uniformly
    random scan position (the classic permutation estimator and the original TMAB-Shapley).

    A relative ``truncation`` level becomes an absolute tolerance around v(∅) (see :class:`Truncation`);
    ``antithetic=True`` follows every random order by its reverse.
    """

    name = "scan"

    def __init__(
        self,
        game: Game,
        *,
        truncation: float | None,
        patience: int,
        antithetic: bool,
        batch_size: int | None,
        seed: int,
        resume: ShapleyResult | None = None,
        collective: Collective | object | None = None,
    ) -> None:
        check_fraction("truncation", truncation)
        check_positive_int("patience", patience)
        super().__init__(game, batch_size=batch_size, seed=seed, resume=resume, collective=collective)
        self.antithetic = antithetic
        self.truncation = None if not truncation else Truncation(truncation * self.span, patience)
        self._reverse_next: Tensor | None = None

    @property
    def truncation_free(self) -> bool:  # type: ignore[override]
        return self.truncation is None

    @property
    def scans(self) -> int:
        """Scans over all ranks."""
        return self.steps

    def next_order(self) -> Tensor:
        if self._reverse_next is not None:
            order, self._reverse_next = self._reverse_next, None
            return order
        order = torch.randperm(self.n_players, generator=self.generator)
        if self.antithetic:
            self._reverse_next = order.flip(0)
        return order

    def step(self, active: Tensor, into: SampleState, *, evals_left: int | None, deadline: float | None) -> int:
        """One scan adding a marginal of each active player (those it reaches, when a budget cuts it)."""
        players, marginals, evaluated, values = removal_scan(
            self.game,
            self.next_order(),
            active,
            v_full=self.v_full,
            v_empty=self.v_empty,
            truncation=self.truncation,
            batch_size=self.batch_size,
            evals_left=evals_left,
            deadline=deadline,
        )
        into.players.update(players, marginals)
        into.see_values(values)
        return evaluated
