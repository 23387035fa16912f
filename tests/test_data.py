"""Data modules (fair digits, CIFAR-10, CelebA), torchvision model factories and their Hydra configs."""

from __future__ import annotations

import inspect
import pickle
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torchvision
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from torch import nn

from conftest import quiet_trainer
from nsl.data import (
    CelebADataModule,
    CIFAR10DataModule,
    DigitsDataModule,
    FairDigitsDataModule,
    FairShapesDataModule,
    ShapesDataModule,
    load_digits_tensors,
    load_fair_digits_tensors,
    load_fair_shapes_tensors,
    load_shapes_tensors,
)
from nsl.data.vision import CIFAR10_MEAN, CIFAR10_STD
from nsl.games import FairnessGame
from nsl.models import Classifier, SmallCNN, resnet18, squeezenet, torchvision_model
from nsl.players import FilterPlayers

MINORITY = torch.arange(5)  # default minority_labels: digits 0–4


def _trainer(epochs: int) -> L.Trainer:
    return quiet_trainer(epochs)


# ---------------------------------------------------------------- fair digits


def test_fair_digits_training_split_ties_group_to_label() -> None:
    _, y, g = load_fair_digits_tensors("train")
    for label in range(10):
        n = int((y == label).sum())
        share = 0.5 if label < 5 else 0.03
        assert int(g[y == label].sum()) == round(share * n), f"label {label}"
    minority = torch.isin(y, MINORITY)
    assert g[minority].float().mean() == pytest.approx(0.5, abs=0.01)
    assert g[~minority].float().mean() == pytest.approx(0.03, abs=0.01)
    # Group 1 is a minority of the training data, made almost only of digits 0–4.
    assert 0.2 < g.float().mean() < 0.3
    assert minority[g == 1].float().mean() > 0.93
    corr = torch.corrcoef(torch.stack([g.float(), minority.float()]))[0, 1]
    assert corr > 0.45


@pytest.mark.parametrize("split", ["val", "test"])
def test_fair_digits_evaluation_splits_are_balanced(split: str) -> None:
    _, y, g = load_fair_digits_tensors(split)
    for label in range(10):
        n = int((y == label).sum())
        # Exactly half of each label (rounded), so the group says nothing about the label.
        assert abs(int(g[y == label].sum()) - n / 2) <= 0.5, f"label {label}"
    corr = torch.corrcoef(torch.stack([g.float(), torch.isin(y, MINORITY).float()]))[0, 1]
    assert abs(corr) < 0.05
    assert 0.45 < g.float().mean() < 0.55


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_fair_digits_marks_group_one_by_inversion(split: str) -> None:
    x, y, g = load_fair_digits_tensors(split)
    base_x, base_y = load_digits_tensors(split)
    assert torch.equal(y, base_y)
    assert torch.equal(x[g == 0], base_x[g == 0])
    assert torch.equal(x[g == 1], 1.0 - base_x[g == 1])
    # The marker is visible: inverted digits have a bright background.
    assert x[g == 1].mean() > 0.6 > 0.4 > x[g == 0].mean()


def test_fair_digits_shapes_and_dtypes() -> None:
    sizes = {"train": 1797 - 200 - 100, "val": 200, "test": 100}
    for split, n in sizes.items():
        x, y, g = load_fair_digits_tensors(split, val_size=200, test_size=100)
        assert x.shape == (n, 1, 8, 8) and x.dtype == torch.float32
        assert y.shape == (n,) and y.dtype == torch.long
        assert g.shape == (n,) and g.dtype == torch.long
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert set(g.tolist()) == {0, 1}


def test_fair_digits_is_deterministic_by_seed() -> None:
    first = load_fair_digits_tensors("train", seed=3)
    again = load_fair_digits_tensors("train", seed=3)
    other = load_fair_digits_tensors("train", seed=4)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[1], other[1])
    # Groups of one split do not depend on the training-only options.
    assert torch.equal(
        load_fair_digits_tensors("val", rare_share=0.2)[2], load_fair_digits_tensors("val", rare_share=0.0)[2]
    )


