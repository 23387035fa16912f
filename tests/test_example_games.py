"""Games that decompose over examples: offset + Σ_e w_e · u_e(S) is the game's value, on a real trained CNN and
on synthetic per-example games whose exact Shapley values are known."""

from __future__ import annotations

import pytest
import torch

from nsl import AccuracyGame, AdversarialGame, ClassGame, FairnessGame, FilterPlayers
from nsl.callback.repair import report_games
from nsl.callback.specs import parse_games
from nsl.games import (
    EXAMPLE_SHAPES,
    CountingGame,
    CountTerm,
    CountTermGames,
    EvalData,
    ExampleGame,
    ExampleMixture,
    additive_game,
    decomposes,
    network_examples_game,
)
from nsl.games.fairness import extreme_groups
from nsl.shapley import exact

N_EVAL = 80  # evaluation images: every digit class appears among the first 80 validation images


def coalitions(n: int, seed: int = 0) -> torch.Tensor:
    """The full and the empty coalition and three random ones of different sizes, (5, N) bool."""
    generator = torch.Generator().manual_seed(seed)
    random = torch.rand(3, n, generator=generator) < torch.tensor([[0.3], [0.6], [0.9]])
    return torch.cat([torch.ones(1, n, dtype=torch.bool), torch.zeros(1, n, dtype=torch.bool), random])


def assert_decomposes(game, seed: int = 0) -> None:
    """offset + Σ_e w_e · u_e(S), each u_e from one row of its own, equals v(S) for every test coalition."""
    assert decomposes(game) and isinstance(game, ExampleGame) and game.why_not_decomposable == ""
    weights = game.example_weights
    examples = torch.arange(len(weights))
    for present in coalitions(game.n_players, seed):
        rows_before = game.n_rows
        u = game.example_values(present.expand(len(weights), -1), examples)
        assert game.n_rows - rows_before == len(weights)  # one row per (coalition, example) pair
        assert u.dtype == torch.float64 and u.shape == (len(weights),)
        value = float(game(present)[0])
        assert game.example_offset + float(weights @ u) == pytest.approx(value, abs=1e-6, rel=1e-6)


def assert_not_decomposable(game, reason: str) -> None:
    assert game.example_weights is None and not decomposes(game)
    assert reason in game.why_not_decomposable


@pytest.fixture
def data(digits_val):
    x, y = digits_val
    x, y = x[:N_EVAL], y[:N_EVAL]
    assert len(torch.unique(y)) == 10
    return x, y


@pytest.mark.parametrize("metric", ["accuracy", "true_class_probability", "neg_cross_entropy", "macro_accuracy"])
def test_accuracy_game_metrics_decompose(model, data, metric):
    x, y = data
    game = AccuracyGame(model, FilterPlayers(model), x, y, metric=metric)
    assert_decomposes(game)
    weights = game.example_weights
    if metric == "macro_accuracy":  # each class weighs 1/C in total, spread over its examples
        per_class = torch.zeros(10, dtype=torch.float64).index_add_(0, y, weights)
        torch.testing.assert_close(per_class, torch.full((10,), 0.1, dtype=torch.float64))
    else:
        torch.testing.assert_close(weights, torch.full((N_EVAL,), 1 / N_EVAL, dtype=torch.float64))


def test_macro_accuracy_without_every_class_does_not_decompose(model, data):
    x, y = data
    keep = y != 7  # class 7 has no example: torchmetrics counts it only in coalitions that predict it
    game = AccuracyGame(model, FilterPlayers(model), x[keep], y[keep], metric="macro_accuracy")
    assert_not_decomposable(game, "classes [7] have no example")
    with pytest.raises(NotImplementedError, match="does not decompose"):
        game.example_values(torch.ones(2, game.n_players, dtype=torch.bool), torch.tensor([0, 1]))


