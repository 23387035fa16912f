"""Estimators against games whose Shapley values are known exactly."""

from __future__ import annotations

import itertools
import math
import time

import pytest
import torch

from conftest import assert_unchanged, snapshot
from nsl import AccuracyGame, FilterPlayers, ShapleyResult, exact, monte_carlo, tmab
from nsl.games import HarsanyiGame, additive_game, pairwise_game
from nsl.shapley import confidence_radius, metrics
from nsl.shapley.result import RunningStats


class TableGame:
    """A game given by an arbitrary value for each of the 2ᴺ coalitions (bit i = player i)."""

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table.double()
        self.n_players = int(math.log2(len(table)))
        self.calls = 0

    def __call__(self, present: torch.Tensor) -> torch.Tensor:
        present = present.reshape(-1, self.n_players)
        self.calls += present.shape[0]
        index = (present.long() << torch.arange(self.n_players)).sum(dim=1)
        return self.table[index]


def brute_force_shapley(game) -> torch.Tensor:
    """Average marginal over all N! orders, one coalition at a time: the definition, nothing clever."""
    n = game.n_players
    phi = torch.zeros(n, dtype=torch.float64)
    orders = list(itertools.permutations(range(n)))
    for order in orders:
        present = torch.zeros(n, dtype=torch.bool)
        previous = float(game(present.clone())[0])
        for i in order:
            present[i] = True
            value = float(game(present.clone())[0])
            phi[i] += value - previous
            previous = value
    return phi / len(orders)


def random_pairwise_game(n: int, seed: int, scale: float = 1.0) -> HarsanyiGame:
    g = torch.Generator().manual_seed(seed)
    weights = torch.randn(n, generator=g, dtype=torch.float64) * scale
    pairs = {(i, j): float(torch.randn(1, generator=g)) * scale for i in range(n) for j in range(i + 1, n)}
    return pairwise_game(weights, pairs)


