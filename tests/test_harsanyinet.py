"""HarsanyiNet / HarsanyiCNN: exact Shapley values against brute-force enumeration, before and after real
training; the tabular data modules; the Hydra configs."""

from __future__ import annotations

import copy
import inspect
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

import nsl
from conftest import quiet_trainer
from nsl.data import BreastCancerDataModule, TabularDataModule, WineDataModule, load_digits_tensors
from nsl.models import Classifier, HarsanyiCNN, HarsanyiNet
from nsl.shapley.exact import coalitions, shapley_from_values

CONF = Path(nsl.__file__).parent / "conf"


def brute_force(values: torch.Tensor) -> torch.Tensor:
    """Shapley values by enumeration: values (2^n, B, C) of every coalition -> (B, n, C)."""
    _, b, c = values.shape
    return torch.stack(
        [torch.stack([shapley_from_values(values[:, i, k].double()) for k in range(c)], -1) for i in range(b)]
    )


def tabular_values(net: HarsanyiNet, x: torch.Tensor, players: list[int]) -> torch.Tensor:
    """v(S) for every coalition S of ``players``; other features and absent players at the baseline 0."""
    masks = coalitions(len(players))
    present = torch.zeros(len(masks), x.shape[1], dtype=torch.bool)
    present[:, players] = masks
    inputs = torch.where(present[:, None, :], x[None], torch.zeros((), dtype=x.dtype))
    with torch.no_grad():
        return net(inputs.reshape(-1, x.shape[1])).reshape(len(masks), len(x), -1)


def conv_values(net: HarsanyiCNN, x: torch.Tensor) -> torch.Tensor:
    """v(S) for every coalition of positions of the first feature map (absent positions zeroed)."""
    with torch.no_grad():
        z0 = net.features(x)
        b, c, h, w = z0.shape
        masks = coalitions(h * w).reshape(-1, 1, 1, h, w).to(z0.dtype)
        logits = net.forward_features((z0[None] * masks).reshape(-1, c, h, w))
    return logits.reshape(len(masks), b, -1)


def fields_have_interactions(fields: list[torch.Tensor]) -> bool:
    sizes = torch.cat([f.sum(1) for f in fields])
    return bool((sizes >= 2).any()) and bool((sizes >= 3).any())



# ---------------------------------------------------------------------------- tabular


@pytest.mark.parametrize(
    ("hidden", "act_ratio", "seed"), [((16,), 0.3, 0), ((16, 16), 0.3, 1), ((8, 12, 8), 0.4, 2)]
)
def test_tabular_shapley_is_exact_at_initialisation(hidden, act_ratio, seed) -> None:
    torch.manual_seed(seed)
    net = HarsanyiNet(10, 3, hidden=hidden, act_ratio=act_ratio).double()
    assert fields_have_interactions(net.receptive_fields())
    x = torch.randn(5, 10, dtype=torch.float64)
    phi = net.shapley(x).detach()
    assert phi.shape == (5, 10, 3)
    expected = brute_force(tabular_values(net, x, list(range(10))))
    assert float(phi.abs().max()) > 1e-3  # not trivially zero
    assert torch.allclose(phi, expected, atol=1e-5, rtol=0)
    assert float((phi - expected).abs().max()) < 1e-12  # exact, up to rounding
    assert torch.allclose(phi.sum(1), net(x), atol=1e-12)  # efficiency: v(N) − v(∅), v(∅) = 0
    assert torch.equal(net(torch.zeros(1, 10, dtype=torch.float64)), torch.zeros(1, 3, dtype=torch.float64))


def test_units_are_and_gates_over_their_receptive_fields() -> None:
    torch.manual_seed(3)
    net = HarsanyiNet(8, 2, hidden=(12, 12), act_ratio=0.3).double()
    x = torch.randn(1, 8, dtype=torch.float64) + 3.0  # far from the baseline
    fields = net.receptive_fields()
    for i in range(8):
        off = x.clone()
        off[0, i] = 0.0
        for z, field in zip(net.units(off), fields, strict=True):
            assert bool((z[0][field[:, i]] == 0).all())  # any unit that reads input i is shut
        for z_on, z_off, field in zip(net.units(x), net.units(off), fields, strict=True):
            assert torch.equal(z_on[0][~field[:, i]], z_off[0][~field[:, i]])  # the others do not notice


