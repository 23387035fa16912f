"""A user's own LightningModule as it arrives: a depthwise conv, a residual block, dict batches, synthetic data."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from conftest import quiet_trainer


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: these tiny convolutions are many times slower when two threads contend for busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class UserNet(L.LightningModule):
    """Stem conv + BatchNorm, a depthwise conv, a residual conv and a Linear head (28 filters, ``n_classes``
    logits); ``unpack`` reads a batch the way this user's batches are laid out."""

    def __init__(self, n_classes: int = 4, unpack: Callable[[Any], tuple[Tensor, Tensor]] | None = None) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.block = nn.Conv2d(8, 12, 3, padding=1)
        self.skip = nn.Conv2d(8, 12, 1)
        self.head = nn.Linear(12, n_classes)
        self.unpack = unpack or (lambda batch: (batch["image"], batch["label"]))
        self.optimizer_steps = 0

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn(self.stem(x)))
        h = F.relu(self.depthwise(h))
        h = F.relu(self.block(h)) + self.skip(h)  # the residual block
        return self.head(h.mean(dim=(2, 3)))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = self.unpack(batch)
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = self.unpack(batch)
        self.log("val_loss", F.cross_entropy(self(x), y))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer_steps += 1

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def synthetic(n: int, n_classes: int = 4, seed: int = 0) -> tuple[Tensor, Tensor]:
    """3×16×16 images whose class shifts the mean of one colour channel (learnable in a few steps)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % n_classes
    x = torch.randn(n, 3, 16, 16, generator=g) * 0.5
    x[:, 0] += y.view(-1, 1, 1).float() - n_classes / 2
    return x, y


class Records(Dataset):
    """Examples as records (dicts or tuples) built by ``make(x, y, g)`` from aligned tensors."""

    def __init__(self, x: Tensor, y: Tensor, make: Callable[..., Any], groups: Tensor | None = None) -> None:
        self.x, self.y, self.groups, self.make = x, y, groups, make

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> Any:
        return self.make(self.x[i], self.y[i], None if self.groups is None else self.groups[i])


def as_dict(x: Tensor, y: Tensor, g: Tensor | None) -> dict[str, Tensor]:
    return {"image": x, "label": y} if g is None else {"image": x, "label": y, "group": g}


def loaders(
    make: Callable[..., Any] = as_dict, n_train: int = 64, n_val: int = 32, val: tuple | None = None,
    groups: Tensor | None = None,
) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders over synthetic data (``val`` replaces the validation tensors)."""
    train = Records(*synthetic(n_train), make)
    xv, yv = val if val is not None else synthetic(n_val, seed=1)
    return DataLoader(train, batch_size=16), DataLoader(Records(xv, yv, make, groups), batch_size=16)


def user_trainer(tmp_path: Any, callbacks: list, epochs: int = 2, **kwargs: Any) -> L.Trainer:
    return quiet_trainer(epochs, default_root_dir=tmp_path, callbacks=callbacks, **kwargs)