def test_callable_metric_decomposes_only_with_its_per_example_form(model, data):
    x, y = data
    players = FilterPlayers(model)

    def mean_margin(logits, targets):  # (K, B, C) -> (K,): mean logit of the true class
        return logits.gather(-1, targets.expand(logits.shape[0], -1).unsqueeze(-1)).squeeze(-1).mean(dim=1)

    def margin(logits, targets):  # (R, C) -> (R,)
        return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)

    assert_not_decomposable(AccuracyGame(model, players, x, y, metric=mean_margin), "example_metric=")
    assert_decomposes(AccuracyGame(model, players, x, y, metric=mean_margin, example_metric=margin))
    only_rows = AccuracyGame(model, players, x, y, metric=None, example_metric=margin)
    assert only_rows.full_value() == pytest.approx(
        AccuracyGame(model, players, x, y, metric=mean_margin).full_value(), rel=1e-5
    )
    assert_decomposes(only_rows)
    with pytest.raises(ValueError, match="is not the metric"):
        AccuracyGame(model, players, x, y, metric=mean_margin, example_metric=lambda logits, t: margin(logits, t) + 1)
    with pytest.raises(ValueError, match="named metric"):
        AccuracyGame(model, players, x, y, metric="accuracy", example_metric=margin)


def test_class_game_decomposes_over_its_class(model, data):
    x, y = data
    players = FilterPlayers(model)
    game = ClassGame(model, players, x, y, class_index=3)
    n = int((y == 3).sum())
    torch.testing.assert_close(game.example_weights, torch.full((n,), 1 / n, dtype=torch.float64))
    assert_decomposes(game)
    macro = ClassGame(model, players, x, y, class_index=3, metric="macro_accuracy")
    assert_not_decomposable(macro, "have no example")


@pytest.mark.parametrize("targeted", [True, False])
def test_adversarial_game_decomposes_plain_and_net_of_clean(model, data, targeted):
    x, y = data
    players = FilterPlayers(model)
    attack = {"attack": "fgsm", "eps": 0.3, "targeted": targeted, "seed": 1}
    plain = AdversarialGame(model, players, x, y, **attack)
    torch.testing.assert_close(plain.example_weights, torch.full((N_EVAL,), 1 / N_EVAL, dtype=torch.float64))
    assert_decomposes(plain)
    net = AdversarialGame(model, players, x, y, net_of_clean=True, **attack)
    weights = net.example_weights  # adversarial rows +1/M, then the clean rows −1/M
    assert len(weights) == 2 * N_EVAL and len(net.inputs) == 2 * N_EVAL
    torch.testing.assert_close(weights[N_EVAL:], -weights[:N_EVAL])
    assert bool((weights[:N_EVAL] > 0).all())
    assert_decomposes(net, seed=1)
    # The clean rows' u is plain correctness on the clean images.
    u = net.example_values(torch.ones(N_EVAL, net.n_players, dtype=torch.bool), torch.arange(N_EVAL, 2 * N_EVAL))
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).double()
    torch.testing.assert_close(u, correct)


@pytest.fixture
def fairness_data(data):
    x, y = data
    groups = torch.where(y < 5, 10, 11)  # two groups by label, with arbitrary codes
    return x, y, groups


def _group_accuracy(model, x, y, groups, code) -> float:
    with torch.no_grad():
        return float((model(x[groups == code]).argmax(1) == y[groups == code]).double().mean())


def test_fairness_fixed_group_metrics_decompose(model, fairness_data):
    x, y, groups = fairness_data
    players = FilterPlayers(model)
    full = {code: _group_accuracy(model, x, y, groups, code) for code in (10, 11)}
    worst_code = min(full, key=lambda c: (full[c], c))
    best_code = 21 - worst_code
    worst = FairnessGame(model, players, x, y, groups)
    assert (worst.worst_group_code, worst.best_group_code) == (worst_code, best_code)
    assert worst.worst_group == worst_code - 10  # the dense index of the group
    assert worst.full_value() == pytest.approx(min(full.values()), abs=1e-6)
    on_worst = groups == worst_code
    expected = torch.where(on_worst, 1 / int(on_worst.sum()), 0.0).double()
    torch.testing.assert_close(worst.example_weights, expected)
    assert_decomposes(worst)
    gap = FairnessGame(model, players, x, y, groups, metric="accuracy_gap")
    assert gap.example_offset == 1.0
    weights = gap.example_weights
    assert float(weights[on_worst].sum()) == pytest.approx(1.0)
    assert float(weights[~on_worst].sum()) == pytest.approx(-1.0)
    assert gap.full_value() == pytest.approx(1 - abs(full[10] - full[11]), abs=1e-6)
    assert_decomposes(gap, seed=2)


