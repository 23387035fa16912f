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
from experiments import certified
from experiments import repair_methods as rm
from nsl import FilterPlayers, prune_filters
from nsl.baselines import taylor
from nsl.models import SmallCNN


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
    cache = tmp_path / "analyses"
    out = module.main(["--quick", "--out", str(tmp_path), "--cache", str(cache)])
    ks, runs, networks, names, stats = out["ks"], out["runs"], out["networks"], out["names"], out["stats"]
    tmab_names = ("tmab shapley", "tmab banzhaf")  # --quick: two semivalues
    assert names == (*tmab_names, "leave_one_out", "integrated_gradients", "taylor", "random")
    # --quick: one network (training seed 0) × two estimator seeds
    assert [(r["train_seed"], r["estimator_seed"]) for r in runs] == [(0, 0), (0, 1)]
    assert [n["train_seed"] for n in networks] == [0]
    network = networks[0]
    model, players, game = network["model"], network["players"], network["game"]
    assert game.metric == "worst_group_accuracy" and game.example_weights is not None  # decomposes: per-example rows
    for run in runs:
        curves = run["curves"]
        assert set(curves) == set(names)
        for method, rows in curves.items():
            assert len(rows) == len(ks)
            for r in rows:
                if method == "random":  # a mean of minima is at most the minimum of the means
                    assert r["worst"] <= min(r["group0"], r["group1"]) + 1e-6
                else:
                    assert r["worst"] == pytest.approx(min(r["group0"], r["group1"]))
                # overall accuracy lies between the groups' accuracies (it is their weighted mean)
                assert min(r["group0"], r["group1"]) - 1e-6 <= r["overall"] <= max(r["group0"], r["group1"]) + 1e-6
            assert rows[0] == curves["leave_one_out"][0]  # k = 0 removes nothing, whatever the ranking
        for name, semivalue in zip(tmab_names, ("shapley", "banzhaf"), strict=True):
            result = run["results"][name]
            assert result.semivalue == semivalue and result.n_rows and result.n_rows <= 20_000
            # the culprits are the most negative values, in order
            assert torch.equal(run["culprits"][name], result.culprits(ks[-1], negative=True))
            assert torch.all(result.values[run["culprits"][name]].diff() >= 0)
        for name in ("leave_one_out", "integrated_gradients", "taylor"):  # deterministic: once per network
            assert curves[name] is network["curves"][name]
    # Taylor ranks the most negative signed Taylor scores on the worst group's validation images
    x_val, y_val, g_val = network["data"].tensors("val")
    worst = g_val == game.worst_group_code
    signed = rm.signed_taylor(model, players, x_val[worst], y_val[worst])
    assert torch.equal(network["rankings"]["taylor"], torch.sort(signed, stable=True).indices[: ks[-1]])

    # Independent recomputation of one run's curve: zero its first k culprits, classify the test images.
    run = runs[1]
    x, y, groups = network["data"].tensors("test")
    for k, row in zip(ks, run["curves"]["tmab banzhaf"], strict=True):
        pruned = prune_filters(model, players, run["culprits"]["tmab banzhaf"][:k]) if k else None
        with torch.no_grad():
            correct = (model(x).argmax(1) == y).double()
        if pruned is not None:
            pruned.undo()
        assert row["group0"] == pytest.approx(float(correct[groups == 0].mean()))
        assert row["group1"] == pytest.approx(float(correct[groups == 1].mean()))
        assert row["overall"] == pytest.approx(float(correct.mean()))

    # The spread is over runs: tmab and random one value per run, the baselines one per network.
    for method in names:
        n_runs = 1 if method in ("leave_one_out", "integrated_gradients", "taylor") else 2
        per_run = out["per_run"][method]
        assert len(per_run) == n_runs
        for i in range(len(ks)):
            for key in ("group0", "group1", "worst", "overall"):
                values = [curve[i][key] for curve in per_run]
                s = stats[method][i][key]
                assert s.n == n_runs and s.mean == pytest.approx(statistics.fmean(values))
                assert s.sd == pytest.approx(statistics.stdev(values) if n_runs > 1 else 0.0)
    # The random control draws different filters in the two runs, so its curve spreads once filters go.
    assert any(row["overall"].sd > 0 for row in stats["random"][1:])
    for method in names:
        best, curves = out["best"][method], out["per_run"][method]
        assert best["k"] == ks[max(range(len(ks)), key=lambda i: (stats[method][i]["worst"].mean, -i))]
        gains = [c[best["index"]]["worst"] - c[0]["worst"] for c in curves]
        assert best["gain"].mean == pytest.approx(statistics.fmean(gains))
    # The verdict names the method with the highest worst-group accuracy at any k >= 1.
    top = max(names, key=lambda n: max(s["worst"].mean for s in stats[n][1:]))
    assert out["verdicts"][0].startswith(f"**Worst-group accuracy** (higher is better): best {top} at k = ")

    # Every analysis went to the cache under the network's key, and comes back from it unchanged.
    assert len(list(cache.glob("*.pt"))) == 4  # 2 semivalues × 2 estimator seeds
    assert "fair_digits_cnn|train_seed=0|epochs=3|channels=4-6-8|val=300" in network["key"]
    again = certified.certified(game, semivalue="banzhaf", seed=1, top_k=3, tail="bottom", max_rows=20_000,
                                cache=cache, key=network["key"])
    assert torch.equal(again.values, runs[1]["results"]["tmab banzhaf"].values)

    text = (tmp_path / "fairness_repair.md").read_text()
    assert "| k | tmab shapley | tmab banzhaf | leave_one_out | integrated_gradients | taylor | random |" in text
    assert "### Cost of the analyses" in text and "### Best repair per method" in text
    for name in tmab_names:
        cell = certified.cost_cell([r["results"][name] for r in runs])
        assert f"| {name} | 2 | {cell} |" in text
    assert "**Worst-group accuracy**" in text and "Best semivalue: tmab " in text and "s CPU (this process)" in text
    assert " ± " in text and "2 runs" in text
    assert (tmp_path / "fairness_repair.png").stat().st_size > 5000
    keys = logged_keys(out["wandb_dir"])
    assert {"worst_group_accuracy_vs_k", "worst_group_before", "tmab_shapley/worst_at_1", "tmab_banzhaf/certified",
            "taylor/worst_group_gain_sd", "leave_one_out/best_k", "cpu_seconds"} <= keys


