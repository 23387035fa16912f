"""Repair: pruning equals masking and persists, undo, keep-pruned training, physical pruning, dropout."""

from __future__ import annotations

import copy
import math

import lightning as L
import pytest
import torch
from torch import nn

from conftest import assert_unchanged, quiet_trainer, snapshot
from nsl import FilterPlayers, ShapleyResult
from nsl.data import DigitsDataModule
from nsl.models import Classifier, SmallCNN
from nsl.repair import (
    FilterDropout,
    PruneCulprits,
    PrunedFilters,
    finetune_with_dropout,
    guided_probabilities,
    prune_filters,
)

CHANNELS = (8, 12, 16)
N_PLAYERS = sum(CHANNELS)
ACROSS_LAYERS = [0, 5, 9, 20, 35]  # players in all three conv layers
RELUS = ("net.features.2", "net.features.5", "net.features.9")  # the modules right after each BatchNorm


def _trainer(**kwargs) -> L.Trainer:
    return quiet_trainer(**kwargs)


def _masked_output(
    model: nn.Module, players: FilterPlayers, removed: list[int], x: torch.Tensor
) -> torch.Tensor:
    present = torch.ones(len(players), dtype=torch.bool)
    present[removed] = False
    with torch.no_grad(), players.mask(present):
        return model(x)


def _out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def _pruned_rows_zero(model: nn.Module, handle: PrunedFilters) -> bool:
    modules = dict(model.named_modules())
    return all(bool((getattr(modules[e.module], e.attr)[e.rows] == 0).all()) for e in handle.saved)


# ---------------------------------------------------------------- prune_filters (zeroing)


@pytest.mark.parametrize("train_mode", [False, True], ids=["eval", "train"])
def test_pruning_equals_masking_convs_and_linear(model, digits_val, train_mode):
    x = digits_val[0][:64]
    layers = ["net.features.[037]", "net.head"]
    removed = [*ACROSS_LAYERS, N_PLAYERS + 3]  # and logit 3 of the Linear head
    model.train(train_mode)  # train mode: BatchNorm uses batch statistics
    pruned_model = copy.deepcopy(model)
    handle = prune_filters(pruned_model, FilterPlayers(pruned_model, layers=layers), removed)
    assert handle.names == [
        "net.features.0:0",
        "net.features.0:5",
        "net.features.3:1",
        "net.features.7:0",
        "net.features.7:15",
        "net.head:3",
    ]
    # only the rows producing those channels changed, and only parameters
    before, after = model.state_dict(), pruned_model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {
        "net.features.0.weight",
        "net.features.1.weight",
        "net.features.1.bias",
        "net.features.3.weight",
        "net.features.4.weight",
        "net.features.4.bias",
        "net.features.7.weight",
        "net.features.8.weight",
        "net.features.8.bias",
        "net.head.weight",
        "net.head.bias",
    }
    assert after["net.features.3.weight"][1].abs().sum() == 0
    assert torch.equal(after["net.features.3.weight"][0], before["net.features.3.weight"][0])
    # BN computes the pruned channel as 0·x̂ + 0 = 0, the mask as out·0: the same zeros downstream
    reference = _masked_output(model, FilterPlayers(model, layers=layers), removed, x)
    assert torch.equal(_out(pruned_model, x), reference)


def test_pruning_survives_state_dict_into_fresh_model(model, digits_val, tmp_path):
    x = digits_val[0][:64]
    reference = _masked_output(model, FilterPlayers(model), ACROSS_LAYERS, x)
    prune_filters(model, FilterPlayers(model), ACROSS_LAYERS)
    torch.save(model.state_dict(), tmp_path / "pruned.pt")
    fresh = Classifier(SmallCNN(channels=CHANNELS)).eval()
    fresh.load_state_dict(torch.load(tmp_path / "pruned.pt", weights_only=True), strict=True)
    assert torch.equal(_out(fresh, x), reference)


