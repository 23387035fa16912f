"""A user's ResNet as it arrives: torchvision's ResNet-18 adapted to small images, dict batches, generated data.

The players the issue's user chose, ``net.layer4.*conv*``, are 2,048 filters; one masked evaluation is slow enough
on a CPU (tens of milliseconds on 32 images) to show where an analysis spends its time.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torch.utils.data import DataLoader
from user_model import Records, as_dict

from conftest import quiet_trainer

LAYER4 = "net.layer4.*conv*"  # 4 convolutions of 512 filters


class ResNetUser(L.LightningModule):
    """ResNet-18 with a 3×3 stem and no max-pool (the usual adaptation to small images); batches are dicts."""

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.net = torchvision.models.resnet18(num_classes=n_classes)
        self.net.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.net.maxpool = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return F.cross_entropy(self(batch["image"]), batch["label"])

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", F.cross_entropy(self(batch["image"]), batch["label"]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def colour_classes(n: int, n_classes: int = 10, size: int = 8, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``size``×``size`` colour images whose class sets the mean colour (learnable in a few steps)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % n_classes
    palette = torch.rand(n_classes, 3, 1, 1, generator=torch.Generator().manual_seed(123))
    x = palette[y] + 0.3 * torch.randn(n, 3, size, size, generator=g)
    return x, y


def resnet_loaders(n_train: int = 64, n_val: int = 32) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders of dict batches ``{"image", "label"}``."""
    train = Records(*colour_classes(n_train), as_dict)
    val = Records(*colour_classes(n_val, seed=1), as_dict)
    return DataLoader(train, batch_size=16), DataLoader(val, batch_size=16)


def resnet_trainer(tmp_path: Any, callbacks: list, **kwargs: Any) -> L.Trainer:
    """One short epoch on the CPU (two training batches), quiet unless ``kwargs`` say otherwise."""
    return quiet_trainer(1, default_root_dir=tmp_path, callbacks=callbacks, limit_train_batches=2, **kwargs)
