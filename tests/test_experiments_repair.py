"""Smoke tests of the repair experiments (fairness, adversarial, filter dropout) in their ``--quick`` settings.

Each runs the real script end to end (real Trainer, real games, real offline W&B) and checks the files it
writes, what reached W&B, and the invariants its numbers must satisfy whatever the training gave.
"""

from __future__ import annotations

import importlib
import statistics
from pathlib import Path
from types import ModuleType

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from conftest import inspect_wandb
from nsl import prune_filters


def load_script(name: str) -> ModuleType:
    """The experiment script ``experiments/<name>.py`` as a module."""
    return importlib.import_module(f"experiments.{name}")


def logged_keys(run_dir: Path) -> set[str]:
    """Every history key and summary key an offline W&B run recorded."""
    keys: set[str] = set()
    for record in inspect_wandb(run_dir):
        for field, inner in (("history", "item"), ("summary", "update")):
            items = record.get(field, {}).get(inner) if isinstance(record.get(field), dict) else None
            if isinstance(items, dict):
                keys.update(key.split(".")[0] for key in items)  # "image._type" -> "image"
    return keys


def test_fairness_repair_quick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    module = load_script("fairness_repair")
    out = module.main(["--quick", "--out", str(tmp_path)])
    ks, runs, networks = out["ks"], out["runs"], out["networks"]
    # --quick: one network (training seed 0) × two estimator seeds
    assert [(r["train_seed"], r["estimator_seed"]) for r in runs] == [(0, 0), (0, 1)]
    assert [n["train_seed"] for n in networks] == [0]
    for run in runs:
        curves = run["curves"]
        assert set(curves) == {"tmab", "leave_one_out", "random"}
        for method, rows in curves.items():
            assert len(rows) == len(ks)
            for r in rows:
                if method == "random":  # a mean of minima is at most the minimum of the means
                    assert r["worst"] <= min(r["group0"], r["group1"]) + 1e-6
                else:
                    assert r["worst"] == pytest.approx(min(r["group0"], r["group1"]))
                # overall accuracy lies between the groups' accuracies (it is their weighted mean)
                assert min(r["group0"], r["group1"]) - 1e-6 <= r["overall"] <= max(r["group0"], r["group1"]) + 1e-6
            assert rows[0] == curves["tmab"][0]  # k = 0 removes nothing, whatever the ranking
        # the culprits are the most negative values, in order
        assert torch.equal(run["culprits"], run["result"].culprits(ks[-1], negative=True))
        assert torch.all(run["result"].values[run["culprits"]].diff() >= 0)
        assert curves["leave_one_out"] is networks[0]["loo_curve"]  # deterministic: once per network

    # Independent recomputation of one run's TMAB curve: zero its first k culprits, classify the test images.
    network, run = networks[0], runs[1]
    model, players = network["model"], network["players"]
    x, y, groups = network["data"].tensors("test")
    for k, row in zip(ks, run["curves"]["tmab"], strict=True):
        pruned = prune_filters(model, players, run["culprits"][:k]) if k else None
        with torch.no_grad():
            correct = (model(x).argmax(1) == y).double()
        if pruned is not None:
            pruned.undo()
        assert row["group0"] == pytest.approx(float(correct[groups == 0].mean()))
        assert row["group1"] == pytest.approx(float(correct[groups == 1].mean()))
        assert row["overall"] == pytest.approx(float(correct.mean()))

    # The spread is over runs: TMAB and random one value per run, leave-one-out one per network.
    for method, n_runs in (("tmab", 2), ("random", 2), ("leave_one_out", 1)):
        per_run = out["per_run"][method]
        assert len(per_run) == n_runs
        for i in range(len(ks)):
            for key in ("group0", "group1", "worst", "overall"):
                values = [curve[i][key] for curve in per_run]
                s = out["spreads"][method][i][key]
                assert s.n == n_runs
                assert s.mean == pytest.approx(statistics.fmean(values))
                assert out["curves"][method][i][key] == pytest.approx(s.mean)
                assert s.sd == pytest.approx(statistics.stdev(values) if n_runs > 1 else 0.0)
                assert s.sd >= 0
                assert (s.sd > 0) == (max(values) > min(values))
    # The random control draws different filters in the two runs, so its curve spreads once filters go.
    assert any(row["overall"].sd > 0 for row in out["spreads"]["random"][1:])
    gains = [c[ks.index(out["best_k"])]["worst"] - c[0]["worst"] for c in out["per_run"]["tmab"]]
    assert out["gain"].mean == pytest.approx(statistics.fmean(gains))
    assert out["gain"].sd == pytest.approx(statistics.stdev(gains))

    text = (tmp_path / "fairness_repair.md").read_text()
    assert "| k | group 0 acc | group 1 acc | worst-group acc | overall acc |" in text
    assert "worst: leave_one_out" in text and "random (mean of 2)" in text
    assert " ± " in text and "2 runs" in text
    converged = sum(bool(r["result"].converged) for r in runs)
    assert f"converged (certified) in {converged} of 2 runs" in text
    assert (tmp_path / "fairness_repair.png").stat().st_size > 5000
    keys = logged_keys(out["wandb_dir"])
    assert {"per_group_accuracy_vs_k", "worst_group_before", "tmab_evals", "worst_group_gain", "worst_group_gain_sd",
            "overall_cost", "overall_cost_sd", "tmab_converged"} <= keys