def test_exact_equals_brute_force_on_an_arbitrary_game():
    table = torch.randn(2**6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    game = TableGame(table)
    result = exact(game)
    assert torch.allclose(result.values, brute_force_shapley(game), atol=1e-9, rtol=0)
    assert result.n_evals == 2**6
    assert result.converged and torch.equal(result.stderr, torch.zeros(6, dtype=torch.float64))
    # efficiency: values sum to v(N) − v(∅)
    assert float(result.values.sum()) == pytest.approx(float(table[-1] - table[0]), abs=1e-9)


def test_exact_matches_closed_form_of_harsanyi_games():
    game = HarsanyiGame(8, {(0,): 1.0, (1, 2): 2.0, (3, 4, 5): -3.0, (0, 7): 0.5, (6,): 0.25})
    result = exact(game, batch_size=37)  # odd batches must not matter
    assert torch.allclose(result.values, game.shapley(), atol=1e-12, rtol=0)
    assert result.top_k[:3].tolist() == [0, 1, 2]  # φ = 1.25, 1, 1 (ties by index)


def test_exact_on_a_real_network_equals_brute_force(model, digits_val):
    x, y = digits_val
    players = FilterPlayers(model, layers="net.features.0")  # 8 filters: 256 coalitions
    game = AccuracyGame(model, players, x[:60], y[:60])
    small = TableGame(torch.stack([game(c)[0] for c in _all_masks(8)]))
    result = exact(game)
    assert torch.allclose(result.values, brute_force_shapley(small), atol=1e-9, rtol=0)
    assert result.names == players.names


def _all_masks(n: int):
    for m in range(2**n):
        yield torch.tensor([(m >> i) & 1 for i in range(n)], dtype=torch.bool)


def test_exact_refuses_too_many_players():
    with pytest.raises(ValueError, match="N=21"):
        exact(additive_game(torch.ones(21)))


@pytest.mark.parametrize("antithetic", [False, True])
def test_monte_carlo_is_within_its_standard_error(antithetic):
    game = random_pairwise_game(8, seed=3)
    truth = game.shapley()
    result = monte_carlo(game, 400, antithetic=antithetic, seed=11)
    z = (result.values - truth).abs() / result.stderr
    assert result.stderr.min() > 0
    assert float(z.max()) < 4.5  # 8 players, each |z| < 4.5 with probability > 0.9999
    assert result.converged and result.counts.tolist() == [400] * 8


def test_monte_carlo_is_exact_on_additive_games_and_counts_every_evaluation():
    game = additive_game([0.3, -0.1, 0.5, 0.0, 0.2])
    result = monte_carlo(game, 3, batch_size=2)
    assert torch.allclose(result.values, game.shapley(), atol=1e-12, rtol=0)
    assert float(result.stderr.max()) < 1e-12
    # v(N) and v(∅) once, then N−1 interior coalitions per scan
    assert result.n_evals == game.n_evals == 2 + 3 * 4


def test_same_seed_same_result_and_no_global_rng():
    game = random_pairwise_game(10, seed=1)
    torch.manual_seed(0)
    expected_next = torch.rand(2)
    torch.manual_seed(0)
    a = monte_carlo(game, 20, seed=5)
    b = tmab(game, 3, seed=5, max_evals=2000)
    assert torch.equal(torch.rand(2), expected_next)  # estimators draw only from their own generator
    assert torch.equal(a.values, monte_carlo(game, 20, seed=5).values)
    assert torch.equal(b.values, tmab(game, 3, seed=5, max_evals=2000).values)
    assert not torch.equal(a.values, monte_carlo(game, 20, seed=6).values)


def test_truncation_saves_evaluations_and_keeps_efficiency_within_tolerance():
    # A "network" that collapses once a third of its players are gone: value = relu(count − 20) / 10.
    n = 30

    class Collapsing:
        n_players = n

        def __call__(self, present):
            return (present.reshape(-1, n).double().sum(1) - 20).clamp(min=0) / 10

    # truncation can only skip whole calls to the game, so evaluate a few coalitions per call
    full = monte_carlo(Collapsing(), 50, seed=0, batch_size=4)
    cut = monte_carlo(Collapsing(), 50, seed=0, truncation=0.01, patience=3, batch_size=4)
    assert cut.n_evals < 0.5 * full.n_evals
    assert float(cut.values.sum()) == pytest.approx(1.0, abs=0.01 + 1e-9)
    assert float(full.values.sum()) == pytest.approx(1.0, abs=1e-9)


def _planted_game(n: int = 60, k: int = 5) -> HarsanyiGame:
    """k clearly strong players among n, with pairwise interactions that make marginals noisy."""
    g = torch.Generator().manual_seed(7)
    weights = torch.rand(n, generator=g, dtype=torch.float64) * 0.02
    planted = torch.randperm(n, generator=g)[:k]
    weights[planted] += 0.1 + 0.02 * torch.arange(k, dtype=torch.float64)
    pairs = {}
    for _ in range(3 * n):
        i, j = torch.randperm(n, generator=g)[:2].tolist()
        pairs[(min(i, j), max(i, j))] = float(torch.randn(1, generator=g)) * 0.03
    return pairwise_game(weights, pairs)


def test_tmab_finds_the_planted_top_k_with_fewer_evaluations():
    game = _planted_game()
    truth = torch.topk(game.shapley(), 5).indices
    result = tmab(game, 5, truncation=None, seed=0)
    assert result.converged
    assert set(result.top_k.tolist()) == set(truth.tolist())
    assert result.top_k.tolist() == result.culprits(5).tolist()
    # clearly weak players stop being sampled early: the bandit spends samples near the boundary
    assert result.counts.min() < result.counts.max() / 2
    assert result.n_evals == game.n_evals  # counted at the game
    reference = monte_carlo(game, int(result.counts.max()), seed=0)
    assert result.n_evals < reference.n_evals / 2


@pytest.mark.parametrize("tail", ["bottom", "both"])
def test_tmab_finds_the_planted_bottom_k(tail: str):
    planted = _planted_game()
    g = torch.Generator().manual_seed(3)
    culprits = torch.randperm(planted.n_players, generator=g)[:5].tolist()
    # the planted game plus five clearly harmful players
    dividends = {t: float(c) - (0.1 + 0.02 * culprits.index(t[0]) if len(t) == 1 and t[0] in culprits else 0.0)
                 for t, c in zip(planted.terms, planted.coef, strict=True)}
    game = HarsanyiGame(planted.n_players, dividends)
    truth = game.shapley()
    result = tmab(game, 5, truncation=None, tail=tail, seed=1)
    assert result.converged
    assert set(result.culprits(5, negative=True).tolist()) == set(torch.topk(-truth, 5).indices.tolist())
    if tail == "both":
        assert set(result.top_k.tolist()) == set(torch.topk(truth, 5).indices.tolist())


def test_tmab_reports_a_budget_that_ran_out():
    game = _planted_game()
    result = tmab(game, 5, max_evals=300)
    assert not result.converged
    assert 299 <= result.n_evals <= 300  # the last round is cut to fit (a marginal needs two coalitions)
    scan = tmab(game, 5, max_evals=300, sampler="scan")
    assert not scan.converged and scan.n_evals == 300  # the scan that reaches the budget is cut there


class _SlowGame:
    """A real game whose evaluations take time, like a large network's forward passes."""

    def __init__(self, game, seconds: float) -> None:
        self.game, self.seconds, self.n_players = game, seconds, game.n_players

    def __call__(self, present: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return self.game(present)


@pytest.mark.parametrize("estimator", ["tmab", "monte_carlo"])
def test_budget_cuts_a_scan_longer_than_the_budget(estimator):
    # 2,000 players: one untruncated scan is 1,999 evaluations, far more than the budget.
    weights = torch.linspace(1, 0, 2000, dtype=torch.float64)
    game = additive_game(weights)
    if estimator == "tmab":
        result = tmab(game, 5, max_evals=50, truncation=None, batch_size=8)
    else:
        result = monte_carlo(game, n_permutations=3, max_evals=50, truncation=None, batch_size=8)
    assert result.n_evals == 50 and not result.converged
    sampled = result.counts > 0
    assert 0 < int(sampled.sum()) <= 48  # the players removed first, each with its exact marginal
    torch.testing.assert_close(result.values[sampled], weights[sampled])
    slow = _SlowGame(game, 0.02)
    start = time.perf_counter()
    cut = tmab(slow, 5, max_evals=None, max_seconds=0.3, truncation=None, batch_size=2)
    assert time.perf_counter() - start < 1.5 and cut.n_evals < 100 and not cut.converged


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"top_k": 0}, r"top_k=0 .* use an int in \[1, 59\]"),
        ({"top_k": 60}, "top_k=60"),
        ({"delta": 1.5}, "delta=1.5"),
        ({"epsilon_fraction": -0.1}, "epsilon_fraction=-0.1"),
        ({"epsilon_fraction": 1.0}, r"epsilon_fraction=1\.0 .* \[0, 1\)"),
        ({"max_evals": 0}, "max_evals=0"),
        ({"bound": "hoeffding"}, "bound='hoeffding'"),
        ({"tail": "middle"}, "tail='middle'"),
        ({"sampler": "sobol"}, "sampler='sobol'"),
        ({"prior_samples": -1}, "prior_samples=-1"),
        ({"truncation": 0.2}, "apply to sampler='scan'"),
        ({"sampler": "scan", "truncation": 1.2}, "truncation=1.2"),
    ],
)
def test_tmab_bad_arguments_fail_before_any_evaluation(kwargs, match):
    game = _planted_game()
    kwargs = {"top_k": 5, **kwargs}
    with pytest.raises(ValueError, match=match):
        tmab(game, **kwargs)
    assert game.n_evals == 0


