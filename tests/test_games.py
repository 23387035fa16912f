"""Games on a real trained CNN: values agree with torchmetrics on hand-edited copies; bad input fails early."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_recall

from conftest import assert_unchanged, snapshot
from nsl import AccuracyGame, AdversarialGame, ClassGame, FairnessGame, FilterPlayers
from nsl.games import check_game, linf_attack


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(multiclass_accuracy(model(x), y, num_classes=10, average="micro"))


def _without_filters(model: nn.Module, players: FilterPlayers, indices: list[int]) -> nn.Module:
    """A copy with filters removed by editing weights (conv kernel and BN affine of the channel set to 0)."""
    copy_ = copy.deepcopy(model)
    modules = dict(copy_.named_modules())
    with torch.no_grad():
        for i in indices:
            layer = next(layer for layer in players.layers if i in layer.players)
            c = i - layer.offset
            modules[layer.name].weight[c] = 0
            modules[layer.mask_at].weight[c] = 0
            modules[layer.mask_at].bias[c] = 0
    return copy_


def test_masked_accuracy_equals_accuracy_of_a_hand_pruned_copy(model, digits_val):
    x, y = digits_val
    players = FilterPlayers(model)
    game = AccuracyGame(model, players, x, y)
    assert check_game(game) == 36
    strongest = [int(i) for i in torch.randperm(36, generator=torch.Generator().manual_seed(1))[:12]]
    present = torch.ones(36, dtype=torch.bool)
    present[strongest] = False
    value = float(game(present)[0])
    expected = _accuracy(_without_filters(model, players, strongest), x, y)
    assert value == pytest.approx(expected, abs=1e-9)
    assert game.full_value() == pytest.approx(_accuracy(model, x, y), abs=1e-9)
    assert value < game.full_value()  # removing a third of the filters costs accuracy


def test_chunked_and_batched_evaluation_agree(model, digits_val):
    x, y = digits_val
    players = FilterPlayers(model)
    present = torch.rand(7, 36, generator=torch.Generator().manual_seed(0)) > 0.4
    one_by_one = AccuracyGame(model, players, x, y, chunk_size=1)
    batched = AccuracyGame(model, players, x, y, chunk_size=4)
    a, b = one_by_one(present), batched(present)
    torch.testing.assert_close(a, b)
    assert one_by_one.n_evals == batched.n_evals == 7 + 0  # construction forward is not a coalition
    assert a.dtype == torch.float64 and a.shape == (7,)


def test_smooth_metric_and_callable_metric(model, digits_val):
    x, y = digits_val
    players = FilterPlayers(model)
    nll = AccuracyGame(model, players, x, y, metric="neg_cross_entropy")
    with torch.no_grad():
        expected = -torch.nn.functional.cross_entropy(model(x), y)
    assert nll.full_value() == pytest.approx(float(expected), rel=1e-5)
    probability = AccuracyGame(model, players, x, y, metric="true_class_probability")
    with torch.no_grad():
        expected = model(x).softmax(dim=1)[torch.arange(len(y)), y].mean()
    assert probability.full_value() == pytest.approx(float(expected), rel=1e-5)
    assert 0 <= probability.empty_value() <= 1
    custom = AccuracyGame(model, players, x, y, metric=lambda logits, t: logits[..., 0].mean(dim=1))
    with torch.no_grad():
        assert custom.full_value() == pytest.approx(float(model(x)[:, 0].mean()), rel=1e-5)


def test_class_game_is_recall_of_that_class(model, digits_val):
    x, y = digits_val
    players = FilterPlayers(model)
    game = ClassGame(model, players, x, y, class_index=3)
    assert len(game.inputs) == int((y == 3).sum())
    present = torch.ones(36, dtype=torch.bool)
    present[20:28] = False
    pruned = _without_filters(model, players, list(range(20, 28)))
    with torch.no_grad():
        recall = multiclass_recall(pruned(x), y, num_classes=10, average=None)[3]
    assert float(game(present)[0]) == pytest.approx(float(recall), abs=1e-9)


def test_fairness_game_metrics(model, digits_val):
    x, y = digits_val
    groups = (torch.arange(len(y)) % 2) + 10  # arbitrary integer codes are fine
    players = FilterPlayers(model)
    present = torch.ones(36, dtype=torch.bool)
    present[:3] = False
    pruned = _without_filters(model, players, list(range(3)))
    acc = [_accuracy(pruned, x[groups == g], y[groups == g]) for g in (10, 11)]
    full = [_accuracy(model, x[groups == g], y[groups == g]) for g in (10, 11)]
    w, b = (0, 1) if full[0] <= full[1] else (1, 0)  # the groups worst and best on the full model (ties: 10)
    worst = FairnessGame(model, players, x, y, groups)
    gap = FairnessGame(model, players, x, y, groups, metric="accuracy_gap")
    minimum = FairnessGame(model, players, x, y, groups, metric="min_group_accuracy")
    assert (worst.worst_group_code, worst.best_group_code) == (10 + w, 10 + b)
    # The worst-group and gap games keep the full model's groups for every coalition; the minimum does not.
    assert float(worst(present)[0]) == pytest.approx(acc[w], abs=1e-9)
    assert float(gap(present)[0]) == pytest.approx(1 - (acc[b] - acc[w]), abs=1e-9)
    assert float(minimum(present)[0]) == pytest.approx(min(acc), abs=1e-9)
    assert worst.full_value() == pytest.approx(min(full), abs=1e-9) == minimum.full_value()
    parity = FairnessGame(model, players, x, y, groups, metric="demographic_parity", positive_class=1)
    with torch.no_grad():
        pos = pruned(x).argmax(1) == 1
    rates = [pos[groups == g].float().mean() for g in (10, 11)]
    assert min(rates) > 0
    assert float(parity(present)[0]) == pytest.approx(float(min(rates) / max(rates)), abs=1e-6)


def test_adversarial_game_examples_and_success(model, digits_val):
    x, y = digits_val
    players = FilterPlayers(model)
    before = snapshot(model)
    pgd = AdversarialGame(model, players, x, y, attack="pgd", eps=0.3, steps=10, targeted=False)
    fgsm = AdversarialGame(model, players, x, y, attack="fgsm", eps=0.3, targeted=False)
    assert_unchanged(model, before)  # the attack differentiates w.r.t. inputs only
    for game in (pgd, fgsm):
        delta = (game.inputs - game.clean_inputs).abs().max()
        assert delta <= 0.3 + 1e-6
        assert game.inputs.min() >= x.min() - 1e-6 and game.inputs.max() <= x.max() + 1e-6
    success = pgd.full_value()
    assert success == pytest.approx(1 - _accuracy(model, pgd.inputs, y), abs=1e-9)
    assert success > 0.5  # a 10-step PGD with eps=0.3 breaks a small digits CNN
    assert success >= fgsm.full_value() - 0.05
    targeted = AdversarialGame(model, players, x, y, eps=0.3, steps=10, target_class=7)
    with torch.no_grad():
        hit = (model(targeted.inputs).argmax(1) == 7).float().mean()
    assert targeted.full_value() == pytest.approx(float(hit), abs=1e-9)
    assert targeted.full_value() > (y == 7).float().mean() + 0.2


def test_adversarial_game_net_of_clean_is_success_minus_clean_accuracy(model, digits_val):
    x, y = digits_val
    players = FilterPlayers(model)
    attack = {"eps": 0.3, "steps": 5, "seed": 2}
    net = AdversarialGame(model, players, x, y, net_of_clean=True, **attack)
    success = AdversarialGame(model, players, x, y, **attack)
    clean = AccuracyGame(model, players, x, y)
    assert torch.equal(net.adversarial_inputs, success.inputs)  # the same examples, attacked once
    present = torch.rand(6, len(players), generator=torch.Generator().manual_seed(0)) < 0.7
    present[0] = True
    expected = success(present) - clean(present)
    assert torch.allclose(net(present), expected, atol=1e-12)
    assert net.full_value() == pytest.approx(success.full_value() - clean.full_value())
    assert expected.std() > 0  # the coalitions differ, so the check is not a constant


def test_attack_uses_its_own_generator(model, digits_val):
    x, y = digits_val
    torch.manual_seed(0)
    expected_next = torch.rand(3)
    torch.manual_seed(0)
    a = linf_attack(model, x[:20], y[:20], eps=0.1, steps=3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.rand(3), expected_next)  # the global RNG was not consumed
    b = linf_attack(model, x[:20], y[:20], eps=0.1, steps=3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


class _NaNModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.head = nn.Linear(2, 10)

    def forward(self, x):
        return self.head(self.conv(x).mean(dim=(2, 3))) * float("nan")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda x, y: (x[:0], y[:0]), "evaluation data is empty"),
        (lambda x, y: (x, y + 5), "target 14 is out of range for a model with 10 classes"),
        (lambda x, y: (x, y[:10]), r"targets must be a tensor of shape \(200,\)"),
        (lambda x, y: (x, y.float()), "integer class labels"),
    ],
)
def test_bad_evaluation_data_fails_before_work(model, digits_val, change, match):
    players = FilterPlayers(model)
    before = snapshot(model)
    with pytest.raises((ValueError, TypeError), match=match):
        AccuracyGame(model, players, *change(*digits_val))
    assert_unchanged(model, before)


def test_other_bad_game_arguments(model, digits_val):
    x, y = digits_val
    players = FilterPlayers(model)
    with pytest.raises(ValueError, match="NaN or inf"):
        nan_model = _NaNModel()
        AccuracyGame(nan_model, FilterPlayers(nan_model), x, y)
    with pytest.raises(ValueError, match="class_index=11 has no sample"):
        ClassGame(model, players, x, y, class_index=11)
    with pytest.raises(ValueError, match="metric='f1'"):
        AccuracyGame(model, players, x, y, metric="f1")
    with pytest.raises(ValueError, match="single group"):
        FairnessGame(model, players, x, y, torch.zeros_like(y))
    with pytest.raises(ValueError, match="attack='cw'"):
        AdversarialGame(model, players, x, y, attack="cw")
    with pytest.raises(ValueError, match="different model"):
        AccuracyGame(copy.deepcopy(model), players, x, y)


class _FailsOnBigBatches(nn.Module):
    """A real model that breaks when fed more rows than it was built for (a failure mid-analysis)."""

    def __init__(self, inner: nn.Module, max_rows: int) -> None:
        super().__init__()
        self.inner = inner
        self.max_rows = max_rows

    def forward(self, x):
        if len(x) > self.max_rows:
            raise RuntimeError("out of memory (simulated by a model that refuses large batches)")
        return self.inner(x)


def test_model_left_exactly_as_before_after_games_and_after_an_exception(model, digits_val):
    x, y = digits_val
    model.train()  # the analysis must restore training mode too
    wrapped = _FailsOnBigBatches(model, max_rows=len(x))
    wrapped.train()
    before = snapshot(wrapped)
    players = FilterPlayers(wrapped)
    game = AccuracyGame(wrapped, players, x, y, chunk_size=3)
    game(torch.ones(36, dtype=torch.bool))
    assert_unchanged(wrapped, before)
    with pytest.raises(RuntimeError, match="simulated"):
        game(torch.ones(3, 36, dtype=torch.bool))
    assert_unchanged(wrapped, before)


# ------------------------------------------------------------------------------------------- shared prefix


def _scan_chunk(n: int, k: int, start: int, generator: torch.Generator) -> torch.Tensor:
    """K consecutive coalitions of one random removal scan, as the estimators evaluate them."""
    order = torch.randperm(n, generator=generator)
    rank = torch.empty(n, dtype=torch.long)
    rank[order] = torch.arange(n)
    return rank.unsqueeze(0) >= torch.arange(start, start + k).unsqueeze(1)


class _Residual(nn.Module):
    """conv-BN stem, then a residual block whose skip connection bypasses two player layers."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True))
        self.conv1, self.bn1 = nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.head = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return self.head(torch.relu(x + y).mean(dim=(2, 3)))


