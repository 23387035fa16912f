"""CIFAR-10 and CelebA as LightningDataModules, read from a local ``root`` (downloaded only on request).

Nothing is read or fetched when a module is built: a missing data set is reported when Lightning prepares
or sets the module up, with the folder that was searched and how to fix it.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset
from torchvision import transforms
from torchvision.datasets import CIFAR10, CelebA
from torchvision.datasets.utils import check_integrity

from nsl.data.base import SplitDataModule
from nsl.validation import check_int

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip


def _missing(name: str, root: str | Path, expected: Path, detail: str = "") -> FileNotFoundError:
    return FileNotFoundError(
        f"{name} was not found under root={str(root)!r} (looked for {expected}{detail}). "
        f"Set download=true to fetch it there, or point root at the folder that holds {expected.name}/."
    )


class _ImageTensors(Dataset):
    """(image, label) pairs from uint8 images (n, C, H, W) in memory, transformed as floats in [0, 1]."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable[[Tensor], Tensor]) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.transform(self.images[index].float().div_(255)), self.labels[index]


def read_cifar10(
    root: str | Path, train: bool = True, verify: bool = True
) -> tuple[Tensor, Tensor, list[str]]:
    """Images (n, 3, 32, 32) uint8, labels (n,) and class names from the python batches under ``root``.

    Reads the format torchvision downloads (``<root>/cifar-10-batches-py/data_batch_1..5``, ``test_batch``,
    ``batches.meta``). ``verify`` checks every file against torchvision's published md5 sums.
    """
    folder = Path(root) / CIFAR10.base_folder
    files = CIFAR10.train_list if train else CIFAR10.test_list
    needed = [*files, [CIFAR10.meta["filename"], CIFAR10.meta["md5"]]]
    absent = [name for name, _ in needed if not (folder / name).is_file()]
    if absent:
        raise _missing("CIFAR-10", root, folder, f" with {', '.join(absent)}")
    if verify:
        corrupt = [name for name, md5 in needed if not check_integrity(str(folder / name), md5)]
        if corrupt:
            raise RuntimeError(
                f"CIFAR-10 files under {folder} fail their md5 check: {', '.join(corrupt)}. Delete them and "
                "set download=true to fetch them again (or verify=false to read them as they are)."
            )
    images, labels = [], []
    for name, _ in files:
        with open(folder / name, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(batch["labels"] if "labels" in batch else batch["fine_labels"])
    with open(folder / CIFAR10.meta["filename"], "rb") as f:
        classes = list(pickle.load(f, encoding="latin1")[CIFAR10.meta["key"]])
    return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.long), classes


