"""Semivalues (Shapley, Banzhaf, Beta): their weights, exact values by enumeration and in closed form, and tmab's
certificate for each, checked against exact values."""

from __future__ import annotations

import math

import pytest
import torch

from experiments.benchmarks import calibration
from nsl.games.synthetic import CollapseGame, HarsanyiGame, additive_game, network_examples_game, network_game
from nsl.shapley import ShapleyResult, exact, parse_semivalue, tmab
from nsl.shapley.exact import all_values, coalitions
from nsl.shapley.metrics import eps_correct

OTHERS = ("banzhaf", "beta(1,4)", "beta(1,16)", "beta(16,1)")


def test_names_are_canonical_and_bad_ones_fail_naming_the_value():
    assert parse_semivalue("Banzhaf").name == "banzhaf"
    assert parse_semivalue("beta( 1, 4 )").name == "beta(1,4)"
    assert parse_semivalue("beta(0.5,2)").name == "beta(0.5,2)"
    assert parse_semivalue("beta(1,1)").name == "shapley"  # the same semivalue, one name
    assert parse_semivalue(None).name == "shapley"
    for bad in ("owen", "beta(0,1)", "beta(1,-2)", "beta(1)", "beta(a,b)", 3):
        with pytest.raises(ValueError, match=r"semivalue=.*'banzhaf'") as info:
            parse_semivalue(bad)  # type: ignore[arg-type]
        assert repr(bad) in str(info.value)


@pytest.mark.parametrize("n", [1, 2, 7, 104])
def test_size_weights(n):
    shapley = parse_semivalue("shapley").size_weights(n)
    assert torch.allclose(shapley, torch.full((n,), 1 / n, dtype=torch.float64))
    banzhaf = parse_semivalue("banzhaf").size_weights(n)
    binomial = torch.tensor([math.comb(n - 1, s) / 2 ** (n - 1) for s in range(n)], dtype=torch.float64)
    assert torch.allclose(banzhaf, binomial, rtol=1e-10, atol=1e-300)
    for name in OTHERS:
        w = parse_semivalue(name).size_weights(n)
        assert w.sum().item() == pytest.approx(1.0, abs=1e-12) and bool((w >= 0).all())
    # beta(1,16): each other player is in with t ~ Beta(16, 1), so on average (N−1)/17 of them are out
    positions = torch.arange(n, dtype=torch.float64)
    mean_removed = (parse_semivalue("beta(1,16)").position_weights(n) * positions).sum().item()
    assert mean_removed == pytest.approx((n - 1) / 17, rel=1e-9)


def by_definition(game, name: str) -> torch.Tensor:
    """Semivalue from all 2ᴺ coalition values, written from the definition independently of nsl's code: Banzhaf
    averages the marginals over all subsets of the others; Beta integrates P(S) = t^|S| (1−t)^(N−1−|S|) over the
    density of t (a fine midpoint rule; the densities used here are smooth)."""
    n = game.n_players
    values = all_values(game)
    masks = torch.arange(2**n)
    sizes = coalitions(n).sum(dim=1).double()
    if name == "banzhaf":
        weight_of_size = torch.full((n,), 0.5 ** (n - 1), dtype=torch.float64)
    else:
        sv = parse_semivalue(name)
        t = (torch.arange(400_000, dtype=torch.float64) + 0.5) / 400_000
        density = t ** (sv.beta - 1) * (1 - t) ** (sv.alpha - 1)
        density = density / density.mean()
        s = torch.arange(n, dtype=torch.float64).unsqueeze(1)
        weight_of_size = (t**s * (1 - t) ** (n - 1 - s) * density).mean(dim=1)
    phi = torch.zeros(n, dtype=torch.float64)
    for i in range(n):
        without = masks[((masks >> i) & 1) == 0]
        phi[i] = (weight_of_size[sizes[without].long()] * (values[without | (1 << i)] - values[without])).sum()
    return phi


