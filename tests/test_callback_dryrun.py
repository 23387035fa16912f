"""The callback's dry run: a user's own model and data fail before the first optimizer step, not after training.

Every test fits a real Trainer for 2 epochs with ``every_n_epochs=None`` (the analysis would only run when
training ends) and checks that the error names the bad value and that no optimizer step ran.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import OmegaConf
from user_model import UserNet, as_dict, loaders, one_thread, synthetic, user_trainer

from nsl import NeuronShapley, ShapleyRepair
from nsl.callback.specs import parse_games

pytestmark = pytest.mark.usefixtures(one_thread.__name__)

FAST = {"every_n_epochs": None, "max_evals": 40, "eval_size": 32, "verbose": False, "removal_curve": False,
        "top_k": 3}
CONF = Path(__file__).resolve().parents[1] / "nsl" / "conf"


def fails_before_training(
    tmp_path: Path, match: str, *, exc: type[Exception] = ValueError, model: UserNet | None = None,
    make: Any = as_dict, val: tuple | None = None, groups: torch.Tensor | None = None, **callback: Any,
) -> None:
    """Fit ``model`` for 2 epochs with a NeuronShapley(**callback); it must raise ``exc`` matching ``match``
    before any optimizer step (the callback is built inside, so a constructor error counts as well)."""
    L.seed_everything(0, verbose=False)
    model = model or UserNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train, val_loader = loaders(make, val=val, groups=groups)
    trainer = None
    with pytest.raises(exc, match=match):
        trainer = user_trainer(tmp_path, [NeuronShapley(**{**FAST, **callback})], epochs=2)
        trainer.fit(model, train, val_loader)
    assert model.optimizer_steps == 0
    assert trainer is None or trainer.global_step == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "weights changed"


def test_class_without_samples(tmp_path: Path) -> None:
    fails_before_training(
        tmp_path, r"game 'class_9' cannot be played: class_index=9 has no sample.*labels present: \[0, 1, 2, 3\]",
        model=UserNet(n_classes=10), games=[{"kind": "class", "class_index": 9}],
    )


def test_misspelt_game_key_fails_in_the_constructor(tmp_path: Path) -> None:
    fails_before_training(
        tmp_path, r"unknown option\(s\) \['clas_index'\]; ClassGame accepts \[.*'class_index'.*\]",
        games=[{"kind": "class", "clas_index": 1}],
    )
    with pytest.raises(ValueError, match=r"\['attak'\]; AdversarialGame accepts \[.*'attack'"):
        parse_games([{"kind": "adversarial", "attak": "fgsm"}])


@pytest.mark.parametrize(
    ("groups", "match"),
    [
        (None, r"game 'fairness' cannot be played: the evaluation data has no groups.*data=\(inputs, targets, groups"),
        (torch.zeros(32, dtype=torch.long), r"game 'fairness' cannot be played: .*a single group \[0\]"),
    ],
)
def test_fairness_without_groups(tmp_path: Path, groups: torch.Tensor | None, match: str) -> None:
    fails_before_training(tmp_path, match + r".*required: false", groups=groups, games=["accuracy", "fairness"])


def test_empty_data_given_directly(tmp_path: Path) -> None:
    empty = (torch.empty(0, 3, 16, 16), torch.empty(0, dtype=torch.long))
    fails_before_training(tmp_path, r"data= is empty: it holds a tuple of 2: \[tensor of shape \(0, 3, 16, 16\)",
                          data=empty)


def test_empty_validation_set(tmp_path: Path) -> None:
    empty = (torch.empty(0, 3, 16, 16), torch.empty(0, dtype=torch.long))
    fails_before_training(tmp_path, r"evaluation data is empty.*NeuronShapley\(data=\(inputs, targets\[, groups\]\)\)",
                          val=empty)


@pytest.mark.parametrize(("bad", "match"), [(7, r"target 7 is out of range"), (-1, r"target -1 is out of range")])
def test_labels_out_of_range(tmp_path: Path, bad: int, match: str) -> None:
    x, y = synthetic(32, seed=1)
    y[5] = bad
    fails_before_training(tmp_path, match + r" for a model with 4 classes \(targets must lie in \[0, 3\]\)", val=(x, y))


def test_nan_inputs(tmp_path: Path) -> None:
    x, y = synthetic(32, seed=1)
    x[3, 0, 2, 2] = float("nan")
    x[9, 1] = float("nan")
    fails_before_training(tmp_path, r"2 of the 32 evaluation inputs hold NaN or inf values \(257 NaN values; first "
                                    r"at example 3\)", val=(x, y))


def test_dict_batches_with_unknown_keys(tmp_path: Path) -> None:
    fails_before_training(
        tmp_path, r"cannot find the inputs and targets in an evaluation batch that is a mapping with keys "
                  r"\['img', 'lbl'\]: inputs are read from the first of \['x', .*'image'.*data=\(inputs, targets",
        model=UserNet(unpack=lambda b: (b["img"], b["lbl"])), make=lambda x, y, g: {"img": x, "lbl": y},
    )


def test_tuple_batches_in_the_wrong_order(tmp_path: Path) -> None:
    fails_before_training(
        tmp_path, r"targets of an evaluation batch are a tensor of shape \(16, 3, 16, 16\) and dtype torch.float32.*"
                  r"looks like \(targets, inputs\).*NeuronShapley\(data=",
        model=UserNet(unpack=lambda b: (b[1], b[0])), make=lambda x, y, g: (y, x),
    )


@pytest.mark.parametrize(
    ("callback", "match"),
    [
        ({"top_k": 20}, r"^top_k=20 is not accepted for N=8 players; use an int in \[1, 7\] or None \(min\(10, "
                        r"N − 1\)\)\. The players are the filters of layers='stem': select more layers"),
        ({"games": [{"kind": "accuracy", "top_k": 8}]}, r"^accuracy\.top_k=8 is not accepted for N=8 players; use an "
                                                         r"int in \[1, 7\]"),
        # Before N is known (the constructor) the same rule and message, with N − 1 unresolved.
        ({"top_k": 2.5}, r"^top_k=2\.5 is not accepted; use an int in \[1, N − 1\] or None"),
        ({"games": [{"kind": "accuracy", "top_k": 0}]}, r"^accuracy\.top_k=0 is not accepted; use an int in "
                                                         r"\[1, N − 1\]"),
    ],
)
def test_top_k_not_below_the_number_of_filters(tmp_path: Path, callback: dict, match: str) -> None:
    fails_before_training(tmp_path, match, layers="stem", **callback)


def test_default_top_k_is_ten_capped_below_the_number_of_filters(tmp_path: Path) -> None:
    """The callback's default is every estimator's: min(10, N − 1), so a layer of 8 filters separates 7."""
    L.seed_everything(0, verbose=False)
    train, val = loaders()
    cb = NeuronShapley(**{**FAST, "top_k": None}, layers="stem")
    user_trainer(tmp_path, [cb], epochs=1).fit(UserNet(), train, val)
    assert cb.results["accuracy"].k == 7 and cb.results["accuracy"].n_players == 8


@pytest.mark.parametrize("with_groups", [False, True])
def test_optional_game_is_skipped_when_the_data_lacks_what_it_needs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, with_groups: bool
) -> None:
    """The user's dict batches with known keys train and play; ``required: false`` fairness runs only with groups."""
    caplog.set_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero")
    L.seed_everything(0, verbose=False)
    groups = (torch.arange(32) % 2) if with_groups else None
    train, val = loaders(groups=groups)
    cb = NeuronShapley(games=["accuracy", {"kind": "fairness", "required": False}], **FAST)
    model = UserNet()
    trainer = user_trainer(tmp_path, [cb], epochs=2)
    trainer.fit(model, train, val)
    assert trainer.global_step == 8 and model.optimizer_steps == 8
    skipped = [r.getMessage() for r in caplog.records if "skipping game" in r.getMessage()]
    if with_groups:
        assert sorted(cb.results) == ["accuracy", "fairness"] and not skipped and cb.skipped == {}
    else:
        assert sorted(cb.results) == ["accuracy"] and cb.history["fairness"] == []
        assert len(skipped) == 1 and "'fairness' (required: false): the evaluation data has no groups" in skipped[0]
        with pytest.raises(ValueError, match="game 'fairness' was skipped before training"):
            cb.current_result(trainer, model, "fairness")