def test_pruning_survives_lightning_checkpoint(model, digits_val, tmp_path):
    x = digits_val[0][:64]
    reference = _masked_output(model, FilterPlayers(model), ACROSS_LAYERS, x)
    with prune_filters(model, FilterPlayers(model), ACROSS_LAYERS):  # held: hooks must add no keys
        trainer = _trainer()
        trainer.validate(model, DigitsDataModule(batch_size=64), verbose=False)
        trainer.save_checkpoint(tmp_path / "pruned.ckpt")
    checkpoint = torch.load(tmp_path / "pruned.ckpt", weights_only=True)
    assert checkpoint["state_dict"].keys() == Classifier(SmallCNN(channels=CHANNELS)).state_dict().keys()
    restored = Classifier.load_from_checkpoint(
        tmp_path / "pruned.ckpt", net=SmallCNN(channels=CHANNELS)
    ).eval()
    assert torch.equal(_out(restored, x), reference)


def test_undo_restores_bitwise_and_removes_hooks(model, digits_val):
    x = digits_val[0][:32]
    before = snapshot(model)
    original = _out(model, x)
    handle = prune_filters(model, FilterPlayers(model), ACROSS_LAYERS).keep_pruned()
    assert handle.held
    assert not torch.equal(_out(model, x), original)
    handle.undo()
    assert_unchanged(model, before)
    assert torch.equal(_out(model, x), original)
    with pytest.raises(RuntimeError, match="already undone"):
        handle.undo()


def test_keep_pruned_survives_finetuning(model, digits_val):
    x = digits_val[0][:64]
    # A conv filter zeroed up to its BN shift gets no gradient anyway (ReLU'(0) = 0), but a zeroed logit of
    # the Linear head does: without the hooks AdamW moves its row in the first step.
    players = FilterPlayers(model, layers=["net.features.[037]", "net.head"])
    removed = [*ACROSS_LAYERS, N_PLAYERS + 3]
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with prune_filters(model, players, removed) as handle:
        _trainer(limit_train_batches=5, limit_val_batches=0).fit(model, DigitsDataModule(batch_size=64))
        assert handle.held
    assert not handle.held
    assert all(
        not hooks for m in model.modules() for hooks in (m._forward_pre_hooks, m._state_dict_pre_hooks)
    )
    after = model.state_dict()
    assert not torch.equal(after["net.head.weight"][0], before["net.head.weight"][0])  # it trained
    assert _pruned_rows_zero(model, handle)  # read directly, not through state_dict() and its hooks
    model.eval()
    assert torch.equal(_out(model, x), _masked_output(model, players, removed, x))


def test_keep_pruned_rezeroes_before_forward_and_state_dict(model, digits_val):
    """Stale momentum or loaded weights may move a pruned row: forward passes and checkpoints re-zero it."""
    x = digits_val[0][:32]
    players = FilterPlayers(model)
    with prune_filters(model, players, ACROSS_LAYERS) as handle:
        with torch.no_grad():
            model.net.features[1].weight[0] = 1.5  # BN scale of pruned filter 0
        assert float(model.state_dict()["net.features.1.weight"][0]) == 0.0
        with torch.no_grad():
            model.net.features[0].weight[5] += 1.0
            model.net.features[1].bias[5] = 2.0
        assert torch.equal(_out(model, x), _masked_output(model, players, ACROSS_LAYERS, x))
        assert _pruned_rows_zero(model, handle)


# ---------------------------------------------------------------- prune_filters (physical)