@pytest.mark.parametrize("name", ["banzhaf", "beta(1,4)", "beta(16,1)", "beta(2,3)"])
def test_exact_enumeration_matches_the_definition(name):
    generator = torch.Generator().manual_seed(3)
    table = torch.randn(2**6, generator=generator, dtype=torch.float64)

    class Random:
        n_players = 6

        def __call__(self, present):
            bits = (present.long() << torch.arange(6)).sum(dim=1)
            return table[bits]

    got = exact(Random(), semivalue=name)
    assert got.semivalue == parse_semivalue(name).name
    assert torch.allclose(got.values, by_definition(Random(), name), atol=1e-8)


def test_known_values_of_simple_games():
    w = torch.tensor([0.3, -1.0, 2.0, 0.0], dtype=torch.float64)
    for name in ("shapley", *OTHERS):
        assert torch.allclose(additive_game(w).semivalue(name), w)  # every semivalue of an additive game
    pair = HarsanyiGame(4, {(0, 1): 1.0})
    assert pair.semivalue("banzhaf")[:2].tolist() == [0.5, 0.5]
    # beta(α,β): the partner is present with probability E[t] = β / (α + β)
    assert pair.semivalue("beta(1,4)")[0].item() == pytest.approx(4 / 5)
    assert pair.semivalue("beta(16,1)")[0].item() == pytest.approx(1 / 17)
    assert torch.allclose(exact(pair, semivalue="beta(1,4)").values, pair.semivalue("beta(1,4)"))


@pytest.mark.parametrize("name", ["shapley", *OTHERS])
def test_closed_forms_match_enumeration(name):
    collapse = CollapseGame([3, 4, 5], [1.0, 0.6, 0.3], threshold=1.2, rebound=([0, 0, 1.0], 2.0),
                            dividends={(0, 1): 0.1, (2,): 0.05, (3, 4, 5): -0.2}, seed=1)
    assert torch.allclose(collapse.semivalue(name), exact(collapse, semivalue=name).values, atol=1e-12)
    for shape in ("rare", "band", "voting"):
        game = network_examples_game(12, 6, shape, seed=2)
        assert torch.allclose(game.semivalue(name), exact(game, semivalue=name).values, atol=1e-12)
    if name == "shapley":
        assert torch.allclose(collapse.semivalue(name), collapse.shapley(), atol=1e-14)


@pytest.mark.parametrize(("name", "shape"), [("banzhaf", "voting"), ("beta(1,4)", "band"), ("beta(1,16)", "rare")])
def test_tmab_certifies_each_semivalue_against_exact_values(name, shape):
    game = network_examples_game(40, 20, shape, seed=5)
    truth = game.semivalue(name)
    assert not torch.allclose(truth, game.shapley(), atol=1e-3)  # a different target from Shapley's
    result = tmab(game, 5, semivalue=name, seed=1, max_rows=4_000_000, max_evals=None)
    assert result.converged and result.semivalue == name and result.sampling == "examples"
    assert eps_correct(result.values, truth, 5, result.epsilon_value, "top")
    assert name in result.guarantee
    # the estimate is of this semivalue, not of Shapley's: the means lie near the semivalue's values
    sampled = result.counts >= 30
    z = (result.values - truth)[sampled] / result.stderr[sampled].clamp(min=1e-12)
    assert float(z.abs().max()) < 5


@pytest.mark.parametrize("name", ["banzhaf", "beta(1,4)", "beta(16,1)"])
def test_tmab_is_unbiased_for_each_semivalue_on_a_whole_set_game(name):
    """Fixed budget, no certificate: every player's mean within 4.5 standard errors of its exact value (give or take
    1e-3 of the value scale: a marginal in positions the semivalue barely weighs is a rare event a fixed budget may
    miss), and far from its Shapley value (so the test tells the targets apart)."""
    game = CollapseGame([2, 4, 10], [1.0, 0.5, 0.15], threshold=1.1, dividends={(0, 5): 0.05, (3,): -0.02}, seed=0)
    truth = game.semivalue(name)
    result = tmab(game, 3, semivalue=name, seed=2, max_evals=12_000, min_samples=10**9)
    error = (result.values - truth).abs()
    assert bool((error <= 4.5 * result.stderr + 1e-3).all())
    assert float(((result.values - game.shapley()).abs() - 4.5 * result.stderr).max()) > 0.02


