"""The field's Shapley estimators behind one meter: accuracy against exact values, budgets, seeds, Captum rebuild."""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.benchmarks.competitors import (
    COMPETITORS,
    BudgetExceededError,
    min_budget,
)
from nsl.games import CountingGame, HarsanyiGame, additive_game, pairwise_game

pytest.importorskip("shapiq")
pytest.importorskip("captum")

N = 10
ANYTIME = ("captum", "antithetic_mc", "permutation_sv")
PER_BUDGET = ("kernelshap_paired", "kernelshap_uniform", "svarm")
ALL = ANYTIME + PER_BUDGET


def triples_game(n: int = N, seed: int = 0) -> HarsanyiGame:
    """Singletons, pairs and triples: no method here is exact on it (antithetic pairs cancel only pairs)."""
    g = torch.Generator().manual_seed(seed)
    terms: dict[tuple[int, ...], float] = {(i,): float(torch.randn(1, generator=g)) for i in range(n)}
    for size, count in ((2, 2 * n), (3, n)):
        for _ in range(count):
            t = tuple(sorted(torch.randperm(n, generator=g)[:size].tolist()))
            terms[t] = terms.get(t, 0.0) + float(torch.randn(1, generator=g))
    return HarsanyiGame(n, terms, offset=0.3)


def random_pairwise(n: int = N, seed: int = 1) -> HarsanyiGame:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=g, dtype=torch.float64)
    pairs = {(i, j): float(torch.randn(1, generator=g)) for i, j in itertools.combinations(range(n), 2)}
    return pairwise_game(w, pairs)


def marginal_variances(game: HarsanyiGame) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact per-player variance of one scan's marginal, and of the mean of an antithetic pair's two marginals.

    By enumeration: in a uniformly random order, player i joins the set S before it with the Shapley weight
    |S|!(N − |S| − 1)!/N!; in the reversed order it joins the complement of S ∪ {i}.
    """
    n = game.n_players
    masks = torch.arange(2**n)
    present = (masks[:, None] >> torch.arange(n)) & 1 == 1
    v = game(present)
    phi = game.shapley()
    sizes = present.sum(dim=1)
    weight = torch.tensor([math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) for s in range(n)])
    single, paired = torch.empty(n, dtype=torch.float64), torch.empty(n, dtype=torch.float64)
    for i in range(n):
        without = masks[(masks >> i) & 1 == 0]
        delta = v[without | (1 << i)] - v[without]
        p = weight[sizes[without]].double()
        mirrored = (2**n - 1) ^ without ^ (1 << i)
        delta_rev = v[mirrored | (1 << i)] - v[mirrored]
        single[i] = (p * delta.square()).sum() - phi[i] ** 2
        paired[i] = (p * ((delta + delta_rev) / 2).square()).sum() - phi[i] ** 2
    return single.clamp_min(0), paired.clamp_min(0)


def run(name: str, game: HarsanyiGame, budgets: list[int], seed: int = 0) -> tuple[dict[int, torch.Tensor], int]:
    """A method's estimates on a fresh meter, and what the meter counted."""
    meter = CountingGame(game)
    return COMPETITORS[name](meter, budgets, seed), meter.n_evals


# ------------------------------------------------------------------------------------------ accuracy