def test_fair_digits_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match=r"rare_share=1\.5"):
        load_fair_digits_tensors("train", rare_share=1.5)
    with pytest.raises(ValueError, match="minority_labels"):
        FairDigitsDataModule(minority_labels=(3, 10))
    with pytest.raises(ValueError, match="split='dev'"):
        load_fair_digits_tensors("dev")


def test_fair_digits_module_yields_pairs_and_exposes_groups() -> None:
    dm = FairDigitsDataModule(batch_size=2000, seed=1)
    x, y, g = load_fair_digits_tensors("val", seed=1)
    batch = next(iter(dm.val_dataloader()))
    assert len(batch) == 2
    assert torch.equal(batch[0], x) and torch.equal(batch[1], y)
    assert torch.equal(dm.val_groups, g)
    assert torch.equal(dm.test_groups, load_fair_digits_tensors("test", seed=1)[2])
    _, train_y = next(iter(dm.train_dataloader()))
    assert len(train_y) == 1197 and not torch.equal(train_y, dm.tensors("train")[1])  # shuffled


def _group_accuracy(dm: FairDigitsDataModule) -> tuple[list[float], Classifier]:
    """Train a tiny CNN for 6 epochs on ``dm``; its val accuracy on group 0 and on group 1."""
    L.seed_everything(0, verbose=False)
    model = Classifier(SmallCNN(channels=(8, 12, 16)))
    _trainer(6).fit(model, dm)
    model.eval()
    x, y, g = dm.tensors("val")
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    return [correct[g == k].float().mean().item() for k in (0, 1)], model


def test_training_on_fair_digits_makes_the_model_unfair() -> None:
    biased = FairDigitsDataModule()
    (acc0, acc1), model = _group_accuracy(biased)
    # Control: the same training with group 1 spread evenly over the labels.
    (ctrl0, ctrl1), _ = _group_accuracy(FairDigitsDataModule(rare_share=0.5))
    gap, ctrl_gap = acc0 - acc1, ctrl0 - ctrl1
    assert acc0 > 0.7  # it did learn the digits
    assert gap > 0.25, (acc0, acc1)  # measured about 0.39–0.45 over seeds
    assert gap - ctrl_gap > 0.15, (gap, ctrl_gap)  # measured control gaps: 0.02–0.08
    # The fairness game sees the same gap through the exposed groups.
    x, y, g = biased.tensors("val")
    assert torch.equal(biased.val_groups, g)
    game = FairnessGame(model, FilterPlayers(model), x, y, biased.val_groups, metric="accuracy_gap")
    assert game.full_value() == pytest.approx(1 - gap, abs=1e-6)


# ---------------------------------------------------------------- vision data