def test_adversarial_repair_quick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    module = load_script("adversarial_repair")
    out = module.main(["--quick", "--out", str(tmp_path)])
    tm, rnd = out["curves"]["tmab"], out["curves"]["random"]
    assert len(tm) == len(rnd) == len(out["ks"])
    # with nothing removed the regenerated attack is the same attack on the same model: transfer == adaptive
    assert tm[0]["adaptive"] == pytest.approx(tm[0]["transfer"])
    assert tm[0] == pytest.approx(rnd[0])
    assert all(0 <= r[m] <= 1 for r in tm + rnd for m in ("transfer", "adaptive", "clean"))
    top = out["result"].culprits(out["ks"][-1])
    assert torch.all(out["result"].values[top].diff() <= 0)  # highest contributors first
    text = (tmp_path / "adversarial_repair.md").read_text()
    assert "transfer success (tmab)" in text and "adaptive success (tmab)" in text and "clean acc (tmab)" in text
    assert (tmp_path / "adversarial_repair.png").stat().st_size > 5000
    assert {"attack_success_vs_k", "transfer_before", "clean_after"} <= logged_keys(out["wandb_dir"])


def test_bad_arguments_fail_before_any_work() -> None:
    names = ("fairness_repair", "adversarial_repair", "filter_dropout")
    fairness, adversarial, dropout = (load_script(n) for n in names)
    with pytest.raises(ValueError, match=r"--ks='0,x'"):
        fairness.parse(["--ks", "0,x"])
    with pytest.raises(ValueError, match=r"ascending"):
        fairness.parse(["--ks", "3,1"])
    with pytest.raises(ValueError, match=r"only 104"):
        fairness.parse(["--ks", "0,200"])
    with pytest.raises(ValueError, match=r"--eps=2\.0"):
        adversarial.parse(["--eps", "2.0"])
    with pytest.raises(ValueError, match=r"--n-random=0"):
        adversarial.parse(["--n-random", "0"])
    with pytest.raises(ValueError, match=r"--sweep-dir=.*nope"):
        dropout.parse(["--sweep-dir", "nope"])
    with pytest.raises(ValueError, match=r"not key=value"):
        dropout.parse(["oops"])


def test_filter_dropout_experiment_config_composes() -> None:
    runs = {}
    for repair in ("none", "filter_dropout"):
        GlobalHydra.instance().clear()
        with initialize_config_module("nsl.conf", version_base="1.3"):
            runs[repair] = compose("train", overrides=["experiment=filter_dropout", f"repair={repair}"])
    GlobalHydra.instance().clear()
    for cfg in runs.values():
        assert cfg.task_name == "filter_dropout"
        assert cfg.data._target_ == "nsl.data.DigitsDataModule"
        assert [g.kind for g in cfg.callbacks.neuron_shapley.games] == ["accuracy"]
        assert "shapley_repair" not in cfg.callbacks  # analysis only: no repair in either run
        # last.ckpt must be the final epoch (the model the callback analyses at fit end), not the best one
        assert cfg.callbacks.model_checkpoint.save_last is True and cfg.callbacks.model_checkpoint.monitor is None
    assert "filter_dropout" in runs["filter_dropout"].callbacks and "filter_dropout" not in runs["none"].callbacks
    # everything but the dropout callback is shared
    shared = OmegaConf.to_container(runs["filter_dropout"])
    del shared["callbacks"]["filter_dropout"]
    assert shared == OmegaConf.to_container(runs["none"])


@pytest.mark.slow
def test_filter_dropout_quick_multirun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    module = load_script("filter_dropout")
    out = module.main(["--quick", "--out", str(tmp_path)])
    assert [r["repair"] for r in out["runs"]] == ["none", "filter_dropout"]
    for stats in out["stats"].values():
        assert all(0 <= stats[m] <= 1 for m in ("full", "top", "bottom_half", "random"))
    # the two training runs and the report share one W&B group
    records = [inspect_wandb(run["wandb"][0]) for run in out["runs"]] + [inspect_wandb(out["wandb_dir"])]
    groups = {next(r["run"]["run_group"] for r in recs if r.get("type") == "run") for recs in records}
    assert groups == {out["group"]}
    text = (tmp_path / "filter_dropout.md").read_text()
    assert "| baseline |" in text and "| filter dropout |" in text and "top-5 removed" in text
    assert (tmp_path / "filter_dropout.png").stat().st_size > 5000
    # re-reading the finished sweep gives the same numbers without training again
    again = module.main(["--quick", "--out", str(tmp_path / "again"), "--sweep-dir", str(out["sweep_dir"]),
                         "--no-wandb"])
    assert again["stats"] == out["stats"]
