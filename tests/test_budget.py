"""``max_seconds`` bounds a game's whole analysis, removal curve included; the curve shows its progress."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from resnet_user import LAYER4, ResNetUser, resnet_loaders, resnet_trainer
from user_model import one_thread

from nsl import AccuracyGame, FilterPlayers, NeuronShapley
from nsl.callback.neuron_shapley import BATCH_SHARE, CURVE_SHARE
from nsl.report import RemovalCurve, removal_curve

pytestmark = pytest.mark.usefixtures(one_thread.__name__)
RANK_ZERO = "lightning.pytorch.utilities.rank_zero"
SLACK = 1.0  # seconds for a busy machine: timer granularity, Python between calls, a batch slowed by other work


class Timed(NeuronShapley):
    """The callback, noting when each game's analysis hands its result to the report (files and figures)."""

    def _report(self, trainer: Any, spec: Any, *args: Any, **kwargs: Any) -> None:
        self.reported = time.perf_counter()
        super()._report(trainer, spec, *args, **kwargs)


def test_max_seconds_bounds_the_whole_analysis_curve_included(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """A 6 s budget on 2,048 filters of a ResNet-18 with a 240-step curve (about 960 evaluations, far more than
    6 s here) ends within one batch of the budget: the estimate keeps to its share, the curve stops early and
    says how far it got."""
    caplog.set_level(logging.INFO, logger=RANK_ZERO)
    torch.manual_seed(0)
    seconds = 6.0
    cb = Timed(layers=LAYER4, eval_size=32, max_seconds=seconds, curve_steps=240, every_n_epochs=1, start_epoch=1,
               at_fit_end=False)
    model = ResNetUser()
    trainer = resnet_trainer(tmp_path, [cb])
    trainer.fit(model, *resnet_loaders())
    start = time.perf_counter()
    cb.run(trainer, model)
    analysis = cb.reported - start
    # The batch the callback chose from the dry run's timing takes BATCH_SHARE of the budget: the overshoot.
    batch = BATCH_SHARE * seconds
    assert analysis <= seconds + batch + SLACK, f"the analysis took {analysis:.1f} s for a {seconds} s budget"
    result = cb.results["accuracy"]
    assert result.seconds <= seconds * (1 - CURVE_SHARE) + batch + SLACK  # the estimate kept to its share
    curve = RemovalCurve(**cb.curves["accuracy"])
    assert curve.stopped == "budget" and curve.planned == 240 and 1 <= curve.reached < 240
    assert len(curve.ranked) == len(curve.random) == curve.reached + 1  # ranked and random removal step together
    saved = RemovalCurve.load(tmp_path / "neuron_shapley" / "accuracy_curve.pt")
    assert (saved.planned, saved.stopped, saved.reached) == (240, "budget", curve.reached)
    said = [r.getMessage() for r in caplog.records if "removal curve stopped at" in r.getMessage()]
    assert said and f"stopped at {curve.reached} of 240 filters removed" in said[0]


def test_without_a_time_limit_the_curve_is_whole_and_unchanged(model, digits_val) -> None:
    """No deadline: every step, the same values as removing along each order in one call (as before budgets)."""
    x, y = digits_val
    game = AccuracyGame(model, FilterPlayers(model), x[:64], y[:64])
    ranking = torch.randperm(game.n_players, generator=torch.Generator().manual_seed(0))
    curve = removal_curve(game, ranking, max_removed=12, n_random=2, seed=3, batch_size=5)
    assert curve.complete and curve.planned == curve.reached == 12 and curve.removed == list(range(13))
    rank = torch.empty(game.n_players, dtype=torch.long)
    rank[ranking] = torch.arange(game.n_players)
    ranked = game(rank.unsqueeze(0) >= torch.arange(13).unsqueeze(1))
    assert curve.ranked == pytest.approx(ranked.tolist())


def test_a_curve_shows_its_progress_and_stops_at_its_deadline(model, digits_val, capfd) -> None:
    x, y = digits_val
    game = AccuracyGame(model, FilterPlayers(model), x[:64], y[:64])
    ranking = torch.arange(game.n_players)
    removal_curve(game, ranking, max_removed=10, n_random=1, progress=True, desc="accuracy: removal curve")
    assert "accuracy: removal curve" in capfd.readouterr().err  # the tqdm bar
    late = removal_curve(game, ranking, max_removed=10, n_random=1, deadline=time.perf_counter() - 1)
    assert late.stopped == "budget" and late.reached == 0 and late.planned == 10 and not late.complete