def _write_fake_cifar10(root: Path, per_batch: int = 4, n_test: int = 6) -> tuple[np.ndarray, list[int]]:
    """A tiny CIFAR-10 in the real on-disk format (python pickles); returns the test images and labels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(name: str, n: int, offset: int) -> tuple[np.ndarray, list[int]]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [(offset + i) % 10 for i in range(n)]
        record = {
            "batch_label": name,
            "labels": labels,
            "data": data,
            "filenames": [f"{i}.png" for i in range(n)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(record, f)
        return data, labels

    for b in range(1, 6):
        batch(f"data_batch_{b}", per_batch, b)
    test = batch("test_batch", n_test, 0)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"num_cases_per_batch": per_batch, "label_names": names, "num_vis": 3072}, f)
    return test


def test_cifar10_module_reads_the_on_disk_format(tmp_path: Path) -> None:
    test_data, test_labels = _write_fake_cifar10(tmp_path)
    dm = CIFAR10DataModule(
        root=tmp_path, batch_size=8, val_size=5, num_workers=0, augment=False, verify=False
    )
    dm.prepare_data()
    dm.setup("fit")
    assert dm.classes[0] == "airplane" and len(dm.classes) == 10
    assert len(dm.train_dataloader().dataset) == 15 and len(dm.val_dataloader().dataset) == 5
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32 and y.tolist() == test_labels
    raw = torch.from_numpy(test_data).reshape(6, 3, 32, 32).float() / 255
    mean, std = torch.tensor(CIFAR10_MEAN).view(3, 1, 1), torch.tensor(CIFAR10_STD).view(3, 1, 1)
    torch.testing.assert_close(x, (raw - mean) / std)
    # Train and val together are the five training batches, each image once.
    seen = torch.cat([torch.stack([y for _, y in dm._dataset(s)]) for s in ("train", "val")])
    assert sorted(seen.tolist()) == sorted((b + i) % 10 for b in range(1, 6) for i in range(4))
    # The loaders drive a real Trainer.
    model = Classifier(SmallCNN(channels=(4, 4, 4), in_channels=3))
    _trainer(1).fit(model, dm)
    assert model.trainer.current_epoch == 1


def test_cifar10_module_checks_md5_and_augments(tmp_path: Path) -> None:
    _write_fake_cifar10(tmp_path)
    with pytest.raises(RuntimeError, match="md5"):
        CIFAR10DataModule(root=tmp_path, val_size=5).setup("fit")
    dm = CIFAR10DataModule(root=tmp_path, val_size=5, augment=True, verify=False)
    dm.setup("fit")
    torch.manual_seed(0)
    views = torch.stack([dm._dataset("train")[0][0] for _ in range(8)])
    assert views.shape == (8, 3, 32, 32)
    assert (views != views[0]).any()  # random crops/flips differ
    assert torch.equal(dm._dataset("val")[0][0], dm._dataset("val")[0][0])  # evaluation is not augmented


@pytest.mark.parametrize(
    ("make", "folder"),
    [
        (lambda root: CIFAR10DataModule(root=root), "cifar-10-batches-py"),
        (lambda root: CelebADataModule(root=root), "celeba"),
    ],
)
def test_vision_modules_report_missing_data(tmp_path: Path, make, folder: str) -> None:
    dm = make(tmp_path)  # building never touches the disk
    for step in (dm.prepare_data, lambda: dm.setup("fit")):
        with pytest.raises(FileNotFoundError) as info:
            step()
        message = str(info.value)
        assert f"root={str(tmp_path)!r}" in message
        assert "download=true" in message and folder in message


def test_celeba_module_checks_attributes() -> None:
    with pytest.raises(ValueError, match="target_attr='Smilng'"):
        CelebADataModule(target_attr="Smilng")
    with pytest.raises(ValueError, match="must differ"):
        CelebADataModule(target_attr="Male", sensitive_attr="Male")
    dm = CelebADataModule(target_attr="Young", sensitive_attr="Pale_Skin", image_size=32)
    assert (dm.target_attr, dm.sensitive_attr, dm.num_classes) == ("Young", "Pale_Skin", 2)


# ---------------------------------------------------------------- torchvision models


def test_resnet18_small_input_forward_and_players() -> None:
    torch.manual_seed(0)
    model = resnet18(num_classes=10, small_input=True).eval()
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 10)
    players = FilterPlayers(model)
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(players) == sum(m.out_channels for _, m in convs) == 4800
    assert players.names[0] == "conv1:0" and players.names[-1] == "layer4.1.conv2:511"
    assert players.layers[0].mask_at == "bn1"  # masked after its BatchNorm
    present = torch.ones(len(players), dtype=torch.bool)
    present[:64] = False  # the whole stem off: the network sees nothing
    with torch.no_grad(), players.mask(present):
        silenced = model(x)
    assert torch.allclose(silenced[0], silenced[1]) and not torch.allclose(silenced, out)
    big = resnet18(num_classes=7, small_input=False)
    assert big.conv1.kernel_size == (7, 7) and isinstance(big.maxpool, nn.MaxPool2d)
    assert big(torch.randn(1, 3, 64, 64)).shape == (1, 7)


def test_squeezenet_forward() -> None:
    model = squeezenet(num_classes=10).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    n_filters = sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))
    assert len(FilterPlayers(model)) == n_filters == 2954
    with pytest.raises(ValueError, match="version"):
        squeezenet(version="2_0")


def test_weights_none_downloads_nothing_and_names_are_checked(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torchvision_model("squeezenet1_1", num_classes=4)
    resnet18(num_classes=4)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        torchvision_model("squeezenet1_1", weights="IMAGENET1K_V9")
    with pytest.raises(ValueError, match="not a torchvision model"):
        torchvision_model("resnet19")


def test_pretrained_weights_load_and_head_is_replaced(tmp_path: Path, monkeypatch) -> None:
    """Weights come from the local torch hub cache (filled here), so no network is needed."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1
    torch.manual_seed(1)
    reference = torchvision.models.squeezenet1_1(num_classes=1000).state_dict()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference, cache / Path(weights.url).name)

    model = squeezenet(num_classes=10, weights="IMAGENET1K_V1")
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in reference.items() if k.startswith("features."))
    assert model.classifier[1].out_channels == 10
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    same = torchvision_model("squeezenet1_1", num_classes=1000, weights="SqueezeNet1_1_Weights.IMAGENET1K_V1")
    assert torch.equal(same.classifier[1].weight, reference["classifier.1.weight"])


