"""Small training helpers shared by experiments and tests: a quiet Trainer and the default digits model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L

from nsl.data import DigitsDataModule
from nsl.models import Classifier, SmallCNN


def quiet_trainer(max_epochs: int, **overrides: Any) -> L.Trainer:
    """A CPU Trainer without logger, checkpoints, progress bar or model summary (``overrides`` win)."""
    options: dict[str, Any] = {
        "max_epochs": max_epochs,
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    options.update(overrides)
    return L.Trainer(**options)


def train_digits_model(epochs: int = 15, seed: int = 0, channels: Sequence[int] = (24, 32, 48)) -> Classifier:
    """The default digits classifier (``SmallCNN``), trained with a real Trainer and returned in eval mode."""
    L.seed_everything(seed, verbose=False)
    model = Classifier(SmallCNN(channels))
    quiet_trainer(epochs).fit(model, DigitsDataModule(seed=seed))
    return model.eval()
