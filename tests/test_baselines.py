"""Baseline importance scores: known answers on planted networks, model untouched, one interface, removal curves."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import assert_unchanged, snapshot
from experiments import removal_curves
from nsl import AccuracyGame, FilterPlayers, ShapleyResult, prune_filters
from nsl.baselines import (
    BASELINES,
    activation,
    as_result,
    baseline_result,
    baseline_scores,
    game_leave_one_out,
    integrated_gradients,
    leave_one_out,
    random_scores,
    taylor,
    weight_l1,
    weight_l2,
)
from nsl.report import removal_curve

EPS = 1e-5  # BatchNorm2d's default eps


class PlantedNet(nn.Module):
    """conv 1×1 → BatchNorm → mean pool → linear head, with weights set so every score's answer is known.

    Channel 0 is dead (exactly 0 after the BatchNorm, although the head reads it), channel 1 = x − 0.5 is the
    only path to the logits (logit1 − logit0 = 20·mean(x − 0.5)), channel 2 = 3x is large but the head ignores it.
    Labels are 1 where the image mean exceeds 0.5, except every 8th label, which is flipped.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 1)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([0.0, 1.0, 1.0]).reshape(3, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, -0.5, 0.0]))
            self.bn.weight.copy_(torch.tensor([1.0, 1.0, 3.0]))
            self.bn.bias.zero_()
            self.head.weight.copy_(torch.tensor([[5.0, -10.0, 0.0], [-5.0, 10.0, 0.0]]))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(self.conv(x)).mean(dim=(2, 3)))


