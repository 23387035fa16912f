"""AutoModelCheckpoint: the monitored metric follows what the module logs, and a missing one fails early."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader, TensorDataset

from nsl.checkpoint import AutoModelCheckpoint


class Logs(L.LightningModule):
    """A linear classifier that logs exactly the validation keys it is given (value: accuracy or loss)."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        super().__init__()
        self.keys = keys
        self.layer = torch.nn.Linear(4, 2)
        self.training_steps = 0

    def training_step(self, batch, batch_idx):
        self.training_steps += 1
        x, y = batch
        return torch.nn.functional.cross_entropy(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.layer(x)
        for key in self.keys:
            value = torch.nn.functional.cross_entropy(logits, y) if "loss" in key else (logits.argmax(1) == y).float()
            self.log(key, value.mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=8)


def fit(tmp_path: Path, module: Logs, ckpt: AutoModelCheckpoint, **trainer: object) -> L.Trainer:
    t = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, callbacks=[ckpt], enable_progress_bar=False,
                  enable_model_summary=False, default_root_dir=tmp_path, **trainer)
    t.fit(module, loader(), loader())
    return t


@pytest.mark.parametrize(
    ("keys", "monitor", "mode"),
    [
        (("val/loss", "val/acc"), "val/acc", "max"),
        (("val_loss", "val_acc"), "val_acc", "max"),
        (("val_accuracy", "val/loss"), "val_accuracy", "max"),
        (("val_loss",), "val_loss", "min"),
    ],
)
def test_auto_monitors_the_first_candidate_the_module_logs(
    tmp_path: Path, keys: tuple[str, ...], monitor: str, mode: str
) -> None:
    ckpt = AutoModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=1)
    assert ckpt.monitor == "auto"
    fit(tmp_path, Logs(keys), ckpt)
    assert (ckpt.monitor, ckpt.mode) == (monitor, mode)
    assert Path(ckpt.best_model_path).exists() and ckpt.best_model_score is not None  # ranked by that metric


def test_no_candidate_fails_before_the_first_training_step(tmp_path: Path) -> None:
    module = Logs(("val/f1",))
    with pytest.raises(MisconfigurationException, match=r"logged none of .*'val_acc'.*it logged \['val/f1'\]"):
        fit(tmp_path, module, AutoModelCheckpoint(dirpath=tmp_path))
    assert module.training_steps == 0  # decided at the sanity check


def test_without_sanity_check_it_decides_after_the_first_epoch(tmp_path: Path) -> None:
    module = Logs(("val/f1",))
    with pytest.raises(MisconfigurationException, match=r"it logged \['val/f1'\]"):
        fit(tmp_path, module, AutoModelCheckpoint(dirpath=tmp_path), num_sanity_val_steps=0)
    assert module.training_steps == 4  # one epoch of 4 batches, then the first validation decides
    assert not list(tmp_path.glob("*.ckpt"))  # nothing was compared or saved with a wrong monitor

    ok = AutoModelCheckpoint(dirpath=tmp_path / "ok")
    fit(tmp_path, Logs(("val_loss",)), ok, num_sanity_val_steps=0)
    assert (ok.monitor, ok.mode) == ("val_loss", "min") and ok.best_model_path


def test_a_named_metric_is_checked_early_and_its_mode_follows_its_name(tmp_path: Path) -> None:
    module = Logs(("val_acc",))
    with pytest.raises(MisconfigurationException, match=r"does not log 'val/f1'; it logged \['val_acc'\]"):
        fit(tmp_path, module, AutoModelCheckpoint(dirpath=tmp_path, monitor="val/f1"))
    assert module.training_steps == 0
    named = AutoModelCheckpoint(dirpath=tmp_path / "a", monitor="val_loss")
    fit(tmp_path, Logs(("val_loss", "val_acc")), named)
    assert (named.monitor, named.mode) == ("val_loss", "min")
    explicit = AutoModelCheckpoint(dirpath=tmp_path / "b", monitor="val_acc", mode="min")
    fit(tmp_path, Logs(("val_acc",)), explicit)
    assert explicit.mode == "min"


def test_monitor_none_keeps_only_the_last_checkpoint(tmp_path: Path) -> None:
    ckpt = AutoModelCheckpoint(dirpath=tmp_path / "ckpt", monitor=None, save_last=True)
    fit(tmp_path, Logs(("val/f1",)), ckpt)  # no candidate logged, and none needed
    assert ckpt.monitor is None and (tmp_path / "ckpt" / "last.ckpt").exists()


def test_bad_arguments_name_the_value_and_what_is_accepted() -> None:
    with pytest.raises(MisconfigurationException, match=r"mode='best'.*auto, min, max"):
        AutoModelCheckpoint(mode="best")
    with pytest.raises(MisconfigurationException, match=r"monitor=''"):
        AutoModelCheckpoint(monitor="")
    with pytest.raises(MisconfigurationException, match=r"\('val_acc', 'up'\)"):
        AutoModelCheckpoint(candidates=[("val_acc", "up")])


def test_resume_keeps_the_chosen_metric_and_its_best_score(tmp_path: Path) -> None:
    first = AutoModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    fit(tmp_path, Logs(("val_loss",)), first)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["callbacks"]
    fresh = AutoModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    assert fresh.monitor == "auto" and fresh.state_key in saved  # the key does not change when the monitor resolves
    fresh.load_state_dict(saved[fresh.state_key])
    assert (fresh.monitor, fresh.mode, fresh.resolved) == ("val_loss", "min", True)
    assert fresh.best_model_score == first.best_model_score and fresh.best_model_path == first.best_model_path

    resumed = AutoModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    t = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, callbacks=[resumed], enable_progress_bar=False,
                  enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0)
    t.fit(Logs(("val_loss",)), loader(), loader(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert (resumed.monitor, resumed.mode) == ("val_loss", "min")
    assert float(resumed.best_model_score) <= float(first.best_model_score)  # compared with the restored best
