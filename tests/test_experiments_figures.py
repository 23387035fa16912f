"""Smoke tests of the figure experiments (class-specific removal curves, truncation, filter pictures).

Each runs the real script in its ``--quick`` setting (a small CNN really trained with Lightning, real games and
estimators, an offline W&B run) and checks the numbers it reports against an independent recomputation.
"""

from __future__ import annotations

import importlib
import json
import re
import statistics
from pathlib import Path
from types import ModuleType

import pytest
import torch

from conftest import inspect_wandb
from experiments import certified, seeds
from experiments.common import random_orders
from nsl import AccuracyGame, ClassGame, FilterPlayers, monte_carlo
from nsl.baselines import integrated_gradients, leave_one_out, taylor
from nsl.data import load_digits_tensors
from nsl.games import CountingGame, additive_game
from nsl.report import removal_values


def load(name: str) -> ModuleType:
    """The experiment script ``experiments/<name>.py`` as a module."""
    return importlib.import_module(f"experiments.{name}")


def logged(run_dir: Path) -> tuple[dict, dict]:
    """History and summary items of an offline W&B run, as read back by ``wandb leet inspect``."""
    history: dict = {}
    summary: dict = {}
    for record in inspect_wandb(run_dir):
        if record.get("type") == "history":
            history.update(record["history"]["item"])
        if record.get("type") == "summary":
            summary.update(record["summary"].get("update", {}))
    return history, summary


