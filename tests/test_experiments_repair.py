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
    runs, ks, stats = out["runs"], out["ks"], out["stats"]
    assert [(r["train_seed"], r["estimator_seed"]) for r in runs] == [(0, 0), (0, 1)]  # --quick: 1 × 2 seeds
    for run in runs:
        curves = run["curves"]
        assert set(curves) == {"tmab", "leave_one_out", "random"}
        # with nothing removed the regenerated attack is the same attack on the same model: transfer == adaptive
        assert curves["tmab"][0]["adaptive"] == pytest.approx(curves["tmab"][0]["transfer"])
        assert curves["tmab"][0] == pytest.approx(curves["random"][0])
        assert curves["tmab"][0] == pytest.approx(curves["leave_one_out"][0])
        assert all(0 <= r[m] <= 1 for rows in curves.values() for r in rows for m in ("transfer", "adaptive", "clean"))
        top = run["result"].culprits(ks[-1])
        assert torch.all(run["result"].values[top].diff() <= 0)  # highest contributors first
        # the net game's value lies in [-1, 1]: attack success minus clean accuracy
        assert -1 <= run["v_full"] <= 1 and -1 <= run["v_empty"] <= 1
    assert runs[0]["curves"]["leave_one_out"] == runs[1]["curves"]["leave_one_out"]  # deterministic per network
    # the spreads are over the runs: mean and sample sd of the per-run values
    for name in ("tmab", "random"):
        for i in range(len(ks)):
            values = torch.tensor([run["curves"][name][i]["transfer"] for run in runs], dtype=torch.float64)
            assert stats[name][i]["transfer"].mean == pytest.approx(float(values.mean()))
            assert stats[name][i]["transfer"].sd == pytest.approx(float(values.std()), abs=1e-12)
            assert stats[name][i]["transfer"].n == 2
    text = (tmp_path / "adversarial_repair.md").read_text()
    assert "| k | ranking | transfer success | adaptive success | clean accuracy |" in text
    assert "attack success − clean accuracy" in text and " ± " in text and "1 training seed (0) × 2" in text
    assert (tmp_path / "adversarial_repair.png").stat().st_size > 5000
    keys = logged_keys(out["wandb_dir"])
    assert {"attack_success_vs_clean", "tmab/transfer_at_0", "random/clean_at_3_sd", "tmab_evals"} <= keys


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
    with pytest.raises(ValueError, match=r"the shapes network has only 240"):
        adversarial.parse(["--ks", "0,300"])
    with pytest.raises(ValueError, match=r"--train-seeds='0,0' must be distinct"):
        adversarial.parse(["--train-seeds", "0,0"])
    with pytest.raises(ValueError, match=r"--estimator-seeds='a'"):
        adversarial.parse(["--estimator-seeds", "a"])
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
    # one multirun: the baseline p = 0 and the quick rate, one training seed; two estimator seeds per run
    assert sorted((r["p"], r["seed"]) for r in out["runs"]) == [(0.0, 0), (0.2, 0)]
    for p, rows in out["rows"].items():
        assert [r["estimator_seed"] for r in rows] == [0, 1]
        for r in rows:
            assert all(0 <= r[m] <= 1 for m in ("full", "top2", "top4", "top6", "random", "bottom_half"))
            assert 1 <= r["half_mass"] <= r["n"] or r["half_mass"] == 0
        # the cells are mean ± sd over the rows
        for key in ("top6", "gini"):
            values = torch.tensor([r[key] for r in rows], dtype=torch.float64)
            assert out["stats"][p][key].mean == pytest.approx(float(values.mean()))
            assert out["stats"][p][key].sd == pytest.approx(float(values.std()), abs=1e-12)
    # estimator seed 0 is the callback's own analysis: the script's game and estimator reproduce it exactly
    run = next(r for r in out["runs"] if r["p"] == 0.2)
    again = module.estimator_results(run, (1, 0))[0]
    assert torch.equal(again.values, run["result"].values) and again.n_evals == run["result"].n_evals
    # the training runs and the report share one W&B group
    records = [inspect_wandb(r["wandb"][0]) for r in out["runs"]] + [inspect_wandb(out["wandb_dir"])]
    groups = {next(rec["run"]["run_group"] for rec in recs if rec.get("type") == "run") for recs in records}
    assert groups == {out["group"]}
    text = (tmp_path / "filter_dropout.md").read_text()
    assert "| 0 (baseline) |" in text and "| 0.2 |" in text and "top 6 removed" in text and " ± " in text
    assert (tmp_path / "filter_dropout.png").stat().st_size > 5000
    # re-reading the finished sweep gives the same numbers without training again
    again = module.main(["--quick", "--out", str(tmp_path / "again"), "--sweep-dir", str(out["sweep_dir"]),
                         "--no-wandb"])
    assert again["stats"] == out["stats"]
