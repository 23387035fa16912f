"""Before training, the callback says what the analysis will cost and whether its budget can rank the filters."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from resnet_user import LAYER4, ResNetUser, colour_classes, resnet_loaders, resnet_trainer
from user_model import one_thread

from nsl import AccuracyGame, FilterPlayers, NeuronShapley
from nsl.callback.cost import RANK_SAMPLES
from nsl.models import Classifier, SmallCNN

pytestmark = pytest.mark.usefixtures(one_thread.__name__)
RANK_ZERO = "lightning.pytorch.utilities.rank_zero"
NEVER_DURING_FIT = {"every_n_epochs": 1, "start_epoch": 1, "at_fit_end": False}  # one epoch: only the dry run


class BeforeEpochZero(L.Callback):
    """Records, when training starts, the estimates the analysis callback holds and the optimizer steps taken."""

    def __init__(self, shapley: NeuronShapley) -> None:
        self.shapley = shapley
        self.seen: dict = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seen = {"estimates": dict(self.shapley.cost_estimates), "step": trainer.global_step}


def test_the_estimate_comes_before_epoch_0_and_warns_when_the_budget_cannot_rank(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=RANK_ZERO)
    torch.manual_seed(0)
    cb = NeuronShapley(layers=LAYER4, eval_size=32, max_seconds=2, **NEVER_DURING_FIT)
    probe = BeforeEpochZero(cb)
    with pytest.warns(UserWarning, match="too few to rank them") as warned:
        resnet_trainer(tmp_path, [cb, probe]).fit(ResNetUser(), *resnet_loaders())
    assert probe.seen["step"] == 0 and set(probe.seen["estimates"]) == {"accuracy"}  # heard before epoch 0
    estimate = cb.cost_estimates["accuracy"]
    assert estimate["players"] == 2048 and estimate["layers"] == {
        f"net.layer4.{b}.conv{c}": 512 for b in (0, 1) for c in (1, 2)
    }
    assert estimate["examples"] == 32 and estimate["sampling"] == "examples"  # accuracy decomposes over examples
    # What the budget buys follows from the measured times: 2 s less the curve's 20 % and the game's build.
    assert estimate["limited_by"].startswith("max_seconds=2")
    seconds = 2 * 0.8 - estimate["build_seconds"]
    assert estimate["estimate_seconds"] == pytest.approx(seconds)
    assert estimate["rows"] == pytest.approx(seconds / estimate["seconds_per_row"], rel=1e-6, abs=1)
    assert estimate["samples_per_filter"] == pytest.approx(estimate["rows"] / 2048)
    assert estimate["samples_per_filter"] < RANK_SAMPLES and estimate["can_rank"] is False
    assert not estimate["likely_certify"] and estimate["rankable_filters"] < 2048
    # The measured time per evaluation is the real one (within a wide margin for a busy machine).
    model = ResNetUser().eval()
    x, y = colour_classes(32)
    game = AccuracyGame(model, FilterPlayers(model, LAYER4), x, y)
    game(torch.rand(2, 2048) < 0.5)
    start = time.perf_counter()
    game(torch.rand(8, 2048) < 0.5)
    per_eval = (time.perf_counter() - start) / 8
    assert per_eval / 10 < estimate["seconds_per_eval"] < per_eval * 10
    # The printed estimate and the warning with its levers.
    printed = "\n".join(r.getMessage() for r in caplog.records if "cost estimate" in r.getMessage())
    assert "players: 2,048 filters in 4 layer(s): net.layer4.0.conv1 (512)" in printed
    assert "per evaluation of the 32 evaluation examples" in printed and "per example row" in printed
    assert "samples per filter" in printed and "cannot rank these filters" in printed
    assert "unlikely to certify" in printed and "rules of thumb" in printed
    message = str(warned[0].message)
    for lever in ("fewer layers (`layers=`): this budget ranks about", "a longer budget: max_seconds≈",
                  "a GPU (the model runs on cpu)"):
        assert lever in message


def test_a_rows_budget_that_can_rank_says_so_and_reaches_the_estimator(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, recwarn: pytest.WarningsRecorder
) -> None:
    """One layer of 512 filters and a budget of 20 rows per filter: enough to rank, no warning; the same max_rows
    bounds the estimator's rows in the run."""
    caplog.set_level(logging.INFO, logger=RANK_ZERO)
    torch.manual_seed(0)
    cb = NeuronShapley(layers="net.layer4.1.conv2", eval_size=32, max_rows=20 * 512, **NEVER_DURING_FIT)
    resnet_trainer(tmp_path, [cb]).fit(ResNetUser(), *resnet_loaders())
    estimate = cb.cost_estimates["accuracy"]
    assert estimate["limited_by"] == "max_rows=10,240" and estimate["rows"] == 10_240
    assert estimate["samples_per_filter"] == 20 and estimate["can_rank"] and estimate["levers"] == []
    assert not [w for w in recwarn if "too few to rank" in str(w.message)]
    assert any("can rank these filters" in r.getMessage() for r in caplog.records)


