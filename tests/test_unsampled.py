"""A filter that was never sampled is no finding: on a ResNet-18 with 2,048 players (``net.layer4.*conv*``), a
tiny budget ranks nothing, and every ranking, table, plot, report, summary line and repair says so instead of
listing or cutting filters in index order. Also: the messages of issue 19's edge cases, and a third repair method
that works through the repair hooks without any change to ShapleyRepair."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import torchvision
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from conftest import inspect_wandb, quiet_trainer
from nsl import FilterPlayers, NeuronShapley, ShapleyRepair, ShapleyResult
from nsl.callback import data as eval_data
from nsl.repair import REPAIRS, GuidedDropout, PruneCulprits, RepairAction, RepairContext, RepairMethod
from nsl.report import result_scalars, top_rows, value_histogram, write_csv
from nsl.report.compare import main as report_main
from nsl.shapley import ESTIMATORS

LAYERS = "net.layer4.*conv*"  # 4 convolutions of 512 filters: 2,048 players
N = 2048
NAN = float("nan")


class ResNetModule(L.LightningModule):
    """A user's own module: torchvision's ResNet-18 for 10 classes on 32×32 images, dict batches."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torchvision.models.resnet18(num_classes=10)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return F.cross_entropy(self(batch["image"]), batch["label"])

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.log("val_loss", F.cross_entropy(self(batch["image"]), batch["label"]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Colours(Dataset):
    """10 colour classes: class c shifts the mean of each RGB channel by its own amount; dict records."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % 10
        shift = torch.linspace(-1, 1, 10)[self.y].view(-1, 1, 1, 1) * torch.tensor([1.0, -0.5, 0.25]).view(1, 3, 1, 1)
        self.x = torch.randn(n, 3, 32, 32, generator=g) * 0.5 + shift

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": self.x[i], "label": self.y[i]}


class ColourData(L.LightningDataModule):
    """32 training, 128 validation and 64 test images, batches of 16."""

    def train_dataloader(self) -> DataLoader:
        return DataLoader(Colours(32, 0), batch_size=16)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(Colours(128, 1), batch_size=16)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(Colours(64, 2), batch_size=16)


@pytest.fixture(scope="module")
def names() -> list[str]:
    L.seed_everything(0, verbose=False)
    return FilterPlayers(ResNetModule(), LAYERS).names


def hand_result(names: list[str], ranked: int = 8, few: int = 40, **fields: Any) -> ShapleyResult:
    """2,048 filters: ``ranked`` with 5 samples each (values -0.02, -0.015, ...), ``few`` with one sample and large
    values (the trap: an estimate from one sample), every other filter never sampled (value 0, NaN error)."""
    values = torch.zeros(N, dtype=torch.float64)
    stderr = torch.full((N,), NAN, dtype=torch.float64)
    counts = torch.zeros(N, dtype=torch.int64)
    where = (torch.arange(ranked) * 7 + 700) % N  # spread out, not the first filters (7 is prime to 2,048)
    values[where] = torch.linspace(-0.02, 0.03, ranked, dtype=torch.float64)
    stderr[where] = 0.001
    counts[where] = 5
    one = torch.arange(3, 3 + few)
    values[one] = torch.where(one % 2 == 0, 0.5, -0.5).double()
    counts[one] = 1
    return ShapleyResult(values, stderr, counts, n_evals=10, converged=False, k=10, names=names, method="tmab",
                         **fields)


# ------------------------------------------------------------------------------------------------ the result
def test_a_result_tells_not_sampled_and_too_few_samples_from_ranked_values(names: list[str]) -> None:
    result = hand_result(names)
    status = result.sample_status()
    assert (status.count("ranked"), status.count("too few samples"), status.count("not sampled")) == (8, 40, 2000)
    ranked = set(result.ranked.nonzero().squeeze(1).tolist())
    assert len(ranked) == result.n_ranked == 8
    # Rankings never put an unranked filter among the top, at either end (the ±0.5 one-sample values included).
    assert len(result.top_k) == 8 and set(result.top_k.tolist()) == ranked
    assert set(result.culprits(5, negative=True).tolist()) <= ranked
    assert result.values[result.culprits(1, negative=True)].item() == pytest.approx(-0.02)
    order = result.ranking()
    assert len(order) == N and set(order[:8].tolist()) == ranked
    assert order[8:].tolist() == sorted(set(range(N)) - ranked)  # the rest after, in index order
    # The summary sentence, with the budget that would rank everyone: 4,040 samples missing, 8 per evaluation.
    assert result.evals_to_rank() == 10 + math.ceil((2000 * 2 + 40) / ((8 * 5 + 40) / 10))
    assert result.rank_note("filters") == (
        "8 of 2,048 filters ranked; 2,000 not sampled and 40 with fewer than 2 samples left out (they need 2 "
        "samples each: about 515 evaluations in all)"
    )
    none = hand_result(names, ranked=0)
    assert none.n_ranked == 0 and len(none.top_k) == 0 and len(none.culprits(5)) == 0
    assert none.rank_note("filters").startswith("2,048 filters, 10 evaluations: no ranking (2,008 not sampled and "
                                                "40 with fewer than 2 samples; a ranking needs 2 samples each); "
                                                "needs about ")
    # A stricter minimum is kept with the result; exact values and deterministic scores rank everyone.
    strict = dataclasses.replace(result, min_rank_samples=6)
    assert strict.n_ranked == 0 and ShapleyResult.from_dict(strict.to_dict()).min_rank_samples == 6
    assert dataclasses.replace(result, method="exact").n_ranked == N
    scores = ShapleyResult(result.values, torch.zeros(N, dtype=torch.float64), torch.zeros(N, dtype=torch.int64),
                           0, True)
    assert scores.n_ranked == N and scores.rank_note() == ""


def test_tables_histograms_and_logged_scalars_show_ranked_filters_only(names: list[str], tmp_path: Path) -> None:
    result = hand_result(names)
    rows = top_rows(result, 10)
    assert [r[0] for r in rows] == list(range(1, 9)) and all(r[5] == 5 for r in rows)
    assert top_rows(hand_result(names, ranked=0), 10) == []
    lines = write_csv(result, tmp_path / "accuracy.csv").read_text().splitlines()
    assert lines[0] == "rank,filter,layer,value,stderr,samples,status" and len(lines) == N + 1
    first, unsampled = lines[1].split(","), next(line.split(",") for line in lines if line.endswith("not sampled"))
    assert first[0] == "1" and first[-1] == "ranked"
    assert unsampled[0] == "" and unsampled[3:5] == ["", ""]  # no rank, no value: there is no estimate
    assert sum(line.endswith(",too few samples") and line.startswith(",") for line in lines) == 40
    figure = value_histogram(result, title="accuracy: Shapley values")
    (ax,) = figure.axes
    assert sum(p.get_height() for p in ax.patches) == 8  # only the ranked filters are drawn
    assert ax.get_title() == "accuracy: Shapley values\n(8 of 2,048 filters ranked; 2,040 with < 2 samples not shown)"
    scalars = result_scalars("shapley/accuracy", result)
    assert scalars["shapley/accuracy/ranked"] == 8 and scalars["shapley/accuracy/top1_value"] == pytest.approx(0.03)
    empty = result_scalars("shapley/accuracy", hand_result(names, ranked=0))
    assert empty["shapley/accuracy/ranked"] == 0 and "shapley/accuracy/top1_value" not in empty


def test_nsl_report_prints_na_for_concentration_and_lists_no_unsampled_filter(names: list[str], tmp_path: Path,
                                                                               capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "multirun"
    hand_result(names, ranked=0).save((root / "0" / "neuron_shapley").mkdir(parents=True) or
                                      root / "0" / "neuron_shapley" / "accuracy.pt")
    complete = hand_result(names, ranked=N, few=0)
    complete.save((root / "1" / "neuron_shapley").mkdir(parents=True) or root / "1" / "neuron_shapley" / "accuracy.pt")
    assert report_main([str(root)]) == 0
    text = (root / "report.md").read_text()

    def row(label: str) -> list[str]:
        line = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
        return [c.strip() for c in line.strip("|").split("|")][1:]

    na = "n/a (only 0 of 2,048 filters sampled enough to rank)"
    assert row("Gini of abs(value)")[0] == na and row("filters holding half of Σ abs(value)")[0] == na
    assert row("sum of values")[0] == na
    assert row("ranked filters") == ["0 of 2,048 (2,048 with < 2 samples)", "2,048"]
    assert re.fullmatch(r"0\.\d{3}", row("Gini of abs(value)")[1])  # every filter ranked: a number
    assert row("#1 (highest)")[0] == "—" and row("#1 (highest)")[1].startswith("net.layer4.")
    assert "net.layer4.0.conv1:0 " not in "".join(line.split("|")[2] for line in text.splitlines()[1:]
                                                   if line.startswith("| #"))
    assert (root / "report_accuracy_values.png").is_file()
    capsys.readouterr()


# ------------------------------------------------------------------------------------------------ repairs, unit
def test_repair_methods_never_choose_or_drop_an_unranked_filter(names: list[str]) -> None:
    result = hand_result(names)
    for method in (PruneCulprits(k=5, only_signed=False), PruneCulprits(k=5, z=0), PruneCulprits(k=50)):
        assert set(method.culprits(result, negative=True).tolist()) <= set(result.ranked.nonzero().squeeze(1).tolist())
    assert len(PruneCulprits(k=5, only_signed=False).culprits(hand_result(names, ranked=0), negative=True)) == 0
    # Why nothing is pruned: noise (the most harmful ranked filter does not clear z standard errors), not "harmless".
    noisy = dataclasses.replace(result, stderr=torch.where(result.ranked, 0.05, NAN).double())
    why = PruneCulprits(k=5).why_none(noisy, negative=True, game="accuracy")
    assert why.startswith("no filter of 'accuracy' is harmful beyond noise: none of the 8 ranked filters has a "
                          "negative value clearing z=2 standard errors (the most harmful, net.layer4.")
    assert why.endswith("does not); lower z, or give the analysis a larger budget; 2,040 filters with fewer than 2 "
                        "samples were not considered")
    assert len(PruneCulprits(k=5).culprits(noisy, negative=True)) == 0
    probs = GuidedDropout(p=0.2).probabilities(result, negative=False)
    assert bool((probs[~result.ranked] == 0).all())
    assert float(probs[result.ranked].double().mean()) == pytest.approx(0.2)
    assert int(GuidedDropout(p=0.2, mode="culprits", k=50).probabilities(result, False).count_nonzero()) == 8


# ------------------------------------------------------------------------------------------------ a real fit
class PreRepair(L.Callback):
    """The weights when training ended, before any repair."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def test_a_tiny_budget_is_reported_as_no_ranking_everywhere_and_the_repair_cuts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(project="nsl-test", save_dir=str(tmp_path), offline=True)
    shapley = NeuronShapley("accuracy", layers=LAYERS, eval_size=16, max_evals=4, seed=0)
    # on the analysis' own (Shapley) values, which cannot rank anything yet
    repair = ShapleyRepair("prune", semivalue="shapley", k=5, only_signed=False, physical=True, heldout_size=32)
    pre = PreRepair()
    L.seed_everything(0, verbose=False)
    model = ResNetModule()
    trainer = quiet_trainer(1, limit_train_batches=1, limit_val_batches=1, default_root_dir=tmp_path,
                            callbacks=[shapley, pre, repair], logger=logger)
    with caplog.at_level(logging.INFO):
        trainer.fit(model, ColourData())
    result = shapley.results["accuracy"]
    assert result.n_players == N and result.n_ranked == 0, "a 4-evaluation budget cannot give 2,048 filters 2 samples"
    log = caplog.text
    # The summary line says plainly that there is no ranking, and what budget would give one; no "top" filters.
    line = next(line for line in log.splitlines() if "[NeuronShapley] accuracy @ epoch" in line)
    assert re.search(r"; 2,048 filters, [\d,]+ evaluations: no ranking \([\d,]+ not sampled.*\); needs about "
                     r"[\d,]+ evaluations( \([\d,]+ rows\))?; raise max_evals or max_seconds, or select fewer layers; "
                     r"saved to", line)
    assert "top:" not in line
    out = tmp_path / "neuron_shapley"
    rows = (out / "accuracy.csv").read_text().splitlines()[1:]
    assert len(rows) == N and all(r.startswith(",") and r.endswith(("not sampled", "too few samples")) for r in rows)
    assert not (out / "accuracy_curve.pt").exists()  # no removal curve of a ranking that does not exist
    # The repair refused and said why; it changed nothing, so nothing was rolled back and no weights were written.
    assert repair.outcome == "unchanged"
    assert repair.reason.startswith("nothing to repair: the analysis of 'accuracy' cannot rank its filters yet: "
                                    "2,048 filters, ")
    assert repair.reason.endswith("Give it a larger budget (max_evals, max_seconds) or fewer layers")
    assert "[ShapleyRepair] unchanged: nothing to repair: the analysis of 'accuracy' cannot rank" in log
    assert "harmful value" not in log and "rolled back" not in log
    assert not (out / "repaired_model.pt").exists()
    assert "Outcome: unchanged: nothing to repair:" in (out / "repair.md").read_text()
    assert model.net.layer4[0].conv1.out_channels == 512
    assert all(torch.equal(v, pre.state[k]) for k, v in model.state_dict().items())
    # W&B: an empty top-k table, no histogram of zero estimates, 0 ranked filters, the outcome in the summary.
    run_dir = Path(logger.experiment.dir).parent
    logger.experiment.finish()
    history: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    for record in inspect_wandb(run_dir):
        if record.get("type") == "history":
            history.update(record["history"]["item"])
        elif record.get("type") == "summary":
            summary.update(record["summary"].get("update", {}))
    assert history["shapley/accuracy/ranked"] == 0 and "shapley/accuracy/values._type" not in history
    table = json.loads((run_dir / "files" / history["shapley/accuracy/top_k.path"]).read_text())
    assert table["data"] == []
    assert summary["repair/outcome"] == "unchanged" and summary["repair/reason"] == repair.reason


# ------------------------------------------------------------------------------------------------ item 7 messages
def test_eval_size_beyond_the_validation_data_warns_before_training(tmp_path: Path) -> None:
    seen: list[list[str]] = []

    class FirstStep(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int) -> None:
            seen.append([str(w.message) for w in caught])

    shapley = NeuronShapley("accuracy", layers=LAYERS, eval_size=5000, every_n_epochs=5, at_fit_end=False)
    L.seed_everything(0, verbose=False)
    trainer = quiet_trainer(1, limit_train_batches=1, limit_val_batches=0, default_root_dir=tmp_path,
                            callbacks=[shapley, FirstStep()])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(ResNetModule(), ColourData())
    expected = ("NeuronShapley: eval_size=5000 but the validation data holds only 128 examples, so the analysis uses "
                "all 128. Set eval_size=128 (or less) to silence this warning, or give more validation data.")
    assert expected in seen[0]  # already said when the first training step started
    assert len(shapley.evaluation_data(trainer)) == 128
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # enough data, or data given directly: nothing to say
        eval_data.collect(ColourData().val_dataloader(), 100)
        eval_data.from_tensors((torch.zeros(4, 3, 32, 32), torch.zeros(4, dtype=torch.long)), 5000)


def test_a_layer_pattern_without_the_module_prefix_suggests_the_full_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as error:
        FilterPlayers(ResNetModule(), "layer4.*conv*")
    assert str(error.value).startswith(
        "layer pattern 'layer4.*conv*' matches no module; did you mean 'net.layer4.*conv*' (matches 4: "
        "['net.layer4.0.conv1', 'net.layer4.0.conv2', 'net.layer4.1.conv1', 'net.layer4.1.conv2'])? Names are full "
        "module paths"
    )
    with pytest.raises(ValueError, match=r"did you mean 'net\.layer4\.\*' \(matches 5"):
        FilterPlayers(ResNetModule(), "net.layer4")  # a block, not a layer: the layers inside it
    with pytest.raises(ValueError, match=r"the closest layer names are \['net\.layer4\.0\.conv1'"):
        FilterPlayers(ResNetModule(), "net.layr4.0.conv1")
    with pytest.raises(ValueError, match=r"did you mean 'net\.layer4\.\*conv\*'"):  # before any training step
        quiet_trainer(1, default_root_dir=tmp_path, callbacks=[NeuronShapley(layers="layer4.*conv*")]).fit(
            ResNetModule(), ColourData())


# ------------------------------------------------------------------------------------------------ item 8: hooks
@dataclass(frozen=True)
class HalveCulprits(RepairMethod):
    """A third repair: halve the weights of the ``k`` culprits' filters (a soft prune), at fit end.

    ``pick="unranked"`` halves filters without samples instead: the repair must refuse and undo that.
    """

    k: int = 3
    pick: str = "culprits"

    def repair(self, context: RepairContext) -> RepairAction:
        assert context.result is not None
        if self.pick == "culprits":
            chosen = context.result.culprits(self.k, negative=context.negative)
        else:
            chosen = (~context.result.ranked).nonzero().squeeze(1)[: self.k]
        saved = []
        with torch.no_grad():
            for i in chosen.tolist():
                layer, channel = context.players.names[i].rsplit(":", 1)
                weight = context.model.get_submodule(layer).weight
                saved.append((weight, int(channel), weight[int(channel)].clone()))
                weight[int(channel)] *= 0.5

        def revert() -> None:
            with torch.no_grad():
                for weight, channel, old in saved:
                    weight[channel] = old

        return RepairAction(f"halved {len(chosen)} culprits of {context.game}", chosen, revert=revert)


def weight_scores(game: Any, top_k: int = 10, names: list[str] | None = None) -> ShapleyResult:
    """A registered estimator for the test: each filter's L1 weight norm, a deterministic score (standard error 0)
    for the even filters; the odd ones are left unsampled (NaN standard error, no samples)."""
    modules = dict(game.model.named_modules())
    values = torch.cat([modules[layer.name].weight.detach().abs().flatten(1).sum(1) for layer in game.players.layers])
    n = len(values)
    stderr = torch.where(torch.arange(n) % 2 == 0, 0.0, NAN).double()
    return ShapleyResult(values.double(), stderr, torch.zeros(n, dtype=torch.int64), 0, True, k=top_k, names=names,
                         method="weight_scores")


@pytest.fixture
def registered() -> Any:
    REPAIRS.register("halve", HalveCulprits)
    ESTIMATORS.register("weight_scores", weight_scores)
    yield
    REPAIRS.unregister("halve")
    ESTIMATORS.unregister("weight_scores")


@pytest.mark.parametrize("pick", ["culprits", "unranked"])
def test_a_third_registered_repair_method_works_through_the_hooks(tmp_path: Path, registered: Any, pick: str) -> None:
    shapley = NeuronShapley("accuracy", layers=LAYERS, estimator="weight_scores", eval_size=16, removal_curve=False,
                            verbose=False)
    repair = ShapleyRepair("halve", pick=pick, heldout_size=32, min_improvement=None, max_accuracy_drop=None)
    pre = PreRepair()
    L.seed_everything(0, verbose=False)
    model = ResNetModule()
    trainer = quiet_trainer(1, limit_train_batches=1, limit_val_batches=1, default_root_dir=tmp_path,
                            callbacks=[shapley, pre, repair])
    if pick == "unranked":
        with pytest.warns(UserWarning, match=r"halve chose 3 filters with fewer than 2 samples \(\['net\.layer4\.0\."
                                             r"conv1:1', 'net\.layer4\.0\.conv1:3', 'net\.layer4\.0\.conv1:5'\]\)"):
            trainer.fit(model, ColourData())
        assert repair.outcome == "unchanged" and "never acted on; its change was undone" in repair.reason
        assert all(torch.equal(v, pre.state[k]) for k, v in model.state_dict().items())
        return
    trainer.fit(model, ColourData())
    assert repair.name == "halve" and repair.outcome == "kept"
    assert repair.description == "halved 3 culprits of accuracy"
    result = shapley.results["accuracy"]
    culprits = result.culprits(3, negative=True).tolist()
    assert all(i % 2 == 0 for i in culprits)  # ranked (deterministic) filters only
    for i in culprits:
        layer, channel = result.names[i].rsplit(":", 1)
        now = model.get_submodule(layer).weight[int(channel)]
        assert torch.equal(now, pre.state[f"{layer}.weight"][int(channel)] * 0.5)
    assert (tmp_path / "neuron_shapley" / "repaired_model.pt").is_file()
    repair.undo()
    assert all(torch.equal(v, pre.state[k]) for k, v in model.state_dict().items())