@pytest.mark.parametrize("name", ANYTIME)
def test_permutation_methods_within_five_standard_errors(name: str) -> None:
    """Each player's error is within 5 exact standard errors: σ_i/√m for m scans, or pairs for antithetic."""
    game = triples_game()
    single, paired = marginal_variances(game)
    m = 120
    budget = {"captum": 1 + m * N, "antithetic_mc": 2 + m * (N - 1), "permutation_sv": 2 + m * (N - 1)}[name]
    estimate = run(name, game, [budget])[0][budget]
    se = (paired / (m // 2)).sqrt() if name == "antithetic_mc" else (single / m).sqrt()
    assert ((estimate - game.shapley()).abs() <= 5 * se).all()
    assert (se > 0).all()  # the game is not one these methods are exact on: the bound is a real one


@pytest.mark.parametrize("name", PER_BUDGET)
def test_sampling_methods_unbiased_within_their_spread(name: str) -> None:
    """The mean over R seeds lies within its pooled standard error (ratio ≈ 1 if unbiased; 4 is far in the tail)."""
    game, budget, r = triples_game(), 300, 8
    runs = torch.stack([run(name, game, [budget], seed)[0][budget] for seed in range(r)])
    spread = runs.var(dim=0).sum() / r  # variance of the mean, summed over players
    bias2 = (runs.mean(dim=0) - game.shapley()).square().sum()
    assert spread > 0
    assert bias2 <= 4 * spread


@pytest.mark.parametrize("name", (*ANYTIME, "kernelshap_paired", "kernelshap_uniform"))
def test_exact_on_additive_games(name: str) -> None:
    """Every marginal of an additive game is the player's weight; a linear fit recovers it from any design."""
    w = torch.linspace(-1.0, 2.0, N, dtype=torch.float64)[torch.randperm(N, generator=torch.Generator().manual_seed(3))]
    budgets = [29, 41, 200]  # 3, 4 and 22 scans for the permutation methods: an odd count too
    estimates, _ = run(name, additive_game(w), budgets, seed=5)
    # shapiq's regression enforces v(∅), v(N) through a finite weight (1e8): exact to about 1e-7
    tol = 1e-12 if name in ANYTIME else 1e-6
    for b in budgets:
        torch.testing.assert_close(estimates[b], w, rtol=0, atol=tol)


@pytest.mark.parametrize("name", ["antithetic_mc", "kernelshap_paired", "kernelshap_uniform"])
def test_exact_on_pairwise_games_with_pairing(name: str) -> None:
    """A pair's interaction splits evenly between an order and its reverse (a coalition and its complement)."""
    game = random_pairwise()
    exact = game.shapley()
    budgets = [2 + 4 * (N - 1), 2 + 40 * (N - 1)] if name == "antithetic_mc" else [60, 300]  # even pair counts
    estimates, _ = run(name, game, budgets, seed=2)
    for b in budgets:
        torch.testing.assert_close(estimates[b], exact, rtol=0, atol=1e-6 * float(exact.abs().max()))
    if name == "antithetic_mc":  # an unpaired scan is not exact: the test above is not vacuous
        odd = 2 + 5 * (N - 1)
        assert not torch.allclose(run(name, game, [odd], seed=2)[0][odd], exact, rtol=0, atol=1e-3)


@pytest.mark.parametrize("name", PER_BUDGET)
def test_shapiq_exact_with_every_coalition(name: str) -> None:
    """With 2^N evaluations shapiq enumerates every coalition size: exact values, and no more than 2^N spent."""
    n = 8
    game = triples_game(n, seed=4)
    estimates, count = run(name, game, [2**n, 2**n + 50])
    assert count == 2 * 2**n  # the larger budget is capped at the 2^N coalitions that exist
    for values in estimates.values():
        torch.testing.assert_close(values, game.shapley(), rtol=0, atol=1e-6)


class SizeLog:
    """A game that notes the size of every coalition it is asked for (to see how a method samples)."""

    def __init__(self, game: HarsanyiGame) -> None:
        self.game, self.n_players, self.sizes = game, game.n_players, []

    def __call__(self, present: torch.Tensor) -> torch.Tensor:
        self.sizes += present.reshape(-1, self.n_players).sum(dim=1).tolist()
        return self.game(present)


def test_kernelshap_uniform_draws_sizes_uniformly() -> None:
    """Leverage SHAP's sampling draws every size 1..N−1 alike; the Shapley kernel favours sizes near 1 and N−1."""
    n, budget = 30, 1000
    middle = range(10, 21)
    fractions = {}
    for name in ("kernelshap_uniform", "kernelshap_paired"):
        log = SizeLog(additive_game(torch.ones(n)))
        COMPETITORS[name](CountingGame(log), [budget], 0)
        sampled = [s for s in log.sizes if 0 < s < n]
        fractions[name] = sum(s in middle for s in sampled) / len(sampled)
    p = len(middle) / (n - 1)
    sd = math.sqrt(p * (1 - p) / ((budget - 2) // 2))  # a coalition and its complement fall in or out together
    assert abs(fractions["kernelshap_uniform"] - p) <= 4 * sd
    assert fractions["kernelshap_paired"] < p - 4 * sd  # the check tells the two samplings apart


# ------------------------------------------------------------------------------------------- budgets


@pytest.mark.parametrize("name", ALL)
def test_meter_respects_budgets_and_anytime_costs_the_largest(name: str) -> None:
    game = triples_game(seed=7)
    budgets = [min_budget(name, N) + 3, 57, 131]
    estimates, count = run(name, game, budgets, seed=1)
    assert sorted(estimates) == budgets
    assert all(v.dtype == torch.float64 and v.shape == (N,) for v in estimates.values())
    alone = {b: run(name, game, [b], seed=1) for b in budgets}
    for b in budgets:
        assert alone[b][1] <= b
        torch.testing.assert_close(estimates[b], alone[b][0][b], rtol=1e-12, atol=1e-12)  # same as asked alone
    if name in ANYTIME:
        assert count == alone[budgets[-1]][1]  # one run to the largest budget
        step, fixed = (N, 1) if name == "captum" else (N - 1, 2)
        assert count == fixed + (budgets[-1] - fixed) // step * step  # every affordable scan is used
    else:
        assert count == sum(budgets)  # one run per budget, each spending exactly its budget


def test_overspending_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """An approximator that evaluates one coalition more than its budget is stopped by the meter's count."""
    import shapiq

    honest = shapiq.KernelSHAP.approximate

    def greedy(self, budget, game, *args, **kwargs):  # type: ignore[no-untyped-def]
        game(np.zeros((1, self.n), dtype=bool))
        return honest(self, budget, game, *args, **kwargs)

    monkeypatch.setattr(shapiq.KernelSHAP, "approximate", greedy)
    with pytest.raises(BudgetExceededError, match="budget 40"):
        COMPETITORS["kernelshap_paired"](CountingGame(triples_game()), [40], 0)


def test_bad_requests_are_refused() -> None:
    game = triples_game()
    with pytest.raises(TypeError, match="CountingGame"):
        COMPETITORS["svarm"](game, [40], 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=f"at least {1 + N}"):
        COMPETITORS["captum"](CountingGame(game), [N, 100], 0)
    with pytest.raises(ValueError, match="positive int"):
        COMPETITORS["antithetic_mc"](CountingGame(game), [0], 0)
    with pytest.raises(ValueError, match="unknown competitor"):
        min_budget("nope", N)


# --------------------------------------------------------------------------------------------- seeds


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_estimate_other_seed_other(name: str) -> None:
    game, b = triples_game(seed=9), 120
    first, again, other = (run(name, game, [b], seed)[0][b] for seed in (3, 3, 4))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


# -------------------------------------------------------------------------------------- Captum, shapiq


def test_captum_rebuilt_estimate_equals_captums_own() -> None:
    """The estimate rebuilt from one long run equals Captum run alone with n_samples=j (float32 sums aside)."""
    from captum.attr import ShapleyValueSampling

    game, seed, js = triples_game(seed=11), 6, (1, 3, 7)
    rng_before = torch.random.get_rng_state()
    estimates = COMPETITORS["captum"](CountingGame(game), [*(1 + j * N for j in js), 1 + 9 * N + 4], seed)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the global generator is left as it was
    ones = torch.ones(1, N, dtype=torch.float64)
    for j in js:
        torch.manual_seed(seed)
        own = ShapleyValueSampling(lambda x: game(x > 0.5)).attribute(
            ones,
            baselines=torch.zeros_like(ones),
            feature_mask=torch.arange(N)[None],
            n_samples=j,
            perturbations_per_eval=7,
        )
        # Captum sums in float32
        torch.testing.assert_close(estimates[1 + j * N], own.reshape(-1).double(), rtol=1e-5, atol=1e-5)


def test_permutation_sv_rebuilt_estimate_equals_shapiqs_own() -> None:
    """The estimate rebuilt after j permutations equals shapiq's PermutationSamplingSV run at 2 + j·(N − 1)."""
    import shapiq

    game, seed = triples_game(seed=12), 8
    budgets = [2 + j * (N - 1) for j in (1, 6, 11)]
    estimates = COMPETITORS["permutation_sv"](CountingGame(game), [*budgets, 2 + 20 * (N - 1)], seed)
    for b in budgets:
        own = shapiq.PermutationSamplingSV(N, random_state=seed).approximate(
            b, lambda c: game(torch.from_numpy(np.atleast_2d(c))).numpy()
        )
        values = torch.tensor([own.interactions[(i,)] for i in range(N)], dtype=torch.float64)
        torch.testing.assert_close(estimates[b], values)