def test_shared_prefix_gives_the_values_of_tiled_evaluation(model, digits_val):
    x, y = digits_val
    players = FilterPlayers(model)
    before = snapshot(model)
    shared = AccuracyGame(model, players, x, y, chunk_size=4)
    tiled = AccuracyGame(model, players, x, y, chunk_size=4, share_prefix=False)
    gen = torch.Generator().manual_seed(3)
    for trial in range(24):
        k = (1, 3, 4)[trial % 3]
        if trial % 2:
            present = _scan_chunk(36, k, int(torch.randint(1, 30, (1,), generator=gen)), gen)
        else:
            present = torch.rand(k, 36, generator=gen) > 0.3
        torch.testing.assert_close(shared(present), tiled(present), rtol=0, atol=0)
    # the substitutions really ran (not a silent fallback to tiling) and were checked against tiling
    assert shared._verified and all(shared._verified.values())
    assert ("replace", 0) in shared._verified and 0 in shared._activations
    assert shared.n_evals == tiled.n_evals
    assert_unchanged(model, before)


def test_cached_activations_follow_weight_changes(model, digits_val):
    x, y = digits_val
    players = FilterPlayers(model)
    shared = AccuracyGame(model, players, x, y)
    present = torch.ones(1, 36, dtype=torch.bool)
    present[0, 20] = False  # first removal in a later layer: the activations below it get cached
    shared(present)
    cached = shared._activations[players.first_removal(present)].clone()
    with torch.no_grad():  # an optimizer step or load_state_dict changes weights in place like this
        for p in model.parameters():
            p.mul_(0.5)
    tiled = AccuracyGame(model, players, x, y, share_prefix=False)
    torch.testing.assert_close(shared(present), tiled(present), rtol=0, atol=0)
    assert not torch.equal(shared._activations[players.first_removal(present)], cached)  # retaken