def test_physical_pruning_shrinks_and_matches_masking(model, digits_val):
    x = digits_val[0][:64]
    players = FilterPlayers(model)
    reference = _masked_output(model, players, ACROSS_LAYERS, x)
    model.train()
    with torch.no_grad():  # Torch-Pruning traces with autograd: the function turns gradients back on
        handle = prune_filters(model, players, ACROSS_LAYERS, physical=True, example_inputs=x[:4])
    assert all(m.training for m in model.modules()), "tracing (in eval mode) must restore the modes"
    model.eval()
    assert [model.net.features[i].out_channels for i in (0, 3, 7)] == [6, 11, 14]
    smaller = Classifier(SmallCNN(channels=(6, 11, 14)))
    expected = sum(p.numel() for p in smaller.parameters())
    assert handle.params_after == sum(p.numel() for p in model.parameters()) == expected
    assert handle.params_before - handle.params_after == 2906 - expected
    torch.testing.assert_close(_out(model, x), reference, atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="cannot be undone"):
        handle.undo()
    with pytest.raises(ValueError, match=r"'net\.features\.0' with 8 channels, but the model has 6 there"):
        prune_filters(model, players, [1])  # the old players describe the unpruned model
    assert len(FilterPlayers(model)) == 6 + 11 + 14


@pytest.mark.parametrize(
    ("layers", "indices", "kwargs", "message"),
    [
        (None, [0], {}, "needs example_inputs"),
        ("net.head", [1], {"example_inputs": True}, "produces the model's output"),
        ("net.features.0", list(range(8)), {"example_inputs": True}, "all 8 filters"),
    ],
    ids=["no-example-inputs", "output-layer", "whole-layer"],
)
def test_physical_pruning_refusals_leave_model_unchanged(model, digits_val, layers, indices, kwargs, message):
    if kwargs.get("example_inputs") is True:
        kwargs = {"example_inputs": digits_val[0][:4]}
    before = snapshot(model)
    with pytest.raises(ValueError, match=message):
        prune_filters(model, FilterPlayers(model, layers=layers), indices, physical=True, **kwargs)
    assert_unchanged(model, before)


# ---------------------------------------------------------------- prune_filters (validation)


@pytest.mark.parametrize(
    ("indices", "message"),
    [
        ([36], r"\[36\] are out of range for 36 players.*\[0, 35\]"),
        (torch.tensor([-1, 2]), r"\[-1\] are out of range"),
        ([3, 7, 3], r"\[3\] are repeated"),
        ([], "empty"),
        (torch.tensor([1.0, 2.0]), "dtype torch.float32.*integer tensor"),
        (torch.ones(36, dtype=torch.bool), "dtype torch.bool.*nonzero"),
        ([1, 2.0], r"index 2.0 \(float\) is not an integer"),
        ([True], "index True"),
        (torch.tensor([[1, 2]]), r"shape \(1, 2\)"),
        ("3", "index '3'"),
    ],
    ids=[
        "too-big",
        "negative",
        "duplicate",
        "empty",
        "float",
        "bool-mask",
        "float-in-list",
        "bool",
        "2d",
        "str",
    ],
)
def test_bad_indices_name_the_value_and_leave_model_unchanged(model, indices, message):
    before = snapshot(model)
    with pytest.raises(ValueError, match=message):
        prune_filters(model, FilterPlayers(model), indices)
    assert_unchanged(model, before)


def test_players_of_another_model_are_refused(model, trained_model):
    before = snapshot(model)
    with pytest.raises(
        ValueError, match="players were built on a Classifier that is neither this Classifier"
    ):
        prune_filters(model, FilterPlayers(trained_model), [0])
    assert_unchanged(model, before)
    # players built on the wrapped network are fine: names are relative to it
    handle = prune_filters(model, FilterPlayers(model.net), [0])
    assert handle.names == ["features.0:0"]
    assert float(model.net.features[1].weight[0].detach()) == 0.0


# ---------------------------------------------------------------- FilterDropout


