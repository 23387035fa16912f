"""Fair digits: the embedded digits with a sensitive attribute that a model learns to be unfair about.

Every image belongs to group 0 or group 1. Group-1 images are drawn in inverted intensity (white background,
dark strokes), like photos of one population taken under other conditions. In the training split group 1
is a minority that is common only among ``minority_labels`` (digits 0–4 by default) and rare among the
other labels, so a network learns "inverted means one of 0–4" as a shortcut and mislabels inverted images
of the other digits. In the val and test splits the group is independent of the label (each label is split
half and half), so the unfairness shows as a lower accuracy of group 1 there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from nsl.data.digits import SPLITS, DigitsDataModule, load_digits_tensors

NUM_CLASSES = 10


def check_share(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value!r} must be a share in [0, 1].")


def assign_groups(labels: Tensor, shares: Tensor, generator: torch.Generator) -> Tensor:
    """Group 1 for exactly ``round(share[y] · n_y)`` randomly chosen images of each label y, else group 0."""
    groups = torch.zeros(len(labels), dtype=torch.long)
    for label in range(NUM_CLASSES):
        rows = torch.nonzero(labels == label).squeeze(1)
        n_group1 = round(float(shares[label]) * len(rows))
        chosen = rows[torch.randperm(len(rows), generator=generator)[:n_group1]]
        groups[chosen] = 1
    return groups


def load_fair_digits_tensors(
    split: str = "train", val_size: int = 300, test_size: int = 300, seed: int = 0,
    minority_labels: Sequence[int] = (0, 1, 2, 3, 4), minority_share: float = 0.5, rare_share: float = 0.03,
    eval_share: float = 0.5,
) -> tuple[Tensor, Tensor, Tensor]:
    """Images (n, 1, 8, 8) in [0, 1], labels (n,) and groups (n,) of one split, fixed by ``seed``.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (the same images as :func:`load_digits_tensors`).
        val_size, test_size, seed: as in :func:`load_digits_tensors`.
        minority_labels: labels among which group 1 is common in the training split.
        minority_share: share of the training images of each of ``minority_labels`` that are in group 1.
        rare_share: share of the training images of every other label that are in group 1.
        eval_share: share of each label's val/test images that are in group 1 (group independent of label).

    Group-1 images are inverted (``1 − x``), the visible marker the network can take a shortcut on.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {SPLITS}.")
    options = (minority_labels, minority_share, rare_share, eval_share)
    check_group_options(*options, kind="digits")
    images, labels = load_digits_tensors(split, val_size, test_size, seed)
    # A separate stream per split, so changing one split's options leaves the others' groups alone.
    generator = torch.Generator().manual_seed(seed * len(SPLITS) + SPLITS.index(split) + 1)
    return invert_groups(images, labels, split == "train", *options, generator=generator)


def check_group_options(
    minority_labels: Sequence[int], minority_share: float, rare_share: float, eval_share: float, *, kind: str
) -> None:
    """ValueError naming the bad option unless the labels are classes (``kind``: what they label) and the shares
    lie in [0, 1]."""
    labels_set = sorted({int(c) for c in minority_labels})
    if not labels_set or labels_set[0] < 0 or labels_set[-1] >= NUM_CLASSES:
        raise ValueError(f"minority_labels={list(minority_labels)!r} must be {kind} in 0..{NUM_CLASSES - 1}.")
    check_share("minority_share", minority_share)
    check_share("rare_share", rare_share)
    check_share("eval_share", eval_share)


def invert_groups(
    images: Tensor, labels: Tensor, train: bool, minority_labels: Sequence[int], minority_share: float,
    rare_share: float, eval_share: float, *, generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor]:
    """The fairness recipe fair digits and fair shapes share: ``(images, labels, groups)`` with group-1 images
    inverted (``1 − x``); in training group 1 is common among ``minority_labels`` only, elsewhere independent of
    the label."""
    if train:
        shares = torch.full((NUM_CLASSES,), float(rare_share))
        shares[sorted({int(c) for c in minority_labels})] = float(minority_share)
    else:
        shares = torch.full((NUM_CLASSES,), float(eval_share))
    groups = assign_groups(labels, shares, generator)
    images = torch.where(groups.view(-1, 1, 1, 1).bool(), 1.0 - images, images)
    return images, labels, groups


class GroupsMixin:
    """``val_groups``/``test_groups`` of a data module whose ``tensors(split)`` returns (images, labels, groups)."""

    tensors: Callable[[str], tuple[Tensor, ...]]

    @property
    def val_groups(self) -> Tensor:
        """Group of each validation image (0 or 1)."""
        return self.tensors("val")[2]

    @property
    def test_groups(self) -> Tensor:
        """Group of each test image (0 or 1)."""
        return self.tensors("test")[2]


class FairDigitsDataModule(GroupsMixin, DigitsDataModule):
    """Loaders of (image, label) batches over fair digits, plus the groups of the val/test images.

    The loaders yield ``(x, y)`` so that any classifier (e.g. :class:`~nsl.models.Classifier`) trains on
    them unchanged; ``val_groups``/``test_groups`` (or :meth:`tensors`) give the sensitive attribute in the
    loaders' order, for :class:`~nsl.games.FairnessGame`.

    Args:
        batch_size: training and evaluation batch size.
        val_size, test_size: images held out for validation and test.
        seed: fixes the split and the groups.
        num_workers: DataLoader workers (0 is fastest for this tiny data set).
        minority_labels, minority_share, rare_share, eval_share: see :func:`load_fair_digits_tensors`.

    Example::

        >>> from nsl import FairnessGame, FilterPlayers
        >>> from nsl.data import FairDigitsDataModule
        >>> from nsl.models import SmallCNN
        >>> dm = FairDigitsDataModule()
        >>> x, y, g = dm.tensors("val")
        >>> x.shape, sorted(g.unique().tolist())
        (torch.Size([300, 1, 8, 8]), [0, 1])
        >>> model = SmallCNN(channels=(2, 3, 4)).eval()   # trained with L.Trainer().fit(Classifier(...), dm)
        >>> game = FairnessGame(model, FilterPlayers(model), x, y, g)
        >>> 0 <= game.full_value() <= 1
        True
    """

    def __init__(
        self,
        batch_size: int = 64,
        val_size: int = 300,
        test_size: int = 300,
        seed: int = 0,
        num_workers: int = 0,
        minority_labels: Sequence[int] = (0, 1, 2, 3, 4),
        minority_share: float = 0.5,
        rare_share: float = 0.03,
        eval_share: float = 0.5,
    ) -> None:
        super().__init__(batch_size, val_size, test_size, seed, num_workers)
        self.minority_labels = tuple(int(c) for c in minority_labels)
        self.minority_share = minority_share
        self.rare_share = rare_share
        self.eval_share = eval_share
        self.num_classes = NUM_CLASSES
        self._cache: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        self.tensors("train")  # validate the options now, not at the first epoch

    def tensors(self, split: str) -> tuple[Tensor, Tensor, Tensor]:
        """Images, labels and groups of ``split``, in the order its loader yields them."""
        if split not in self._cache:
            self._cache[split] = load_fair_digits_tensors(
                split,
                self.val_size,
                self.test_size,
                self.seed,
                self.minority_labels,
                self.minority_share,
                self.rare_share,
                self.eval_share,
            )
        return self._cache[split]

    def _dataset(self, split: str) -> TensorDataset:
        x, y, _ = self.tensors(split)
        return TensorDataset(x, y)