def test_shared_prefix_falls_back_around_skip_connections():
    torch.manual_seed(0)
    net = _Residual().eval()
    x = torch.randn(20, 1, 8, 8)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.bias.uniform_(-0.3, 0.3)
        y = net(x).argmax(1)
    players = FilterPlayers(net)
    assert [layer.mask_at for layer in players.layers] == ["stem.1", "bn1", "bn2"]
    shared = AccuracyGame(net, players, x, y, chunk_size=3)
    tiled = AccuracyGame(net, players, x, y, chunk_size=3, share_prefix=False)
    present = torch.ones(3, 18, dtype=torch.bool)
    present[1:, 7] = False  # rows differ first in layer 1 (conv1), which the skip connection bypasses
    present[2, 8] = False
    torch.testing.assert_close(shared(present), tiled(present), rtol=0, atol=0)
    assert shared._verified[("expand", 1)] is False  # detected and switched off for that layer
    stem = torch.ones(3, 18, dtype=torch.bool)
    stem[1:, 0] = False  # rows differ first in the stem: everything downstream sees the expanded batch
    stem[2, 10] = False
    torch.testing.assert_close(shared(stem), tiled(stem), rtol=0, atol=0)
    assert shared._verified[("expand", 0)] is True


def test_expand_at_rejects_coalitions_that_differ_below_it(model):
    players = FilterPlayers(model)
    present = torch.ones(2, 36, dtype=torch.bool)
    present[1, 0] = False
    with pytest.raises(ValueError, match="differ before layer 1"), players.mask(present, expand_at=1):
        pass
    with pytest.raises(ValueError, match="expand_at=7"), players.mask(present, expand_at=7):
        pass