def logged_table(run_dir: Path, history: dict, key: str) -> dict:
    assert history[f"{key}._type"] == "table-file"
    return json.loads((run_dir / "files" / history[f"{key}.path"]).read_text())


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def sample_sd(xs: list[float]) -> float:
    mean = sum(xs) / len(xs)
    return (sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5


def area(curve: list[float]) -> float:
    """Mean accuracy over 0..n removed (trapezoid), recomputed independently of the script."""
    return float(torch.trapezoid(torch.tensor(curve, dtype=torch.float64))) / (len(curve) - 1)


@pytest.mark.slow
def test_removal_curves_quick_over_seeds(tmp_path, monkeypatch):
    module = load("removal_curves")
    monkeypatch.setitem(seeds.QUICK, "train_seeds", "0,1")  # --quick sets the seeds; two networks here
    cache = tmp_path / "analyses"
    out = module.main(["--quick", "--classes", "1,7", "--out", str(tmp_path), "--cache", str(cache)])
    runs = out["runs"]
    assert [(r["train_seed"], r["estimator_seed"]) for r in runs] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    tmab_names = ["tmab shapley", "tmab banzhaf"]  # --quick's semivalues, one column each
    assert out["tmab_names"] == tmab_names

    # Each run of the last network (training seed 1): its curves are the accuracy on that seed's validation images
    # along the run's rankings; the random curve is the mean over the run's random orders.
    model = out["model"]
    players = FilterPlayers(model)
    x, y = load_digits_tensors("val", val_size=60, seed=1)
    game = AccuracyGame(model, players, x, y)
    steps = range(11)  # --quick removes up to 10 filters
    for run in runs[2:]:
        assert run["full_value"] == pytest.approx(game.full_value())
        for name in (*tmab_names, "leave_one_out", "taylor", "weight_l1", "integrated_gradients", "random"):
            expected = removal_values(game, run["results"][name].ranking(), steps).tolist()
            assert run["curves"][name] == pytest.approx(expected)
        orders = random_orders(len(players), 2, run["estimator_seed"])
        expected = torch.stack([removal_values(game, o, steps) for o in orders]).mean(0).tolist()
        assert run["curves"]["random (mean of 2)"] == pytest.approx(expected)
        # one tmab analysis per semivalue, within --quick's 20,000-row budget, each saved in the cache
        for name, semivalue in zip(tmab_names, ("shapley", "banzhaf"), strict=True):
            result = run["results"][name]
            assert result.semivalue == semivalue and 0 < result.n_rows <= 20_000
            assert certified.cpu_seconds(result) > 0
    assert len(list(cache.glob("*.pt"))) == 2 * 4 * (1 + 2)  # 2 semivalues × 4 runs × (accuracy + 2 digits)
    # leave-one-out is v(N) − v(N∖{i}) on the same game
    loo = torch.tensor([game.full_value() - game(~torch.eye(len(players), dtype=torch.bool)[i:i + 1]).item()
                        for i in range(len(players))], dtype=torch.float64)
    assert runs[2]["results"]["leave_one_out"].values == pytest.approx(loo.tolist())
    # The deterministic baselines do not depend on the estimator seed; the tmab analyses and the random ranking do.
    assert torch.equal(runs[2]["results"]["taylor"].values, runs[3]["results"]["taylor"].values)
    for name in tmab_names:
        assert not torch.equal(runs[2]["results"][name].values, runs[3]["results"][name].values)
    assert not torch.equal(runs[2]["results"]["random"].ranking(), runs[3]["results"]["random"].ranking())
    # the two semivalues are different analyses of the same game
    assert not torch.equal(runs[2]["results"]["tmab shapley"].values, runs[2]["results"]["tmab banzhaf"].values)

    # Seeded rankings spread over all 4 runs, deterministic ones over the 2 networks only.
    for name in tmab_names:
        aucs = [area(r["curves"][name]) for r in runs]
        assert out["auc_spread"][name].n == 4
        assert out["auc"][name] == pytest.approx(sum(aucs) / 4)
        assert out["auc_spread"][name].sd == pytest.approx(sample_sd(aucs)) and out["auc_spread"][name].sd > 0
    l1_aucs = [area(r["curves"]["weight_l1"]) for r in (runs[0], runs[2])]
    assert out["auc_spread"]["weight_l1"].n == 2
    assert out["auc"]["weight_l1"] == pytest.approx(sum(l1_aucs) / 2)
    assert out["auc_spread"]["weight_l1"].sd == pytest.approx(sample_sd(l1_aucs))
    assert out["curves"]["tmab banzhaf"][5] == pytest.approx(sum(r["curves"]["tmab banzhaf"][5] for r in runs) / 4)
    assert out["full_value"] == pytest.approx((runs[0]["full_value"] + runs[2]["full_value"]) / 2)
    assert all(curve[0] == pytest.approx(out["full_value"]) for curve in out["curves"].values())

    # The AUC row: mean ± sd per ranking, bold exactly where it differs from leave-one-out by more than the spreads.
    text = (tmp_path / "removal_curves.md").read_text()
    auc_row = next(line for line in text.splitlines() if line.startswith("| AUC |"))
    cells = [c.strip() for c in auc_row.strip("|").split("|")][1:]
    names = list(out["curves"])
    assert names[:5] == [*tmab_names, "leave_one_out", "integrated_gradients", "taylor"]
    ref = out["auc_spread"]["leave_one_out"]
    for name, cell in zip(names, cells, strict=True):
        s = out["auc_spread"][name]
        assert cell.strip("*") == f"{s.mean:.3f} ± {s.sd:.3f}"
        assert cell.startswith("**") == (name != "leave_one_out" and abs(s.mean - ref.mean) > s.sd + ref.sd)
    assert "2 training seeds (0, 1) × 2 estimator seeds = 4 runs" in text

    # The verdict names the ranking with the lowest mean AUC as best on the AUC, and says whether a tmab semivalue
    # beats leave-one-out by more than the spreads on some measure.
    overall = out["verdicts"]["overall"]
    assert overall in text
    best = min(out["auc_spread"], key=lambda n: out["auc_spread"][n].mean)
    assert re.search(rf"{re.escape(best)} on \d+ of \d+ \([^)]*AUC\)", overall)
    measures = [(out["spreads"][n][r], out["spreads"]["leave_one_out"][r], n) for r in (5, 10) for n in tmab_names]
    measures += [(out["auc_spread"][n], ref, n) for n in tmab_names]
    beats = any(seeds.clear(a, b) and a.mean < b.mean for a, b, _ in measures)
    assert ("no tmab semivalue beats leave_one_out" in overall) == (not beats)
    assert "best semivalue: tmab" in overall

    # The cost table: one row per semivalue and game, the cost of exactly those analyses; the script's CPU time.
    cost = dict(out["cost"])
    for name in tmab_names:
        assert cost[f"{name} (accuracy)"] == certified.cost_cell([r["results"][name] for r in runs])
        assert cost[f"{name} (class games)"].endswith("s CPU") and "/8 certified" in cost[f"{name} (class games)"]
        assert f"| {name} (accuracy) | {cost[name + ' (accuracy)']} |" in text
    assert out["cpu_seconds"] > 0 and f"This script: {out['cpu_seconds']:.0f} s CPU" in text

    # Class-specific runs of the last network, recomputed on its held-out test images.
    found = out["class_curves"]
    assert list(found) == [1, 7]
    x_test, y_test = load_digits_tensors("test", val_size=60, seed=1)
    class_names = ["class tmab shapley", "class tmab banzhaf", "class leave_one_out", "class integrated_gradients",
                   "class taylor", "overall tmab shapley", "random"]
    for digit, data in found.items():
        assert len(data["runs"]) == 4 and list(data["own"]) == class_names
        class_steps = range(len(data["own"]["random"]))
        assert len(class_steps) == 9  # --quick removes up to 8 filters
        own = ClassGame(model, players, x_test, y_test, digit)
        rest = y_test != digit
        others = AccuracyGame(model, players, x_test[rest], y_test[rest])
        # the class baselines see only this digit: leave-one-out on its class game, IG and Taylor on its images
        mask = y == digit
        results = data["runs"][2]["results"]
        assert torch.equal(results["class leave_one_out"].values,
                           leave_one_out(model, players, game=ClassGame(model, players, x, y, digit)))
        assert torch.equal(results["class taylor"].values, taylor(model, players, x[mask], y[mask]))
        assert results["class integrated_gradients"].values == pytest.approx(
            integrated_gradients(model, players, x[mask], y[mask], steps=4).tolist())
        for i in (2, 3):
            run, overall_run = data["runs"][i], runs[i]
            assert (run["train_seed"], run["estimator_seed"]) == (overall_run["train_seed"],
                                                                  overall_run["estimator_seed"])
            for name in class_names[:5]:
                ranking = run["results"][name].ranking()
                assert run["own"][name] == pytest.approx(removal_values(own, ranking, class_steps).tolist())
                assert run["others"][name] == pytest.approx(removal_values(others, ranking, class_steps).tolist())
            assert run["results"]["class tmab banzhaf"].semivalue == "banzhaf"
            top = overall_run["results"]["tmab shapley"].ranking()
            assert run["own"]["overall tmab shapley"] == pytest.approx(removal_values(own, top, class_steps).tolist())
            orders = random_orders(len(players), 2, run["estimator_seed"] + 1000 + digit)
            expected = torch.stack([removal_values(others, o, class_steps) for o in orders]).mean(0).tolist()
            assert run["others"]["random"] == pytest.approx(expected)
            assert run["n_images"][1] + run["n_images"][2] == len(y_test)
        # Means and sds: seeded rankings over the 4 runs, the class baselines over the 2 networks.
        values = [r["own"]["class tmab shapley"][2] for r in data["runs"]]
        assert data["own"]["class tmab shapley"][2] == pytest.approx(sum(values) / 4)
        assert data["own_spread"]["class tmab shapley"][2].sd == pytest.approx(sample_sd(values))
        assert data["own_spread"]["class leave_one_out"][2].n == 2
        selectivity = [area(r["others"]["class tmab banzhaf"]) - area(r["own"]["class tmab banzhaf"])
                       for r in data["runs"]]
        assert data["selectivity"]["class tmab banzhaf"].mean == pytest.approx(sum(selectivity) / 4)
    assert (tmp_path / "removal_curves_classes.png").stat().st_size > 1000
    assert (tmp_path / "removal_curves.png").stat().st_size > 1000
    assert "### overall" in text and "### class_specific" in text and "### cost" in text
    assert "digit-7 tmab banzhaf" in text and out["verdicts"]["class_specific"] in text

    history, logged_summary = logged(out["wandb_dir"])
    table = logged_table(out["wandb_dir"], history, "class_specific")
    assert table["columns"][:2] == ["digit", "ranking"] and table["columns"][-1] == "selectivity"
    assert [row[:2] for row in table["data"]] == [
        [d, r] for d in (1, 7) for r in (f"digit-{d} tmab shapley", f"digit-{d} tmab banzhaf",
                                         f"digit-{d} leave_one_out", f"digit-{d} integrated_gradients",
                                         f"digit-{d} taylor", "overall tmab shapley", "random")
    ]
    own_at_2 = table["columns"].index("digit @2")
    cell, base = found[1]["own_spread"]["class tmab shapley"][2], found[1]["own_spread"]["class leave_one_out"][2]
    assert table["data"][0][own_at_2].strip("*") == f"{cell.mean:.3f} ± {cell.sd:.3f}"
    assert table["data"][0][own_at_2].startswith("**") == (abs(cell.mean - base.mean) > cell.sd + base.sd)
    assert not table["data"][2][own_at_2].startswith("**")  # the reference itself is never bold
    assert history["class_specific_curves._type"] == "image-file"
    assert history["overall_curves._type"] == "image-file"
    assert logged_table(out["wandb_dir"], history, "overall")["columns"][:3] == ["removed", *tmab_names]
    assert [row[0] for row in logged_table(out["wandb_dir"], history, "cost")["data"]][:4] == [
        "tmab shapley (accuracy)", "tmab banzhaf (accuracy)", "tmab shapley (class games)",
        "tmab banzhaf (class games)"]
    assert logged_summary["auc/tmab banzhaf"] == pytest.approx(out["auc"]["tmab banzhaf"])
    assert logged_summary["auc_sd/tmab shapley"] == pytest.approx(out["auc_spread"]["tmab shapley"].sd)
    assert logged_summary["digit_7/class_tmab_shapley/own_at_5"] == pytest.approx(
        found[7]["own"]["class tmab shapley"][5])
    assert logged_summary["digit_7/class_tmab_shapley/own_at_5_sd"] == pytest.approx(
        found[7]["own_spread"]["class tmab shapley"][5].sd)
    assert logged_summary["digit_1/random/others_at_2"] == pytest.approx(found[1]["others"]["random"][2])

    # A second run (the second network retrained) loads its analyses from the cache: same numbers, no new files.
    again = module.main(["--quick", "--classes", "", "--out", str(tmp_path / "again"), "--cache", str(cache),
                         "--no-wandb", "--train-seeds", "1"])
    assert len(list(cache.glob("*.pt"))) == 2 * 4 * (1 + 2)
    for a, b in zip(again["runs"], runs[2:], strict=True):
        for name in tmab_names:
            assert torch.equal(a["results"][name].values, b["results"][name].values)
            assert certified.cpu_seconds(a["results"][name]) == certified.cpu_seconds(b["results"][name])


def test_removal_curves_reject_bad_classes(tmp_path):
    module = load("removal_curves")
    with pytest.raises(ValueError, match="'1,12'"):
        module.main(["--quick", "--classes", "1,12", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="'3,3'"):
        module.main(["--quick", "--classes", "3,3", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_truncation_quick(tmp_path):
    module = load("truncation")
    out = module.main(["--quick", "--out", str(tmp_path)])
    runs, taus = out["runs"], out["levels"]
    assert taus == [0.1, 0.25, 0.5]
    # --quick: one network (training seed 0) × two estimator seeds, i.e. two sets of permutations
    assert [(r["train_seed"], r["estimator_seed"]) for r in runs] == [(0, 0), (0, 1)]
    for run in runs:
        traj = run["trajectories"]
        assert traj.shape == (8, 25)  # 8 orders, 24 filters of the quick model
        assert torch.allclose(traj[:, 0], torch.tensor(run["v_full"], dtype=torch.float64))
        assert torch.allclose(traj[:, -1], torch.tensor(run["v_empty"], dtype=torch.float64))
        # Untruncated Monte Carlo scanned exactly these orders, and its values add up to v(N) − v(∅).
        assert run["mismatch"] < 1e-9
        assert float(run["untruncated"].values.sum()) == pytest.approx(run["v_full"] - run["v_empty"])
        rows = run["rows"]
        # A wider band holds every point of a narrower one: collapse no later, evaluations no more.
        assert bool((run["fractions"][0.5] <= run["fractions"][0.25]).all())
        assert bool((run["fractions"][0.25] <= run["fractions"][0.1]).all())
        assert rows[0.1]["evaluations"] >= rows[0.25]["evaluations"] >= rows[0.5]["evaluations"]
        assert 0 <= rows[0.1]["skipped"] <= rows[0.25]["skipped"] <= rows[0.5]["skipped"] < 1
        for row in rows.values():
            assert row["max abs Δφ"] >= row["mean abs Δφ"] >= 0
            assert 0 <= row["top overlap"] <= 5
        assert run["fresh"] == 0  # every truncated coalition was one the untruncated scans evaluated
    # The two runs scanned different permutations of the same network.
    assert not torch.equal(runs[0]["trajectories"], runs[1]["trajectories"])

    # Independent recomputation of one run: the trajectory of its first order from a fresh game on the same
    # network and images, and truncated Monte Carlo on the real game (not the replayed record).
    run = runs[1]
    x, y = load_digits_tensors("val", val_size=60, seed=0)
    game = AccuracyGame(run["model"], FilterPlayers(run["model"]), x, y)
    order = random_orders(24, 8, seed=1)[0]
    values = [float(game(module.coalition(order, t).unsqueeze(0))[0]) for t in range(25)]
    assert run["trajectories"][0].tolist() == pytest.approx(values)
    real = monte_carlo(game, 8, truncation=0.25, patience=5, seed=1, top_k=5)
    assert torch.allclose(real.values, run["truncated"][0.25].values)
    assert real.n_evals == run["rows"][0.25]["evaluations"]
    largest = float((real.values - run["untruncated"].values).abs().max())
    assert largest == pytest.approx(run["rows"][0.25]["max abs Δφ"])

    # Every cell is mean ± sd over the runs.
    for tau in taus:
        for key, s in out["stats"][tau].items():
            values = [r["rows"][tau][key] for r in runs]
            assert s.n == 2
            assert s.mean == pytest.approx(statistics.fmean(values))
            assert s.sd == pytest.approx(statistics.stdev(values))
            assert (s.sd > 0) == (max(values) > min(values))
    assert any(out["stats"][tau]["skipped"].sd > 0 for tau in taus)  # the permutations differ, so the runs do
    table = dict(zip(out["columns"], out["rows"][1], strict=True))
    assert table["τ"] == "0.25"
    assert table["skipped"].strip("*") == format(out["stats"][0.25]["skipped"], ".3f")

    assert (tmp_path / "truncation.png").stat().st_size > 1000
    text = (tmp_path / "truncation.md").read_text()
    assert "### truncation_levels" in text and "### level_differences" in text
    assert "| 0.25 |" in text and " ± " in text and "2 runs" in text
    assert "τ = 0.1 → 0.25" in text

    history, summary = logged(out["wandb_dir"])
    table = logged_table(out["wandb_dir"], history, "truncation_levels")
    assert table["columns"] == out["columns"]
    assert [row[0] for row in table["data"]] == ["0.1", "0.25", "0.5"]
    assert table["data"][2] == out["rows"][2]
    assert history["trajectories._type"] == "image-file"
    assert summary["tau_0.5/skipped"] == pytest.approx(out["stats"][0.5]["skipped"].mean)
    assert summary["tau_0.5/skipped_sd"] == pytest.approx(out["stats"][0.5]["skipped"].sd)
    assert summary["tau_0.25/top_overlap"] == pytest.approx(out["stats"][0.25]["top overlap"].mean / 5)


def test_truncation_rejects_bad_levels(tmp_path):
    module = load("truncation")
    for bad in ("0.1,1.5", "abc", ""):
        with pytest.raises(ValueError, match="--truncations"):
            module.main(["--quick", "--truncations", bad, "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())


def test_truncation_helpers_on_a_known_trajectory():
    module = load("truncation")
    # v(∅) = 0.1; the value enters the 0.05 band at step 2, leaves it at 3, stays from 4.
    traj = torch.tensor([[1.0, 0.5, 0.12, 0.4, 0.11, 0.1, 0.1, 0.1]], dtype=torch.float64)
    assert module.collapse_points(traj, 0.1, 0.05).tolist() == [2]


def test_truncation_reads_trajectories_and_scan_depths_from_the_estimators_own_run():
    module = load("truncation")
    n = 10
    game = additive_game([1.0] + [0.0] * (n - 1))  # worth 1 while player 0 is in, else v(∅) = 0
    orders = random_orders(n, 6, seed=3)  # the orders monte_carlo(seed=3) scans
    full = CountingGame(game, record=True)
    monte_carlo(full, 6, truncation=None, seed=3, batch_size=1)
    for order in orders:
        where = int((order == 0).nonzero())  # player 0 is removed at step where + 1
        expected = torch.tensor([1.0] * (where + 1) + [0.0] * (n - where), dtype=torch.float64)
        assert torch.equal(module.trajectory(full, order), expected)
        assert module.scan_depth(full, order) == n  # untruncated: every coalition of the scan evaluated
    cut = CountingGame(game, record=True)
    monte_carlo(cut, 6, truncation=0.25, patience=2, seed=3, batch_size=1)
    for order in orders:
        where = int((order == 0).nonzero())
        # The library's rule: after player 0 goes, two evaluated values at v(∅) end the scan; a scan that gets
        # to N - 1 removals is complete (v(∅) itself is evaluated once per run).
        stop = where + 2
        assert module.scan_depth(cut, order) == (stop if stop < n - 1 else n)


@pytest.mark.slow
def test_filter_pictures_quick(tmp_path):
    module = load("filter_pictures")
    out = module.main(["--quick", "--digit", "4", "--out", str(tmp_path)])
    model, acts, labels = out["model"], out["activations"], out["labels"]
    x, y = load_digits_tensors("val", val_size=80)
    assert torch.equal(labels, y)
    # Activations are the per-image channel means after the first BatchNorm (where the players mask).
    with torch.no_grad():
        first = model.net.features[:2](x).mean(dim=(2, 3)).double()
    assert torch.allclose(acts[:, : first.shape[1]], first, atol=1e-5)
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
    assert [row[0] for row in out["rows"]] == ["accuracy"] * 3 + ["class 4"] * 3
    for row in out["rows"]:
        game, rank, name = row[:3]
        result = out["results"][game]
        f = result.names.index(name)
        assert f == int(result.ranking()[rank - 1])
        top = torch.topk(acts[:, f], 4).indices
        assert row[5] == " ".join(str(int(y[i])) for i in top)
        assert row[7] == max(row[5].split().count(v) for v in row[5].split()) / 4
    assert (tmp_path / "filter_pictures.png").stat().st_size > 5000
    history, summary = logged(out["wandb_dir"])
    assert history["filter_pictures._type"] == "image-file"
    table = logged_table(out["wandb_dir"], history, "top_filters")
    assert [r[2] for r in table["data"]] == [r[2] for r in out["rows"]]
    assert summary["class_4/mean_share"] == pytest.approx(out["share"]["class 4"])


def test_filter_pictures_rejects_bad_digit(tmp_path):
    module = load("filter_pictures")
    with pytest.raises(ValueError, match="--digit 12"):
        module.main(["--quick", "--digit", "12", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())
