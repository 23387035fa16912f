"""Fairness repair (paper Fig. 3b): remove the filters that Neuron Shapley blames for unfairness.

Trains the digits CNN on fair digits (group-1 images are inverted and, in training, rare outside digits 0–4, so
the model is worse on group 1), plays the fairness game (worst-group accuracy) on validation images with
``tmab(tail="bottom")``, and removes the k most negative filters for k = 0, 1, 2, 3, 5, 8, 10 by zeroing them
with ``nsl.repair.prune_filters``. Every number is measured on the TEST split: accuracy of each group, the
worst group's accuracy (what the repair should raise) and overall accuracy (its cost). Controls: k random
filters (mean over ``--n-random`` draws) and the k most negative filters by leave-one-out on the same game.
Writes ``fairness_repair.md`` and ``fairness_repair.png`` to ``--out`` and logs both to one W&B run.

    python -m experiments.fairness_repair
    python -m experiments.fairness_repair --quick   # smoke setting, seconds
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from torch import Tensor, nn

from experiments import common
from nsl import AccuracyGame, FilterPlayers, tmab
from nsl.baselines import baseline_result
from nsl.games import FairnessGame

NAME = "fairness_repair"
KS = (0, 1, 2, 3, 5, 8, 10)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = common.parser(__doc__, NAME, quick="tiny smoke setting (small model, 1 epoch)")
    common.add_removal_flags(p, KS, top_k_help="culprits TMAB separates (bottom tail)", n_random=5)
    return common.parse_removal_args(p, argv, quick={"epochs": 1, "max_evals": 60, "n_random": 2, "top_k": 3})


def group_games(model: nn.Module, players: FilterPlayers, x: Tensor, y: Tensor, groups: Tensor) -> dict[str, Any]:
    """The test metrics as library games: each group's accuracy, the fairness game (worst group), overall."""
    games: dict[str, Any] = {
        f"group{g}": AccuracyGame(model, players, x[groups == g], y[groups == g]) for g in torch.unique(groups).tolist()
    }
    games["worst"] = FairnessGame(model, players, x, y, groups, metric="worst_group_accuracy")
    games["overall"] = AccuracyGame(model, players, x, y)
    return games