class _ZeroRecorder:
    """Pre-hooks on the ReLU after each BatchNorm: (training?, zero (sample, channel) pairs, all pairs)."""

    def __init__(self, model: nn.Module) -> None:
        self.records: list[tuple[bool, int, int]] = []
        self.masks: list[torch.Tensor] = []
        modules = dict(model.named_modules())
        self.handles = [modules[name].register_forward_pre_hook(self) for name in RELUS]

    def __call__(self, module: nn.Module, inputs: tuple) -> None:
        zero = (inputs[0] == 0).flatten(2).all(dim=2)  # (B, C): the whole feature map is exactly 0
        self.records.append((module.training, int(zero.sum()), zero.numel()))
        if module.training:
            self.masks.append(zero)

    def fraction(self, training: bool) -> float:
        zeros = sum(z for t, z, _ in self.records if t == training)
        total = sum(n for t, _, n in self.records if t == training)
        assert total > 0
        return zeros / total

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def test_filter_dropout_acts_only_in_training_steps_at_rate_p(model):
    model.train()
    hooks_before = snapshot(model)["hooks"]
    dropout = FilterDropout(p=0.3, seed=1)
    recorder = _ZeroRecorder(model)
    trainer = _trainer(
        limit_train_batches=10, limit_val_batches=3, num_sanity_val_steps=2, callbacks=[dropout]
    )
    trainer.fit(model, DigitsDataModule(batch_size=64))
    trainer.validate(model, DigitsDataModule(batch_size=64), verbose=False)
    recorder.remove()
    assert recorder.fraction(training=False) == 0.0  # sanity check, validation: the full model
    n = sum(total for training, _, total in recorder.records if training)
    assert n == 10 * 64 * N_PLAYERS
    tolerance = 5 * math.sqrt(0.3 * 0.7 / n)
    assert abs(recorder.fraction(training=True) - 0.3) < tolerance
    assert abs(dropout.dropped_fraction - 0.3) < tolerance and dropout.seen == n
    assert snapshot(model)["hooks"] == hooks_before and not dropout.hooked


def test_filter_dropout_p_zero_is_bitwise_plain_training_and_global_rng_untouched(model):
    def fit(callbacks):
        run = copy.deepcopy(model).train()
        L.seed_everything(0, verbose=False)
        _trainer(limit_train_batches=5, limit_val_batches=0, callbacks=callbacks).fit(run, DigitsDataModule())
        return run.state_dict(), torch.get_rng_state()

    plain, plain_rng = fit([])
    with_zero, _ = fit([FilterDropout(p=0.0)])
    assert plain.keys() == with_zero.keys()
    assert all(torch.equal(plain[k], with_zero[k]) for k in plain)
    dropped, dropped_rng = fit([FilterDropout(p=0.5)])
    assert not torch.equal(plain["net.head.weight"], dropped["net.head.weight"])  # p > 0 did change training
    assert torch.equal(plain_rng, dropped_rng), "FilterDropout drew from the global RNG"


def test_filter_dropout_per_batch_masks_and_per_filter_probabilities(model):
    model.train()
    probs = torch.cat([torch.zeros(8), torch.full((28,), 0.6)])  # layer 0 never dropped
    dropout = FilterDropout(p=probs, per_sample=False, seed=3)
    recorder = _ZeroRecorder(model)
    _trainer(limit_train_batches=10, limit_val_batches=0, callbacks=[dropout]).fit(model, DigitsDataModule())
    recorder.remove()
    layer0, rest = recorder.masks[0::3], recorder.masks[1::3] + recorder.masks[2::3]
    assert not any(bool(m.any()) for m in layer0)
    for mask in rest:  # one coalition per batch: every row of a batch has the same zero channels
        assert torch.equal(mask, mask[:1].expand_as(mask))
    drawn = torch.cat([m[0] for m in rest]).float()
    assert len(drawn) == 10 * 28
    assert abs(float(drawn.mean()) - 0.6) < 5 * math.sqrt(0.24 / len(drawn))