def test_tabular_shapley_is_exact_after_real_training() -> None:
    L.seed_everything(0, verbose=False)
    data = WineDataModule(batch_size=32)
    model = Classifier(HarsanyiNet(data.num_features, data.num_classes, hidden=(32, 32)), num_classes=3)
    trainer = quiet_trainer(25)
    before = copy.deepcopy(model.net.state_dict())
    trainer.fit(model, data)
    assert float(trainer.callback_metrics["val/acc"]) > 0.85
    assert "train/acc" in trainer.callback_metrics
    assert not torch.equal(before["layers.0.weight"], model.net.state_dict()["layers.0.weight"])

    x, _ = data.tensors("test")
    x = x[:6]
    players = list(range(12))  # wine has 13 features: the 13th is held at the baseline
    x = x.clone()
    x[:, 12] = 0.0
    net = copy.deepcopy(model.net).double().eval()
    phi = net.shapley(x.double()).detach()
    assert torch.equal(phi[:, 12], torch.zeros_like(phi[:, 12]))  # a feature at the baseline gets nothing
    expected = brute_force(tabular_values(net, x.double(), players))
    assert float(phi.abs().max()) > 1e-2
    assert torch.allclose(phi[:, players], expected, atol=1e-5, rtol=0)
    # the float32 network, as trained, agrees too (up to float32 rounding)
    phi32 = model.net.eval().shapley(x).detach()
    assert torch.allclose(phi32.double()[:, players], expected, atol=1e-4 * (1 + float(expected.abs().max())))


def test_children_masks_are_learned_through_the_straight_through_gradient() -> None:
    torch.manual_seed(0)
    net = HarsanyiNet(6, 2, hidden=(8,), act_ratio=0.5)
    x = torch.randn(16, 6)
    torch.nn.functional.cross_entropy(net(x), torch.randint(0, 2, (16,))).backward()
    grad = net.layers[0].tau.grad
    assert grad is not None and float(grad.abs().max()) > 0
    assert set(net.layers[0].mask().unique().tolist()) <= {0.0, 1.0}


def test_tabular_bad_inputs() -> None:
    net = HarsanyiNet(5, 2)
    with pytest.raises(ValueError, match=r"\(B, 5\)"):
        net(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"\(B, 5\)"):
        net.shapley(torch.zeros(3, 1, 5))
    with pytest.raises(ValueError, match="in_features"):
        HarsanyiNet(0, 2)
    with pytest.raises(ValueError, match="hidden"):
        HarsanyiNet(5, 2, hidden=())
    with pytest.raises(ValueError, match="act_ratio"):
        HarsanyiNet(5, 2, act_ratio=0.0)
    with pytest.raises(ValueError, match="present"):
        net.masked_forward(torch.zeros(2, 5), torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        net.masked_forward(torch.zeros(2, 5), torch.ones(3, 5))


def test_masked_forward_matches_manual_masking() -> None:
    torch.manual_seed(1)
    net = HarsanyiNet(4, 2, hidden=(6,), act_ratio=0.5).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    present = coalitions(4)
    out = net.masked_forward(x, present)
    assert out.shape == (16, 3, 2)
    assert torch.allclose(out, tabular_values(net, x, [0, 1, 2, 3]), atol=1e-12)


# ---------------------------------------------------------------------------- images


@pytest.mark.parametrize(("layers", "seed"), [(1, 0), (2, 1), (3, 2)])
def test_conv_shapley_is_exact_at_initialisation(layers: int, seed: int) -> None:
    torch.manual_seed(seed)
    net = HarsanyiCNN(1, 4, image_size=(3, 4), channels=6, num_layers=layers).double()
    assert net.n_players == 12
    x = torch.randn(3, 1, 3, 4, dtype=torch.float64)
    phi = net.shapley(x).detach()
    assert phi.shape == (3, 12, 4)
    expected = brute_force(conv_values(net, x))
    assert float(phi.abs().max()) > 1e-3
    assert torch.allclose(phi, expected, atol=1e-5, rtol=0)
    assert torch.allclose(phi.sum(1), net(x), atol=1e-12)
    if layers >= 2:
        assert fields_have_interactions(net.receptive_fields())


def test_conv_shapley_is_exact_after_real_training() -> None:
    # digits, centre 6×6 crop, stem max-pooled to a 3×3 grid: 9 players
    L.seed_everything(0, verbose=False)
    x_train, y_train = load_digits_tensors("train")
    x_val, y_val = load_digits_tensors("val")
    x_train, x_val = x_train[:, :, 1:7, 1:7], x_val[:, :, 1:7, 1:7]
    net = HarsanyiCNN(1, 10, image_size=(6, 6), channels=12, num_layers=2, stem_pool=True)
    model = Classifier(net, num_classes=10)
    gen = torch.Generator().manual_seed(0)
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=64, shuffle=True, generator=gen)
    val = DataLoader(TensorDataset(x_val, y_val), batch_size=300)
    trainer = quiet_trainer(6)
    trainer.fit(model, train, val)
    assert float(trainer.callback_metrics["val/acc"]) > 0.6  # chance is 0.1
    net64 = copy.deepcopy(model.net).double().eval()
    x = x_val[:4].double()
    phi = net64.shapley(x).detach()
    assert phi.shape == (4, 9, 10)
    expected = brute_force(conv_values(net64, x))
    assert float(phi.abs().max()) > 1e-2
    assert torch.allclose(phi, expected, atol=1e-5, rtol=0)