def test_a_fairness_repair_is_checked_on_the_minimum_over_groups(model, fairness_data):
    # The analysis fixes the group worst on the full model; the repair's before/after check must see the
    # minimum over groups, or pruning for one group could make the other the worse off unnoticed.
    x, y, groups = fairness_data
    specs = parse_games([{"kind": "fairness"}, {"kind": "fairness", "name": "gap", "metric": "accuracy_gap"}])
    games = report_games(specs, model, EvalData(x, y, groups), seed=0)
    assert games["fairness"].metric == "min_group_accuracy" and games["gap (fairness)"].metric == "accuracy_gap"
    assert specs[0].options.get("metric") is None  # the analysed game is left as it was
    hurt = torch.zeros(1, games["fairness"].n_players, dtype=torch.bool)
    by_group = [_group_accuracy(model, x, y, groups, code) for code in (10, 11)]
    assert float(games["fairness"](~hurt)) == pytest.approx(min(by_group), abs=1e-6)


@pytest.mark.parametrize(
    ("metric", "reason"),
    [
        ("min_group_accuracy", "the minimum over groups switches group between coalitions"),
        ("demographic_parity", "ratio"),
        ("equal_opportunity", "ratio"),
    ],
)
def test_fairness_metrics_that_do_not_decompose_say_why(model, fairness_data, metric, reason):
    x, y, groups = fairness_data
    game = FairnessGame(model, FilterPlayers(model), x, y, groups, metric=metric)
    assert_not_decomposable(game, reason)
    assert_not_decomposable(CountingGame(game), reason)


def test_fairness_groups_break_ties_deterministically_and_come_from_rank_zero(model, fairness_data):
    codes = torch.tensor([3, 5, 7])
    assert extreme_groups(codes, torch.tensor([0.5, 0.5, 0.9])) == (3, 7)
    assert extreme_groups(codes, torch.tensor([0.8, 0.8, 0.8])) == (3, 5)  # the best is never the worst
    assert extreme_groups(codes, torch.tensor([0.2, 0.5, 0.9]), best=3) == (5, 3)
    x, y, groups = fairness_data
    players = FilterPlayers(model)
    # Under DDP, from_data plays rank 0's choice (the share broadcast), whatever this rank would pick.
    seen = []

    def rank_zero(obj):
        seen.append(obj)
        return (11, 10) if obj == (10, 11) else (10, 11)

    game = FairnessGame.from_data(model, players, EvalData(x, y, groups), share=rank_zero)
    assert len(seen) == 1 and (game.worst_group_code, game.best_group_code) == rank_zero(seen[0])
    with pytest.raises(ValueError, match="worst_group=4 is not a group"):
        FairnessGame(model, players, x, y, groups, worst_group=4)


