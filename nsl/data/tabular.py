"""scikit-learn's tabular data sets (breast cancer, wine) as standardised tensors and LightningDataModules.

Features are standardised with the training split's mean and standard deviation, so the baseline 0 of an
input-attribution (e.g. ``HarsanyiNet.shapley``) is the average training sample. The split is stratified
and fixed by ``seed``; everything ships inside scikit-learn, nothing is downloaded.
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.model_selection import train_test_split
from torch import Tensor
from torch.utils.data import TensorDataset

from nsl.data.base import SplitDataModule

LOADERS = {"breast_cancer": load_breast_cancer, "wine": load_wine}
SPLITS = ("train", "val", "test")


def load_tabular_tensors(
    name: str = "breast_cancer",
    split: str = "train",
    val_size: float = 0.15,
    test_size: float = 0.2,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Standardised features (n, d) float32 and labels (n,) of one split of a scikit-learn data set."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {SPLITS}.")
    x, y, _ = _splits(name, val_size, test_size, seed)
    return x[split], y[split]


def _splits(name: str, val_size: float, test_size: float, seed: int):
    if name not in LOADERS:
        raise ValueError(f"data set {name!r} is not available; use one of {sorted(LOADERS)}.")
    for what, value in (("val_size", val_size), ("test_size", test_size)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1:
            raise ValueError(f"{what}={value!r} must be a fraction in (0, 1).")
    if val_size + test_size >= 0.9:
        raise ValueError(f"val_size + test_size = {val_size + test_size} leaves too little training data.")
    data = LOADERS[name]()
    x_all = torch.tensor(data.data, dtype=torch.float64)
    y_all = torch.tensor(data.target, dtype=torch.long)
    index = torch.arange(len(y_all)).numpy()
    rest, test = train_test_split(index, test_size=test_size, random_state=seed, stratify=y_all.numpy())
    train, val = train_test_split(
        rest, test_size=val_size / (1 - test_size), random_state=seed, stratify=y_all.numpy()[rest]
    )
    mean = x_all[train].mean(0)
    std = x_all[train].std(0).clamp(min=1e-12)
    scaled = ((x_all - mean) / std).float()
    parts = {"train": train, "val": val, "test": test}
    xs = {k: scaled[torch.as_tensor(v)] for k, v in parts.items()}
    ys = {k: y_all[torch.as_tensor(v)] for k, v in parts.items()}
    meta = {"feature_names": [str(f) for f in data.feature_names], "mean": mean.float(), "std": std.float(),
            "num_classes": int(y_all.max()) + 1}
    return xs, ys, meta


class TabularDataModule(SplitDataModule):
    """Train/val/test loaders over a standardised scikit-learn tabular data set.

    Args:
        name: ``"breast_cancer"`` (569 samples, 30 features, 2 classes) or ``"wine"`` (178, 13, 3).
        batch_size: training and evaluation batch size.
        val_size, test_size: fractions held out (stratified) for validation and test.
        seed: fixes the split and the training shuffle.
        num_workers: DataLoader workers (0 is fastest for these tiny data sets).

    After construction: ``num_features``, ``num_classes``, ``feature_names``, and the training ``mean`` and
    ``std`` used to standardise (the baseline 0 is that mean).
    """

    def __init__(
        self,
        name: str = "breast_cancer",
        batch_size: int = 64,
        val_size: float = 0.15,
        test_size: float = 0.2,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, seed, num_workers)
        self.name = name
        self.val_size = val_size
        self.test_size = test_size
        self._x, self._y, meta = _splits(name, val_size, test_size, seed)
        self.feature_names: list[str] = meta["feature_names"]
        self.mean: Tensor = meta["mean"]
        self.std: Tensor = meta["std"]
        self.num_classes: int = meta["num_classes"]
        self.num_features: int = len(self.feature_names)

    def tensors(self, split: str) -> tuple[Tensor, Tensor]:
        """Features and labels of one split."""
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is not one of {SPLITS}.")
        return self._x[split], self._y[split]

    def _dataset(self, split: str) -> TensorDataset:
        return TensorDataset(*self.tensors(split))


class BreastCancerDataModule(TabularDataModule):
    """Wisconsin breast cancer (569 samples, 30 standardised features, 2 classes)."""

    def __init__(self, batch_size: int = 64, val_size: float = 0.15, test_size: float = 0.2, seed: int = 0,
                 num_workers: int = 0) -> None:
        super().__init__("breast_cancer", batch_size, val_size, test_size, seed, num_workers)


class WineDataModule(TabularDataModule):
    """Wine (178 samples, 13 standardised features, 3 classes)."""

    def __init__(self, batch_size: int = 32, val_size: float = 0.15, test_size: float = 0.2, seed: int = 0,
                 num_workers: int = 0) -> None:
        super().__init__("wine", batch_size, val_size, test_size, seed, num_workers)