def test_adversarial_repair_quick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    module = load_script("adversarial_repair")
    cache = tmp_path / "analyses"
    out = module.main(["--quick", "--out", str(tmp_path), "--cache", str(cache)])
    runs, ks, stats, names, networks = out["runs"], out["ks"], out["stats"], out["names"], out["networks"]
    tmab_names = ("tmab shapley", "tmab banzhaf")
    assert names == (*tmab_names, "leave_one_out", "integrated_gradients", "taylor", "random")
    assert [(r["train_seed"], r["estimator_seed"]) for r in runs] == [(0, 0), (0, 1)]  # --quick: 1 × 2 seeds
    network = networks[0]
    game = network["game"]
    assert game.net_of_clean and game.example_weights is not None  # the net game decomposes: per-example rows
    for run in runs:
        curves = run["curves"]
        assert set(curves) == set(names)
        # with nothing removed the regenerated attack is the same attack on the same model: transfer == adaptive
        assert curves["leave_one_out"][0]["adaptive"] == pytest.approx(curves["leave_one_out"][0]["transfer"])
        for rows in curves.values():
            assert rows[0] == pytest.approx(curves["random"][0])
            for r in rows:
                assert all(0 <= r[m] <= 1 for m in ("transfer", "adaptive", "clean"))
                assert r["clean_minus_transfer"] == pytest.approx(r["clean"] - r["transfer"])
        for name, semivalue in zip(tmab_names, ("shapley", "banzhaf"), strict=True):
            result = run["results"][name]
            assert result.semivalue == semivalue and result.n_rows and result.n_rows <= 20_000
            assert torch.equal(run["culprits"][name], result.culprits(ks[-1]))
            assert torch.all(result.values[run["culprits"][name]].diff() <= 0)  # highest contributors first
        for name in ("leave_one_out", "integrated_gradients", "taylor"):
            assert curves[name] is network["curves"][name]  # deterministic: once per network
        # the net game's value lies in [-1, 1]: attack success minus clean accuracy
        assert -1 <= run["v_full"] <= 1 and -1 <= run["v_empty"] <= 1
    # Taylor ranks the attack's objective: target class on the adversarial examples minus true class on the clean
    model, players = network["model"], network["players"]
    signed = (rm.signed_taylor(model, players, game.adversarial_inputs, game.attack_labels)
              - rm.signed_taylor(model, players, game.clean_inputs, game.true_labels))
    highest = torch.sort(signed, descending=True, stable=True).indices
    assert torch.equal(network["rankings"]["taylor"], highest[: ks[-1]])
    # the spreads are over the runs: mean and sample sd of the per-run values
    for name in (*tmab_names, "random"):
        for i in range(len(ks)):
            values = torch.tensor([run["curves"][name][i]["transfer"] for run in runs], dtype=torch.float64)
            assert stats[name][i]["transfer"].mean == pytest.approx(float(values.mean()))
            assert stats[name][i]["transfer"].sd == pytest.approx(float(values.std()), abs=1e-12)
            assert stats[name][i]["transfer"].n == 2
    assert all(s["transfer"].n == 1 for s in stats["taylor"])
    low = min(names, key=lambda n: min(s["transfer"].mean for s in stats[n][1:]))
    assert out["verdicts"][0].startswith(f"**Transfer success** (lower is better): best {low} at k = ")
    assert len(list(cache.glob("*.pt"))) == 4 and "|game=adversarial:net:pgd:" in network["key"]

    text = (tmp_path / "adversarial_repair.md").read_text()
    assert "| k | tmab shapley | tmab banzhaf | leave_one_out | integrated_gradients | taylor | random |" in text
    assert "### Adaptive attack success" in text and "### Clean accuracy − transfer success" in text
    for name in tmab_names:
        assert f"| {name} | 2 | {certified.cost_cell([r['results'][name] for r in runs])} |" in text
    assert "attack success − clean accuracy" in text and " ± " in text and "1 training seed (0) × 2" in text
    assert "**Clean accuracy − transfer success**" in text and "s CPU (this process)" in text
    assert (tmp_path / "adversarial_repair.png").stat().st_size > 5000
    keys = logged_keys(out["wandb_dir"])
    assert {"attack_success_vs_clean", "tmab_shapley/transfer_at_0", "random/clean_at_3_sd", "taylor/adaptive_at_1",
            "tmab_banzhaf/rows_median", "cpu_seconds"} <= keys


