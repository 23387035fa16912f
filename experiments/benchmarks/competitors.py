"""The field's Shapley estimators, adapted to nsl's games and metered by one :class:`~nsl.games.CountingGame`.

Every entry of :data:`COMPETITORS` is ``estimates(game, budgets, seed) -> {budget: values}``: for each budget b
(coalition evaluations) the method's estimate, float64 of shape (N,), when it is given at most b evaluations.
``game`` is the meter the benchmark hands to every method, ours and the field's, so that all evaluations
(v(∅) and v(N) included) are counted alike; each adapter checks the meter's count against every budget and
raises :class:`BudgetExceededError` if a method spent more.

Two kinds of methods:

- anytime (``captum``, ``antithetic_mc``, ``permutation_sv``): one run to the largest budget; the estimate for
  a smaller budget is the one the run held when its evaluations reached that budget (rebuilt from the logged
  evaluations for Captum and shapiq, whose own APIs return only the final estimate). The run costs the
  largest budget once; the count attributable to a budget's estimate is the evaluations it is built from,
  which is what a run stopped there costs.
- per budget (``kernelshap_paired``, ``kernelshap_uniform``, ``svarm``): one fresh run per budget, each with
  the same ``seed``. The meter is not reset between runs: a run's count is the meter's count after it minus
  the count before it (an offset), so the meter's total is the sum over the runs.

shapiq (the ``bench`` extra) and Captum (``dev``) are imported when a method first runs.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nsl.games import CountingGame
from nsl.registry import Registry

Competitor = Callable[[CountingGame, Sequence[int], int], dict[int, Tensor]]
"""``estimates(game, budgets, seed) -> {budget: float64 (N,) estimate}``."""

_Impl = Callable[[CountingGame, list[int], int], dict[int, tuple[Tensor, int]]]
"""An adapter's body: sorted unique budgets in, ``{budget: (estimate, evaluations it cost)}`` out."""

COMPETITORS: Registry[Competitor] = Registry("competitor")
_MIN_BUDGETS: dict[str, Callable[[int], int]] = {}
_ANYTIME = frozenset({"captum", "antithetic_mc", "permutation_sv"})  # one run to the largest budget


class BudgetExceededError(RuntimeError):
    """A method spent more coalition evaluations (as counted by the meter) than the budget it was given."""


def min_budget(name: str, n_players: int) -> int:
    """The fewest evaluations for which the method ``name`` returns an estimate on a game of ``n_players``."""
    COMPETITORS[name]  # unknown names: the registry's error, listing what is registered
    return _MIN_BUDGETS[name](n_players)


def _competitor(name: str, least: Callable[[int], int]) -> Callable[[_Impl], Competitor]:
    """Register ``impl`` under ``name`` behind the checks every competitor shares (meter, budgets, counts)."""

    def wrap(impl: _Impl) -> Competitor:
        @functools.wraps(impl)
        def estimates(game: CountingGame, budgets: Sequence[int], seed: int = 0) -> dict[int, Tensor]:
            if not isinstance(game, CountingGame):
                raise TypeError(
                    f"{name} needs the benchmark's meter: wrap the game in nsl.games.CountingGame "
                    f"(got {type(game).__name__})."
                )
            n = game.n_players
            if n < 2:
                raise ValueError(f"{name} needs a game of at least 2 players; this one has {n}.")
            wanted = sorted({_check_budget(name, b) for b in budgets})
            if not wanted:
                raise ValueError(f"{name} needs at least one budget.")
            if wanted[0] < least(n):
                raise ValueError(
                    f"{name} needs a budget of at least {least(n)} evaluations for one estimate with N={n} players; "
                    f"got {wanted[0]}."
                )
            start = game.n_evals
            raw = impl(game, wanted, int(seed))
            out = {}
            for b in wanted:
                values, used = raw[b]
                if used > b:
                    raise BudgetExceededError(
                        f"{name} spent {used} coalition evaluations (meter count) on its estimate for budget {b}."
                    )
                out[b] = values.detach().to(dtype=torch.float64, device="cpu").reshape(n)
            if name in _ANYTIME and game.n_evals - start > wanted[-1]:
                raise BudgetExceededError(
                    f"{name}'s run spent {game.n_evals - start} coalition evaluations (meter count); "
                    f"the largest budget is {wanted[-1]}."
                )
            return out

        COMPETITORS.register(name, estimates)
        _MIN_BUDGETS[name] = least
        return estimates

    return wrap