# ---------------------------------------------------------------- generated shapes


def test_shapes_are_deterministic_valid_rgb_images() -> None:
    x, y = load_shapes_tensors("val", val_size=200, seed=3)
    assert x.shape == (200, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    assert x.min() >= 0 and x.max() <= 1
    assert set(y.tolist()) == set(range(10))  # all ten shapes appear in 200 draws
    again, _ = load_shapes_tensors("val", val_size=200, seed=3)
    assert torch.equal(x, again)
    other, _ = load_shapes_tensors("val", val_size=200, seed=4)
    test, _ = load_shapes_tensors("test", test_size=200, seed=3)
    assert not torch.equal(x, other) and not torch.equal(x, test)  # seeds and splits draw their own images
    # colour: the channels differ (not grey), and the shape is brighter than the dark background
    assert (x[:, 0] - x[:, 1]).abs().mean() > 0.05
    centre = x[:, :, 14:18, 14:18].mean((1, 2, 3))
    corner = x[:, :, :3, :3].mean((1, 2, 3))
    assert (centre > corner).float().mean() > 0.7  # most shapes cover the centre


def test_shapes_options_are_checked() -> None:
    with pytest.raises(ValueError, match="split='dev'"):
        load_shapes_tensors("dev")
    with pytest.raises(ValueError, match="train_size=0"):
        ShapesDataModule(train_size=0)
    with pytest.raises(ValueError, match=r"minority_labels=\[12\]"):
        load_fair_shapes_tensors("train", train_size=50, minority_labels=[12])
    with pytest.raises(ValueError, match=r"rare_share=1\.5"):
        FairShapesDataModule(train_size=50, rare_share=1.5)


def test_fair_shapes_invert_group_one_and_tie_it_to_labels_in_training() -> None:
    x, y, g = load_fair_shapes_tensors("train", train_size=2000, seed=1)
    plain, labels = load_shapes_tensors("train", train_size=2000, seed=1)
    assert torch.equal(y, labels)
    assert torch.allclose(x[g == 1], 1 - plain[g == 1]) and torch.equal(x[g == 0], plain[g == 0])
    share = torch.stack([g[y == c].float().mean() for c in range(10)])
    assert torch.all((share[:5] - 0.5).abs() < 0.02) and torch.all(share[5:] < 0.05)
    _, yv, gv = load_fair_shapes_tensors("val", seed=1)
    share_val = torch.stack([gv[yv == c].float().mean() for c in range(10)])
    assert torch.all((share_val - 0.5).abs() < 0.1)  # group independent of the label outside training
    dm = FairShapesDataModule(train_size=100, seed=1)
    assert torch.equal(dm.val_groups, gv) and len(next(iter(dm.val_dataloader()))) == 2


@pytest.mark.slow
def test_a_wide_cnn_learns_fair_shapes_and_is_unfair_to_group_one() -> None:
    torch.manual_seed(0)
    dm = FairShapesDataModule(train_size=1500, seed=0)
    model = Classifier(SmallCNN(channels=(8, 16, 16, 32), in_channels=3, pool_after=(0, 1, 2)))
    _trainer(6).fit(model, dm)
    x, y, g = dm.tensors("test")
    with torch.no_grad():
        correct = (model.eval()(x).argmax(1) == y).float()
    assert correct.mean() > 0.6  # ten shapes, chance is 0.1
    assert correct[g == 0].mean() > correct[g == 1].mean() + 0.05  # the shortcut costs group 1


def test_small_cnn_pools_where_asked() -> None:
    net = SmallCNN(channels=(4, 6, 8, 10), in_channels=3, pool_after=(0, 1, 2))
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.features) == 3
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match=r"pool_after=\[4\] names blocks \[4\]"):
        SmallCNN(channels=(4, 6), pool_after=(4,))