def test_epsilon_goes_in_as_a_fraction_and_comes_out_in_value_units():
    """``epsilon_fraction`` (of the value scale) in, ``epsilon_value`` (value units) out; the old names still work,
    with a warning, and an old result file's ``epsilon`` is read as ``epsilon_value``."""
    game = _planted_game()
    result = tmab(game, 5, epsilon_fraction=0.02, seed=0)
    seen = float(result.stats["value_high"] - result.stats["value_low"])
    scale = max(abs(result.full_value - result.empty_value), seen)
    assert result.converged and result.epsilon_value == pytest.approx(0.02 * scale) and scale > 0.5
    assert f"ε = {result.epsilon_value:.4g}" in result.guarantee
    # The old argument name means the same fraction: the same run, and a FutureWarning naming the new name.
    with pytest.warns(FutureWarning, match="epsilon= is renamed epsilon_fraction="):
        assert tmab(game, 5, epsilon=0.02, seed=0) == result
    evals = game.n_evals
    with pytest.raises(TypeError, match="give only epsilon_fraction"):
        tmab(game, 5, epsilon=0.02, epsilon_fraction=0.03)
    assert game.n_evals == evals
    # The old attribute is a read-only alias of epsilon_value; files hold "epsilon_value", old files "epsilon".
    with pytest.warns(DeprecationWarning, match="epsilon_value"):
        assert result.epsilon == result.epsilon_value
    with pytest.raises(AttributeError):
        result.epsilon = 1.0
    saved = result.to_dict()
    assert "epsilon" not in saved and saved["epsilon_value"] == result.epsilon_value
    saved["epsilon"] = saved.pop("epsilon_value")
    assert ShapleyResult.from_dict(saved) == result


