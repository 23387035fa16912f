"""Shapes: procedurally generated 32×32 RGB images of ten shapes on textured backgrounds, made at run time.

Richer than the 8×8 digits (colour, texture, position and scale vary; 24-bit colour instead of 17 grey levels)
and still without a download: every image is drawn from a seeded generator in a few milliseconds per thousand.
The label is the shape: disk, square, triangle, plus, ring, frame, horizontal bar, vertical bar, diamond, X.
Nuisances a network must learn to ignore: the shape's colour (bright, random hue), its centre and size, the
background's colour (dark) and texture (plain, stripes at a random angle and frequency, checks, or noise), and
pixel noise.

The fairness variant (:class:`FairShapesDataModule`) adds a sensitive attribute the way fair digits does:
group-1 images are drawn inverted (``1 − x``: a dark shape on a bright background), and in the training split
group 1 is common only among ``minority_labels`` and rare among the other shapes, so a network learns the
shortcut "inverted means one of 0–4". In val/test the group is independent of the label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from nsl.data.base import SplitDataModule
from nsl.data.fairness import GroupsMixin, check_group_options, invert_groups

SHAPES = ("disk", "square", "triangle", "plus", "ring", "frame", "hbar", "vbar", "diamond", "x")
SPLITS = ("train", "val", "test")
SIZE = 32  # image side in pixels
NUM_CLASSES = len(SHAPES)


def _masks(dx: Tensor, dy: Tensor, r: Tensor) -> Tensor:
    """Boolean masks (n, H, W) of every shape at offsets ``dx, dy`` from the centre, radius ``r`` (n, 1, 1);
    stacked as (classes, n, H, W)."""
    ax, ay = dx.abs(), dy.abs()
    box = torch.maximum(ax, ay)
    dist = torch.sqrt(dx**2 + dy**2)
    thin = 0.3 * r
    return torch.stack([
        dist <= r,                                                       # disk
        box <= 0.8 * r,                                                  # square
        (dy >= -r) & (dy <= 0.8 * r) & (ax <= (dy + r) / 1.8),           # triangle, apex up
        ((ax <= thin) & (ay <= r)) | ((ay <= thin) & (ax <= r)),         # plus
        (dist <= r) & (dist >= 0.55 * r),                                # ring
        (box <= 0.85 * r) & (box >= 0.5 * r),                            # frame
        (ay <= thin) & (ax <= r),                                        # horizontal bar
        (ax <= thin) & (ay <= r),                                        # vertical bar
        ax + ay <= r,                                                    # diamond
        (((dx - dy).abs() <= 0.35 * r) | ((dx + dy).abs() <= 0.35 * r)) & (box <= 0.8 * r),  # x
    ])  # fmt: skip


def _textures(n: int, generator: torch.Generator) -> Tensor:
    """Background patterns (n, H, W) in [0, 1]: plain, stripes (random angle and period), checks, or noise."""
    coords = torch.arange(SIZE, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    kind = torch.randint(0, 4, (n,), generator=generator)
    angle = torch.rand(n, 1, 1, generator=generator) * math.pi
    period = 3 + torch.rand(n, 1, 1, generator=generator) * 6
    phase = xx * torch.cos(angle) + yy * torch.sin(angle)
    stripes = (torch.sin(2 * math.pi * phase / period) > 0).float()
    cell = torch.randint(2, 6, (n, 1, 1), generator=generator)
    checks = (((xx // cell) + (yy // cell)) % 2).float()
    noise = torch.rand(n, SIZE, SIZE, generator=generator)
    plain = torch.full((n, SIZE, SIZE), 0.5)
    options = torch.stack([plain, stripes, checks, noise])  # (4, n, H, W)
    return options[kind, torch.arange(n)]


def render_shapes(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` images (n, 3, 32, 32) in [0, 1] and their labels (n,), drawn from ``generator``."""
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    r = (5 + torch.rand(n, 1, 1, generator=generator) * 6)  # radius 5-11 px
    centre = 11 + torch.rand(n, 2, 1, 1, generator=generator) * 10  # keeps every shape inside the image
    coords = torch.arange(SIZE, dtype=torch.float32) + 0.5
    dx = coords.view(1, 1, SIZE) - centre[:, 0]
    dy = coords.view(1, SIZE, 1) - centre[:, 1]
    mask = _masks(dx, dy, r)[labels, torch.arange(n)].unsqueeze(1).float()  # (n, 1, H, W)
    hue = torch.rand(n, generator=generator)
    fg = 0.55 + 0.45 * torch.stack([(hue + s) % 1.0 for s in (0.0, 1 / 3, 2 / 3)], 1)  # bright, random hue
    fg = fg * (0.75 + 0.25 * torch.rand(n, 3, generator=generator))
    bg = 0.35 * torch.rand(n, 3, generator=generator)  # dark
    texture = _textures(n, generator).unsqueeze(1)  # (n, 1, H, W)
    background = bg.view(n, 3, 1, 1) * (0.4 + 0.6 * texture)
    images = mask * fg.view(n, 3, 1, 1) + (1 - mask) * background
    images = images + 0.04 * torch.randn(images.shape, generator=generator)
    return images.clamp(0, 1), labels


