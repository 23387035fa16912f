"""Permutation-sampling Monte Carlo Shapley values (every player sampled in every scan)."""

from __future__ import annotations

import torch

from nsl.games.base import Game
from nsl.shapley._common import check_positive_int, check_tail, player_names
from nsl.shapley.distributed import Collective
from nsl.shapley.registry import ESTIMATORS
from nsl.shapley.result import ShapleyResult
from nsl.shapley.sampler import Budget, result_from_state, rows_budget, sample
from nsl.shapley.scan import PermutationSampler
from nsl.validation import resolve_top_k


@ESTIMATORS.register("monte_carlo")
def monte_carlo(
    game: Game,
    n_permutations: int = 100,
    *,
    truncation: float | None = None,
    patience: int = 5,
    antithetic: bool = False,
    max_evals: int | None = None,
    max_seconds: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    top_k: int | None = None,
    tail: str = "top",
    names: list[str] | None = None,
    resume: ShapleyResult | None = None,
    progress: bool = False,
    collective: Collective | object | None = None,
) -> ShapleyResult:
    """Shapley values as the mean marginal over ``n_permutations`` random removal scans.

    Unbiased with ``truncation=None`` (the default). ``truncation`` (a fraction of |v(N) − v(∅)|) ends a scan
    once the value stays that close to v(∅) for ``patience`` evaluations, as in the original TMC-Shapley.
    ``antithetic`` follows each order by its reverse. ``converged`` is False when ``max_evals`` or
    ``max_seconds`` stopped sampling before ``n_permutations`` scans. ``resume`` continues from an
    earlier result's statistics (give it a different ``seed``). ``progress`` shows a progress bar; Ctrl-C
    stops sampling and returns the partial result with ``interrupted=True``. ``top_k`` sets how many players
    the result's ``top_k`` lists (default ``min(10, N − 1)``); ``tail`` is accepted for a uniform signature
    (every player is sampled alike). ``collective`` shares the
    ``n_permutations`` scans among processes (DDP ranks) as in :func:`~nsl.shapley.tmab`: every rank returns
    the same result, ``n_evals`` counts all ranks' evaluations and ``local_evals`` this rank's.
    """
    check_positive_int("n_permutations", n_permutations)
    check_tail(tail)
    n = getattr(game, "n_players", None)
    if isinstance(n, int):  # before v(N) and v(∅) are evaluated
        resolve_top_k(top_k, n)
    budget = Budget(rows_budget(game, None, max_evals), max_seconds)  # evaluations of the whole set, in rows
    sampler = PermutationSampler(
        game,
        truncation=truncation,
        patience=patience,
        antithetic=antithetic,
        batch_size=batch_size,
        seed=seed,
        resume=resume,
        collective=collective,
    )
    k = resolve_top_k(top_k, sampler.n_players)
    everyone = torch.ones(sampler.n_players, dtype=torch.bool)
    interrupted = sample(
        sampler,
        budget,
        lambda: everyone if sampler.scans < n_permutations else None,
        progress=progress,
        desc="monte_carlo",
        max_steps=n_permutations,
    )
    return result_from_state(
        sampler,
        converged=sampler.scans >= n_permutations,
        k=k,
        names=player_names(game, names),
        method="monte_carlo",
        interrupted=interrupted,
        seconds=budget.seconds,
        tail=tail,
        truncated=sampler.truncation is not None,
    )
