"""Data: scikit-learn's digits, shipped inside scikit-learn, so nothing is downloaded."""

from nsl.data.digits import DigitsDataModule, load_digits_tensors

__all__ = ["DigitsDataModule", "load_digits_tensors"]