def load_shapes_tensors(
    split: str = "train", train_size: int = 4000, val_size: int = 300, test_size: int = 300, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Images (n, 3, 32, 32) in [0, 1] and labels (n,) of one split; each split has its own stream of ``seed``."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {SPLITS}.")
    sizes = {"train": train_size, "val": val_size, "test": test_size}
    for name, size in sizes.items():
        if int(size) != size or size < 1:
            raise ValueError(f"{name}_size={size!r} must be a positive integer.")
    generator = torch.Generator().manual_seed(seed * len(SPLITS) + SPLITS.index(split) + 101)
    return render_shapes(int(sizes[split]), generator)


def load_fair_shapes_tensors(
    split: str = "train", train_size: int = 4000, val_size: int = 300, test_size: int = 300, seed: int = 0,
    minority_labels: Sequence[int] = (0, 1, 2, 3, 4), minority_share: float = 0.5, rare_share: float = 0.03,
    eval_share: float = 0.5,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`load_shapes_tensors` with groups (n,): group-1 images inverted, tied to labels in training only.

    ``minority_labels``, ``minority_share``, ``rare_share`` and ``eval_share`` mean what they mean for
    :func:`~nsl.data.fairness.load_fair_digits_tensors`.
    """
    options = (minority_labels, minority_share, rare_share, eval_share)
    check_group_options(*options, kind="shape labels")
    images, labels = load_shapes_tensors(split, train_size, val_size, test_size, seed)
    generator = torch.Generator().manual_seed(seed * len(SPLITS) + SPLITS.index(split) + 1001)
    return invert_groups(images, labels, split == "train", *options, generator=generator)


class ShapesDataModule(SplitDataModule):
    """Train/val/test loaders over generated shapes (10 classes, 3×32×32).

    Args:
        batch_size: training and evaluation batch size.
        train_size, val_size, test_size: images generated for each split.
        seed: fixes every image and the training shuffle.
        num_workers: DataLoader workers (0: the images are already in memory).

    Example::

        >>> from nsl.data import ShapesDataModule
        >>> x, y = ShapesDataModule(train_size=20, val_size=8, test_size=8).tensors("val")
        >>> tuple(x.shape), bool(x.min() >= 0 and x.max() <= 1), bool(((y >= 0) & (y < 10)).all())
        ((8, 3, 32, 32), True, True)
    """

    def __init__(
        self, batch_size: int = 64, train_size: int = 4000, val_size: int = 300, test_size: int = 300, seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, seed, num_workers)
        self.train_size, self.val_size, self.test_size = train_size, val_size, test_size
        self.num_classes = NUM_CLASSES
        self._cache: dict[str, tuple[Tensor, ...]] = {}
        self.tensors("val")  # check the options now, not at the first epoch

    def _load(self, split: str) -> tuple[Tensor, ...]:
        return load_shapes_tensors(split, self.train_size, self.val_size, self.test_size, self.seed)

    def tensors(self, split: str) -> tuple[Tensor, ...]:
        """Images and labels (and groups, for the fair variant) of ``split``, in the loaders' order."""
        if split not in self._cache:
            self._cache[split] = self._load(split)
        return self._cache[split]

    def _dataset(self, split: str) -> TensorDataset:
        x, y = self.tensors(split)[:2]
        return TensorDataset(x, y)


class FairShapesDataModule(GroupsMixin, ShapesDataModule):
    """:class:`ShapesDataModule` with a sensitive attribute (group-1 images inverted; see the module docstring).

    The loaders yield ``(x, y)``; ``val_groups``/``test_groups`` (or :meth:`tensors`) give the groups in the
    loaders' order, for :class:`~nsl.games.FairnessGame`.

    Args:
        minority_labels, minority_share, rare_share, eval_share: as for fair digits.
        Others: as for :class:`ShapesDataModule`.
    """

    def __init__(
        self, batch_size: int = 64, train_size: int = 4000, val_size: int = 300, test_size: int = 300, seed: int = 0,
        num_workers: int = 0, minority_labels: Sequence[int] = (0, 1, 2, 3, 4), minority_share: float = 0.5,
        rare_share: float = 0.03, eval_share: float = 0.5,
    ) -> None:
        self.minority_labels = tuple(int(c) for c in minority_labels)
        self.minority_share, self.rare_share, self.eval_share = minority_share, rare_share, eval_share
        super().__init__(batch_size, train_size, val_size, test_size, seed, num_workers)

    def _load(self, split: str) -> tuple[Tensor, ...]:
        return load_fair_shapes_tensors(
            split, self.train_size, self.val_size, self.test_size, self.seed, self.minority_labels,
            self.minority_share, self.rare_share, self.eval_share,
        )