def test_max_rows_bounds_the_estimators_rows(tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    from nsl.data import DigitsDataModule

    cb = NeuronShapley(eval_size=32, max_rows=3000, removal_curve=False, verbose=False, top_k=3)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, callbacks=[cb], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(Classifier(SmallCNN(channels=(4, 6, 8))), DigitsDataModule())
    result = cb.results["accuracy"]
    assert 0 < result.n_rows <= 3000 + 1024  # at most one batch of rows past the budget
    assert cb.cost_estimates["accuracy"]["limited_by"] == "max_rows=3,000"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_rows": 0}, "max_rows=0 is not accepted"),
        ({"max_rows": 1.5}, "max_rows=1.5 is not accepted"),
        ({"games": [{"kind": "accuracy", "max_rows": -5}]}, "accuracy.max_rows=-5"),
        ({"curve_share": 1.0}, "curve_share=1.0 is not accepted"),
        ({"curve_share": 0}, "curve_share=0 is not accepted"),
    ],
)
def test_bad_budgets_fail_in_the_constructor(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NeuronShapley(**kwargs)


def test_a_rows_budget_reaches_estimators_without_one_as_evaluations_or_is_ignored() -> None:
    # game=all sets max_rows for every game; an estimator that counts full-set evaluations gets the same budget
    # in those, one whose work is fixed ignores it, and each says so once, in the constructor.
    with pytest.warns(UserWarning, match="'monte_carlo' takes no rows budget; it gets the same budget as full-set"):
        NeuronShapley(estimator="monte_carlo", max_rows=1_000)
    with pytest.warns(UserWarning, match="'exact' takes no rows budget; its work is fixed"):
        NeuronShapley(estimator="exact", max_rows=1_000)


def test_full_set_sampling_names_the_evaluation_set_as_a_lever(tmp_path: Path) -> None:
    """Where each coalition is scored on the whole evaluation set, fewer examples buy more evaluations."""
    torch.manual_seed(0)
    cb = NeuronShapley(layers=LAYER4, eval_size=32, max_seconds=30, estimator_kwargs={"per_example": False},
                       **NEVER_DURING_FIT)
    with pytest.warns(UserWarning, match="a smaller evaluation set: eval_size≈"):
        resnet_trainer(tmp_path, [cb]).fit(ResNetUser(), *resnet_loaders())
    estimate = cb.cost_estimates["accuracy"]
    assert estimate["sampling"] == "coalitions" and estimate["seconds_per_row"] == estimate["seconds_per_eval"] / 32
    assert estimate["samples_per_filter"] == pytest.approx(estimate["evals"] / 2048)  # one sample per evaluation


def test_without_a_budget_the_estimators_own_rule_decides(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    torch.manual_seed(0)
    cb = NeuronShapley(layers="net.layer4.1.conv2", eval_size=32, estimator="monte_carlo", **NEVER_DURING_FIT)
    resnet_trainer(tmp_path, [cb]).fit(ResNetUser(), *resnet_loaders())
    estimate = cb.cost_estimates["accuracy"]
    assert estimate["can_rank"] is None and estimate["rows"] is None and "own rule" in estimate["limited_by"]
    assert not [w for w in recwarn if "too few to rank" in str(w.message)]
