"""Data: scikit-learn's digits (shipped inside scikit-learn) and generated shapes, so nothing is downloaded."""

from nsl.data.digits import DigitsDataModule, load_digits_tensors

__all__ = ["DigitsDataModule", "load_digits_tensors"]

from nsl.data.tabular import (
    BreastCancerDataModule,
    TabularDataModule,
    WineDataModule,
    load_tabular_tensors,
)

__all__ += ["BreastCancerDataModule", "TabularDataModule", "WineDataModule", "load_tabular_tensors"]

from nsl.data.fairness import FairDigitsDataModule, load_fair_digits_tensors  # noqa: E402
from nsl.data.vision import CelebADataModule, CIFAR10DataModule, read_cifar10  # noqa: E402

__all__ += ["CIFAR10DataModule", "CelebADataModule", "FairDigitsDataModule", "load_fair_digits_tensors"]
__all__ += ["read_cifar10"]

from nsl.data.shapes import (  # noqa: E402
    FairShapesDataModule,
    ShapesDataModule,
    load_fair_shapes_tensors,
    load_shapes_tensors,
)

__all__ += ["FairShapesDataModule", "ShapesDataModule", "load_fair_shapes_tensors", "load_shapes_tensors"]