def test_bad_semivalue_settings_fail_before_any_evaluation():
    game = network_game(40, "rare", seed=0)
    before = game.n_evals
    with pytest.raises(ValueError, match="semivalue='banzhaf' needs sampler='positions'"):
        tmab(game, 5, semivalue="banzhaf", sampler="scan")
    with pytest.raises(ValueError, match="semivalue='owen'"):
        tmab(game, 5, semivalue="owen")
    assert game.n_evals == before
    shapley = tmab(game, 5, seed=0, max_evals=300)
    with pytest.raises(ValueError, match="resume= holds shapley samples"):
        tmab(game, 5, semivalue="beta(1,4)", seed=1, resume=shapley, max_evals=300)
    assert game.n_evals == before + shapley.n_evals


def test_the_semivalue_is_saved_with_the_result(tmp_path):
    game = network_examples_game(30, 10, "rare", seed=0)
    result = tmab(game, 3, semivalue="beta(1,4)", seed=0, max_rows=50_000)
    result.save(tmp_path / "r.pt")
    loaded = ShapleyResult.load(tmp_path / "r.pt")
    assert loaded.semivalue == "beta(1,4)" and loaded == result
    older = {k: v for k, v in result.to_dict().items() if k != "semivalue"}  # a file from before semivalues
    assert ShapleyResult.from_dict(older).semivalue == "shapley"


def test_banzhaf_needs_no_efficiency():
    """Banzhaf values need not sum to v(N) − v(∅); the certificate must not wait for them to (it is Shapley's check)."""
    game = network_examples_game(30, 20, "voting", seed=1)
    truth = game.semivalue("banzhaf")
    assert abs(float(truth.sum()) - float(game.shapley().sum())) > 0.1
    result = tmab(game, 5, semivalue="banzhaf", seed=0, max_rows=4_000_000, max_evals=None)
    assert result.converged and eps_correct(result.values, truth, 5, result.epsilon_value, "top")


def test_small_calibration_of_the_other_semivalues(tmp_path):
    """The calibration harness on the other semivalues (the CI-sized run; docs/results.md has the full one)."""
    out = calibration.main(["--quick", "--no-wandb", "--semivalues", "banzhaf,beta(1,4),beta(1,16)", "--shapes",
                            "--ablation-runs", "0", "--example-runs", "3", "--out", str(tmp_path)])
    rows = out["tables"]["calibration"][1]
    assert {r[0] for r in rows} == {"banzhaf", "beta(1,4)", "beta(1,16)"}
    assert sum(r[7] for r in rows) >= 6  # most runs certify
    assert sum(r[8] for r in rows) == 0  # and none is wrong against the exact values


def test_leave_one_out_is_the_full_coalition_semivalue_and_exact_in_n_plus_1_evaluations():
    game = CollapseGame([3, 4, 5], [1.0, 0.6, 0.3], threshold=1.2, dividends={(0, 1): 0.1, (2,): 0.05}, seed=1)
    everyone = torch.ones(1, game.n_players, dtype=torch.bool)
    by_hand = torch.tensor([float(game(everyone)) - float(game(everyone & (torch.arange(12) != i))) for i in range(12)],
                           dtype=torch.float64)
    assert torch.allclose(exact(game, semivalue="leave_one_out").values, by_hand, atol=1e-12)
    assert torch.allclose(game.semivalue("leave_one_out"), by_hand, atol=1e-12)
    examples = network_examples_game(12, 6, "voting", seed=0)
    assert torch.allclose(examples.semivalue("leave_one_out"), exact(examples, semivalue="leave_one_out").values)
    before = game.n_evals
    result = tmab(game, 3, semivalue="leave_one_out")
    assert game.n_evals - before == 13 and result.n_evals == 13
    assert result.converged and result.semivalue == "leave_one_out" and torch.allclose(result.values, by_hand)
    assert "leave-one-out" in result.guarantee and result.n_ranked == 12
    # the limit of Beta(1, β) as β grows
    far = parse_semivalue("beta(1,100000)").position_weights(12)
    assert float(far[0]) > 0.999 and parse_semivalue("leave_one_out").position_weights(12)[0].item() == 1.0
