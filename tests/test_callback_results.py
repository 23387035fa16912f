"""What the callback's results say: the picked class, the fit-end checkpoint, accumulation with discount and
the layers it plays with, on a user's own model with real Trainers, loggers and estimators."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from user_model import UserNet, loaders, one_thread, synthetic, user_trainer

from conftest import inspect_wandb
from nsl import NeuronShapley, ShapleyResult
from nsl.games.synthetic import pairwise_game
from nsl.shapley import RunningStats, discounted, tmab

pytestmark = pytest.mark.usefixtures(one_thread.__name__)
FAST = {"max_evals": 40, "eval_size": 32, "removal_curve": False, "top_k": 3}
RANK_ZERO = "lightning.pytorch.utilities.rank_zero"


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_picked_class_is_in_results_summary_files_and_logger_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    caplog.set_level(logging.INFO, logger=RANK_ZERO)
    L.seed_everything(0, verbose=False)
    csv, wandb = CSVLogger(tmp_path / "csv"), WandbLogger(project="nsl-test", save_dir=str(tmp_path), offline=True)
    cb = NeuronShapley(games=["accuracy", "class"], every_n_epochs=1, verbose=True, **FAST)
    trainer = user_trainer(tmp_path, [cb], epochs=2, logger=[csv, wandb], log_every_n_steps=1)
    trainer.fit(UserNet(), *loaders())
    run_dir = Path(wandb.experiment.dir).parent
    wandb.experiment.finish()
    k = cb.picked["class"]
    name = f"class_{k}"
    # Results: stored under the name with the class, found under the spec's name too.
    assert sorted(cb.results) == ["accuracy", name] and cb.results["class"] is cb.results[name]
    # Picked at the first analysis (epoch 0) and kept for the epoch-1 and the fit-end runs.
    assert [(h["name"], h["class_index"], h["stage"]) for h in cb.history["class"]] == [
        (name, k, "epoch"), (name, k, "epoch"), (name, k, "fit_end")
    ]
    # Files, the printed summary and the logger keys carry the class.
    out = tmp_path / "neuron_shapley"
    assert (out / f"{name}.csv").read_text().startswith("rank,filter,layer,value")
    assert ShapleyResult.load(out / f"{name}.pt") == cb.results[name] and not (out / "class.pt").exists()
    summaries = messages(caplog, f"[NeuronShapley] {name} (class {k}: the class the model got most wrong")
    assert len(summaries) == 3
    csv.save()
    assert f"shapley/{name}/top1_value" in (Path(csv.log_dir) / "metrics.csv").read_text()
    history = {}
    for record in inspect_wandb(run_dir):
        if record.get("type") == "history":
            history.update(record["history"]["item"])
    assert history[f"shapley/{name}/n_evals"] == cb.results[name].n_evals
    assert not any(key.startswith("shapley/class/") for key in history)
    # A new callback loading the state (what a resume does) keeps the class and the names.
    again = NeuronShapley(games=["accuracy", "class"], every_n_epochs=1, **FAST)
    again.load_state_dict(cb.state_dict())
    assert again.state_key == cb.state_key and again.picked == {"class": k}
    assert again.results["class"] == cb.results[name] and again.result_name(again.spec("class")) == name


@pytest.mark.parametrize("save", [True, False])
def test_fit_end_analysis_is_saved_in_a_checkpoint_of_its_own(tmp_path: Path, save: bool) -> None:
    L.seed_everything(0, verbose=False)
    cb = NeuronShapley(games="accuracy", verbose=False, save_checkpoint=save, **FAST)
    trainer = user_trainer(tmp_path, [cb], epochs=2)
    trainer.fit(UserNet(), *loaders())
    path = tmp_path / "neuron_shapley" / "fit_end.ckpt"
    assert path.exists() is save
    if not save:
        return
    checkpoint = torch.load(path, weights_only=True)  # plain tensors and Python only
    assert checkpoint["global_step"] == trainer.global_step == 8
    restored = NeuronShapley(games="accuracy", **FAST)
    restored.load_state_dict(checkpoint["callbacks"][restored.state_key])
    assert [h["stage"] for h in restored.history["accuracy"]] == ["fit_end"]
    assert restored.results["accuracy"] == cb.results["accuracy"]


def test_discounted_statistics_keep_means_and_variances_with_fewer_samples() -> None:
    stats = RunningStats.of_samples(torch.arange(3), torch.tensor([[1.0, 0.0, 5.0], [3.0, 0.0, 5.0],
                                                                   [2.0, 1.0, 5.0], [6.0, 1.0, 5.0]]), 3)
    half = stats.discounted(0.5)
    assert half.count.tolist() == [2, 2, 2]
    assert torch.equal(half.mean, stats.mean) and torch.allclose(half.var, stats.var)
    assert bool((half.stderr > stats.stderr)[:2].all())
    assert stats.discounted(0.1).count.tolist() == [0, 0, 0]  # fewer than half a sample: start afresh
    same = stats.discounted(1.0)
    assert all(torch.equal(getattr(same, k), getattr(stats, k)) for k in ("count", "mean", "m2", "low", "high"))
    with pytest.raises(ValueError, match=r"weight=1\.5 is not accepted; use a number in \(0, 1\]"):
        stats.discounted(1.5)


def test_discounted_resume_samples_resolved_players_again() -> None:
    game = pairwise_game([1.0, 0.8, 0.6, 0.4, 0.2, 0.1, 0.05, 0.0], {(0, 1): 0.3, (2, 3): -0.2, (4, 5): 0.25})
    first = tmab(game, top_k=2, seed=0)
    assert first.converged
    # Weight 1.0 (the old behaviour): everything is resolved already, nothing but v(N) and v(∅) is evaluated.
    kept = tmab(game, top_k=2, seed=1, resume=first)
    assert kept.n_evals == 2 and torch.equal(kept.counts, first.counts)
    # Weight 0.5: half the effective samples, the intervals widen and every player is sampled again.
    start = discounted(first, 0.5)
    assert torch.equal(start.counts, torch.floor(first.counts * 0.5 + 0.5).long())
    again = tmab(game, top_k=2, seed=1, resume=start)
    assert again.converged and again.n_evals > 2
    assert bool((again.counts > start.counts).all())


@pytest.mark.parametrize(("accumulate", "counts", "weight"), [(True, 5, 0.5), (1.0, 6, 1.0), (False, 3, None)])
def test_callback_accumulates_with_discount_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, accumulate: bool | float, counts: int, weight: float | None
) -> None:
    caplog.set_level(logging.INFO, logger=RANK_ZERO)
    L.seed_everything(0, verbose=False)
    cb = NeuronShapley(games="accuracy", estimator="monte_carlo", estimator_kwargs={"n_permutations": 3},
                       every_n_epochs=1, at_fit_end=False, accumulate=accumulate, verbose=True,
                       **{**FAST, "max_evals": None})
    user_trainer(tmp_path, [cb], epochs=2).fit(UserNet(), *loaders())
    # Run 2 resumed from run 1's 3 samples per filter counted at the weight (round(1.5) = 2), then drew 3 more.
    assert torch.all(cb.results["accuracy"].counts == counts)
    assert [h["accumulated"] for h in cb.history["accuracy"]] == [None, weight]
    said = messages(caplog, "accumulated: resumed from the previous run at weight")
    assert said == [] if weight is None else len(said) == 1 and f"weight {weight:g};" in said[0]


def test_selected_layers_are_printed_and_a_linear_output_layer_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=RANK_ZERO)
    L.seed_everything(0, verbose=False)
    cb = NeuronShapley(games="accuracy", layers="*", at_fit_end=False, every_n_epochs=1, **FAST)
    with pytest.warns(UserWarning, match=r"layer 'head' is the model's output layer \(a Linear with 4 outputs"):
        user_trainer(tmp_path, [cb], epochs=1, limit_train_batches=1).fit(UserNet(), *loaders())
    assert messages(caplog, "[NeuronShapley] players: 44 filters of 5 layers: stem (8), depthwise (8), block (12), "
                            "skip (12), head (4)")
    assert cb.results["accuracy"].names[-1] == "head:3"
    # The convolutions alone: no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        cb = NeuronShapley(games="accuracy", layers=["stem", "block"], data=synthetic(32), **FAST)
        cb.dry_run(user_trainer(tmp_path, [cb], epochs=1), UserNet())
    assert cb.skipped == {}