def _check_cifar10_present(root: str | Path) -> None:
    """Raise a FileNotFoundError naming ``root`` unless every CIFAR-10 file is there."""
    folder = Path(root) / CIFAR10.base_folder
    names = [name for name, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
    absent = [name for name in names if not (folder / name).is_file()]
    if absent:
        raise _missing("CIFAR-10", root, folder, f" with {', '.join(absent)}")


class TorchvisionDataModule(SplitDataModule):
    """A data set read by torchvision from ``root`` (fetched there with ``download``), optionally augmented."""

    def __init__(
        self, root: str | Path, download: bool, augment: bool, batch_size: int, seed: int, num_workers: int
    ) -> None:
        super().__init__(batch_size, seed, num_workers)
        self.root = Path(root)
        self.download = download
        self.augment = augment


class CIFAR10DataModule(TorchvisionDataModule):
    """CIFAR-10 from ``root``: a seeded train/val split of the 50,000 training images; the 10,000 test images.

    Images are normalised with the CIFAR-10 channel statistics; training images are also randomly cropped
    (padding 4) and flipped when ``augment`` is on.

    Args:
        root: folder holding ``cifar-10-batches-py/`` (torchvision's layout).
        download: fetch the data into ``root`` when it is absent (needs a network).
        batch_size: training and evaluation batch size.
        val_size: training images held out for validation.
        num_workers: DataLoader workers.
        seed: fixes the train/val split and the shuffling.
        augment: random crop and horizontal flip for training.
        verify: check the files' md5 sums before reading them.

    Example::

        >>> from nsl.data import CIFAR10DataModule
        >>> dm = CIFAR10DataModule(root="/nowhere", download=False)   # download=True fetches it (network)
        >>> dm.prepare_data()  # no data there: a clear error before any training
        Traceback (most recent call last):
        ...
        FileNotFoundError: CIFAR-10 was not found under root='/nowhere' (looked for ...
        >>> # With the data on disk: L.Trainer(max_epochs=30).fit(Classifier(resnet18(num_classes=10)), dm)
    """

    def __init__(
        self,
        root: str | Path = "data",
        download: bool = False,
        batch_size: int = 128,
        val_size: int = 5000,
        num_workers: int = 2,
        seed: int = 0,
        augment: bool = True,
        verify: bool = True,
    ) -> None:
        super().__init__(root, download, augment, batch_size, seed, num_workers)
        check_int("val_size", val_size, low=1)
        self.val_size = val_size
        self.verify = verify
        self.num_classes = 10
        self.classes: list[str] = []
        normalize = transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)
        self.eval_transform = normalize
        crop_flip = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
        self.train_transform = transforms.Compose([*crop_flip, normalize]) if augment else normalize
        self._data: dict[str, Dataset] = {}

    def prepare_data(self) -> None:
        """Download when asked to (once per node); otherwise fail early when the data is absent."""
        if self.download:
            CIFAR10(str(self.root), train=True, download=True)
            CIFAR10(str(self.root), train=False, download=True)
        _check_cifar10_present(self.root)

    def setup(self, stage: str | None = None) -> None:
        """Load the images into memory and split off the validation set."""
        if self._data:
            return
        _check_cifar10_present(self.root)
        images, labels, self.classes = read_cifar10(self.root, train=True, verify=self.verify)
        if self.val_size >= len(labels):
            raise ValueError(f"val_size={self.val_size} leaves no training images (of {len(labels)}).")
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.seed))
        val_idx, train_idx = order[: self.val_size], order[self.val_size :]
        self._data["train"] = _ImageTensors(images[train_idx], labels[train_idx], self.train_transform)
        self._data["val"] = _ImageTensors(images[val_idx], labels[val_idx], self.eval_transform)
        test_images, test_labels, _ = read_cifar10(self.root, train=False, verify=self.verify)
        self._data["test"] = _ImageTensors(test_images, test_labels, self.eval_transform)

    def _dataset(self, split: str) -> Dataset:
        self.setup()
        return self._data[split]



class _AttributePair(Dataset):
    """CelebA samples as (image, one attribute as a 0/1 label)."""

    def __init__(self, celeba: CelebA, attr_index: int) -> None:
        self.celeba = celeba
        self.attr_index = attr_index

    def __len__(self) -> int:
        return len(self.celeba)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, attrs = self.celeba[index]
        return image, attrs[self.attr_index].long()


