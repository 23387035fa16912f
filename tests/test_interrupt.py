"""Ctrl-C in the middle of a game keeps every completed evaluation's samples, saves them and says so everywhere."""

from __future__ import annotations

import csv
import logging
import signal
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import WandbLogger
from resnet_user import LAYER4, ResNetUser, resnet_loaders, resnet_trainer
from user_model import one_thread

from conftest import inspect_wandb
from nsl import NeuronShapley, ShapleyResult

pytestmark = pytest.mark.usefixtures(one_thread.__name__)
RANK_ZERO = "lightning.pytorch.utilities.rank_zero"
BATCH = 64  # rows per call: the first removal scan (2,048 rows) takes 32 calls, so Ctrl-C lands inside it


class CtrlCDuringAnalysis(L.Callback):
    """When training ends (before the analysis, which is listed after it), arm a hook on the model's head that
    presses Ctrl-C at its ``at``-th forward pass: a real SIGINT to this process, or the KeyboardInterrupt that
    Python raises where no handler takes the signal."""

    def __init__(self, at: int, how: str) -> None:
        self.at, self.how, self.calls = at, how, 0

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        def press(module: torch.nn.Module, inputs: object, output: object) -> None:
            self.calls += 1
            if self.calls == self.at:
                if self.how == "signal":
                    signal.raise_signal(signal.SIGINT)
                else:
                    raise KeyboardInterrupt

        pl_module.net.fc.register_forward_hook(press)


@pytest.fixture
def restore_sigint() -> Iterator[None]:
    """Lightning ignores SIGINT once it has handled a KeyboardInterrupt; give later tests Python's handler back."""
    yield
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.mark.usefixtures(restore_sigint.__name__)
@pytest.mark.parametrize("how", ["signal", "exception"])
def test_ctrl_c_in_a_game_keeps_its_samples_saves_them_and_marks_them(
    how: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    caplog.set_level(logging.INFO, logger=RANK_ZERO)
    torch.manual_seed(0)
    wandb = WandbLogger(project="nsl-test", save_dir=str(tmp_path), offline=True)
    cb = NeuronShapley(games=["accuracy", "class"], layers=LAYER4, eval_size=32, max_seconds=120,
                       estimator_kwargs={"batch_size": BATCH})
    press = CtrlCDuringAnalysis(at=12, how=how)
    trainer = resnet_trainer(tmp_path, [press, cb], logger=wandb)
    with pytest.raises(SystemExit):  # Lightning stops the process after a KeyboardInterrupt
        trainer.fit(ResNetUser(), *resnet_loaders())
    run_dir = Path(wandb.experiment.dir).parent
    wandb.experiment.finish()
    # The samples of every call completed inside the first removal scan are kept (at most one sample per filter:
    # the scan never finished), where a dropped step left every count at 0.
    result = cb.results["accuracy"]
    assert result.interrupted and not result.converged
    assert int(result.counts.max()) == 1 and int(result.counts.sum()) >= 5 * BATCH
    assert result.n_rows > 2 * 32 and "interrupted by Ctrl-C" in result.note
    # Saved: the result file, the CSV (with an interrupted column) and the analysis checkpoint.
    out = tmp_path / "neuron_shapley"
    saved = ShapleyResult.load(out / "accuracy.pt")
    assert saved.interrupted and torch.equal(saved.counts, result.counts)
    with open(out / "accuracy.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2048 and all(row["interrupted"] == "True" for row in rows)
    assert sum(int(row["samples"]) for row in rows) == int(result.counts.sum())
    checkpoint = torch.load(out / "fit_end.ckpt", weights_only=True)
    state = checkpoint["callbacks"][cb.state_key]["results"]["accuracy"]
    assert state["interrupted"] and torch.equal(state["counts"], result.counts)
    # The later game was not played, and a line says so; nothing of it was saved.
    assert "class" not in cb.results and not list(out.glob("class*"))
    said = [r.getMessage() for r in caplog.records if "Ctrl-C: game 'accuracy' stopped after" in r.getMessage()]
    assert said and "Not played: 'class'" in said[0] and "marked interrupted" in said[0]
    # W&B's summary marks the run's result as interrupted.
    summary: dict = {}
    for record in inspect_wandb(run_dir):
        if record.get("type") == "history":
            summary.update(record["history"]["item"])
    assert summary["shapley/accuracy/interrupted"] == 1
