"""A physically pruned model reloads into a freshly constructed module: from the saved file and from a checkpoint."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conftest import quiet_trainer
from nsl import FilterPlayers, NeuronShapley, ShapleyRepair, prune_filters
from nsl.data import DigitsDataModule, load_digits_tensors
from nsl.models import Classifier
from nsl.models.zoo import resnet18
from nsl.repair import load_pruned, load_pruned_checkpoint, plan_path, pruning_plan, save_pruned
from nsl.repair.plan import PLAN_KEY


def assert_same_model(a: nn.Module, b: nn.Module, x: Tensor) -> None:
    """Same state_dict keys, shapes and values bit for bit, and bitwise equal outputs in eval mode."""
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key, value in sa.items():
        assert sb[key].shape == value.shape, f"{key}: {tuple(sb[key].shape)} != {tuple(value.shape)}"
        assert torch.equal(sb[key], value), f"{key} differs"
    a.eval(), b.eval()
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


# ------------------------------------------------------------------------------- ResNet-18, 1,024 filters
def test_resnet18_pruned_twice_reloads_from_the_saved_file_bitwise(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Classifier(resnet18(num_classes=10)).eval()
    x = torch.randn(4, 3, 32, 32)
    players = FilterPlayers(model, "net.layer4.*.conv1")
    assert len(players) == 1024
    removed = [3, 100, 511, 512 + 7, 512 + 300]
    prune_filters(model, players, removed, physical=True, example_inputs=x[:2])
    # A second pruning on the already pruned model: the plan keeps both, in order.
    prune_filters(model, FilterPlayers(model, "net.layer3.0.conv1"), [0, 5], physical=True, example_inputs=x[:2])
    assert [model.net.layer4[0].conv1.out_channels, model.net.layer4[1].conv1.out_channels] == [509, 510]
    assert model.net.layer4[0].conv2.in_channels == 509 and model.net.layer3[0].conv1.out_channels == 254

    plan = pruning_plan(model)
    assert plan is not None and [p["root"] for p in plan["prunings"]] == ["", ""]
    assert plan["prunings"][0]["players"] == [players.names[i] for i in removed]
    # Torch-Pruning's own history format: [module, out_channels?, channels] relative to the pruned model.
    assert plan["prunings"][0]["history"] == [["net.layer4.0.conv1", True, [3, 100, 511]],
                                              ["net.layer4.1.conv1", True, [7, 300]]]
    assert torch.count_nonzero(plan["prunings"][0]["example_inputs"]) == 0  # a zero batch: no data is kept

    path = tmp_path / "pruned.pt"
    assert save_pruned(model, path) == [path, tmp_path / "pruned.plan.pt"]
    with pytest.raises(RuntimeError, match=r"size mismatch for net\.layer3\.0\.conv1\.weight"):
        Classifier(resnet18(num_classes=10)).load_state_dict(torch.load(path, weights_only=True))  # the old failure

    torch.manual_seed(1)  # other initial weights: everything must come from the file
    fresh = load_pruned(Classifier(resnet18(num_classes=10)), path)
    assert_same_model(model, fresh, x)
    again = pruning_plan(fresh)  # the reloaded model carries the plan: it can be saved and reloaded again
    assert [(p["history"], p["players"]) for p in again["prunings"]] == [
        (p["history"], p["players"]) for p in plan["prunings"]
    ]


def test_reload_errors_name_the_problem_and_leave_the_module_as_it_was(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Classifier(resnet18(num_classes=10)).eval()
    x = torch.randn(2, 3, 32, 32)
    prune_filters(model, FilterPlayers(model, "net.layer4.0.conv1"), [1, 2], physical=True, example_inputs=x)
    path = tmp_path / "pruned.pt"
    save_pruned(model, path)

    plan_path(path).rename(tmp_path / "elsewhere.pt")  # the plan is missing: the error says what is needed
    fresh = Classifier(resnet18(num_classes=10))
    with pytest.raises(ValueError, match=r"no pruning plan was found .*pruned\.plan\.pt.*save_pruned"):
        load_pruned(fresh, path)
    load_pruned(fresh, path, plan=tmp_path / "elsewhere.pt")  # ... or where it is named
    assert_same_model(model, fresh, x)

    # A plan replayed on another kind of module (5 classes, not 10) fails, and the module is left unpruned.
    other = Classifier(resnet18(num_classes=5))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    wrong_kind = r"net\.fc\.weight: \[5, 512\] vs \[10, 512\].*not the kind the plan was recorded on"
    with pytest.raises(ValueError, match=wrong_kind):
        load_pruned(other, path, plan=tmp_path / "elsewhere.pt")
    assert pruning_plan(other) is None and other.net.layer4[0].conv1.out_channels == 512
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())
    with pytest.raises(ValueError, match="already physically pruned; replay a plan on a freshly constructed"):
        load_pruned(fresh, path, plan=tmp_path / "elsewhere.pt")

    # Weights of an unpruned model need no plan, and a stale plan beside them is removed when they are saved.
    plain = Classifier(resnet18(num_classes=10))
    torch.save(pruning_plan(model), plan_path(path))
    save_pruned(plain, path)
    assert not plan_path(path).exists()
    assert_same_model(plain, load_pruned(Classifier(resnet18(num_classes=10)), path), x)


# ------------------------------------------------------------------------------- through Lightning
class Block(nn.Module):
    """A residual basic block: conv-BN-ReLU-conv-BN plus the identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + x)