def test_counting_game_counts_rows_and_passes_the_decomposition_through(model, data):
    x, y = data
    game = AccuracyGame(model, FilterPlayers(model), x, y)
    meter = CountingGame(game)
    assert meter.n_examples == N_EVAL and meter.rows_per_eval == N_EVAL
    meter(coalitions(game.n_players)[:3])
    assert (meter.n_evals, meter.n_rows, meter.calls) == (3, 3 * N_EVAL, 1)
    present = coalitions(game.n_players)[2].expand(5, -1)
    values = meter.example_values(present, torch.tensor([0, 1, 2, 3, 79]))
    assert (meter.n_evals, meter.n_rows, meter.calls) == (3, 3 * N_EVAL + 5, 2)
    torch.testing.assert_close(values, game.example_values(present, torch.tensor([0, 1, 2, 3, 79])))
    torch.testing.assert_close(meter.example_weights, game.example_weights)
    assert_decomposes(meter)
    plain = CountingGame(additive_game([1.0, 2.0]))
    assert plain.n_examples == 1 and "declares no per-example value" in plain.why_not_decomposable
    with pytest.raises(TypeError, match="does not decompose"):
        plain.example_values(torch.ones(1, 2, dtype=torch.bool), torch.tensor([0]))


# ------------------------------------------------------------------------------------ synthetic per-example games


@pytest.mark.parametrize("shape", EXAMPLE_SHAPES)
@pytest.mark.parametrize("n_players", [5, 9])
def test_network_examples_game_exact_values(shape, n_players):
    game = network_examples_game(n_players, 6, shape, seed=n_players)
    torch.testing.assert_close(game.shapley(), exact(game).values, rtol=0, atol=1e-10)
    for e in range(6):
        member = game.example_game(e)
        torch.testing.assert_close(member.shapley(), exact(member).values, rtol=0, atol=1e-10)
    assert_decomposes(game)


def test_count_terms_exact_values_on_random_terms():
    generator = torch.Generator().manual_seed(3)
    for _ in range(40):
        n = int(torch.randint(1, 8, (1,), generator=generator))
        order = torch.randperm(n, generator=generator).tolist()
        k = int(torch.randint(0, n + 1, (1,), generator=generator))
        c = int(torch.randint(0, n - k + 1, (1,), generator=generator))
        lo, hi = torch.randint(-1, c + 2, (2,), generator=generator).tolist()
        term = CountTerm(0.7, tuple(order[:k]), tuple(order[k : k + c]), lo, hi)
        game = ExampleMixture(CountTermGames(n, [[term]]), [1.0])
        torch.testing.assert_close(term.shapley(n), exact(game).values, rtol=0, atol=1e-10, msg=str(term))


@pytest.mark.parametrize("shape", EXAMPLE_SHAPES)
def test_network_examples_game_efficiency_and_mixture_value(shape):
    game = network_examples_game(300, 40, shape, seed=1)
    phi = game.shapley()
    full, empty = game(torch.ones(300, dtype=torch.bool)), game(torch.zeros(300, dtype=torch.bool))
    assert float(phi.sum()) == pytest.approx(float(full - empty), abs=1e-9)  # efficiency
    # Signed weights and an offset: the mixture's value is offset + Σ_e w_e u_e, vectorised or member by member.
    weights = torch.linspace(-1.0, 2.0, 40, dtype=torch.float64)
    signed = ExampleMixture(game.games, weights, offset=0.3)
    members = ExampleMixture([game.example_game(e) for e in range(40)], weights, offset=0.3)
    present = torch.rand(6, 300, generator=torch.Generator().manual_seed(0)) < torch.rand(6, 1)
    torch.testing.assert_close(signed(present), members(present))
    u = torch.stack([signed.example_values(s.expand(40, -1), torch.arange(40)) for s in present])  # (6, 40)
    torch.testing.assert_close(signed(present), 0.3 + u @ weights)
    torch.testing.assert_close(signed.shapley(), weights @ game.games.shapley())
    if shape == "band":  # the band player is among the top 10, from a band of 3.5 % of the sizes
        band_player = next(t[0].keys[0] for t in game.games.terms if len(t) == 1 and t[0].hi < len(t[0].counted))
        assert int((phi > phi[band_player]).sum()) < 10
    if shape == "voting":  # the heavy player is the top player
        assert int(phi.argmax()) == game.games.terms[0][1].keys[0]
    with pytest.raises(ValueError, match="example indices"):
        signed.example_values(present[:1], torch.tensor([40]))
