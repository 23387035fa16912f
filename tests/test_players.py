"""FilterPlayers: selection, naming, removal that really silences a channel, batched coalitions, clean-up."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from conftest import assert_unchanged, snapshot
from nsl import FilterPlayers


def _capture_input(model: nn.Module, module_name: str, x: torch.Tensor) -> torch.Tensor:
    seen = {}
    module = dict(model.named_modules())[module_name]

    def hook(_module, inputs, _output):
        seen["x"] = inputs[0].detach()

    handle = module.register_forward_hook(hook)
    try:
        model(x)
    finally:
        handle.remove()
    return seen["x"]


def _remove_by_hand(model: nn.Module, conv: str, bn: str, channel: int) -> nn.Module:
    """A copy whose filter is removed by editing weights: conv kernel and BN affine set to 0."""
    copy_ = copy.deepcopy(model)
    modules = dict(copy_.named_modules())
    with torch.no_grad():
        modules[conv].weight[channel] = 0
        modules[bn].weight[channel] = 0
        modules[bn].bias[channel] = 0
    return copy_


def test_names_numbering_and_batchnorm_detection(model):
    players = FilterPlayers(model)
    assert len(players) == 8 + 12 + 16
    assert players.names[0] == "net.features.0:0"
    assert players.names[8] == "net.features.3:0"
    assert players.names[-1] == "net.features.7:15"
    # every conv is followed by a BatchNorm, so masking happens after it
    assert [layer.mask_at for layer in players.layers] == ["net.features.1", "net.features.4", "net.features.8"]
    assert players.layer_index().tolist() == [0] * 8 + [1] * 12 + [2] * 16


def test_glob_patterns_and_linear_layers(model):
    assert len(FilterPlayers(model, layers="net.features.3")) == 12
    assert len(FilterPlayers(model, layers=["net.features.[03]", "net.head"])) == 8 + 12 + 10
    only_head = FilterPlayers(model, layers="*head")
    assert only_head.names == [f"net.head:{i}" for i in range(10)]
    assert only_head.layers[0].channel_dim == -1


def test_bad_layer_patterns_name_the_pattern_and_list_layers(model):
    with pytest.raises(ValueError, match=r"'conv\*' matches no module.*net\.features\.0"):
        FilterPlayers(model, layers="conv*")
    with pytest.raises(ValueError, match="not Conv2d or Linear"):
        FilterPlayers(model, layers="net.features.1")  # a BatchNorm
    with pytest.raises(ValueError, match="ablation='ones'"):
        FilterPlayers(model, ablation="ones")


def test_model_without_filters_is_rejected():
    with pytest.raises(ValueError, match="no Conv2d layer"):
        FilterPlayers(nn.Sequential(nn.Linear(4, 3), nn.ReLU()))


@pytest.mark.parametrize("layer_name", ["net.features.0", "net.features.3", "net.features.7"])
def test_removed_channel_is_exactly_zero_at_the_next_layer(model, digits_val, layer_name):
    x = digits_val[0][:32]
    players = FilterPlayers(model)
    layer = next(layer for layer in players.layers if layer.name == layer_name)
    present = torch.ones(len(players), dtype=torch.bool)
    present[layer.offset + 2] = False
    consumer = {"net.features.0": "net.features.3", "net.features.3": "net.features.7", "net.features.7": "net.pool"}
    with torch.no_grad():
        clean = _capture_input(model, consumer[layer_name], x)
        with players.mask(present):
            masked = _capture_input(model, consumer[layer_name], x)
    assert clean[:, 2].abs().sum() > 0  # the filter was alive before
    assert torch.count_nonzero(masked[:, 2]) == 0
    others = [c for c in range(masked.shape[1]) if c != 2]
    assert torch.equal(masked[:, others], clean[:, others])


def test_masking_equals_removing_the_filter_by_hand(model, digits_val):
    x = digits_val[0]
    players = FilterPlayers(model)
    present = torch.ones(len(players), dtype=torch.bool)
    present[[1, 9, 30]] = False
    by_hand = _remove_by_hand(model, "net.features.0", "net.features.1", 1)
    by_hand = _remove_by_hand(by_hand, "net.features.3", "net.features.4", 1)
    by_hand = _remove_by_hand(by_hand, "net.features.7", "net.features.8", 30 - 20)
    with torch.no_grad(), players.mask(present):
        masked = model(x)
    with torch.no_grad():
        expected = by_hand(x)
    torch.testing.assert_close(masked, expected, rtol=1e-5, atol=1e-5)


def test_batched_coalitions_match_one_at_a_time(model, digits_val):
    x = digits_val[0][:50]
    players = FilterPlayers(model)
    present = torch.rand(5, len(players), generator=torch.Generator().manual_seed(0)) > 0.3
    with torch.no_grad():
        with players.mask(present):
            batched = model(x.repeat(5, 1, 1, 1)).reshape(5, 50, -1)
        for k in range(5):
            with players.mask(present[k]):
                torch.testing.assert_close(batched[k], model(x), rtol=1e-5, atol=1e-5)


def test_mean_ablation_replaces_channel_with_its_mean(model, digits_val):
    x = digits_val[0]
    players = FilterPlayers(model, layers="net.features.3", ablation="mean")
    assert players.needs_calibration
    players.calibrate(x)
    present = torch.ones(len(players), dtype=torch.bool)
    present[4] = False
    with torch.no_grad():
        clean = _capture_input(model, "net.features.5", x)  # ReLU after the BN
        with players.mask(present):
            masked = _capture_input(model, "net.features.5", x)
    mean = clean[:, 4].mean()
    torch.testing.assert_close(masked[:, 4], torch.full_like(masked[:, 4], float(mean)), rtol=1e-4, atol=1e-5)


def test_bn_beta_ablation_matches_zeroed_conv_weights(model, digits_val):
    x = digits_val[0][:40]
    players = FilterPlayers(model, ablation="bn_beta")
    present = torch.ones(len(players), dtype=torch.bool)
    present[3] = False
    by_hand = copy.deepcopy(model)
    with torch.no_grad():
        dict(by_hand.named_modules())["net.features.0"].weight[3] = 0
        with players.mask(present):
            masked = model(x)
        torch.testing.assert_close(masked, by_hand(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("present", "error", "match"),
    [
        (torch.ones(35, dtype=torch.bool), ValueError, r"shape \(35,\); expected \(36,\)"),
        (torch.ones(36), TypeError, "dtype torch.bool"),
        (torch.ones(2, 3, 36, dtype=torch.bool), ValueError, "shape"),
        ([True] * 36, TypeError, "torch.bool tensor"),
    ],
)
def test_bad_masks_are_rejected_before_any_hook(model, present, error, match):
    players = FilterPlayers(model)
    before = snapshot(model)
    with pytest.raises(error, match=match), players.mask(present):
        pass
    assert_unchanged(model, before)


def test_hooks_removed_and_model_intact_after_an_error(model, digits_val):
    players = FilterPlayers(model)
    model.train()
    before = snapshot(model)
    present = torch.ones(3, len(players), dtype=torch.bool)
    present[:, 0] = False
    with pytest.raises(ValueError, match="cannot hold 3 coalitions"), players.mask(present):
        model.eval()
        with torch.no_grad():
            model(digits_val[0][:10])  # 10 rows cannot hold 3 coalitions: the hook refuses
    model.train()
    assert_unchanged(model, before)
