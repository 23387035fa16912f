"""ShapleyRepair checks itself: kept only when held-out numbers say so, else rolled back bit for bit; undo; physical."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from conftest import inspect_wandb, quiet_trainer
from nsl import NeuronShapley, ShapleyRepair
from nsl.data import DigitsDataModule
from nsl.models import Classifier, SmallCNN

CHANNELS = (4, 6, 8)
# 300 evaluations: enough samples for the planted filter to clear the default z = 2 standard errors
FAST = {"max_evals": 300, "eval_size": 64, "verbose": False, "curve_steps": 3}
PLANTED = "net.features.7:0"  # a filter of the trained model rewired to push every prediction to class 3
# Pruning the accuracy game's most negative filter (the planted one) raises held-out accuracy: kept. Flipping
# the side (negative=False) prunes the two most helpful filters instead, which costs accuracy: rolled back.
HELPS = {"k": 1}
HURTS = {"k": 2, "only_signed": False, "negative": False}


@pytest.fixture(scope="module")
def trained_state() -> dict[str, torch.Tensor]:
    """A small digits classifier trained for two epochs, with one planted culprit filter (a real defect).

    The last conv layer's filter 0 is made active everywhere and its head weights point at class 3 only, so
    it drags predictions to class 3; switching it off removes that pull (and nothing useful).
    """
    L.seed_everything(0, verbose=False)
    model = Classifier(SmallCNN(channels=CHANNELS))
    quiet_trainer(2).fit(model, DigitsDataModule(batch_size=64))
    with torch.no_grad():
        model.net.features[8].bias[0] += 0.5
        model.net.head.weight[:, 0] = 0.0
        model.net.head.weight[3, 0] = 0.3
    return {k: v.clone() for k, v in model.state_dict().items()}


class PreRepair(L.Callback):
    """The model's tensors when training ended: what the repair starts from (the analysis changes nothing)."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def repair_fit(
    tmp_path: Path, trained_state: dict, repair: ShapleyRepair, logger=False
) -> tuple[Classifier, L.Trainer, dict]:
    """One short training step on the trained weights, then the analysis and the repair at fit end."""
    L.seed_everything(0, verbose=False)
    model = Classifier(SmallCNN(channels=CHANNELS))
    model.load_state_dict(trained_state)
    pre = PreRepair()
    trainer = quiet_trainer(1, limit_train_batches=1, limit_val_batches=1, default_root_dir=tmp_path,
                            callbacks=[NeuronShapley("accuracy", **FAST), pre, repair], logger=logger)
    trainer.fit(model, DigitsDataModule(batch_size=64))
    return model, trainer, pre.state


def assert_state(model: torch.nn.Module, state: dict) -> None:
    """Same keys, shapes and values, bit for bit."""
    now = model.state_dict()
    assert now.keys() == state.keys()
    for key, value in state.items():
        assert now[key].shape == value.shape, f"{key}: shape {tuple(now[key].shape)} != {tuple(value.shape)}"
        assert torch.equal(now[key], value), f"{key} differs"


def rows(repair: ShapleyRepair) -> dict[str, dict]:
    return {r["metric"]: r for r in repair.report}