def _check_budget(name: str, budget: object) -> int:
    """A budget must be a positive int (numpy ints welcome, bools not)."""
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer) or budget < 1:
        raise ValueError(f"{name}: budget {budget!r} must be a positive int (coalition evaluations).")
    return int(budget)


class _Logged:
    """Passes coalitions to the meter and keeps them with their values, in order, to rebuild anytime estimates."""

    def __init__(self, game: CountingGame) -> None:
        self.game = game
        self.n_players = game.n_players
        self.rows: list[Tensor] = []
        self.values: list[Tensor] = []

    def __call__(self, present: Tensor) -> Tensor:
        present = torch.as_tensor(present).reshape(-1, self.n_players).bool().cpu()
        values = self.game(present)
        self.rows.append(present.clone())
        self.values.append(values.clone())
        return values

    def cat(self) -> tuple[Tensor, Tensor]:
        """All logged coalitions (E, N) and values (E,)."""
        return torch.cat(self.rows), torch.cat(self.values)


def _growing_scans(rows: Tensor, values: Tensor, v_empty: Tensor, v_full: Tensor | None) -> Tensor:
    """Marginals (J, N) of J scans that add players one at a time, from their coalitions (J, M, N) and values.

    M = N when each scan's last coalition is the full one (Captum), M = N − 1 when v(N) is given (shapiq).
    """
    j, m, n = rows.shape
    if not torch.equal(rows.sum(dim=2), torch.arange(1, m + 1).expand(j, m)):
        raise RuntimeError("the logged evaluations do not add one player at a time along each scan.")
    added = torch.cat([rows[:, :1], rows[:, 1:] & ~rows[:, :-1]], dim=1)  # (J, M, N), one True per step
    if m == n - 1:
        added = torch.cat([added, ~rows[:, -1:]], dim=1)
        values = torch.cat([values, v_full.reshape(1, 1).expand(j, 1)], dim=1)
    chain = torch.cat([v_empty.reshape(1, 1).expand(j, 1), values], dim=1)  # (J, N + 1)
    order = added.double().argmax(dim=2)  # (J, N): the player added at each step
    if not torch.equal(order.sort(dim=1).values, torch.arange(n).expand(j, n)):
        raise RuntimeError("a logged scan does not add every player exactly once.")
    return torch.zeros(j, n, dtype=torch.float64).scatter_(1, order, chain[:, 1:] - chain[:, :-1])


def _running_means(marginals: Tensor) -> Tensor:
    """Row j is the mean of the first j + 1 scans' marginals: the permutation estimate after j + 1 scans."""
    counts = torch.arange(1, len(marginals) + 1, dtype=torch.float64)
    return marginals.cumsum(dim=0) / counts[:, None]


def _chunk(game: CountingGame) -> int:
    """Coalitions per call: the game's ``chunk_size``, or 64."""
    return int(game.chunk_size or 64)


# ------------------------------------------------------------------------------------------------ anytime


