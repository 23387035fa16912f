"""Harsanyi dividends, indices, sub-games, heatmap and the attribution audit, against brute force."""

from __future__ import annotations

import io
import itertools
import math

import pytest
import torch
from matplotlib.figure import Figure

from nsl import AccuracyGame, FilterPlayers
from nsl.games import HarsanyiGame, pairwise_game
from nsl.interactions import (
    AUDIT_METHODS,
    SubGame,
    allocation_matrix,
    audit,
    banzhaf_from_dividends,
    harsanyi,
    integrated_gradients_from_dividends,
    interaction_index,
    inverse_mobius,
    mobius,
    multilinear_extension,
    pairwise_from_dividends,
    pairwise_interactions,
    plot_interactions,
    shapley_from_dividends,
)
from nsl.shapley import exact
from nsl.shapley.exact import all_values


def random_game(n: int, n_terms: int, seed: int, max_order: int | None = None) -> HarsanyiGame:
    """A sum of unanimity games with random supports (orders 1..max_order) and random dividends."""
    gen = torch.Generator().manual_seed(seed)
    max_order = max_order or n
    terms: dict[tuple[int, ...], float] = {}
    while len(terms) < n_terms:
        size = int(torch.randint(1, max_order + 1, (1,), generator=gen))
        members = tuple(sorted(torch.randperm(n, generator=gen)[:size].tolist()))
        terms[members] = float(torch.randn(1, generator=gen))
    offset = float(torch.randn(1, generator=gen))
    return HarsanyiGame(n, terms, offset=offset)


def known_dividends(game: HarsanyiGame) -> torch.Tensor:
    d = torch.zeros(2**game.n_players, dtype=torch.float64)
    d[0] = game.offset
    for term, coef in zip(game.terms, game.coef.tolist(), strict=True):
        d[sum(1 << i for i in term)] += coef
    return d


def mask_of(players) -> int:
    return sum(1 << i for i in players)


# ---------------------------------------------------------------------------- dividends


@pytest.mark.parametrize(("n", "n_terms", "seed"), [(3, 5, 0), (6, 20, 1), (9, 40, 2), (12, 60, 3)])
def test_harsanyi_recovers_known_dividends(n: int, n_terms: int, seed: int) -> None:
    game = random_game(n, n_terms, seed)
    assert max(len(t) for t in game.terms) >= 3  # higher-order terms are present
    d = harsanyi(game, batch_size=97)  # a batch size that does not divide 2^n
    assert d.dtype == torch.float64 and d.shape == (2**n,)
    assert torch.allclose(d, known_dividends(game), atol=1e-9, rtol=0)
    assert game.n_evals == 2**n  # each coalition evaluated exactly once