class TinyResNet(nn.Module):
    """A ResNet-style digits network: stem, two stages of two residual blocks, global pooling, a linear head."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = nn.Sequential(Block(width), Block(width))
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(2 * width), nn.ReLU())
        self.layer2 = nn.Sequential(Block(2 * width), Block(2 * width))
        self.head = nn.Linear(2 * width, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = self.layer2(self.down(self.layer1(self.stem(x))))
        return self.head(h.mean(dim=(2, 3)))


def test_shapley_repair_physical_pruning_reloads_from_repaired_model_and_checkpoint(tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    model = Classifier(TinyResNet())
    shapley = NeuronShapley("accuracy", layers="net.layer*.*.conv1", top_k=3, eval_size=64, max_evals=120,
                            removal_curve=False, verbose=False, save_checkpoint=False)
    # The residual adds couple conv2 to the stage input, so the inner convs (conv1) are the ones cut out.
    repair = ShapleyRepair("prune", k=3, only_signed=False, physical=True, min_improvement=None,
                           max_accuracy_drop=None, heldout_size=128)
    trainer = quiet_trainer(1, limit_train_batches=4, limit_val_batches=2, default_root_dir=tmp_path,
                            callbacks=[shapley, repair])
    trainer.fit(model, DigitsDataModule(batch_size=64))
    assert repair.outcome == "kept", repair.reason
    widths = [model.net.layer1[0].conv1.out_channels, model.net.layer1[1].conv1.out_channels,
              model.net.layer2[0].conv1.out_channels, model.net.layer2[1].conv1.out_channels]
    assert sum(widths) == 48 - 3
    removed = pruning_plan(model)["prunings"][0]["players"]
    assert len(removed) == 3 and all(name in repair.description for name in removed)

    weights = tmp_path / "neuron_shapley" / "repaired_model.pt"
    assert repair.model_path == weights and plan_path(weights).is_file()
    assert f"pruning plan in {plan_path(weights)}" in (weights.parent / "repair.md").read_text()
    checkpoint = tmp_path / "pruned.ckpt"
    trainer.save_checkpoint(checkpoint)  # ShapleyRepair puts the plan into the checkpoint
    assert PLAN_KEY in torch.load(checkpoint, weights_only=True)

    x = load_digits_tensors("val", val_size=200)[0][:16]
    with pytest.raises(RuntimeError, match="size mismatch"):  # what Lightning alone does with this checkpoint
        Classifier.load_from_checkpoint(checkpoint, net=TinyResNet())
    from_file = load_pruned(Classifier(TinyResNet()), weights)
    assert_same_model(model, from_file, x)
    from_checkpoint = load_pruned(Classifier(TinyResNet()), checkpoint)
    assert_same_model(model, from_checkpoint, x)
    restored = load_pruned_checkpoint(Classifier, checkpoint, net=TinyResNet())
    assert type(restored) is Classifier and restored.hparams.num_classes == 10
    assert_same_model(model, restored, x)

    # The reloaded model trains on with Lightning as the original would.
    restored.train()
    quiet_trainer(1, limit_train_batches=1, limit_val_batches=0).fit(restored, DigitsDataModule(batch_size=64))
    assert restored.net.layer1[0].conv1.weight.shape == model.net.layer1[0].conv1.weight.shape

    repair.undo()  # back to the unpruned model: it carries no plan any more
    assert pruning_plan(model) is None and model.net.layer1[0].conv1.out_channels == 8