def test_one_top_k_rule_for_every_estimator():
    """Default min(10, N − 1); an int in [1, N − 1]; the same message everywhere, before any evaluation."""
    small, large = TableGame(torch.rand(2**6, generator=torch.Generator().manual_seed(0))), _planted_game(30)
    assert exact(small).k == monte_carlo(small, 2).k == tmab(small, max_evals=50).k == 5
    assert exact(small, top_k=2).k == 2 and monte_carlo(large, 2).k == tmab(large, max_evals=100).k == 10
    message = r"^top_k=6 is not accepted for N=6 players; use an int in \[1, 5\] or None \(min\(10, N − 1\)\)\.$"
    for estimate in (exact, lambda g, **kw: monte_carlo(g, 2, **kw), tmab):
        small.calls = 0
        with pytest.raises(ValueError, match=message):
            estimate(small, top_k=6)
        assert small.calls == 0
    with pytest.raises(ValueError, match=message):
        metrics.eps_correct(torch.rand(6), torch.rand(6), 6, 0.0)
    with pytest.raises(ValueError, match=r"^top_k=True is not accepted"):
        tmab(small, top_k=True)


def test_not_a_game_is_rejected():
    with pytest.raises(TypeError, match="n_players"):
        monte_carlo(lambda present: present.sum(1), 5)


def test_confidence_radius_shrinks_with_samples_and_is_infinite_below_two():
    stats = RunningStats(3)
    stats.update(torch.tensor([0, 1, 2]), torch.tensor([0.1, 0.2, 0.3]))
    assert torch.isinf(confidence_radius(stats, 0.05)).all()
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        stats.update(torch.tensor([0, 1]), torch.rand(2, generator=g, dtype=torch.float64))
    r50 = confidence_radius(stats, 0.05)
    for _ in range(450):
        stats.update(torch.tensor([0, 1]), torch.rand(2, generator=g, dtype=torch.float64))
    r500 = confidence_radius(stats, 0.05)
    assert (r500[:2] < r50[:2] / 2).all() and torch.isinf(r500[2])


def test_result_round_trips_through_a_weights_only_file(tmp_path):
    result = tmab(_planted_game(), 5, seed=1, names=[f"p{i}" for i in range(60)])
    path = tmp_path / "result.pt"
    result.save(path)
    back = ShapleyResult.load(path)
    assert torch.equal(back.values, result.values) and torch.equal(back.counts, result.counts)
    assert back.names == result.names and back.top_k.tolist() == result.top_k.tolist()
    assert back.n_evals == result.n_evals and back.converged == result.converged


def test_resume_continues_from_saved_statistics():
    game = _planted_game()
    first = monte_carlo(game, 10, seed=0)
    more = monte_carlo(game, 5, seed=1, resume=first)
    assert more.counts.tolist() == [15] * 60  # 10 old scans + 5 new ones
    both = monte_carlo(game, 5, seed=1)
    expected = (first.values * 10 + both.values * 5) / 15
    assert torch.allclose(more.values, expected, atol=1e-12)


class CtrlC:
    """Wraps a game and raises KeyboardInterrupt (what Ctrl-C raises) at its ``at``-th call."""

    def __init__(self, game, at: int) -> None:
        self.game, self.at, self.calls = game, at, 0
        self.n_players = game.n_players

    @property
    def n_evals(self) -> int:
        return self.game.n_evals

    def __call__(self, present):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.game(present)


@pytest.mark.parametrize("estimator", ["tmab", "monte_carlo"])
def test_ctrl_c_keeps_the_partial_result_and_the_model(estimator, model, digits_val, capfd):
    x, y = digits_val
    players = FilterPlayers(model)
    before = snapshot(model)
    game = CtrlC(AccuracyGame(model, players, x, y, chunk_size=2), at=60)
    if estimator == "tmab":
        result = tmab(game, 3, progress=True, seed=0)
    else:
        result = monte_carlo(game, 1000, progress=True, seed=0)
    assert result.interrupted and not result.converged
    assert int(result.counts.min()) >= 1  # the scans finished before Ctrl-C count
    assert game.calls == 60
    assert_unchanged(model, before)
    assert estimator in capfd.readouterr().err  # the progress bar was shown
    assert ShapleyResult.from_dict(result.to_dict()).interrupted