def test_mobius_by_hand_and_round_trip() -> None:
    # v(∅)=0, v({0})=1, v({1})=2, v({0,1})=6  ->  I = 0, 1, 2, 6-1-2 = 3
    d = mobius(torch.tensor([0.0, 1.0, 2.0, 6.0]))
    assert d.tolist() == [0.0, 1.0, 2.0, 3.0]
    values = torch.randn(2**10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(inverse_mobius(mobius(values)), values, atol=1e-12, rtol=0)
    # definition: I(S) = Σ_{T⊆S} (−1)^{|S|−|T|} v(T), checked on a few coalitions
    d = mobius(values)
    for s in (0b1011, 0b1111111111, 0b1000000001):
        subsets = [t for t in range(2**10) if t & s == t]
        direct = sum((-1) ** (bin(s).count("1") - bin(t).count("1")) * float(values[t]) for t in subsets)
        assert math.isclose(float(d[s]), direct, abs_tol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shapley_from_dividends_equals_brute_force(seed: int) -> None:
    game = random_game(8, 25, seed)
    phi = shapley_from_dividends(harsanyi(game))
    assert torch.allclose(phi, exact(game).values, atol=1e-9, rtol=0)
    assert torch.allclose(phi, game.shapley(), atol=1e-9, rtol=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_banzhaf_from_dividends_equals_brute_force(seed: int) -> None:
    game = random_game(7, 20, seed)
    values = all_values(game)
    n = game.n_players
    brute = torch.zeros(n, dtype=torch.float64)
    for i in range(n):
        for s in range(2**n):
            if not (s >> i) & 1:
                brute[i] += values[s | (1 << i)] - values[s]
    brute /= 2 ** (n - 1)
    beta = banzhaf_from_dividends(mobius(values))
    assert torch.allclose(beta, brute, atol=1e-9, rtol=0)
    assert not torch.allclose(beta, shapley_from_dividends(mobius(values)), atol=1e-3)  # a different index


def grabisch_pair(values: torch.Tensor, n: int, i: int, j: int) -> float:
    """Shapley interaction index of {i, j} by its definition over coalitions of the other players."""
    total = 0.0
    others = [p for p in range(n) if p not in (i, j)]
    for size in range(n - 1):
        weight = math.factorial(size) * math.factorial(n - size - 2) / math.factorial(n - 1)
        for t in itertools.combinations(others, size):
            m = mask_of(t)
            bi, bj = 1 << i, 1 << j
            total += weight * float(values[m | bi | bj] - values[m | bi] - values[m | bj] + values[m])
    return total


@pytest.mark.parametrize(("n", "seed"), [(4, 0), (6, 1), (7, 2)])
def test_pairwise_index_equals_brute_force(n: int, seed: int) -> None:
    game = random_game(n, 3 * n, seed)
    values = all_values(game)
    result = pairwise_interactions(game)
    assert result.method == "exact" and result.n_evals == 2**n
    for i, j in itertools.combinations(range(n), 2):
        expected = grabisch_pair(values, n, i, j)
        assert math.isclose(float(result.matrix[i, j]), expected, abs_tol=1e-9)
        assert math.isclose(float(result.matrix[j, i]), expected, abs_tol=1e-9)
        assert math.isclose(interaction_index(mobius(values), (i, j)), expected, abs_tol=1e-9)
    assert torch.allclose(torch.diagonal(result.matrix), exact(game).values, atol=1e-9, rtol=0)
    assert torch.equal(result.stderr, torch.zeros(n, n, dtype=torch.float64))


def test_pairwise_index_of_a_pure_pair_game() -> None:
    # v = x0 + 2 x1 + 3 x0 x1 + 0.5 x2: only the pair (0,1) interacts, with index exactly 3
    game = HarsanyiGame(3, {(0,): 1.0, (1,): 2.0, (0, 1): 3.0, (2,): 0.5})
    m = pairwise_interactions(game).matrix
    assert m[0, 1] == pytest.approx(3.0, abs=1e-12)
    assert m[0, 2] == pytest.approx(0.0, abs=1e-12) and m[1, 2] == pytest.approx(0.0, abs=1e-12)
    assert torch.allclose(torch.diagonal(m), torch.tensor([2.5, 3.5, 0.5], dtype=torch.float64))


def test_pairwise_of_chosen_players_and_names() -> None:
    game = random_game(6, 15, 4)
    full = pairwise_interactions(game).matrix
    part = pairwise_interactions(game, players=[4, 1, 2], names=["d", "a", "b"])
    assert torch.allclose(part.matrix, full[[4, 1, 2]][:, [4, 1, 2]], atol=1e-12)
    assert part.names == ["d", "a", "b"] and part.players == [4, 1, 2]
    pairs = part.strongest(2)
    assert len(pairs) == 2 and abs(pairs[0][2]) >= abs(pairs[1][2])
    text = part.format()
    assert "d" in text.splitlines()[0] and len(text.splitlines()) == 4


def sparse_big_game(n: int, seed: int) -> HarsanyiGame:
    gen = torch.Generator().manual_seed(seed)
    terms: dict[tuple[int, ...], float] = {(i,): float(torch.randn(1, generator=gen)) for i in range(n)}
    for _ in range(3 * n):
        size = int(torch.randint(2, 5, (1,), generator=gen))
        members = tuple(sorted(torch.randperm(n, generator=gen)[:size].tolist()))
        terms[members] = terms.get(members, 0.0) + float(torch.randn(1, generator=gen))
    return HarsanyiGame(n, terms)


def test_sampled_pairwise_within_standard_errors() -> None:
    n = 17
    game = sparse_big_game(n, 0)
    chosen = [0, 3, 5, 8, 16]
    truth = pairwise_from_dividends(harsanyi(game))[chosen][:, chosen]
    rng_before = torch.random.get_rng_state()
    est = pairwise_interactions(game, chosen, n_samples=600, seed=1)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the global RNG is never used
    assert est.method == "sampled" and est.n_samples == 600  # auto: n > 16
    assert est.n_evals == 600 * (4 * 10 + 2 * 5)
    off = ~torch.eye(5, dtype=torch.bool)
    assert int((est.stderr[off] > 0).sum()) >= 6  # pairs sharing higher-order terms vary between samples
    constant = off & (est.stderr == 0)  # no shared term, or a pure pair term: every sample is exact
    assert torch.allclose(est.matrix[constant], truth[constant], atol=1e-12, rtol=0)
    z = (est.matrix - truth).abs() / est.stderr.clamp(min=1e-12)
    assert float(z.max()) < 4.5, z
    assert float((est.matrix - truth).abs().max()) > 1e-6  # it is an estimate, not the exact answer
    again = pairwise_interactions(game, chosen, n_samples=600, seed=1)
    assert torch.equal(again.matrix, est.matrix)  # seeded
    other = pairwise_interactions(game, chosen, n_samples=600, seed=2)
    assert not torch.equal(other.matrix, est.matrix)


def test_sampled_pairwise_converges_on_a_small_game() -> None:
    game = random_game(6, 20, 5, max_order=4)
    truth = pairwise_interactions(game, method="exact").matrix
    est = pairwise_interactions(game, method="sampled", n_samples=4000, seed=0)
    assert float(((est.matrix - truth).abs() / est.stderr.clamp(min=1e-12)).max()) < 4.5
    assert float((est.matrix - truth).abs().max()) < 0.15


# ---------------------------------------------------------------------------- sub-games


def test_subgame_with_others_present_collapses_terms() -> None:
    game = random_game(8, 30, 6)
    chosen = [6, 1, 3]
    sub = SubGame(game, chosen)
    # v'(S) = v(S ∪ rest): the term T contributes to the coalition T ∩ P of the sub-game
    expected = torch.zeros(8, dtype=torch.float64)
    expected[0] += game.offset
    for term, coef in zip(game.terms, game.coef.tolist(), strict=True):
        inside = [chosen.index(p) for p in term if p in chosen]
        expected[mask_of(inside)] += coef
    assert torch.allclose(harsanyi(sub), expected, atol=1e-9, rtol=0)
    assert sub.n_evals == 8


def test_subgame_with_others_absent_keeps_inner_terms() -> None:
    game = random_game(8, 30, 7)
    chosen = [2, 5, 7, 0]
    expected = torch.zeros(16, dtype=torch.float64)
    expected[0] += game.offset
    for term, coef in zip(game.terms, game.coef.tolist(), strict=True):
        if all(p in chosen for p in term):
            expected[mask_of([chosen.index(p) for p in term])] += coef
    assert torch.allclose(harsanyi(SubGame(game, chosen, others="absent")), expected, atol=1e-9, rtol=0)


def test_subgame_errors() -> None:
    game = random_game(5, 6, 0)
    with pytest.raises(ValueError, match="twice"):
        SubGame(game, [1, 1])
    with pytest.raises(ValueError, match="out of range"):
        SubGame(game, [0, 5])
    with pytest.raises(ValueError, match="empty"):
        SubGame(game, [])
    with pytest.raises(ValueError, match="others"):
        SubGame(game, [0], others="mean")
    sub = SubGame(game, [0, 2])
    with pytest.raises(ValueError, match="shape"):
        sub(torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(TypeError):
        sub(torch.ones(3, 2))


def test_subgame_of_a_cnn_accuracy_game(model, digits_val) -> None:
    x, y = digits_val
    players = FilterPlayers(model)
    game = AccuracyGame(model, players, x, y)
    chosen = [0, 9, 20, 30]
    sub = SubGame(game, chosen)
    assert sub.names == [players.names[i] for i in chosen]
    d = harsanyi(sub)
    assert float(d.sum()) == pytest.approx(game.full_value(), abs=1e-12)  # v'(all chosen) = v(N)
    off = torch.ones(len(players), dtype=torch.bool)
    off[chosen] = False
    assert float(d[0]) == pytest.approx(float(game(off)[0]), abs=1e-12)
    result = pairwise_interactions(sub)
    assert result.names == sub.names and result.matrix.shape == (4, 4)


# ---------------------------------------------------------------------------- errors


def test_harsanyi_rejects_bad_games_before_evaluating() -> None:
    big = HarsanyiGame(21, {(0,): 1.0})
    with pytest.raises(ValueError, match="n <= 20"):
        harsanyi(big)
    assert big.n_evals == 0
    with pytest.raises(ValueError, match="not a game"):
        harsanyi(object())
    with pytest.raises(ValueError, match="batch_size"):
        harsanyi(random_game(3, 2, 0), batch_size=0)
    with pytest.raises(ValueError, match="2\\^n"):
        mobius(torch.zeros(6))
    with pytest.raises(ValueError, match="2\\^n"):
        shapley_from_dividends(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="method"):
        pairwise_interactions(random_game(3, 2, 0), method="fast")
    with pytest.raises(ValueError, match="out of range"):
        pairwise_interactions(random_game(3, 2, 0), players=[0, 3])


def test_game_returning_wrong_number_of_values_is_caught() -> None:
    class Broken:
        n_players = 3

        def __call__(self, present: torch.Tensor) -> torch.Tensor:
            return torch.zeros(1)

    with pytest.raises(ValueError, match="values for"):
        harsanyi(Broken())


# ---------------------------------------------------------------------------- heatmap


def test_heatmap_figure() -> None:
    names = ["conv1:3", "conv2:7", "conv3:1"]
    m = torch.tensor([[0.5, 0.2, -0.1], [0.2, 0.3, 0.0], [-0.1, 0.0, 0.1]])
    fig = plot_interactions(m, names, title="culprits")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    assert ax.get_title() == "culprits"
    lo, hi = ax.images[0].get_clim()
    assert lo == pytest.approx(-0.2) and hi == pytest.approx(0.2)  # symmetric, diagonal left out
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="square"):
        plot_interactions(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="names"):
        plot_interactions(m, names[:2])


# ---------------------------------------------------------------------------- audit


def closed_form(method: str, n: int, steps: int = 20, rule: str = "midpoint") -> torch.Tensor:
    """W[i, S] from the seed paper's closed forms for a multilinear game."""
    w = torch.zeros(n, 2**n, dtype=torch.float64)
    for s in range(1, 2**n):
        members = [i for i in range(n) if (s >> i) & 1]
        k = len(members)
        if method in ("occlusion1", "gradient_x_input"):
            share = 1.0
        elif method == "shapley":
            share = 1.0 / k
        elif method == "banzhaf":
            share = 0.5 ** (k - 1)
        else:
            shift = {"midpoint": 0.5, "left": 0.0, "right": 1.0}[rule]
            share = sum(((j + shift) / steps) ** (k - 1) for j in range(steps)) / steps
        w[members, s] = share
    return w


@pytest.mark.parametrize("method", AUDIT_METHODS)
def test_allocation_matrices_match_closed_forms(method: str) -> None:
    w = allocation_matrix(method, 4, ig_steps=7)
    assert torch.allclose(w, closed_form(method, 4, steps=7), atol=1e-12, rtol=0)


@pytest.mark.parametrize("rule", ["left", "right"])
def test_ig_riemann_rules(rule: str) -> None:
    w = allocation_matrix("integrated_gradients", 3, ig_steps=5, ig_rule=rule)
    assert torch.allclose(w, closed_form("integrated_gradients", 3, 5, rule), atol=1e-12, rtol=0)


def test_multilinear_extension_is_the_expected_value_of_random_coalitions() -> None:
    game = random_game(5, 12, 8)
    d = harsanyi(game)
    f = multilinear_extension(d)
    from nsl.shapley.exact import coalitions

    every = coalitions(5)
    assert torch.allclose(f(every.double()), all_values(game), atol=1e-12)
    g = torch.tensor([0.2, 0.9, 0.5, 0.0, 0.7], dtype=torch.float64)
    prob = torch.where(every, g, 1 - g).prod(dim=1)
    assert float(f(g)) == pytest.approx(float((prob * all_values(game)).sum()), abs=1e-12)


def test_integrated_gradients_tend_to_shapley() -> None:
    d = harsanyi(random_game(6, 20, 9))
    phi = shapley_from_dividends(d)
    coarse = (integrated_gradients_from_dividends(d, steps=4) - phi).abs().max()
    fine = (integrated_gradients_from_dividends(d, steps=400) - phi).abs().max()
    assert fine < 1e-4 < coarse
    assert fine < coarse / 1000


def test_audit_shapley_meets_all_principles_on_a_known_game() -> None:
    game = random_game(6, 25, 10)
    table = audit(game)
    row = table["shapley"]
    assert row.satisfies == (True, True, True)
    assert row.p1_share_error < 1e-12 and row.p2_share_leak < 1e-12 and row.p3_share_error < 1e-12
    assert row.target == pytest.approx(float(known_dividends(game)[1:].sum()), abs=1e-9)
    assert row.gap == pytest.approx(0.0, abs=1e-9)
    assert row.attributions == pytest.approx(game.shapley().tolist(), abs=1e-9)


def test_audit_leave_one_out_double_counts_a_pairwise_interaction() -> None:
    w, pair = [1.0, 2.0], 3.0
    game = pairwise_game(w, {(0, 1): pair})
    table = audit(game)
    loo = table["occlusion1"]
    # closed form: a_i = Σ_{S∋i} I(S) = w_i + I({0,1}), so the pair is allocated twice
    assert loo.attributions == pytest.approx([w[0] + pair, w[1] + pair], abs=1e-12)
    assert loo.total == pytest.approx(sum(w) + 2 * pair, abs=1e-12)
    assert loo.target == pytest.approx(sum(w) + pair, abs=1e-12)
    assert loo.gap == pytest.approx(pair, abs=1e-12)
    assert loo.p3_share_error == pytest.approx(1.0, abs=1e-12)  # Σ_j W[j, {0,1}] = 2
    assert loo.p3_misallocated == pytest.approx(abs(pair), abs=1e-12)
    assert loo.satisfies == (True, True, False)
    assert table["gradient_x_input"].attributions == pytest.approx(loo.attributions, abs=1e-12)
    shap = table["shapley"]
    assert shap.attributions == pytest.approx([w[0] + pair / 2, w[1] + pair / 2], abs=1e-12)
    assert shap.gap == pytest.approx(0.0, abs=1e-12)


def test_audit_integrated_gradients_errs_only_on_higher_order() -> None:
    pairs_only = pairwise_game([0.5, -1.0, 2.0], {(0, 1): 1.0, (1, 2): -2.0})
    row = audit(pairs_only, ig_steps=5)["integrated_gradients"]
    assert row.gap == pytest.approx(0.0, abs=1e-12)  # the midpoint rule integrates t exactly
    triple = HarsanyiGame(3, {(0, 1, 2): 1.0})
    row = audit(triple, ig_steps=5)["integrated_gradients"]
    mean_t2 = sum(((k + 0.5) / 5) ** 2 for k in range(5)) / 5  # = 1/3 − 1/(12·25)
    assert row.attributions == pytest.approx([mean_t2] * 3, abs=1e-12)
    assert row.gap == pytest.approx(3 * mean_t2 - 1, abs=1e-12)
    assert row.satisfies == (True, True, False)
    assert table_markdown_has_rows(audit(triple, ig_steps=5).to_markdown())


def table_markdown_has_rows(text: str) -> bool:
    lines = text.splitlines()
    return (
        any(line.startswith("| leave-one-out") for line in lines)
        and any(line.startswith("| Shapley") for line in lines)
        and sum(line.startswith("| ") for line in lines) == 1 + 5 + 1 + 3
    )


def test_audit_from_dividends_and_errors() -> None:
    d = harsanyi(random_game(4, 8, 11))
    table = audit(d, methods=["shapley", "banzhaf"], names=list("abcd"))
    assert [r.method for r in table.rows] == ["shapley", "banzhaf"]
    assert table.as_dicts()[0]["satisfies"] == [True, True, True]
    assert table["banzhaf"].satisfies[2] is False  # Banzhaf under-allocates interactions
    with pytest.raises(ValueError, match="methods"):
        audit(d, methods=["lrp"])
    with pytest.raises(ValueError, match="n <= 16"):
        audit(HarsanyiGame(17, {(0,): 1.0}))
    with pytest.raises(ValueError, match="names"):
        audit(d, names=["a"])
    with pytest.raises(ValueError, match="steps"):
        audit(d, ig_steps=0)