def test_repair_scripts_take_the_semivalue_flags() -> None:
    for name in ("fairness_repair", "adversarial_repair"):
        module = load_script(name)
        full = module.parse([])
        assert full.semivalue_list == ("shapley", "banzhaf", "beta(1,4)", "beta(1,16)")
        assert full.max_rows == certified.MAX_ROWS and full.cache == full.out.parent / "analyses"
        quick = module.parse(["--quick"])
        assert quick.semivalue_list == ("shapley", "banzhaf") and quick.max_rows == 20_000
        # given explicitly, the flags win over --quick's settings
        chosen = module.parse(["--quick", "--semivalues", "shapley,beta(1,4)", "--max-rows", "500"])
        assert chosen.semivalue_list == ("shapley", "beta(1,4)") and chosen.max_rows == 500
        with pytest.raises(ValueError, match=r"--max-evals no longer applies"):
            module.parse(["--max-evals", "100"])
        with pytest.raises(ValueError, match=r"distinct semivalues"):
            module.parse(["--semivalues", "shapley,shapley"])
        with pytest.raises(ValueError, match=r"--max-rows=0"):
            module.parse(["--max-rows", "0"])


def test_signed_taylor_is_the_taylor_criterion_with_its_sign() -> None:
    torch.manual_seed(0)
    model = SmallCNN(channels=(3, 4, 5)).eval()
    players = FilterPlayers(model)
    x, y = torch.rand(20, 1, 8, 8), torch.randint(0, 10, (20,))
    signed = rm.signed_taylor(model, players, x, y, batch_size=7)  # batches of uneven size
    # nsl.baselines.taylor is |mean of gradient × activation| of the loss −log p: the same numbers without sign
    assert torch.allclose(signed.abs(), taylor(model, players, x, y), rtol=1e-5, atol=1e-12)
    assert (signed > 0).any() and (signed < 0).any()
    # objectives are linear: a set against itself scores 0, a weight scales the scores
    assert torch.equal(rm.objective_scores("taylor", model, players, [(x, y, 1.0), (x, y, -1.0)]),
                       torch.zeros(len(players), dtype=torch.float64))
    assert torch.allclose(rm.objective_scores("taylor", model, players, [(x, y, 2.0)]), 2 * signed)
    # first order: removing the filter with the largest score lowers the target's mean log-probability
    top = int(signed.argmax())
    with torch.no_grad():
        before = model(x).log_softmax(-1).gather(1, y[:, None]).mean()
        pruned = prune_filters(model, players, [top])
        after = model(x).log_softmax(-1).gather(1, y[:, None]).mean()
        pruned.undo()
    assert after < before
    assert rm.slug("tmab beta(1,4)") == "tmab_beta_1_4"


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
    from nsl.data import load_digits_tensors

    monkeypatch.setenv("WANDB_MODE", "offline")
    module = load_script("filter_dropout")
    with pytest.raises(ValueError, match="distinct"):
        module.parse(["--semivalues", "shapley,shapley"])
    with pytest.raises(ValueError, match="--eval-size=0"):
        module.parse(["--eval-size", "0"])
    cache = tmp_path / "analyses"
    out = module.main(["--quick", "--out", str(tmp_path), "--cache", str(cache)])
    # one multirun: the baseline p = 0 and the quick rate, one training seed; two estimator seeds per run
    assert sorted((r["p"], r["seed"]) for r in out["runs"]) == [(0.0, 0), (0.2, 0)]
    tmab_names = ["tmab shapley", "tmab banzhaf"]  # --quick's semivalues
    fixed = [module.UNCERTIFIED, "leave_one_out", "integrated_gradients", "taylor"]
    assert out["methods"] == [*tmab_names, *fixed, "random"]
    for p, rows in out["rows"].items():
        def of(method: str, rows: list = rows) -> list:
            return [r for r in rows if r["method"] == method]

        for m in [*tmab_names, "random"]:  # per estimator seed
            assert [r["estimator_seed"] for r in of(m)] == [0, 1]
        for m in fixed:  # once per network
            assert [r["estimator_seed"] for r in of(m)] == [0]
        for r in rows:
            assert all(0 <= r[m] <= 1 for m in ("full", "top2", "top4", "top6"))
        for m in tmab_names:
            for r in of(m):
                assert 1 <= r["half_mass"] <= r["n"] or r["half_mass"] == 0
                assert r["result"].semivalue == m.split()[1] and 0 < r["result"].n_rows <= 20_000
        # the cells are mean ± sd over the rows of that method and rate
        for m, key in (("tmab banzhaf", "top6"), ("tmab shapley", "gini"), ("random", "top4")):
            values = torch.tensor([r[key] for r in of(m)], dtype=torch.float64)
            assert out["stats"][p][m][key].mean == pytest.approx(float(values.mean()))
            assert out["stats"][p][m][key].sd == pytest.approx(float(values.std()), abs=1e-12)
    assert len(list(cache.glob("*.pt"))) == 2 * 2 * 2  # 2 networks × 2 estimator seeds × 2 semivalues

    # the script's game is the whole 300-image validation split (removal_curves' game); removals are measured on the
    # test split: leave-one-out's top 4 switched off with prune_filters gives the reported accuracy
    run = next(r for r in out["runs"] if r["p"] == 0.2)
    assert len(run["targets"]) == 300
    loo = next(r for r in out["rows"][0.2] if r["method"] == "leave_one_out")
    x_test, y_test = run["data"].tensors("test")[:2]
    pruned = prune_filters(run["model"], run["players"], loo["result"].ranking()[:4])
    try:
        with torch.no_grad():
            accuracy = (run["model"](x_test).argmax(-1) == y_test).double().mean().item()
    finally:
        pruned.undo()
    assert loo["top4"] == pytest.approx(accuracy)

    # the p = 0 network is removal_curves' network bit for bit, so both scripts key its analyses alike
    base = next(r for r in out["runs"] if r["p"] == 0.0)
    model, _ = module.common.train_model("digits_cnn", epochs=2, seed=0, channels=(4, 6, 8))
    x, y = load_digits_tensors("val", val_size=300, seed=0)
    assert module.network_key(model, x, y, data="digits", train_seed=0, epochs=2) == base["key"]
    assert "dropout=0.2" in run["key"] and run["key"].split("|")[-1] != base["key"].split("|")[-1]

    # the training runs and the report share one W&B group
    records = [inspect_wandb(r["wandb"][0]) for r in out["runs"]] + [inspect_wandb(out["wandb_dir"])]
    groups = {next(rec["run"]["run_group"] for rec in recs if rec.get("type") == "run") for recs in records}
    assert groups == {out["group"]}
    text = (tmp_path / "filter_dropout.md").read_text()
    assert "| 0 (baseline) | 2 |" in text and "| 0.2 | 6 |" in text and "top 6 removed" in text and " ± " in text
    assert "| tmab shapley | tmab banzhaf | tmab shapley, uncertified (callback) | leave_one_out |" in text
    assert out["verdicts"]["removal"] in text and out["verdicts"]["values"] in text
    assert out["verdicts"]["removal"].startswith("Verdict:") and "tmab banzhaf:" in out["verdicts"]["values"]
    # the cost table: one row per semivalue, its analyses' rows, certificates and CPU per rate
    cost = {row[0]: row[1:] for row in out["cost"]}
    for m in tmab_names:
        results = [r["result"] for r in out["rows"][0.0] if r["method"] == m]
        assert cost[m][0] == module.certified.cost_cell(results) and f"| {m} | {cost[m][0]} |" in text
    assert (tmp_path / "filter_dropout.png").stat().st_size > 5000
    # re-reading the finished sweep gives the same numbers without training or analysing again
    again = module.main(["--quick", "--out", str(tmp_path / "again"), "--sweep-dir", str(out["sweep_dir"]),
                         "--no-wandb", "--cache", str(cache)])
    assert again["stats"] == out["stats"]
    assert len(list(cache.glob("*.pt"))) == 8