def test_conv_masked_forward_and_bad_inputs() -> None:
    torch.manual_seed(0)
    net = HarsanyiCNN(2, 3, image_size=(4, 4), channels=4, num_layers=1, stem_pool=True).double()
    assert net.grid == (2, 2) and net.n_players == 4
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    assert torch.allclose(net.masked_forward(x, coalitions(4)), conv_values(net, x), atol=1e-12)
    with pytest.raises(ValueError, match=r"\(B, 2, 4, 4\)"):
        net(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, 2, 4, 4\)"):
        net.shapley(torch.zeros(2, 2, 5, 4))
    with pytest.raises(ValueError, match="present"):
        net.masked_forward(x, torch.ones(3, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="image_size"):
        HarsanyiCNN(1, 2, image_size=(1, 1), stem_pool=True)
    with pytest.raises(ValueError, match="channels"):
        HarsanyiCNN(1, 2, channels=0)


# ---------------------------------------------------------------------------- data and configs


def test_tabular_data_modules() -> None:
    data = BreastCancerDataModule(seed=0)
    assert (data.num_features, data.num_classes) == (30, 2)
    sizes = {s: len(data.tensors(s)[0]) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 569 and sizes["test"] == 114
    x_train, y_train = data.tensors("train")
    assert torch.allclose(x_train.mean(0), torch.zeros(30), atol=1e-5)  # baseline 0 = training mean
    assert torch.allclose(x_train.std(0), torch.ones(30), atol=1e-4)
    for split in ("val", "test"):  # stratified: class balance within a few points of the training split
        assert abs(float(data.tensors(split)[1].float().mean()) - float(y_train.float().mean())) < 0.03
    again = BreastCancerDataModule(seed=0)
    assert torch.equal(again.tensors("test")[0], data.tensors("test")[0])
    other = BreastCancerDataModule(seed=1)
    assert not torch.equal(other.tensors("test")[1], data.tensors("test")[1])
    xb, yb = next(iter(data.train_dataloader()))
    assert xb.shape == (64, 30) and xb.dtype == torch.float32 and yb.dtype == torch.long
    wine = WineDataModule()
    assert (wine.num_features, wine.num_classes) == (13, 3)
    with pytest.raises(ValueError, match="not available"):
        TabularDataModule("iris")
    with pytest.raises(ValueError, match="split"):
        data.tensors("dev")


@pytest.mark.parametrize(
    "name", ["model/harsanyinet_mlp", "model/harsanyinet_cnn", "data/breast_cancer", "data/wine"]
)
def test_hydra_configs_instantiate_and_document_every_argument(name: str) -> None:
    path = CONF / f"{name}.yaml"
    for line in path.read_text().splitlines():
        stripped = line.strip()
        is_key = ":" in stripped and not stripped.startswith(("#", "_target_"))
        if is_key and not stripped.endswith(":"):  # (a line ending with ':' opens a nested block)
            assert "#" in stripped, f"{name}: argument without a comment: {line!r}"
    cfg = OmegaConf.load(path)
    obj = instantiate(cfg)
    if name.startswith("model/"):
        assert isinstance(obj, Classifier) and isinstance(obj, L.LightningModule)
        net_cls = HarsanyiNet if "mlp" in name else HarsanyiCNN
        assert isinstance(obj.net, net_cls)
        listed = set(cfg.net) - {"_target_"}
        assert listed == set(inspect.signature(net_cls).parameters)  # every argument is listed
    else:
        assert isinstance(obj, L.LightningDataModule)
        listed = set(cfg) - {"_target_"}
        assert listed == set(inspect.signature(type(obj)).parameters)


def test_mlp_config_trains_on_breast_cancer_config() -> None:
    L.seed_everything(0, verbose=False)
    model = instantiate(OmegaConf.load(CONF / "model/harsanyinet_mlp.yaml"))
    data = instantiate(OmegaConf.load(CONF / "data/breast_cancer.yaml"))
    assert model.net.in_features == data.num_features and model.hparams.num_classes == data.num_classes
    trainer = quiet_trainer(8)
    trainer.fit(model, data)
    assert float(trainer.callback_metrics["val/acc"]) > 0.9