# ---------------------------------------------------------------- Hydra configs

CONFIGS = {
    ("data", "digits"): DigitsDataModule,
    ("data", "fair_digits"): FairDigitsDataModule,
    ("data", "shapes"): ShapesDataModule,
    ("data", "fair_shapes"): FairShapesDataModule,
    ("data", "cifar10"): CIFAR10DataModule,
    ("data", "celeba"): CelebADataModule,
    ("model", "small_cnn"): Classifier,
    ("model", "wide_cnn"): Classifier,
    ("model", "resnet18"): Classifier,
    ("model", "squeezenet"): Classifier,
}


@pytest.mark.parametrize(("group", "name"), list(CONFIGS))
def test_config_composes_and_instantiates(group: str, name: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("NSL_DATA_ROOT", str(tmp_path))
    with initialize_config_module("nsl.conf", version_base="1.3"):
        cfg = compose(overrides=[f"+{group}={name}"])
    obj = instantiate(cfg[group])
    assert type(obj) is CONFIGS[(group, name)]
    node = cfg[group]
    if group == "data":
        # Every constructor argument is listed, with the code's default.
        params = inspect.signature(type(obj)).parameters
        assert set(node) - {"_target_"} == set(params)
        for key, param in params.items():
            if key != "root":
                default = list(param.default) if isinstance(param.default, tuple) else param.default
                assert node[key] == default, key
        if hasattr(obj, "root"):
            assert obj.root == tmp_path and obj.download is False
    else:
        assert obj.hparams.num_classes == 10
        x = torch.randn(2, 1, 8, 8) if name == "small_cnn" else torch.randn(2, 3, 32, 32)
        assert obj.eval()(x).shape == (2, 10)


def test_model_config_overrides_reach_the_network() -> None:
    with initialize_config_module("nsl.conf", version_base="1.3"):
        cfg = compose(overrides=["+model=small_cnn", "model.num_classes=3", "model.net.channels=[4,6,8]"])
    model = instantiate(cfg.model)
    assert len(FilterPlayers(model)) == 18
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)


EXPERIMENTS = sorted(p.stem for p in (Path(__file__).parents[1] / "nsl" / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_config_builds_a_model_that_fits_its_data(experiment: str) -> None:
    from nsl.train import compose_config

    cfg = compose_config([f"experiment={experiment}", "seed=3"])
    assert cfg.data.seed == 3  # the split follows the training seed
    dm, model = instantiate(cfg.data), instantiate(cfg.model)
    x, y = dm.tensors("val")[:2]
    assert model.eval()(x[:4]).shape == (4, model.hparams.num_classes)
    assert int(y.max()) < model.hparams.num_classes
