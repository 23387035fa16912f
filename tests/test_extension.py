"""Extending nsl from outside the package: one file registers a game and an estimator, one YAML chooses them.

The extension (examples/extension) runs through the NeuronShapley callback in this process and through the
real ``nsl-train`` app in a subprocess, composed from its one config file.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import lightning as L
import pytest
import torch

from conftest import quiet_trainer
from nsl import ESTIMATORS, GAMES, NeuronShapley, ShapleyRepair, ShapleyResult
from nsl.data import FairDigitsDataModule
from nsl.models import Classifier, SmallCNN

ROOT = Path(__file__).resolve().parents[1]
EXTENSION = ROOT / "examples" / "extension"
TINY = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=4",
    "trainer.enable_progress_bar=false",
    "callbacks.neuron_shapley.eval_size=64",
    "callbacks.neuron_shapley.curve_steps=3",
    "callbacks.shapley_repair.k=2",
    "model.net.channels=[4,6,8]",
]


@pytest.fixture
def extension(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The extension module, imported from its folder; its registrations are undone afterwards."""
    monkeypatch.syspath_prepend(str(EXTENSION))
    assert "confidence" not in GAMES and "leave_one_out" not in ESTIMATORS
    module = importlib.import_module("my_extension")
    try:
        yield module
    finally:
        GAMES.unregister("confidence")
        ESTIMATORS.unregister("leave_one_out")
        sys.modules.pop("my_extension", None)


def test_registered_game_and_estimator_run_through_the_callback(tmp_path: Path, extension: ModuleType) -> None:
    shapley = NeuronShapley(games=["confidence", "fairness"], estimator="leave_one_out", top_k=3, eval_size=64,
                            curve_steps=3, verbose=False)
    repair = ShapleyRepair("prune", game="confidence", k=2, only_signed=False, heldout_size=100)
    L.seed_everything(0, verbose=False)
    model = Classifier(SmallCNN(channels=(4, 6, 8)))

    class TrueClassProbability(L.Callback):
        """The analysed model's mean probability of the true class, recomputed without nsl."""

        def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            data = shapley.evaluation_data(trainer)
            with torch.no_grad():
                probs = pl_module.eval()(data.inputs).softmax(-1)
            self.value = float(probs.gather(1, data.targets[:, None]).mean())

    check = TrueClassProbability()
    trainer = quiet_trainer(1, limit_train_batches=4, default_root_dir=tmp_path, callbacks=[shapley, check, repair])
    trainer.fit(model, FairDigitsDataModule())
    result = shapley.results["confidence"]
    assert result.method == "leave_one_out" and result.n_evals == 18 + 1  # N + 1 coalitions, no more
    # The callback passed its top_k and the filter names to the estimator.
    assert len(result.top_k) == 3 and result.names[0] == "net.features.0:0"
    # The value is the game's own: the mean probability of the true class of the analysed model.
    assert result.full_value == pytest.approx(check.value, abs=1e-6)
    # The culprits come from the class's declaration (negative values), and the repair pruned them.
    assert shapley.history["confidence"][-1]["culprits"] == result.culprits(negative=True).tolist()
    assert {r["metric"] for r in repair.report} == {"accuracy", "confidence", "fairness"}
    assert "pruned 2 culprits of confidence" in (tmp_path / "neuron_shapley" / "repair.md").read_text()


def test_registered_game_and_estimator_run_through_nsl_train_with_one_config_file(tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "NSL_ROOT": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(EXTENSION), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "nsl.train", "--config-dir", str(EXTENSION / "conf"), "experiment=my_extension",
           "logger=csv", *TINY]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "my_extension" / "runs").iterdir()  # task_name from the config file
    saved = ShapleyResult.load(run / "neuron_shapley" / "confidence.pt")
    assert saved.method == "leave_one_out" and saved.n_evals == 19
    assert ShapleyResult.load(run / "neuron_shapley" / "accuracy.pt").method == "leave_one_out"
    assert "confidence: leave_one_out converged=True, 19 evaluations" in proc.stdout
    report = (run / "neuron_shapley" / "repair.md").read_text()
    assert "pruned 2 culprits of confidence" in report and "| confidence |" in report