def test_filter_dropout_rescale_option(model):
    model.train()
    bn = model.net.features[1]
    raw: list[torch.Tensor] = []
    handle = bn.register_forward_hook(
        lambda _m, _i, out: raw.append(out.detach().clone())
    )  # runs before dropout
    recorder = _ZeroRecorder(model)
    seen: list[torch.Tensor] = []
    relu_handle = model.net.features[2].register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0]))
    dropout = FilterDropout(p=0.5, rescale=True, layers="net.features.0")
    _trainer(limit_train_batches=2, limit_val_batches=0, callbacks=[dropout]).fit(model, DigitsDataModule())
    for h in (handle, relu_handle):
        h.remove()
    recorder.remove()
    assert len(raw) == len(seen) == 2
    for before, after in zip(raw, seen, strict=True):
        kept = ~(after == 0).flatten(2).all(dim=2)
        assert 0 < float(kept.float().mean()) < 1
        expected = before * 2.0 * kept[:, :, None, None]
        torch.testing.assert_close(after.detach(), expected)


def test_filter_dropout_hooks_removed_after_exception_in_training(model):
    model.train()
    hooks_before = snapshot(model)["hooks"]
    dropout = FilterDropout(p=0.2)

    class Boom(L.Callback):
        def on_before_backward(self, trainer, pl_module, loss):
            if trainer.global_step == 2:
                assert dropout.hooked  # the failure happens while the dropout hooks are on
                raise RuntimeError("boom inside a training step")

    with pytest.raises(RuntimeError, match="boom inside a training step"):
        _trainer(limit_train_batches=5, limit_val_batches=0, callbacks=[dropout, Boom()]).fit(
            model, DigitsDataModule()
        )
    assert not dropout.hooked
    assert snapshot(model)["hooks"] == hooks_before


def test_filter_dropout_resumes_its_mask_stream_from_a_lightning_checkpoint(model, tmp_path):
    """Two epochs in one go draw the same masks as one epoch, a checkpoint and a resumed second epoch."""

    def fit(callback, epochs, ckpt_path=None):
        run = copy.deepcopy(model).train()
        trainer = _trainer(
            max_epochs=epochs, limit_train_batches=3, limit_val_batches=0, callbacks=[callback]
        )
        trainer.fit(run, DigitsDataModule(), ckpt_path=ckpt_path)
        return trainer

    straight = FilterDropout(p=0.25, seed=7)
    fit(straight, epochs=2)
    first = FilterDropout(p=0.25, seed=7)
    trainer = fit(first, epochs=1)
    trainer.save_checkpoint(tmp_path / "epoch1.ckpt")
    state = torch.load(tmp_path / "epoch1.ckpt", weights_only=True)["callbacks"][first.state_key]
    assert state["seen"] == first.seen == 3 * 64 * N_PLAYERS
    resumed = FilterDropout(p=0.25, seed=7)
    fit(resumed, epochs=2, ckpt_path=tmp_path / "epoch1.ckpt")
    assert resumed.seen == straight.seen and resumed.dropped == straight.dropped
    assert torch.equal(resumed.generator.get_state(), straight.generator.get_state())
    # the state key tells configurations apart, so a checkpoint never feeds one callback another's state
    assert first.state_key == resumed.state_key != FilterDropout(p=0.3, seed=7).state_key
    assert (
        FilterDropout(p=torch.full((36,), 0.1)).state_key != FilterDropout(p=torch.full((36,), 0.2)).state_key
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"p": 1.0}, r"p=1.0 is not a drop probability in \[0, 1\)"),
        ({"p": -0.1}, r"p=-0.1 is not a drop probability"),
        ({"p": float("nan")}, "p=nan"),
        ({"p": torch.tensor([0.1, 1.2])}, r"p\[1\]=1.2"),
        ({"p": True}, "p=True is a bool"),
        ({"per_sample": "yes"}, "per_sample='yes'"),
    ],
    ids=["one", "negative", "nan", "tensor-entry", "bool", "per-sample"],
)
def test_filter_dropout_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FilterDropout(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": "net.nothing*"}, "layer pattern 'net.nothing\\*' matches no module"),
        ({"p": torch.full((5,), 0.1)}, "p has 5 probabilities but layers=None select 36 filters"),
    ],
    ids=["unknown-layer", "wrong-length"],
)
def test_filter_dropout_configuration_errors_at_fit_start(model, kwargs, message):
    before = snapshot(model)
    with pytest.raises(ValueError, match=message):
        _trainer(limit_train_batches=1, callbacks=[FilterDropout(**kwargs)]).fit(model, DigitsDataModule())
    assert_unchanged(model, before)


