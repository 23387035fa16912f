"""The loaders every nsl data module shares: a seeded shuffle for training, fixed order for evaluation."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset


class SplitDataModule(L.LightningDataModule):
    """Train/val/test loaders over ``_dataset(split)``, which subclasses implement.

    Validation and test loaders are never shuffled, so the NeuronShapley callback's evaluation subset (the
    first examples of the validation data) is the same at every run; the training shuffle has its own
    generator, so building loaders never draws from the global RNG.

    Args:
        batch_size: training and evaluation batch size.
        seed: seeds the training shuffle (subclasses also fix their split with it).
        num_workers: DataLoader workers.
    """

    def __init__(self, batch_size: int, seed: int, num_workers: int) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers

    def _dataset(self, split: str) -> Dataset:
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self._dataset("train"), self.batch_size, shuffle=True, generator=gen, num_workers=self.num_workers
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._dataset("val"), self.batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self._dataset("test"), self.batch_size, num_workers=self.num_workers)