def test_repair_that_improves_its_target_is_kept_saved_logged_and_undone(
    tmp_path: Path, trained_state: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(project="nsl-test", save_dir=str(tmp_path), offline=True)
    repair = ShapleyRepair("prune", heldout_size=300, **HELPS)
    model, _, pre = repair_fit(tmp_path, trained_state, repair, logger=logger)
    accuracy = rows(repair)["accuracy"]
    assert accuracy["after"] > accuracy["before"]  # the held-out numbers the decision rests on
    assert repair.description == f"pruned 1 culprits of accuracy (leave_one_out values): {[PLANTED]}"
    assert repair.outcome == "kept"
    assert repair.reason.startswith(f"accuracy improved {accuracy['before']:.4f} -> {accuracy['after']:.4f}")
    # Kept: the model is the pruned one, and the weights file holds exactly it.
    assert not all(torch.equal(v, pre[k]) for k, v in model.state_dict().items())
    assert repair.model_path == tmp_path / "neuron_shapley" / "repaired_model.pt"
    saved = torch.load(repair.model_path, weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    text = (tmp_path / "neuron_shapley" / "repair.md").read_text()
    assert f"Outcome: kept: {repair.reason}." in text and str(repair.model_path) in text
    assert "the keep/roll-back decision used these same examples" in text
    # The outcome reached W&B: summary strings and the kept scalar.
    run_dir = Path(logger.experiment.dir).parent
    logger.experiment.finish()
    records = inspect_wandb(run_dir)
    summary = {}
    for record in records:
        if record.get("type") == "summary":
            summary.update(record["summary"].get("update", {}))
    assert summary["repair/outcome"] == "kept" and summary["repair/reason"] == repair.reason
    assert summary["repair/kept"] == 1.0
    assert summary["repair/decision._type"] == "table-file"  # outcome, reason and weights as a W&B table
    # Undo: bit for bit the model from before the repair; a second undo changes nothing.
    repair.undo()
    assert repair.undone
    assert_state(model, pre)
    repair.undo()
    assert_state(model, pre)


def test_repair_that_hurts_is_rolled_back_bitwise_and_says_so(tmp_path: Path, trained_state: dict) -> None:
    stale = tmp_path / "neuron_shapley" / "repaired_model.pt"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an earlier run's weights")
    logger = CSVLogger(tmp_path, name="csv")
    repair = ShapleyRepair("prune", heldout_size=300, **HURTS)
    model, _, pre = repair_fit(tmp_path, trained_state, repair, logger=logger)
    accuracy = rows(repair)["accuracy"]
    assert accuracy["before"] - accuracy["after"] > 0.01  # pruning the most helpful filters cost accuracy
    assert repair.outcome == "rolled back"
    drop = accuracy["before"] - accuracy["after"]
    assert (
        f"accuracy fell by {drop:.4f} ({accuracy['before']:.4f} -> {accuracy['after']:.4f}), more than "
        "max_accuracy_drop=0.01" in repair.reason
    )
    assert_state(model, pre)  # the unrepaired model, bit for bit
    assert repair.model_path is None and not stale.exists()
    text = (tmp_path / "neuron_shapley" / "repair.md").read_text()
    assert "Outcome: rolled back: accuracy did not improve" in text and "no repaired_model.pt written" in text
    # The outcome reached the CSV logger (written although the logger was finalized before fit end).
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        logged = [r for r in csv.DictReader(f) if r.get("repair/kept")]
    assert [float(r["repair/kept"]) for r in logged] == [0.0]
    repair.undo()  # nothing to undo: the model already is the pre-repair one
    assert not repair.undone
    assert_state(model, pre)


def test_min_improvement_decides(tmp_path: Path, trained_state: dict) -> None:
    # The same pruning that is kept by default: asking for a gain it cannot reach rolls it back.
    strict = ShapleyRepair("prune", heldout_size=300, min_improvement=0.5, **HELPS)
    model, _, pre = repair_fit(tmp_path / "strict", trained_state, strict)
    accuracy = rows(strict)["accuracy"]
    assert 0 < accuracy["after"] - accuracy["before"] <= 0.5
    assert strict.outcome == "rolled back" and "did not improve by more than min_improvement=0.5" in strict.reason
    assert_state(model, pre)


def test_checks_switched_off_keep_a_pruning_that_hurts(tmp_path: Path, trained_state: dict) -> None:
    unchecked = ShapleyRepair("prune", heldout_size=300, min_improvement=None, max_accuracy_drop=None, **HURTS)
    model, _, pre = repair_fit(tmp_path / "unchecked", trained_state, unchecked)
    assert unchecked.outcome == "kept" and "no check was asked for" in unchecked.reason
    assert not all(torch.equal(v, pre[k]) for k, v in model.state_dict().items())


def test_apply_false_reports_only_and_restores(tmp_path: Path, trained_state: dict) -> None:
    # Measured, restored, and the reason says what the check would have done.
    report = ShapleyRepair("prune", heldout_size=300, apply=False, **HURTS)
    model, _, pre = repair_fit(tmp_path / "report", trained_state, report)
    assert report.outcome == "reported only"
    assert "the check would have rolled it back: " in report.reason and "accuracy fell by" in report.reason
    assert_state(model, pre)
    assert not (tmp_path / "report" / "neuron_shapley" / "repaired_model.pt").exists()


def test_physical_removal_shrinks_the_model_tests_and_undoes_to_the_original_shapes(
    tmp_path: Path, trained_state: dict
) -> None:
    repair = ShapleyRepair("prune", heldout_size=300, physical=True, **HELPS)
    model, trainer, pre = repair_fit(tmp_path, trained_state, repair)
    assert repair.outcome == "kept", repair.reason
    n_before = sum(v.numel() for k, v in pre.items() if not k.endswith(("running_mean", "running_var", "tracked")))
    n_after = sum(p.numel() for p in model.parameters())
    assert n_after < n_before
    widths = [model.net.features[i].out_channels for i in (0, 3, 7)]
    assert widths == [4, 6, 7]
    expected = f"physically removed 1 culprits of accuracy (leave_one_out values): {[PLANTED]}"
    assert repair.description.startswith(expected)
    # The smaller model still runs through Lightning, and gives the accuracy the check measured.
    (metrics,) = trainer.test(model, DigitsDataModule(batch_size=64), verbose=False)
    assert metrics["test/acc"] == pytest.approx(rows(repair)["accuracy"]["after"], abs=1e-6)
    saved = torch.load(repair.model_path, weights_only=True)
    assert saved["net.features.0.weight"].shape[0] == widths[0]  # the file holds the pruned shapes
    repair.undo()
    assert_state(model, pre)  # original shapes and values, bit for bit
    assert [model.net.features[i].out_channels for i in (0, 3, 7)] == list(CHANNELS)
    (metrics,) = trainer.test(model, DigitsDataModule(batch_size=64), verbose=False)
    assert metrics["test/acc"] == pytest.approx(rows(repair)["accuracy"]["before"], abs=1e-6)


def test_refused_physical_removal_leaves_the_model_and_says_why(tmp_path: Path, trained_state: dict) -> None:
    # Every filter of the first layer is a culprit: removing them all would remove the layer.
    repair = ShapleyRepair("prune", heldout_size=300, physical=True, k=4, only_signed=False)
    L.seed_everything(0, verbose=False)
    model = Classifier(SmallCNN(channels=CHANNELS))
    model.load_state_dict(trained_state)
    pre = PreRepair()
    trainer = quiet_trainer(1, limit_train_batches=1, limit_val_batches=1, default_root_dir=tmp_path, callbacks=[
        NeuronShapley("accuracy", layers="net.features.0", top_k=3, **FAST), pre, repair])
    REFUSED = r"physical removal of 4 culprits of accuracy \(leave_one_out values\) refused: cannot physically"
    with pytest.warns(UserWarning, match=REFUSED):
        trainer.fit(model, DigitsDataModule(batch_size=64))
    assert repair.outcome == "unchanged"  # nothing was changed, so nothing was rolled back
    assert repair.reason.startswith(
        "nothing to repair: physical removal of 4 culprits of accuracy (leave_one_out values) refused")
    assert_state(model, pre.state)


class BeforeFinetuning(L.Callback):
    """The weights when the last epoch (the fine-tuning) starts."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == trainer.max_epochs - 1:
            self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def test_guided_dropout_roll_back_restores_the_weights_from_before_the_fine_tuning(
    tmp_path: Path, trained_state: dict
) -> None:
    repair = ShapleyRepair("guided_dropout", epochs=1, p=0.3, heldout_size=300, min_improvement=0.5)
    before = BeforeFinetuning()
    L.seed_everything(0, verbose=False)
    model = Classifier(SmallCNN(channels=CHANNELS))
    model.load_state_dict(trained_state)
    trainer = quiet_trainer(2, limit_train_batches=2, limit_val_batches=1, default_root_dir=tmp_path,
                            callbacks=[NeuronShapley("accuracy", **FAST), before, repair])
    trainer.fit(model, DigitsDataModule(batch_size=64))
    assert repair.dropout is not None and repair.dropout.seen > 0  # it did fine-tune
    assert repair.outcome == "rolled back" and "min_improvement=0.5" in repair.reason
    assert_state(model, before.state)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_improvement": "0.1"}, r"min_improvement='0\.1' is not accepted; use None or a number"),
        ({"max_accuracy_drop": -0.1}, r"max_accuracy_drop=-0\.1 is not accepted; use None or a number in \[0, 1\]"),
        ({"max_accuracy_drop": 2}, r"max_accuracy_drop=2 is not accepted"),
        ({"physical": "yes"}, r"physical='yes' is not accepted; use True or False"),
    ],
)
def test_bad_check_options_fail_at_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ShapleyRepair("prune", **kwargs)


def test_undo_before_the_repair_ran_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match=r"has not run yet \(outcome=None\)"):
        ShapleyRepair("prune").undo()