# ---------------------------------------------------------------- guided_probabilities


def _result(values: list[float], k: int = 3) -> ShapleyResult:
    v = torch.tensor(values, dtype=torch.float64)
    return ShapleyResult(
        v, torch.zeros_like(v), torch.ones(len(v), dtype=torch.int64), n_evals=1, converged=True, k=k
    )


def test_guided_spread_has_mean_p_and_follows_the_values():
    values = [0.30, 0.01, -0.05, 0.08, 0.0, 0.12, -0.2, 0.02, 0.05, 0.003]
    probs = guided_probabilities(_result(values), p=0.1, mode="spread")
    assert probs.shape == (10,) and probs.dtype == torch.float32
    assert abs(float(probs.double().mean()) - 0.1) < 1e-6
    order = torch.argsort(torch.tensor(values))
    assert bool((probs[order].diff() >= 0).all()), "higher value must mean a higher drop probability"
    assert probs[0] == probs.max() and probs[6] == 0 and probs[2] == 0
    # a dominant filter hits the cap; the excess goes to the others and the mean stays p
    capped = guided_probabilities(_result([5.0, 0.1, 0.1, 0.05] + [0.0] * 6), p=0.3, max_p=0.6)
    assert float(capped[0]) == pytest.approx(0.6) and abs(float(capped.double().mean()) - 0.3) < 1e-6
    assert bool((capped <= 0.6 + 1e-7).all()) and bool((capped[1:4].diff() <= 0).all())
    # negative=True: the most negative values are dropped most (fairness-type games)
    neg = guided_probabilities(_result(values), p=0.1, negative=True)
    assert int(neg.argmax()) == 6 and neg[0] == 0
    assert torch.equal(guided_probabilities(_result([-1.0, -2.0, 0.0]), p=0.2), torch.full((3,), 0.2))


def test_guided_culprits_drop_only_the_k_culprits():
    values = [0.30, 0.01, -0.05, 0.08, 0.0, 0.12, -0.2, 0.02]
    probs = guided_probabilities(_result(values), p=0.4, mode="culprits", k=2)
    assert probs.nonzero().flatten().tolist() == [0, 5] and bool((probs[[0, 5]] == 0.4).all())
    negative = guided_probabilities(_result(values), p=0.4, mode="culprits", k=2, negative=True)
    assert negative.nonzero().flatten().tolist() == [2, 6]
    assert int(guided_probabilities(_result(values, k=3), p=0.4, mode="culprits").count_nonzero()) == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"p": 1.0}, r"p=1.0 is not a drop probability"),
        ({"p": -0.1}, r"p=-0.1"),
        ({"p": 0.1, "mode": "uniform"}, "mode='uniform' is not supported"),
        ({"p": 0.1, "mode": "culprits", "k": 0}, r"k=0 is not accepted; use an int in \[1, 4\]"),
        ({"p": 0.5, "max_p": 0.4}, r"max_p=0.4 must be in \[p, 1\)"),
    ],
    ids=["p-one", "p-negative", "mode", "k", "max-p"],
)
def test_guided_probabilities_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        guided_probabilities(_result([0.1, 0.2, 0.0, -0.1]), **kwargs)


# ---------------------------------------------------------------- finetune_with_dropout


