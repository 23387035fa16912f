"""The semivalue as a user option: the callback, the Hydra app and the repair, with a real Trainer on real digits."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from conftest import TINY_TRAIN, compose_train, quiet_trainer
from nsl import NeuronShapley, ShapleyRepair, ShapleyResult
from nsl.data import DigitsDataModule
from nsl.models import Classifier, SmallCNN
from nsl.repair.methods import PruneCulprits
from nsl.train import train

FAST = {"max_evals": 60, "eval_size": 48, "verbose": False, "removal_curve": False}
# A short run of the real app on plain digits: a tiny CNN trained 8 steps (enough for its filters to matter), one
# game, no repair, no test pass, no logger, no checkpoints.
APP = [*TINY_TRAIN, "trainer.max_epochs=2", "data=digits", "game=accuracy", "repair=none", "logger=none", "test=false",
       "callbacks.neuron_shapley.removal_curve=false", "callbacks.model_checkpoint=null"]




def untrained() -> Classifier:
    L.seed_everything(0, verbose=False)
    return Classifier(SmallCNN(channels=(4, 6, 8)))


def fit(tmp_path: Path, callbacks: list, model: Classifier | None = None, epochs: int = 1) -> Classifier:
    model = model or untrained()
    trainer = quiet_trainer(epochs, default_root_dir=tmp_path, limit_train_batches=4, callbacks=callbacks)
    trainer.fit(model, DigitsDataModule())
    return model


def fails_before_training(tmp_path: Path, callbacks: list, match: str) -> None:
    """Fitting with ``callbacks`` raises a ValueError matching ``match`` with the weights still untouched."""
    model = untrained()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        fit(tmp_path, callbacks, model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "a training step ran"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"semivalue": "banzaf"}, r"semivalue='banzaf' is not accepted; use 'shapley', 'banzhaf', 'beta"),
        ({"semivalue": "beta(0,4)"}, r"semivalue='beta\(0,4\)' is not accepted"),
        ({"games": [{"kind": "accuracy", "semivalue": "owen"}]}, r"game 'accuracy': semivalue='owen' is not accepted"),
    ],
)
def test_bad_semivalue_fails_before_anything_runs(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NeuronShapley(**kwargs)
    with pytest.raises(ValueError, match=r"ShapleyRepair: semivalue='banzaf' is not accepted"):
        ShapleyRepair("prune", semivalue="banzaf")


def test_bad_semivalue_in_the_app_fails_before_training(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, [*APP, "game.semivalue=banzaf"])
    with pytest.raises(InstantiationException, match=r"semivalue='banzaf' is not accepted; use 'shapley'"):
        train(cfg)
    assert not list(tmp_path.rglob("*.ckpt")) and not (tmp_path / "neuron_shapley").exists()


def test_semivalue_an_estimator_cannot_take_fails_up_front(tmp_path: Path) -> None:
    # monte_carlo has no `semivalue` keyword: it estimates Shapley values only, so asking it for others fails now.
    with pytest.raises(ValueError, match=r"semivalue='banzhaf' needs an estimator that takes `semivalue`; "
                                         r"estimator 'monte_carlo'.*'tmab'"):
        NeuronShapley(estimator="monte_carlo", semivalue="banzhaf")
    with pytest.raises(ValueError, match=r"game 'accuracy': semivalue='beta\(1,16\)' needs an estimator"):
        NeuronShapley(games=[{"kind": "accuracy", "semivalue": "beta(1,16)"}], estimator="monte_carlo")
    with pytest.raises(ValueError, match=r"semivalue='banzhaf' needs estimator_kwargs sampler='positions'"):
        NeuronShapley(semivalue="banzhaf", estimator_kwargs={"sampler": "scan"})
    with pytest.raises(ValueError, match=r"estimator_kwargs sets \['semivalue'\]"):
        NeuronShapley(estimator_kwargs={"semivalue": "banzhaf"})
    NeuronShapley(estimator="monte_carlo", semivalue="beta(1,1)")  # that is Shapley: nothing to refuse
    # A repair asking a monte_carlo analysis for Banzhaf values fails at setup, before the first training step.
    shapley = NeuronShapley(estimator="monte_carlo", estimator_kwargs={"n_permutations": 2}, **FAST)
    fails_before_training(tmp_path, [shapley, ShapleyRepair("prune", semivalue="banzhaf")],
                          r"ShapleyRepair semivalue='banzhaf' needs an estimator .* 'monte_carlo'")


def test_game_semivalue_reaches_the_estimator_through_the_app(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    results = {}
    for semivalue in ("shapley", "banzhaf"):
        cfg = compose_train(tmp_path / semivalue, [*APP, "callbacks.neuron_shapley.verbose=true",
                                                   f"game.semivalue={semivalue}"])
        assert cfg.callbacks.neuron_shapley.semivalue == semivalue
        with caplog.at_level(logging.INFO):
            train(cfg)
        out = tmp_path / semivalue / "neuron_shapley"
        results[semivalue] = ShapleyResult.load(out / "accuracy.pt")
        with open(out / "accuracy.csv") as f:
            rows = list(csv.DictReader(f))
        # Shapley's CSV keeps its columns; another semivalue's says which on every row.
        assert [r.get("semivalue") for r in rows] == [None if semivalue == "shapley" else semivalue] * len(rows)
    shapley, banzhaf = results["shapley"], results["banzhaf"]
    assert (shapley.semivalue, banzhaf.semivalue) == ("shapley", "banzhaf")
    assert shapley.names == banzhaf.names and shapley.full_value == banzhaf.full_value  # the same game and model
    assert not torch.allclose(shapley.values, banzhaf.values)  # other weights, other values
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[NeuronShapley] accuracy @")]
    assert len(lines) == 2 and "tmab (banzhaf values)" in lines[1] and "(banzhaf values)" not in lines[0]


def test_multirun_over_semivalues_composes(tmp_path: Path) -> None:
    sweep = ["game.semivalue=shapley,banzhaf,'beta(1,16)'", "callbacks.shapley_repair.semivalue=null,banzhaf"]
    parsed = OverridesParser.create().parse_overrides(sweep)
    jobs = [job for batch in BasicSweeper.split_arguments(parsed, max_batch_size=None) for job in batch]
    assert len(jobs) == 6
    seen = set()
    for job in jobs:
        cfg = compose_train(tmp_path, job)
        shapley = instantiate(cfg.callbacks.neuron_shapley)
        repair = instantiate(cfg.callbacks.shapley_repair)
        assert shapley.estimator == "tmab" and [s.semivalue for s in shapley.specs] == [None] * 4
        seen.add((shapley.semivalue, repair.semivalue))
    # null: the prune method's default, exact leave-one-out
    assert seen == {(s, r) for s in ("shapley", "banzhaf", "beta(1,16)") for r in ("leave_one_out", "banzhaf")}
    # The per-game spelling: one game of game=all gets its own semivalue, the others keep game.semivalue.
    cfg = compose_train(tmp_path, ["game.semivalue=banzhaf", "callbacks.neuron_shapley.games.1.semivalue='beta(1,4)'"])
    shapley = instantiate(cfg.callbacks.neuron_shapley)
    assert [shapley.semivalue_of(s) for s in shapley.specs] == ["banzhaf", "beta(1,4)", "banzhaf", "banzhaf"]


def test_repair_game_semivalue_and_k_live_in_one_place(tmp_path: Path) -> None:
    # conf/repair/prune.yaml states the repair's target as the class defaults do; change both together.
    target = compose_train(tmp_path, ["repair=prune"]).callbacks.shapley_repair
    repair = ShapleyRepair("prune")
    assert (target.game, target.semivalue, target.k) == (repair.game, repair.semivalue, PruneCulprits().k)
    # the defaults the evidence chose over seeds (docs/semivalues.md): exact leave-one-out, one filter
    assert (target.game, target.semivalue, target.k) == (None, "leave_one_out", 1)


def test_repair_on_another_semivalue_plays_it_for_the_pruning(tmp_path: Path) -> None:
    shapley = NeuronShapley("accuracy", **FAST)
    repair = ShapleyRepair("prune", game="accuracy", semivalue="banzhaf", k=2, only_signed=False, heldout_size=64,
                           min_improvement=None, max_accuracy_drop=None)
    fit(tmp_path, [shapley, repair], epochs=3)
    own, other = shapley.results["accuracy"], shapley.results["accuracy_banzhaf"]
    assert (own.semivalue, other.semivalue) == ("shapley", "banzhaf") and not torch.allclose(own.values, other.values)
    assert [h["semivalue"] for h in shapley.history["accuracy"]] == ["shapley", "banzhaf"]
    saved = ShapleyResult.load(tmp_path / "neuron_shapley" / "accuracy_banzhaf.pt")
    assert saved.semivalue == "banzhaf" and torch.equal(saved.values, other.values)
    # The pruned filters are the Banzhaf culprits, and the report says whose values chose them.
    culprits = [other.names[i] for i in other.culprits(2, negative=True).tolist()]
    assert repair.outcome == "kept"
    assert repair.description == f"pruned 2 culprits of accuracy (banzhaf values): {culprits}"
    assert "(banzhaf values)" in (tmp_path / "neuron_shapley" / "repair.md").read_text()


def test_leave_one_out_is_exact_whatever_the_estimator(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # monte_carlo takes no `semivalue`, but leave-one-out needs no estimator: N + 1 evaluations, exact values.
    shapley = NeuronShapley("accuracy", estimator="monte_carlo", semivalue="leave_one_out",
                            **{**FAST, "verbose": True})
    with caplog.at_level(logging.INFO):
        fit(tmp_path, [shapley])
    result = shapley.results["accuracy"]
    n = result.n_players
    assert result.semivalue == "leave_one_out" and result.method == "exact" and result.n_evals == n + 1
    assert result.converged and result.n_ranked == n
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("[NeuronShapley] accuracy @"))
    assert "exact (leave_one_out values) converged=True" in line