@_competitor("captum", least=lambda n: 1 + n)
def _captum(game: CountingGame, budgets: list[int], seed: int) -> dict[int, tuple[Tensor, int]]:
    """Captum's ``ShapleyValueSampling`` (1 + j·N evaluations for j permutations), all budgets from one run.

    Input a (1, N) row of ones, baselines zeros, one feature per player; permutations from the global CPU
    generator seeded with ``seed``, whose state is restored afterwards.
    """
    from captum.attr import ShapleyValueSampling

    n = game.n_players
    n_samples = (budgets[-1] - 1) // n
    log = _Logged(game)
    ones = torch.ones(1, n, dtype=torch.float64)
    before = game.n_evals
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        attribution = ShapleyValueSampling(lambda x: log(x > 0.5)).attribute(
            ones,
            baselines=torch.zeros_like(ones),
            feature_mask=torch.arange(n).unsqueeze(0),
            n_samples=n_samples,
            perturbations_per_eval=_chunk(game),
        )
    rows, values = log.cat()
    if game.n_evals - before != 1 + n_samples * n or len(rows) != 1 + n_samples * n or bool(rows[0].any()):
        raise RuntimeError("Captum's evaluations do not follow v(∅) then N coalitions per permutation.")
    marginals = _growing_scans(rows[1:].reshape(n_samples, n, n), values[1:].reshape(n_samples, n), values[0], None)
    means = _running_means(marginals)
    own = attribution.reshape(-1).double()
    if not torch.allclose(means[-1], own, rtol=1e-4, atol=1e-5 * float(own.abs().max().clamp_min(1e-30))):
        raise RuntimeError("the rebuilt Captum estimate does not match Captum's own output.")
    return {b: (means[(b - 1) // n - 1], 1 + (b - 1) // n * n) for b in budgets}


@_competitor("antithetic_mc", least=lambda n: 2 + (n - 1))
def _antithetic_mc(game: CountingGame, budgets: list[int], seed: int) -> dict[int, tuple[Tensor, int]]:
    """Untruncated permutation Monte Carlo with antithetic pairs: each random order is followed by its reverse.

    v(N) and v(∅) once up front, then N − 1 evaluations per removal scan; orders from a ``torch.Generator``
    seeded with ``seed``. Scans are batched but a batch never crosses a budget, so the meter's count when a
    budget's estimate is recorded is exactly what it cost. A budget that ends mid-pair keeps the unpaired scan.
    """
    n = game.n_players
    gen = torch.Generator().manual_seed(seed)
    start = game.n_evals
    v_full, v_empty = (torch.tensor(v, dtype=torch.float64) for v in game.full_and_empty())
    per_batch = max(1, _chunk(game) // (n - 1))
    steps = torch.arange(1, n)
    totals = torch.zeros(n, dtype=torch.float64)
    scans, last, out = 0, torch.arange(n), {}
    for b in budgets:
        target = (b - 2) // (n - 1)
        while scans < target:
            orders = []
            for s in range(scans, min(scans + per_batch, target)):
                last = torch.randperm(n, generator=gen) if s % 2 == 0 else last.flip(0)
                orders.append(last)
            order = torch.stack(orders)  # (K, N): removal order of each scan
            rank = order.argsort(dim=1)  # rank[k, i]: step at which player i is removed
            present = rank[:, None, :] >= steps[None, :, None]  # (K, N − 1, N): after removing t players
            vals = game(present.reshape(-1, n)).reshape(len(order), n - 1)
            k = len(order)
            chain = torch.cat([v_full.expand(k, 1), vals, v_empty.expand(k, 1)], dim=1)  # (K, N + 1)
            marginals = torch.zeros(k, n, dtype=torch.float64).scatter_(1, order, chain[:, :-1] - chain[:, 1:])
            totals += marginals.sum(dim=0)
            scans += k
        out[b] = (totals / scans, game.n_evals - start)
    return out


@_competitor("permutation_sv", least=lambda n: 2 + (n - 1))
def _permutation_sv(game: CountingGame, budgets: list[int], seed: int) -> dict[int, tuple[Tensor, int]]:
    """shapiq's ``PermutationSamplingSV`` (2 + j·(N − 1) evaluations for j permutations), all budgets from one run.

    shapiq draws its permutations from one stream whatever the batch size, so the estimate rebuilt after j
    permutations is the one shapiq returns for budget 2 + j·(N − 1) with the same seed.
    """
    import shapiq

    n = game.n_players
    n_perm = (budgets[-1] - 2) // (n - 1)
    log = _Logged(game)
    result = shapiq.PermutationSamplingSV(n, random_state=seed).approximate(
        budget=2 + n_perm * (n - 1), game=_NumpyGame(log), batch_size=max(1, _chunk(game) // (n - 1))
    )
    rows, values = log.cat()
    if len(rows) != 2 + n_perm * (n - 1) or bool(rows[0].any()) or not bool(rows[1].all()):
        raise RuntimeError("shapiq's permutation sampling did not evaluate v(∅), v(N), then N − 1 per permutation.")
    marginals = _growing_scans(
        rows[2:].reshape(n_perm, n - 1, n), values[2:].reshape(n_perm, n - 1), values[0], values[1]
    )
    means = _running_means(marginals)
    own = _first_order(result, n)
    if not torch.allclose(means[-1], own, rtol=1e-9, atol=1e-12 * float(own.abs().max().clamp_min(1e-30))):
        raise RuntimeError("the rebuilt shapiq permutation estimate does not match shapiq's own output.")
    return {b: (means[(b - 2) // (n - 1) - 1], 2 + (b - 2) // (n - 1) * (n - 1)) for b in budgets}


# ----------------------------------------------------------------------------------------------- shapiq


class _NumpyGame:
    """shapiq's view of a game: numpy bool coalitions (K, N) or (N,) in, numpy float64 values (K,) out."""

    def __init__(self, game: CountingGame | _Logged) -> None:
        self.game = game
        self.n_players = game.n_players

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        rows = np.atleast_2d(np.asarray(coalitions, dtype=bool))
        if rows.ndim != 2 or rows.shape[1] != self.n_players:
            raise ValueError(f"shapiq asked for coalitions of shape {rows.shape}; expected (K, {self.n_players}).")
        if len(rows) == 0:
            return np.zeros(0, dtype=np.float64)
        return self.game(torch.from_numpy(np.ascontiguousarray(rows))).numpy()


def _first_order(result: Any, n: int) -> Tensor:
    """The first-order values of a shapiq ``InteractionValues`` as an (N,) float64 tensor in player order."""
    missing = [i for i in range(n) if (i,) not in result.interactions]
    if missing:
        raise RuntimeError(f"shapiq returned no value for players {missing}.")
    return torch.tensor([float(result.interactions[(i,)]) for i in range(n)], dtype=torch.float64)


def _per_budget(
    make: Callable[[int, int], Any], game: CountingGame, budgets: list[int], seed: int
) -> dict[int, tuple[Tensor, int]]:
    """One fresh shapiq approximator per budget; each run's cost is the meter's count across it (an offset)."""
    out = {}
    for b in budgets:
        start = game.n_evals
        with warnings.catch_warnings():  # shapiq evaluates at most 2^N coalitions and says so: the meter counts
            warnings.filterwarnings("ignore", message="Not all budget is required due to the border-trick")
            result = make(game.n_players, seed).approximate(budget=b, game=_NumpyGame(game))
        out[b] = (_first_order(result, game.n_players), game.n_evals - start)
    return out


@_competitor("kernelshap_paired", least=lambda n: 2)
def _kernelshap_paired(game: CountingGame, budgets: list[int], seed: int) -> dict[int, tuple[Tensor, int]]:
    """shapiq's ``KernelSHAP`` with the pairing trick (each sampled coalition with its complement), Shapley kernel."""
    import shapiq

    return _per_budget(lambda n, s: shapiq.KernelSHAP(n, pairing_trick=True, random_state=s), game, budgets, seed)


@_competitor("kernelshap_uniform", least=lambda n: 2)
def _kernelshap_uniform(game: CountingGame, budgets: list[int], seed: int) -> dict[int, tuple[Tensor, int]]:
    """KernelSHAP with paired sampling and sizes drawn uniformly: Leverage SHAP's sampling (shapiq has no LeverageSHAP).

    shapiq's ``sampling_weights`` (N + 1,) weigh coalition sizes (0 and N are always evaluated, their weights
    ignored); all ones draw each size alike. The regression keeps the Shapley kernel, importance-reweighted.
    """
    import shapiq

    return _per_budget(
        lambda n, s: shapiq.KernelSHAP(n, pairing_trick=True, sampling_weights=np.ones(n + 1), random_state=s),
        game,
        budgets,
        seed,
    )


@_competitor("svarm", least=lambda n: 2)
def _svarm(game: CountingGame, budgets: list[int], seed: int) -> dict[int, tuple[Tensor, int]]:
    """shapiq's ``SVARM`` (stratified Shapley values without marginal contributions), its default sampling."""
    import shapiq

    return _per_budget(lambda n, s: shapiq.SVARM(n, random_state=s), game, budgets, seed)