def plot(ks: tuple[int, ...], curves: dict[str, list[dict[str, float]]], path: Path, title: str) -> None:
    """Per-group test accuracy vs k (left) and overall test accuracy vs k (right), one line style per method."""
    styles = {"tmab": "-", "leave_one_out": ":", "random": "--"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for method, rows in curves.items():
        ls = styles.get(method, "-")
        for g, color in (("group0", "tab:blue"), ("group1", "tab:orange")):
            left.plot(ks, [r[g] for r in rows], ls, color=color, marker="o", ms=3, label=f"{method}: {g}")
        right.plot(ks, [r["overall"] for r in rows], ls, color="black", marker="o", ms=3, label=method)
    left.set(xlabel="filters removed (k)", ylabel="test accuracy of the group", title="per-group accuracy")
    right.set(xlabel="filters removed (k)", ylabel="overall test accuracy", title="overall accuracy (the cost)")
    left.legend(fontsize=7, handlelength=3.5)
    right.legend(fontsize=7, handlelength=3.5)
    fig.suptitle(title)
    common.save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the experiment; returns the per-method metrics for every k and the report paths (for tests)."""
    args = parse(argv)
    start = time.perf_counter()
    model, dm = common.train_model("fair_digits_cnn", epochs=args.epochs, seed=args.seed, channels=args.channels)
    x_val, y_val, g_val = dm.tensors("val")
    test = dm.tensors("test")
    players = FilterPlayers(model)
    game = FairnessGame(model, players, x_val, y_val, g_val, metric="worst_group_accuracy")
    print(f"trained SmallCNN on fair digits in {time.perf_counter() - start:.1f} s: {len(players)} filters, "
          f"validation worst-group accuracy {game.full_value():.3f}")

    result = tmab(game, args.top_k, tail="bottom", max_evals=args.max_evals, seed=args.seed)
    loo = baseline_result("leave_one_out", model, players, k=args.top_k, game=game)
    print(f"tmab(tail='bottom'): {result.n_evals} evaluations, converged={result.converged}, "
          f"{result.seconds:.1f} s; leave-one-out: {loo.n_evals} evaluations")
    k_max = args.ks[-1]
    games = group_games(model, players, *test)

    def measure() -> dict[str, float]:
        return {key: g.full_value() for key, g in games.items()}

    orders = {"tmab": result.culprits(k_max, negative=True), "leave_one_out": loo.culprits(k_max, negative=True)}
    curves = common.ranking_curves(model, players, orders, args.ks, measure, n_random=args.n_random, seed=args.seed + 1)

    culprits = orders["tmab"].tolist()
    tmab_rows = [
        [k, r["group0"], r["group1"], r["worst"], r["overall"],
         ", ".join(f"{players.names[i]} ({result.values[i]:+.4f})" for i in culprits[prev:k]) or "-"]
        for prev, k, r in zip((0, *args.ks), args.ks, curves["tmab"], strict=False)
    ]
    compare_rows = [
        [k, *(curves[m][i]["worst"] for m in curves), *(curves[m][i]["overall"] for m in curves)]
        for i, k in enumerate(args.ks)
    ]
    methods = list(curves)
    random_key = f"random (mean of {args.n_random})"
    labels = [random_key if m == "random" else m for m in methods]
    tables = {
        "TMAB culprits removed (test split)": (
            ["k", "group 0 acc", "group 1 acc", "worst-group acc", "overall acc", "culprits added (value)"],
            tmab_rows,
        ),
        "Worst-group and overall test accuracy by ranking": (
            ["k", *(f"worst: {m}" for m in labels), *(f"overall: {m}" for m in labels)],
            compare_rows,
        ),
    }
    png = common.png_path(args, NAME)
    before, tm = curves["tmab"][0], curves["tmab"]
    best = max(range(len(args.ks)), key=lambda i: (tm[i]["worst"], -args.ks[i]))
    header = (
        f"## Fairness repair on fair digits\n\n"
        f"SmallCNN ({len(players)} filters) trained {args.epochs} epochs on fair digits; fairness game = worst-group "
        f"accuracy on {len(y_val)} validation images; tmab(top_k={args.top_k}, tail='bottom'): {result.n_evals} "
        f"evaluations, converged={result.converged}; leave-one-out: {loo.n_evals} evaluations. Filters zeroed "
        f"with prune_filters; all accuracies on the {len(test[1])} test images "
        f"({int((test[2] == 0).sum())} group 0, {int((test[2] == 1).sum())} group 1).\n\n"
        f"Before: group 0 {before['group0']:.3f}, group 1 {before['group1']:.3f}, overall {before['overall']:.3f}. "
        f"Best TMAB repair: k={args.ks[best]} gives worst-group {tm[best]['worst']:.3f} "
        f"({tm[best]['worst'] - before['worst']:+.3f}) at overall {tm[best]['overall']:.3f} "
        f"({tm[best]['overall'] - before['overall']:+.3f})."
    )

    plot(args.ks, curves, png, f"fair digits: removing fairness culprits ({len(players)} filters)")
    summary = {
        "worst_group_before": before["worst"],
        "worst_group_best": tm[best]["worst"],
        "best_k": float(args.ks[best]),
        "overall_before": before["overall"],
        "overall_at_best_k": tm[best]["overall"],
        "tmab_evals": float(result.n_evals),
        "seconds": time.perf_counter() - start,
    }
    paths = common.report(NAME, args, start, tables=tables, images={"per_group_accuracy_vs_k": png}, summary=summary,
                   header=header)
    return {"ks": args.ks, "curves": curves, "result": result, "loo": loo, "summary": summary, **paths}


if __name__ == "__main__":
    common.run_script(main)