def test_finetune_with_dropout_from_inside_another_trainers_on_fit_end(model):
    model.train()
    hooks_before = snapshot(model)["hooks"]

    class RepairAtFitEnd(L.Callback):
        def on_fit_end(self, trainer, pl_module):
            self.before = {k: v.clone() for k, v in pl_module.state_dict().items()}
            players = FilterPlayers(pl_module)
            values = torch.linspace(-1, 1, len(players), dtype=torch.float64)
            probs = guided_probabilities(ShapleyResult(values, values * 0, values.long() * 0, 0, True), p=0.2)
            self.inner = finetune_with_dropout(
                pl_module,
                DigitsDataModule(batch_size=64).train_dataloader(),
                probs,
                epochs=1,
                seed=4,
                limit_train_batches=5,
            )

    repair = RepairAtFitEnd()
    outer = _trainer(limit_train_batches=3, limit_val_batches=2, callbacks=[repair])
    outer.fit(model, DigitsDataModule(batch_size=64))
    assert outer.state.finished and outer.global_step == 3
    assert repair.inner.state.finished and repair.inner.global_step == 5 and repair.inner is not outer
    assert model.trainer is outer, "the module must point at the outer trainer again"
    after = model.state_dict()
    assert not torch.equal(after["net.features.3.weight"], repair.before["net.features.3.weight"])
    dropout = next(cb for cb in repair.inner.callbacks if isinstance(cb, FilterDropout))
    assert 0.1 < dropout.dropped_fraction < 0.3 and not dropout.hooked
    assert snapshot(model)["hooks"] == hooks_before
    metrics = outer.validate(
        model, DigitsDataModule(batch_size=64), verbose=False
    )  # the outer trainer still works
    assert 0.0 <= metrics[0]["val/acc"] <= 1.0


def test_finetune_with_dropout_restores_modes_and_rejects_bad_epochs(model):
    model.eval()
    modes = [m.training for m in model.modules()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    finetune_with_dropout(model, DigitsDataModule().train_dataloader(), 0.1, limit_train_batches=2)
    assert [m.training for m in model.modules()] == modes
    # it trained in train mode: BatchNorm running statistics moved
    assert not torch.equal(
        model.state_dict()["net.features.1.running_mean"], before["net.features.1.running_mean"]
    )
    with pytest.raises(ValueError, match="epochs=0 is not accepted"):
        finetune_with_dropout(model, DigitsDataModule().train_dataloader(), 0.1, epochs=0)
    with pytest.raises(ValueError, match="p=1 is not a drop probability"):
        finetune_with_dropout(model, DigitsDataModule().train_dataloader(), 1)


def test_prune_blames_only_culprits_harmful_beyond_noise() -> None:
    """``only_signed`` prunes a filter only when its harmful sign clears ``z`` standard errors; a NaN standard
    error (under 2 samples) never does; ``z=0`` is the sign alone, ``only_signed=False`` the k extremes (of the
    ranked filters: one with a single sample is never blamed)."""
    values = torch.tensor([-0.05, -0.02, 0.01, 0.03, -0.001], dtype=torch.float64)
    stderr = torch.tensor([0.01, 0.02, 0.01, float("nan"), 0.0001], dtype=torch.float64)
    result = ShapleyResult(values, stderr, torch.tensor([20, 20, 20, 1, 20]), 100, False)
    assert PruneCulprits(k=5).culprits(result, negative=True).tolist() == [0, 4]
    assert PruneCulprits(k=1).culprits(result, negative=True).tolist() == [0]
    assert PruneCulprits(k=5, z=0).culprits(result, negative=True).tolist() == [0, 1, 4]
    assert PruneCulprits(k=5).culprits(result, negative=False).tolist() == []  # 0.03 has no stderr, 0.01 is noise
    # 0.03 rests on one sample: too few to rank, so it is never a culprit, whatever the options
    assert PruneCulprits(k=5, z=0).culprits(result, negative=False).tolist() == [2]
    assert PruneCulprits(k=2, only_signed=False).culprits(result, negative=False).tolist() == [2, 4]
    with pytest.raises(ValueError, match="z"):
        PruneCulprits(z=-1.0)