class CelebADataModule(TorchvisionDataModule):
    """CelebA from ``root``: predict ``target_attr`` from the face; ``sensitive_attr`` gives the groups.

    Loaders yield ``(x, y)`` with y the 0/1 target attribute, over CelebA's official train/valid/test
    partition; ``val_groups``/``test_groups`` hold the sensitive attribute (0/1) of each evaluation image in
    loader order, for :class:`~nsl.games.FairnessGame`. Images are centre-cropped, resized to
    ``image_size`` and normalised with the ImageNet statistics (so pretrained weights fit).

    Args:
        root: folder holding ``celeba/`` (torchvision's layout: ``img_align_celeba/`` and the txt lists).
        download: fetch the data into ``root`` when it is absent (needs a network; Google Drive often
            refuses, in which case download it by hand).
        target_attr: the attribute to predict, one of the 40 CelebA attributes.
        sensitive_attr: the attribute that defines the groups.
        image_size: side of the square input images.
        batch_size: training and evaluation batch size.
        num_workers: DataLoader workers.
        seed: fixes the shuffling.
        augment: random horizontal flips for training.
        max_samples: use at most this many images of each split (the first ones), for quick runs.
    """

    def __init__(
        self,
        root: str | Path = "data",
        download: bool = False,
        target_attr: str = "Smiling",
        sensitive_attr: str = "Male",
        image_size: int = 64,
        batch_size: int = 128,
        num_workers: int = 2,
        seed: int = 0,
        augment: bool = True,
        max_samples: int | None = None,
    ) -> None:
        super().__init__(root, download, augment, batch_size, seed, num_workers)
        for name, value in (("target_attr", target_attr), ("sensitive_attr", sensitive_attr)):
            if value not in CELEBA_ATTRIBUTES:
                raise ValueError(
                    f"{name}={value!r} is not a CelebA attribute; use one of {CELEBA_ATTRIBUTES}."
                )
        if target_attr == sensitive_attr:
            raise ValueError(f"target_attr and sensitive_attr are both {target_attr!r}; they must differ.")
        check_int("image_size", image_size, low=8)
        check_int("max_samples", max_samples, low=1, optional=True)
        self.target_attr = target_attr
        self.sensitive_attr = sensitive_attr
        self.image_size = image_size
        self.max_samples = max_samples
        self.num_classes = 2
        base = [transforms.CenterCrop(178), transforms.Resize(image_size), transforms.ToTensor()]
        normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self.eval_transform = transforms.Compose([*base, normalize])
        flip = [transforms.RandomHorizontalFlip()] if augment else []
        self.train_transform = transforms.Compose([*flip, *base, normalize])
        self._data: dict[str, Dataset] = {}
        self._groups: dict[str, Tensor] = {}

    def _check_present(self) -> None:
        folder = self.root / CelebA.base_folder
        needed = [name for _, _, name in CelebA.file_list if not name.endswith(".zip")]
        absent = [name for name in needed if not (folder / name).is_file()]
        if not (folder / "img_align_celeba").is_dir():
            absent.append("img_align_celeba/")
        if absent:
            raise _missing("CelebA", self.root, folder, f" with {', '.join(absent)}")

    def prepare_data(self) -> None:
        """Download when asked to (once per node); otherwise fail early when the data is absent."""
        if self.download:
            CelebA(str(self.root), split="all", download=True)
        self._check_present()

    def setup(self, stage: str | None = None) -> None:
        """Read the attribute lists of the three splits (images are read lazily by the loaders)."""
        if self._data:
            return
        self._check_present()
        for split, official in (("train", "train"), ("val", "valid"), ("test", "test")):
            transform = self.train_transform if split == "train" else self.eval_transform
            try:
                celeba = CelebA(str(self.root), split=official, target_type="attr", transform=transform)
            except RuntimeError as err:
                raise RuntimeError(
                    f"CelebA under root={str(self.root)!r} is incomplete or corrupted ({err}). "
                    "Set download=true to fetch it again, or point root at an intact copy."
                ) from err
            names = list(celeba.attr_names)
            target, sensitive = names.index(self.target_attr), names.index(self.sensitive_attr)
            rows = range(len(celeba) if self.max_samples is None else min(self.max_samples, len(celeba)))
            self._data[split] = Subset(_AttributePair(celeba, target), list(rows))
            self._groups[split] = celeba.attr[: len(rows), sensitive].long()

    @property
    def val_groups(self) -> Tensor:
        """Sensitive attribute (0/1) of each validation image, in loader order."""
        self.setup()
        return self._groups["val"]

    @property
    def test_groups(self) -> Tensor:
        """Sensitive attribute (0/1) of each test image, in loader order."""
        self.setup()
        return self._groups["test"]

    def _dataset(self, split: str) -> Dataset:
        self.setup()
        return self._data[split]
