"""scikit-learn's 8×8 digits (1,797 images, 10 classes) as tensors and as a LightningDataModule."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch import Tensor
from torch.utils.data import TensorDataset

from nsl.data.base import SplitDataModule

SPLITS = ("train", "val", "test")


def load_digits_tensors(
    split: str = "train", val_size: int = 300, test_size: int = 300, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Images (n, 1, 8, 8) scaled to [0, 1] and labels (n,) of one split, fixed by ``seed``."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {SPLITS}.")
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(data.target, dtype=torch.long)
    if val_size < 1 or test_size < 1 or val_size + test_size >= len(labels):
        raise ValueError(
            f"val_size={val_size} and test_size={test_size} must be >= 1 and leave training data "
            f"(of {len(labels)} images)."
        )
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_train = len(labels) - val_size - test_size
    bounds = {"train": (0, n_train), "val": (n_train, n_train + val_size), "test": (n_train + val_size, None)}
    start, stop = bounds[split]
    idx = order[start:stop]
    return images[idx], labels[idx]


class DigitsDataModule(SplitDataModule):
    """Train/val/test loaders over the embedded digits data.

    Args:
        batch_size: training and evaluation batch size.
        val_size, test_size: images held out for validation and test.
        seed: fixes the split.
        num_workers: DataLoader workers (0 is fastest for this tiny data set).
    """

    def __init__(
        self, batch_size: int = 64, val_size: int = 300, test_size: int = 300, seed: int = 0, num_workers: int = 0
    ) -> None:
        super().__init__(batch_size, seed, num_workers)
        self.val_size = val_size
        self.test_size = test_size
        self.num_classes = 10

    def tensors(self, split: str) -> tuple[Tensor, Tensor]:
        """Images and labels of one split (``"train"``, ``"val"``, ``"test"``), in the loaders' order."""
        return load_digits_tensors(split, self.val_size, self.test_size, self.seed)

    def _dataset(self, split: str) -> TensorDataset:
        return TensorDataset(*self.tensors(split))