def test_all_games_config_makes_fairness_optional() -> None:
    games = OmegaConf.to_container(OmegaConf.load(CONF / "game" / "all.yaml")["games"])
    specs = {s.name: s for s in parse_games(games)}
    assert not specs["fairness"].required
    assert all(s.required for name, s in specs.items() if name != "fairness")


@pytest.mark.parametrize("repair_first", [False, True])
def test_repair_targets_a_played_game_when_fairness_was_skipped(tmp_path: Path, repair_first: bool) -> None:
    """A prune repair defaults to the first defect game; fairness skipped on data without groups leaves the
    adversarial game (whichever callback comes first), and naming the skipped game fails before training."""
    L.seed_everything(0, verbose=False)
    train, val = loaders()
    games = ["accuracy", {"kind": "fairness", "required": False}, {"kind": "adversarial", "attack": "fgsm"}]
    cb = NeuronShapley(games=games, **FAST)
    repair = ShapleyRepair("prune", k=1, only_signed=False, heldout_size=32, min_improvement=None,
                           max_accuracy_drop=None)
    trainer = user_trainer(tmp_path, [repair, cb] if repair_first else [cb, repair], epochs=1)
    trainer.fit(UserNet(), train, val)
    assert cb.skipped.keys() == {"fairness"} and repair._spec is not None and repair._spec.name == "adversarial"
    assert repair.outcome == "kept" and repair.description.startswith("pruned 1 culprits of adversarial")

    model = UserNet()
    named = ShapleyRepair("prune", game="fairness", k=1, heldout_size=32)
    trainer = user_trainer(tmp_path, [NeuronShapley(games=games, **FAST), named], epochs=2)
    with pytest.raises(MisconfigurationException, match=r"game='fairness' was skipped by the analysis before"):
        trainer.fit(model, train, val)
    assert model.optimizer_steps == 0
