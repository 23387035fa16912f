"""The NeuronShapley callback with a real Trainer, real torchmetrics games and a real offline W&B run."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from conftest import inspect_wandb, quiet_trainer
from nsl import NeuronShapley, ShapleyRepair, ShapleyResult
from nsl.data import DigitsDataModule, FairDigitsDataModule
from nsl.models import Classifier, SmallCNN

FAST = {"max_evals": 120, "eval_size": 64, "verbose": False, "curve_steps": 5}


def make_trainer(tmp_path: Path, callbacks: list, epochs: int = 2, **kwargs) -> L.Trainer:
    return quiet_trainer(epochs, **{"default_root_dir": tmp_path, "limit_train_batches": 8, **kwargs},
                         callbacks=callbacks)


def fit(tmp_path: Path, callbacks: list, epochs: int = 2, datamodule=None, **kwargs) -> Classifier:
    L.seed_everything(0, verbose=False)
    model = Classifier(SmallCNN(channels=(6, 8, 10)))
    trainer = make_trainer(tmp_path, callbacks, epochs, **kwargs)
    trainer.fit(model, datamodule or DigitsDataModule())
    model.rng_after_fit = torch.random.get_rng_state()
    model.fitted_by = trainer
    return model


def test_fit_runs_games_on_schedule_and_saves_results(tmp_path: Path) -> None:
    cb = NeuronShapley(games=["accuracy", {"kind": "class", "class_index": 3}], every_n_epochs=2, **FAST)
    fit(tmp_path, [cb], epochs=3)
    assert set(cb.results) == {"accuracy", "class_3"}
    # Epochs 0 and 2 on the schedule, then fit end.
    assert [h["epoch"] for h in cb.history["accuracy"]] == [0, 2, 3]
    assert [h["stage"] for h in cb.history["accuracy"]] == ["epoch", "epoch", "fit_end"]
    result = cb.results["accuracy"]
    assert len(result.values) == 24 and result.names[0] == "net.features.0:0"
    assert result.n_evals >= 120  # the budget was used (a budgeted run stops at the first scan past it)
    saved = ShapleyResult.load(tmp_path / "neuron_shapley" / "accuracy.pt")
    assert torch.equal(saved.values, result.values) and saved.names == result.names
    csv_rows = (tmp_path / "neuron_shapley" / "class_3.csv").read_text().splitlines()
    assert csv_rows[0] == "rank,filter,layer,value,stderr,samples,status" and len(csv_rows) == 25
    assert set(cb.curves) == {"accuracy", "class_3"}
    assert cb.curves["accuracy"]["removed"] == list(range(6))


def test_start_epoch_fraction_and_sanity_check_skipped(tmp_path: Path) -> None:
    cb = NeuronShapley(games="accuracy", every_n_epochs=1, start_epoch=0.5, at_fit_end=False, **FAST)
    fit(tmp_path, [cb], epochs=4, num_sanity_val_steps=2)
    assert [h["epoch"] for h in cb.history["accuracy"]] == [2, 3]


def test_analysis_only_training_is_bitwise_identical(tmp_path: Path) -> None:
    plain = fit(tmp_path / "a", [], epochs=3)
    cb = NeuronShapley(
        games=["accuracy", {"kind": "adversarial", "attack": "fgsm"}], every_n_epochs=1, removal_curve=True, **FAST
    )
    analysed = fit(tmp_path / "b", [cb], epochs=3)
    assert len(cb.history["adversarial"]) == 4
    for (key, a), b in zip(plain.state_dict().items(), analysed.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"{key} differs after training with the analysis-only callback"
    assert all(not m._forward_hooks for m in analysed.modules())
    # And the global RNG stream after training is where it would have been.
    assert torch.equal(plain.rng_after_fit, analysed.rng_after_fit)


def test_rng_untouched_by_a_run(tmp_path: Path) -> None:
    cb = NeuronShapley(games=["accuracy", "adversarial"], at_fit_end=False, every_n_epochs=1, **FAST)
    model = fit(tmp_path, [cb], epochs=1)
    state = torch.random.get_rng_state()
    cb.run(model.fitted_by, model)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert len(cb.history["adversarial"]) == 2


def test_wandb_run_read_back_matches_saved_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(project="nsl-test", save_dir=str(tmp_path), offline=True)
    cb = NeuronShapley(games="accuracy", top_k=5, interactions=4, **FAST)
    fit(tmp_path, [cb], epochs=3, logger=logger, limit_train_batches=None)
    run_dir = Path(logger.experiment.dir).parent
    logger.experiment.finish()
    history = {}
    for record in inspect_wandb(run_dir):
        if record.get("type") == "history":
            history.update(record["history"]["item"])
    result = ShapleyResult.load(tmp_path / "neuron_shapley" / "accuracy.pt")
    assert float(result.values.max()) > float(result.values.min())
    # Histogram: every filter counted, bins spanning the saved values.
    assert history["shapley/accuracy/values._type"] == "histogram"
    assert sum(history["shapley/accuracy/values.values"]) == len(result.values)
    bins = history["shapley/accuracy/values.bins"]
    assert bins[0] == pytest.approx(float(result.values.min()))
    assert bins[-1] == pytest.approx(float(result.values.max()))
    # Table: the top-5 rows, as saved.
    table_path = run_dir / "files" / history["shapley/accuracy/top_k.path"]
    table = json.loads(table_path.read_text())
    assert table["columns"] == ["rank", "filter", "layer", "value", "stderr", "samples"]
    assert [row[1] for row in table["data"]] == [result.names[i] for i in result.top_k[:5].tolist()]
    assert [row[3] for row in table["data"]] == pytest.approx(result.values[result.top_k[:5]].tolist())
    assert history["shapley/accuracy/n_evals"] == result.n_evals
    assert history["shapley/accuracy/removal_curve._type"] == "image-file"
    assert history["shapley/accuracy/interactions._type"] == "image-file"
    matrix = cb.interaction_matrices["accuracy"]
    assert matrix.names == [result.names[i] for i in result.top_k[:4].tolist()] and matrix.matrix.shape == (4, 4)


@pytest.mark.parametrize("kind", ["csv", "tensorboard", "none"])
def test_other_loggers_and_no_logger(tmp_path: Path, kind: str) -> None:
    logger = {"csv": CSVLogger(tmp_path), "tensorboard": TensorBoardLogger(tmp_path), "none": False}[kind]
    cb = NeuronShapley(games="accuracy", **FAST)
    fit(tmp_path, [cb], epochs=1, logger=logger)
    assert "accuracy" in cb.results
    if kind == "csv":
        logger.save()
        text = (Path(logger.log_dir) / "metrics.csv").read_text()
        assert "shapley/accuracy/top1_value" in text
    if kind == "tensorboard":
        assert list(Path(logger.log_dir).glob("events.out.tfevents.*"))


def test_resume_from_checkpoint_keeps_statistics(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=-1, every_n_epochs=1)
    # accumulate=1.0 resumes the old statistics as they are (True would count them at half weight).
    options = {"estimator": "monte_carlo", "estimator_kwargs": {"n_permutations": 3}, "accumulate": 1.0}
    cb = NeuronShapley(games="accuracy", every_n_epochs=1, at_fit_end=False, **options, **FAST)
    fit(tmp_path, [cb, ckpt], epochs=2, enable_checkpointing=True)
    first = cb.results["accuracy"]
    assert cb.runs == 2
    # A new process would build a new callback: resume from the checkpoint of epoch 1 (its state saved there).
    resumed = NeuronShapley(games="accuracy", every_n_epochs=1, at_fit_end=False, **options, **FAST)
    L.seed_everything(0, verbose=False)
    model = Classifier(SmallCNN(channels=(6, 8, 10)))
    trainer = make_trainer(tmp_path, [resumed, ModelCheckpoint(dirpath=tmp_path / "ckpt2")], epochs=3,
                           enable_checkpointing=True)
    trainer.fit(model, DigitsDataModule(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert [h["epoch"] for h in resumed.history["accuracy"]] == [0, 1, 2]
    assert resumed.runs == 3
    # With accumulate=1.0 the third run continued from the checkpointed statistics: 3 permutations per run,
    # one sample per filter per permutation.
    assert torch.all(first.counts == 6)
    assert torch.all(resumed.results["accuracy"].counts == 9)
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)  # plain tensors and Python only


def test_fairness_game_uses_datamodule_groups_and_prune_repair(tmp_path: Path) -> None:
    cb = NeuronShapley(games=["accuracy", "fairness"], **FAST)
    # The self-check is switched off: this test is about pruning what the fairness data's analysis found.
    repair = ShapleyRepair("prune", game="accuracy", semivalue="shapley", k=3, only_signed=False,
                           min_improvement=None, max_accuracy_drop=None)
    model = fit(tmp_path, [repair, cb], epochs=2, datamodule=FairDigitsDataModule())  # order does not matter
    assert "fairness" in cb.results and repair.outcome == "kept"
    rows = {r["metric"]: r for r in repair.report}
    assert set(rows) == {"accuracy", "fairness"}
    pruned = cb.results["accuracy"].culprits(3, negative=True)
    # The pruned filters are exactly zero after their BatchNorm: its scale and shift are zeroed.
    bn_weights = torch.cat([m.weight for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert torch.all(bn_weights[pruned] == 0)
    assert "| accuracy |" in (tmp_path / "neuron_shapley" / "repair.md").read_text()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"games": ["accuracy", "bogus"]}, "unknown game kind 'bogus'"),
        ({"games": ["accuracy", "accuracy"]}, "must be distinct"),
        ({"top_k": 0}, "top_k=0"),
        ({"every_n_epochs": 0}, "every_n_epochs=0"),
        ({"start_epoch": 1.5}, "start_epoch=1.5"),
        ({"estimator": "sobol"}, "estimator='sobol'"),
        ({"every_n_epochs": None, "at_fit_end": False}, "never run"),
        ({"interactions": 13}, "interactions=13"),
        ({"accumulate": 0}, "accumulate=0 is not accepted; use a number in (0, 1"),
        ({"accumulate": 1.5}, "accumulate=1.5 is not accepted"),
        ({"save_checkpoint": "yes"}, "save_checkpoint='yes'"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        NeuronShapley(**kwargs)


def test_unknown_layer_pattern_fails_before_training(tmp_path: Path) -> None:
    cb = NeuronShapley(games="accuracy", layers="net.nothing*", **FAST)
    L.seed_everything(0, verbose=False)
    model = Classifier(SmallCNN(channels=(6, 8, 10)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"net\.nothing\*"):
        make_trainer(tmp_path, [cb]).fit(model, DigitsDataModule())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fairness_without_groups_is_a_clear_error(tmp_path: Path) -> None:
    cb = NeuronShapley(games="fairness", **FAST)
    with pytest.raises(ValueError, match="sensitive attribute"):
        fit(tmp_path, [cb], epochs=1)


def test_guided_dropout_repair_fine_tunes_the_last_epochs_of_the_fit(tmp_path: Path) -> None:
    cb = NeuronShapley(games="accuracy", **FAST)
    repair = ShapleyRepair("guided_dropout", epochs=1, p=0.2)
    L.seed_everything(0, verbose=False)
    model = Classifier(SmallCNN(channels=(6, 8, 10)))
    trainer = make_trainer(tmp_path, [cb, repair], epochs=2)

    class Snapshot(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.dropped = repair.dropout.dropped if repair.dropout is not None else 0

    snap = Snapshot()
    trainer.callbacks.append(snap)
    trainer.fit(model, DigitsDataModule())
    assert [r["metric"] for r in repair.report] == ["accuracy"]
    # The guiding analysis ran when the last epoch started (epoch 1), then the usual one at the end.
    assert [(h["epoch"], h["stage"]) for h in cb.history["accuracy"]] == [(1, "repair"), (2, "fit_end")]
    assert snap.dropped > 0 and not repair.dropout.hooked  # dropout only inside training steps of epoch 1
    assert all(not m._forward_hooks for m in model.modules())
    assert model.trainer is trainer  # the same fit did the fine-tuning: no second Trainer
    assert "filter dropout" in (tmp_path / "neuron_shapley" / "repair.md").read_text()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "melt"}, "repair method 'melt'"),
        ({"method": "prune", "p": 0.1},
         r"repair 'prune'.*'p'.*its options are \['k', 'negative', 'only_signed', 'physical', 'z'\]"),
        ({"method": "guided_dropout", "p": 1.0}, r"p=1\.0"),
        ({"method": "prune", "k": 0}, "k=0"),
        ({"heldout_size": 0}, "heldout_size=0"),
    ],
)
def test_bad_repair_arguments_fail_at_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ShapleyRepair(**kwargs)


def test_repair_of_an_unknown_game_or_too_short_a_fit_fails_before_training(tmp_path: Path) -> None:
    for repair, message in [
        (ShapleyRepair("prune", game="fairness"), "game 'fairness' is not one of"),
        (ShapleyRepair("guided_dropout", epochs=2), r"trainer.max_epochs=2 must be larger"),
    ]:
        L.seed_everything(0, verbose=False)
        model = Classifier(SmallCNN(channels=(6, 8, 10)))
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(Exception, match=message):
            make_trainer(tmp_path, [NeuronShapley("accuracy", **FAST), repair]).fit(model, DigitsDataModule())
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(Exception, match="the trainer has 0"):
        make_trainer(tmp_path, [ShapleyRepair()]).fit(Classifier(SmallCNN(channels=(6, 8, 10))), DigitsDataModule())


def test_guided_dropout_resumes_inside_the_fine_tuning(tmp_path: Path) -> None:
    def callbacks(folder: str) -> list:
        ckpt = ModelCheckpoint(dirpath=tmp_path / folder, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
        return [NeuronShapley(games="accuracy", **FAST), ShapleyRepair("guided_dropout", epochs=2, p=0.2), ckpt]

    first = callbacks("ckpt")
    fit(tmp_path, first, epochs=3, enable_checkpointing=True)
    probabilities = first[1].state_dict()["probabilities"]
    assert probabilities is not None and len(probabilities) == 24
    # Resume from the end of epoch 1, inside the fine-tuning that started with epoch 1.
    state = torch.load(tmp_path / "ckpt" / "epoch=1.ckpt", weights_only=True)  # plain tensors and Python only
    resumed = callbacks("ckpt2")
    L.seed_everything(0, verbose=False)
    trainer = make_trainer(tmp_path, resumed, epochs=3, enable_checkpointing=True)
    trainer.fit(Classifier(SmallCNN(channels=(6, 8, 10))), DigitsDataModule(),
                ckpt_path=str(tmp_path / "ckpt" / "epoch=1.ckpt"))
    shapley, repair = resumed[0], resumed[1]
    # No second guiding analysis: the fine-tuning continued with the checkpointed probabilities and stream.
    assert [h["stage"] for h in shapley.history["accuracy"]] == ["repair", "fit_end"]
    assert torch.equal(repair.state_dict()["probabilities"], probabilities)
    saved = next(v for k, v in state["callbacks"].items() if k.startswith("ShapleyRepair"))
    assert repair.dropout.seen > saved["dropout"]["seen"]  # it kept drawing masks in epoch 2
    assert [r["metric"] for r in repair.report] == ["accuracy"]
    assert repair.report[0]["before"] == first[1].report[0]["before"]  # measured once, before the fine-tuning
