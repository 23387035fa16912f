"""Shared fixtures: a small CNN really trained on the embedded digits data, and helpers to snapshot a model."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from torch import nn

from nsl.data import DigitsDataModule, load_digits_tensors

# Tests never reach W&B's servers, whatever the shell says: every run is an offline run read back from disk.
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
from nsl.models import Classifier, SmallCNN
from nsl.train import QUIET


def quiet_trainer(max_epochs: int = 1, **overrides) -> L.Trainer:
    """A real CPU Trainer without logger, checkpoints, progress bar or model summary (``overrides`` win)."""
    return L.Trainer(**{"max_epochs": max_epochs, "accelerator": "cpu", **QUIET, **overrides})


@pytest.fixture(scope="session")
def trained_model() -> Classifier:
    """A digits classifier trained for a few epochs with a real Lightning Trainer (about 2 s)."""
    L.seed_everything(0, verbose=False)
    model = Classifier(SmallCNN(channels=(8, 12, 16)))
    quiet_trainer(6).fit(model, DigitsDataModule(batch_size=64))
    return model.eval()


@pytest.fixture
def model(trained_model: Classifier) -> Classifier:
    """A fresh copy per test, so no test can leak changes into another."""
    return copy.deepcopy(trained_model)


@pytest.fixture(scope="session")
def digits_val() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits_tensors("val", val_size=200)
    return x, y


def snapshot(model: nn.Module) -> dict:
    """Everything an analysis must leave untouched: tensors bit for bit, hooks, modes, grads."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "modes": [m.training for m in model.modules()],
        "hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()
        ],
        "grads": [p.grad is None for p in model.parameters()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), f"{key} changed"
    assert after["modes"] == before["modes"], "a module's train/eval mode changed"
    assert after["hooks"] == before["hooks"], "hooks were left on the model"
    assert after["grads"] == before["grads"], "parameter gradients were touched"
    assert after["requires_grad"] == before["requires_grad"]


def inspect_wandb(run_dir: Path, attempts: int = 40) -> list[dict]:
    """The records of an offline W&B run, read back with ``wandb leet inspect --json``.

    The W&B service may still be closing the run file for a moment after the run finished, so a failed read
    is retried for a few seconds before it counts.
    """
    wandb = Path(sys.executable).parent / "wandb"
    for attempt in range(attempts):
        proc = subprocess.run([str(wandb), "leet", "inspect", str(run_dir), "--json"], capture_output=True, text=True)
        if proc.returncode == 0:
            return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
        if attempt + 1 < attempts:
            time.sleep(0.5)
    raise AssertionError(f"wandb leet inspect {run_dir} failed: {proc.stderr[-2000:]}")


# nsl-train overrides for a seconds-long run (one epoch of four batches, a small CNN, a short analysis).
TINY_TRAIN = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=4",
    "trainer.enable_progress_bar=false",
    "callbacks.neuron_shapley.max_evals=60",
    "callbacks.neuron_shapley.eval_size=64",
    "callbacks.neuron_shapley.curve_steps=3",
    "model.net.channels=[4,6,8]",
]


def compose_train(tmp_path: Path, overrides: list[str]) -> DictConfig:
    """The ``nsl-train`` config with ``overrides``, writing under ``tmp_path``, with Hydra's runtime config set as
    the app would have it (so ``train(cfg)`` runs as ``nsl-train`` does)."""
    GlobalHydra.instance().clear()
    with initialize_config_module("nsl.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.hydra.runtime.output_dir = str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    return cfg