@pytest.fixture
def planted() -> tuple[PlantedNet, FilterPlayers, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(400, 1, 4, 4, generator=gen)
    m = x.mean(dim=(1, 2, 3))
    x = x[(m - 0.5).abs() > 0.02][:96]  # clear labels
    y = (x.mean(dim=(1, 2, 3)) > 0.5).long()
    y[::8] = 1 - y[::8]  # a few wrong labels: their gradients point the other way
    assert 0 < int(y.sum()) < len(y)
    net = PlantedNet()
    players = FilterPlayers(net)
    assert [layer.mask_at for layer in players.layers] == ["bn"]
    return net, players, x, y


def _channels(x: torch.Tensor) -> torch.Tensor:
    """The planted net's channel outputs written out by hand, (B, 3, H, W)."""
    s = 1 / math.sqrt(1 + EPS)
    return torch.cat([torch.zeros_like(x), (x - 0.5) * s, 3 * x * s], dim=1)


def _run(name: str, model: nn.Module, players: FilterPlayers, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    kwargs = {"steps": 16} if name == "integrated_gradients" else {}
    return baseline_scores(name, model, players, x, y, **kwargs)


# ------------------------------------------------------------------------------------- every score, one door


@pytest.mark.parametrize("name", BASELINES)
def test_shape_finite_and_model_untouched(name, model, digits_val):
    x, y = digits_val
    players = FilterPlayers(model)
    model.train()  # a BatchNorm run in train mode would move its running stats: the snapshot would see it
    model.net.head.eval()
    before = snapshot(model)
    rng = torch.get_rng_state()
    scores = _run(name, model, players, x, y)
    assert_unchanged(model, before)
    assert torch.equal(torch.get_rng_state(), rng), f"{name} drew from the global RNG"
    assert scores.shape == (len(players),)
    assert scores.dtype == torch.float64
    assert not scores.requires_grad
    assert torch.isfinite(scores).all()
    assert scores.std() > 0  # not a constant


@pytest.mark.parametrize("name", BASELINES)
def test_planted_scores_model_untouched(name, planted):
    net, players, x, y = planted
    before = snapshot(net)
    scores = _run(name, net, players, x, y)
    assert_unchanged(net, before)
    assert scores.shape == (3,) and torch.isfinite(scores).all()


def test_unknown_name_lists_accepted_names(planted):
    net, players, x, y = planted
    with pytest.raises(ValueError, match=r"baseline score 'shapley'; registered: .*integrated_gradients.*weight_l1"):
        baseline_scores("shapley", net, players, x, y)
    with pytest.raises(ValueError, match="taylor needs targets"):
        baseline_scores("taylor", net, players, x)
    with pytest.raises(ValueError, match="different model"):
        baseline_scores("weight_l1", PlantedNet(), players)


def test_dispatch_equals_the_functions(planted):
    net, players, x, _ = planted
    raw = weight_l2(net, players, bn_scale=False)
    assert torch.equal(baseline_scores("weight_l2", net, players, bn_scale=False), raw)
    assert torch.equal(baseline_scores("activation", net, players, x), activation(net, players, x))
    assert torch.equal(baseline_scores("random", net, players, seed=3), random_scores(players, seed=3))


# ------------------------------------------------------------------------------------------ weight norms


def test_weight_norms_planted_raw_and_folded_into_batchnorm():
    net = nn.Sequential(nn.Conv2d(2, 3, 3, bias=False), nn.BatchNorm2d(3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(3, 2))
    scale = torch.tensor([3.0, 1.0, 2.0])
    gamma = torch.tensor([-0.1, 1.0, 2.0])
    var = torch.tensor([1.0, 4.0, 0.25])
    with torch.no_grad():
        net[0].weight.copy_(scale.reshape(3, 1, 1, 1).expand(3, 2, 3, 3))
        net[1].weight.copy_(gamma)
        net[1].running_var.copy_(var)
        net[4].weight.copy_(torch.tensor([[1.0, -2.0, 0.0], [3.0, 0.0, 4.0]]))
    players = FilterPlayers(net, layers=["0", "4"])
    assert players.layers[0].mask_at == "1"
    raw1 = torch.cat([scale * 18, torch.tensor([3.0, 7.0])]).double()
    raw2 = torch.cat([scale * math.sqrt(18), torch.tensor([math.sqrt(5), 5.0])]).double()
    fold = torch.cat([gamma.abs() / torch.sqrt(var + EPS), torch.ones(2)]).double()
    torch.testing.assert_close(weight_l1(net, players, bn_scale=False), raw1)
    torch.testing.assert_close(weight_l2(net, players, bn_scale=False), raw2)
    torch.testing.assert_close(weight_l1(net, players), raw1 * fold)
    torch.testing.assert_close(weight_l2(net, players), raw2 * fold)
    # the planted order: raw norms put filter 0 first, folding its tiny |γ|/σ puts it last among the filters
    assert weight_l1(net, players, bn_scale=False)[:3].argsort(descending=True).tolist() == [0, 2, 1]
    assert weight_l1(net, players)[:3].argsort(descending=True).tolist() == [2, 1, 0]


# ------------------------------------------------------------------------------- data-driven scores, planted


def test_activation_is_mean_abs_channel_after_batchnorm(planted):
    net, players, x, _ = planted
    expected = _channels(x).abs().mean(dim=(0, 2, 3)).double()
    scores = activation(net, players, x, batch_size=10)  # several batches, one ragged
    torch.testing.assert_close(scores, expected, rtol=1e-6, atol=1e-9)
    assert scores[0] == 0  # the dead channel
    assert scores.argmax() == 2  # the big channel the head ignores: activation is not importance


def _gate_grad(x: torch.Tensor, y: torch.Tensor, head: torch.Tensor, per_image: bool) -> torch.Tensor:
    """∂(cross-entropy)/∂gate of each channel at gate 1, from the hand-written net (no hooks involved)."""
    gates = torch.ones(len(x) if per_image else 1, 3, dtype=torch.float64, requires_grad=True)
    pooled = (_channels(x).double() * gates[..., None, None]).mean(dim=(2, 3))
    loss = F.cross_entropy(pooled @ head.double().T, y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, gates)
    return grad


def test_taylor_equals_gate_gradient_by_hand(planted):
    net, players, x, y = planted
    head = net.head.weight.detach()
    expected = _gate_grad(x, y, head, per_image=False)[0].abs() / len(x)
    scores = taylor(net, players, x, y, batch_size=40)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-9)
    assert scores[0] == 0 and scores[2] == 0 and scores[1] > 0  # dead, ignored, the only path
    per_image = _gate_grad(x, y, head, per_image=True).abs().mean(0)
    torch.testing.assert_close(taylor(net, players, x, y, per_example=True), per_image, rtol=1e-5, atol=1e-9)
    assert per_image[1] > expected[1] + 1e-3  # opposite per-image effects cancel only in the default


def test_taylor_and_ig_work_under_inference_mode_and_frozen_params(model, digits_val):
    x, y = digits_val
    players = FilterPlayers(model)
    reference = taylor(model, players, x, y)
    ig = integrated_gradients(model, players, x, y, steps=8)
    with torch.inference_mode():
        xi, yi = x.clone(), y.clone()  # inference tensors, as in a validation hook
        torch.testing.assert_close(taylor(model, players, xi, yi), reference)
        torch.testing.assert_close(integrated_gradients(model, players, xi, yi, steps=8), ig)
    for p in model.parameters():
        p.requires_grad_(False)
    before = snapshot(model)
    torch.testing.assert_close(taylor(model, players, x, y), reference)
    assert_unchanged(model, before)


def test_leave_one_out_is_the_drop_in_accuracy(planted):
    net, players, x, y = planted
    scores = leave_one_out(net, players, x, y)
    # without channel 1 every logit is 0 and argmax picks class 0
    right = (x.mean(dim=(1, 2, 3)) > 0.5).long() == y
    drop = right.double().mean() - (y == 0).double().mean()
    expected = torch.tensor([0.0, float(drop), 0.0], dtype=torch.float64)
    torch.testing.assert_close(scores, expected)
    assert scores.argmax() == 1


def test_leave_one_out_matches_masking_by_hand(model, digits_val):
    x, y = digits_val
    players = FilterPlayers(model)
    game = AccuracyGame(model, players, x, y, chunk_size=7)  # N + 1 = 37 coalitions in several chunks
    scores = baseline_scores("leave_one_out", model, players, game=game)
    assert game.n_evals == len(players) + 1
    with torch.no_grad():
        full = (model(x).argmax(1) == y).double().mean()
        for i in range(len(players)):
            present = torch.ones(len(players), dtype=torch.bool)
            present[i] = False
            with players.mask(present):
                acc = (model(x).argmax(1) == y).double().mean()
            assert scores[i] == pytest.approx(float(full - acc), abs=1e-6), players.names[i]  # float32 metric
    assert scores.max() > 0
    torch.testing.assert_close(game_leave_one_out(game, batch_size=5), scores)


def test_integrated_gradients_planted_and_complete(planted):
    net, players, x, y = planted
    scores = integrated_gradients(net, players, x, y, steps=32, batch_size=25)
    assert scores[0] == 0 and scores[2] == 0  # a dead channel and an ignored one get nothing
    with torch.no_grad():
        p_full = net(x).softmax(-1)[torch.arange(len(y)), y].double().mean()
    # all gates 0: every logit 0, p = 1/2; completeness up to the quadrature
    assert scores[1] == pytest.approx(float(p_full) - 0.5, abs=1e-4)
    assert scores[1] > 0.1


def test_integrated_gradients_complete_on_trained_model(model, digits_val):
    x, y = digits_val
    players = FilterPlayers(model)
    scores = integrated_gradients(model, players, x, y, steps=32)
    rows = torch.arange(len(y))
    with torch.no_grad():
        p_full = model(x).softmax(-1)[rows, y].double().mean()
        with players.mask(torch.zeros(len(players), dtype=torch.bool)):
            p_empty = model(x).softmax(-1)[rows, y].double().mean()
    assert float(scores.sum()) == pytest.approx(float(p_full - p_empty), abs=2e-3)
    logit = integrated_gradients(model, players, x, y, steps=32, output="logit")
    assert not torch.allclose(logit, scores)
    with pytest.raises(ValueError, match=r"output='margin'.*prob"):
        integrated_gradients(model, players, x, y, output="margin")


def test_mean_ablation_scores_deviation_from_the_fill(planted):
    net, _, x, _ = planted
    players = FilterPlayers(net, ablation="mean")
    scores = activation(net, players, x)
    channels = _channels(x)
    means = channels.mean(dim=(0, 2, 3), keepdim=True)
    torch.testing.assert_close(scores, (channels - means).abs().mean(dim=(0, 2, 3)).double(), rtol=1e-5, atol=1e-7)


def test_linear_players_are_output_features(model, digits_val):
    x, y = digits_val
    players = FilterPlayers(model, layers=["net.features.0", "net.head"])
    with torch.no_grad():
        logits = model(x).double()
    torch.testing.assert_close(activation(model, players, x)[8:], logits.abs().mean(0), rtol=1e-5, atol=1e-6)
    # removing a logit (setting it to 0) changes the loss by −∂L/∂z·z to first order
    grad = (logits.softmax(-1) - F.one_hot(y, 10).double()) * logits
    torch.testing.assert_close(taylor(model, players, x, y)[8:], grad.mean(0).abs(), rtol=1e-4, atol=1e-6)
    ig = integrated_gradients(model, players, x, y, steps=16)
    assert ig.shape == (18,) and torch.isfinite(ig).all()


# ------------------------------------------------------------------------------------------------- random


def test_random_is_seeded_and_leaves_the_global_rng_alone(planted):
    _, players, _, _ = planted
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = random_scores(players, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, random_scores(players, seed=5))
    assert not torch.equal(a, random_scores(players, seed=6))
    assert torch.equal(random_scores(200, seed=1), random_scores(200, seed=1))
    assert len(torch.unique(random_scores(200, seed=1))) == 200


# ------------------------------------------------------------------------ results: prune, plot and log alike


def test_result_wrapper_works_with_removal_curves_and_pruning(model, digits_val, tmp_path):
    x, y = digits_val
    players = FilterPlayers(model)
    result = baseline_result("taylor", model, players, x, y, k=3)
    assert isinstance(result, ShapleyResult)
    assert result.method == "taylor" and result.names == players.names and result.converged
    torch.testing.assert_close(result.values, taylor(model, players, x, y))
    assert result.top_k.tolist() == result.values.argsort(descending=True)[:3].tolist()
    game = AccuracyGame(model, players, x, y)
    curve = removal_curve(game, result.ranking(), max_removed=3, n_random=2)
    assert curve.removed == [0, 1, 2, 3]
    assert curve.ranked[0] == pytest.approx(game.full_value())
    pruned = copy.deepcopy(model)
    prune_filters(pruned, FilterPlayers(pruned), result.culprits(3))
    with torch.no_grad():
        acc = float((pruned(x).argmax(1) == y).double().mean())
    assert curve.ranked[3] == pytest.approx(acc, abs=1e-6)
    path = tmp_path / "taylor.pt"
    result.save(path)
    loaded = ShapleyResult.load(path)
    assert torch.equal(loaded.values, result.values) and loaded.method == "taylor"
    loo = baseline_result("leave_one_out", model, players, x, y)
    assert loo.n_evals == len(players) + 1
    with pytest.raises(ValueError, match="3 scores for 36 players"):
        as_result(torch.ones(3), players)


# --------------------------------------------------------------------------------------------- experiment


def test_removal_curve_experiment_quick(tmp_path):
    # the class-specific part is checked in test_experiments_figures; here every ranking of the overall table
    summary = removal_curves.main(["--quick", "--classes", "", "--out", str(tmp_path), "--no-wandb",
                                   "--cache", str(tmp_path / "analyses")])
    table = (tmp_path / "removal_curves.md").read_text()
    assert summary["tmab_names"] == ["tmab shapley", "tmab banzhaf"]  # --quick's semivalues
    for name in (*summary["tmab_names"], *BASELINES):
        assert f"| {name} |" in table
        assert name in summary["auc"]
    assert summary["verdicts"]["overall"] in table and "| tmab banzhaf (accuracy) |" in table
    assert (tmp_path / "removal_curves.png").stat().st_size > 1000
    assert all(0 <= v <= 1 for v in summary["auc"].values())
    assert all(curve[0] == pytest.approx(summary["full_value"]) for curve in summary["curves"].values())
