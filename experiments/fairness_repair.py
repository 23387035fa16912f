"""Fairness repair (paper Fig. 3b): remove the filters that Neuron Shapley blames for unfairness.

Trains the digits CNN on fair digits (group-1 images are inverted and, in training, rare outside digits 0–4, so
the model is worse on group 1), plays the fairness game (worst-group accuracy) on validation images with
``tmab(tail="bottom")``, and removes the k most negative filters for k = 0, 1, 2, 3, 5, 8, 10 by zeroing them
with ``nsl.repair.prune_filters``. Every number is measured on the TEST split: accuracy of each group, the
worst group's accuracy (what the repair should raise) and overall accuracy (its cost). Controls: k random
filters (mean over ``--n-random`` draws) and the k most negative filters by leave-one-out on the same game.

Error bars: one network per ``--train-seeds`` entry (weights, data order and split follow the seed); on each,
leave-one-out once (it is deterministic) and, per ``--estimator-seeds`` entry e, TMAB with seed e and the random
control with seed e + 1. Every cell is mean ± sd over those runs (leave-one-out: one value per network), in bold
where TMAB differs from random, or from k = 0, by more than the two spreads together (``seeds.clear``).
Writes ``fairness_repair.md`` and ``fairness_repair.png`` (mean lines, ±1 sd bands) to ``--out`` and logs both
to one W&B run. ``--seed`` is not used: the seed lists replace it.

    python -m experiments.fairness_repair
    python -m experiments.fairness_repair --quick   # smoke setting, seconds
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from torch import Tensor, nn

from experiments import common, seeds
from nsl import AccuracyGame, FilterPlayers, tmab
from nsl.baselines import baseline_result
from nsl.games import FairnessGame

NAME = "fairness_repair"
KS = (0, 1, 2, 3, 5, 8, 10)
METHODS = ("tmab", "leave_one_out", "random")
KEYS = ("group0", "group1", "worst", "overall")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = common.parser(__doc__, NAME, quick="tiny smoke setting (small model, 1 epoch)")
    common.add_removal_flags(p, KS, top_k_help="culprits TMAB separates (bottom tail)", n_random=5)
    seeds.add_seed_flags(p)
    return common.parse_removal_args(p, argv, quick={"epochs": 3, "max_evals": 60, "n_random": 2, "top_k": 3})


def group_games(model: nn.Module, players: FilterPlayers, x: Tensor, y: Tensor, groups: Tensor) -> dict[str, Any]:
    """The test metrics as library games: each group's accuracy, the fairness game (worst group), overall."""
    games: dict[str, Any] = {
        f"group{g}": AccuracyGame(model, players, x[groups == g], y[groups == g]) for g in torch.unique(groups).tolist()
    }
    games["worst"] = FairnessGame(model, players, x, y, groups, metric="min_group_accuracy")  # whichever is worst
    games["overall"] = AccuracyGame(model, players, x, y)
    return games


def network_runs(args: argparse.Namespace, train_seed: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train the network of ``train_seed``; leave-one-out on it once, TMAB and random once per estimator seed.

    Returns the network's record (model, data, leave-one-out result and curve) and one record per estimator seed
    (TMAB result, its culprits and the three methods' curves: metrics per k)."""
    start = time.perf_counter()
    model, dm = common.train_model("fair_digits_cnn", epochs=args.epochs, seed=train_seed, channels=args.channels)
    x_val, y_val, g_val = dm.tensors("val")
    test = dm.tensors("test")
    players = FilterPlayers(model)
    game = FairnessGame(model, players, x_val, y_val, g_val, metric="worst_group_accuracy")
    games = group_games(model, players, *test)

    def measure() -> dict[str, float]:
        return {key: g.full_value() for key, g in games.items()}

    k_max = args.ks[-1]
    loo = baseline_result("leave_one_out", model, players, k=args.top_k, game=game)
    loo_rows = common.removal_rows(model, players, loo.culprits(k_max, negative=True), args.ks, measure)
    print(f"training seed {train_seed}: trained in {time.perf_counter() - start:.1f} s, {len(players)} filters, "
          f"validation worst-group accuracy {game.full_value():.3f}; leave-one-out: {loo.n_evals} evaluations")
    network = {"train_seed": train_seed, "model": model, "data": dm, "players": players, "loo": loo,
               "loo_curve": loo_rows, "n_val": len(y_val), "test_groups": test[2]}
    runs = []
    for e in args.estimator_seeds:
        result = tmab(game, args.top_k, tail="bottom", max_evals=args.max_evals, seed=e)
        culprits = result.culprits(k_max, negative=True)
        randoms = common.random_orders(len(players), args.n_random, e + 1)
        curves = {
            "tmab": common.removal_rows(model, players, culprits, args.ks, measure),
            "leave_one_out": loo_rows,
            "random": common.mean_rows([common.removal_rows(model, players, o, args.ks, measure) for o in randoms]),
        }
        print(f"  estimator seed {e}: tmab(tail='bottom') {result.n_evals} evaluations, "
              f"converged={result.converged}, {result.seconds:.1f} s; worst group at k=0 "
              f"{curves['tmab'][0]['worst']:.3f}, best {max(r['worst'] for r in curves['tmab']):.3f}")
        runs.append({"train_seed": train_seed, "estimator_seed": e, "result": result, "culprits": culprits,
                     "curves": curves})
    return network, runs


def agreement(runs: list[dict[str, Any]], ks: tuple[int, ...]) -> list[float]:
    """Per k, the mean share of the first k culprits two TMAB runs on the same network have in common (NaN for
    k = 0 or when no network has two estimator seeds)."""
    shares: list[float] = []
    for k in ks:
        pairs = [
            len(set(a["culprits"][:k].tolist()) & set(b["culprits"][:k].tolist())) / k
            for a, b in itertools.combinations(runs, 2) if k and a["train_seed"] == b["train_seed"]
        ]
        shares.append(sum(pairs) / len(pairs) if pairs else float("nan"))
    return shares


def best_repair(
    ks: tuple[int, ...], spreads: list[dict[str, seeds.Spread]], curves: list[list[dict[str, float]]]
) -> tuple[int, seeds.Spread, seeds.Spread]:
    """The index of the best k by the mean worst-group curve (the smallest k on ties), and each curve's gain in
    worst-group accuracy and change in overall accuracy there, against k = 0."""
    best = max(range(len(ks)), key=lambda i: (spreads[i]["worst"].mean, -ks[i]))
    gain = seeds.spread(c[best]["worst"] - c[0]["worst"] for c in curves)
    cost = seeds.spread(c[best]["overall"] - c[0]["overall"] for c in curves)
    return best, gain, cost


def plot(ks: tuple[int, ...], per_run: dict[str, list[list[dict[str, float]]]], path: Path, title: str) -> None:
    """Per-group test accuracy vs k (left) and overall test accuracy vs k (right), one line style per method:
    the mean over runs with a ±1 sd band."""
    styles = {"tmab": "-", "leave_one_out": ":", "random": "--"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for method, runs in per_run.items():
        ls = styles.get(method, "-")
        for g, color in (("group0", "tab:blue"), ("group1", "tab:orange")):
            seeds.band(left, ks, [[r[g] for r in run] for run in runs], color=color, label=f"{method}: {g}",
                       linestyle=ls, marker="o", ms=3)
        seeds.band(right, ks, [[r["overall"] for r in run] for run in runs], color="black", label=method,
                   linestyle=ls, marker="o", ms=3)
    left.set(xlabel="filters removed (k)", ylabel="test accuracy of the group", title="per-group accuracy")
    right.set(xlabel="filters removed (k)", ylabel="overall test accuracy", title="overall accuracy (the cost)")
    left.legend(fontsize=7, handlelength=3.5)
    right.legend(fontsize=7, handlelength=3.5)
    fig.suptitle(title)
    common.save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the experiment; returns the mean curves, their spreads, every run and the report paths (for tests)."""
    args = parse(argv)
    start = time.perf_counter()
    networks, runs = [], []
    for t in args.train_seeds:
        network, network_runs_ = network_runs(args, t)
        networks.append(network)
        runs.extend(network_runs_)

    # Per method, the curves that enter its spread: one per run; leave-one-out one per network (deterministic).
    per_run = {
        "tmab": [r["curves"]["tmab"] for r in runs],
        "leave_one_out": [n["loo_curve"] for n in networks],
        "random": [r["curves"]["random"] for r in runs],
    }
    spreads = {m: seeds.spread_rows(c) for m, c in per_run.items()}
    curves = {m: [{key: s.mean for key, s in row.items()} for row in rows] for m, rows in spreads.items()}
    tm, rnd, loo = spreads["tmab"], spreads["random"], spreads["leave_one_out"]
    shared = agreement(runs, args.ks)

    tmab_rows = [
        [k, format(r["group0"]), format(r["group1"]), seeds.mark(r["worst"], tm[0]["worst"]),
         seeds.mark(r["overall"], tm[0]["overall"]), "-" if shared[i] != shared[i] else f"{shared[i]:.2f}"]
        for i, (k, r) in enumerate(zip(args.ks, tm, strict=True))
    ]
    compare_rows = [
        [k, seeds.mark(tm[i]["worst"], rnd[i]["worst"]), seeds.mark(loo[i]["worst"], rnd[i]["worst"]),
         format(rnd[i]["worst"]), seeds.mark(tm[i]["overall"], rnd[i]["overall"]),
         seeds.mark(loo[i]["overall"], rnd[i]["overall"]), format(rnd[i]["overall"])]
        for i, k in enumerate(args.ks)
    ]
    random_key = f"random (mean of {args.n_random})"
    tables = {
        "TMAB culprits removed (test split)": (
            ["k", "group 0 acc", "group 1 acc", "worst-group acc", "overall acc", "culprits shared by estimator seeds"],
            tmab_rows,
        ),
        "Worst-group and overall test accuracy by ranking": (
            ["k", *(f"worst: {m}" for m in ("tmab", "leave_one_out", random_key)),
             *(f"overall: {m}" for m in ("tmab", "leave_one_out", random_key))],
            compare_rows,
        ),
    }

    best, gain, cost = best_repair(args.ks, tm, per_run["tmab"])
    loo_best, loo_gain, loo_cost = best_repair(args.ks, loo, per_run["leave_one_out"])
    converged = sum(bool(r["result"].converged) for r in runs)
    evals = seeds.spread(r["result"].n_evals for r in runs)
    n_filters = len(networks[0]["players"])
    groups = torch.cat([n["test_groups"] for n in networks])
    b = tm[0]
    header = (
        f"## Fairness repair on fair digits\n\n"
        f"{seeds.seed_note(args)} Leave-one-out is deterministic: its cells are over the "
        f"{seeds.plural(len(networks), 'network')} (one value per training seed); the random control (mean of "
        f"{args.n_random} random removals) is drawn anew for every run.\n\n"
        f"SmallCNN ({n_filters} filters) trained {args.epochs} epochs on fair digits; fairness game = worst-group "
        f"accuracy on {networks[0]['n_val']} validation images; tmab(top_k={args.top_k}, tail='bottom', "
        f"max_evals={args.max_evals}): {evals:.0f} evaluations; **converged (certified) in {converged} of {len(runs)} "
        f"runs**. Filters zeroed with prune_filters; all accuracies on the test images of each network's split "
        f"(group 0 / group 1 images per split: {int((groups == 0).sum()) / len(networks):.0f} / "
        f"{int((groups == 1).sum()) / len(networks):.0f} on average). **Bold**: differs from k = 0 (first table) "
        f"or from random at the same k (second table: TMAB and leave-one-out) by more than the two spreads "
        f"together (|Δmean| > sd + sd).\n\n"
        f"Before: group 0 {b['group0']}, group 1 {b['group1']}, worst group {b['worst']}, overall {b['overall']}. "
        f"Best TMAB repair (by the mean curve): k={args.ks[best]} gives worst-group {tm[best]['worst']} "
        f"(gain per run {gain.mean:+.3f} ± {gain.sd:.3f}) at overall {tm[best]['overall']} (cost per run "
        f"{cost.mean:+.3f} ± {cost.sd:.3f}); random filters at "
        f"that k: worst group {rnd[best]['worst']}, overall {rnd[best]['overall']}. Best leave-one-out repair: "
        f"k={args.ks[loo_best]} gives worst-group {loo[loo_best]['worst']} (gain per network {loo_gain.mean:+.3f} "
        f"± {loo_gain.sd:.3f}) at overall {loo[loo_best]['overall']} (cost per network {loo_cost.mean:+.3f} ± "
        f"{loo_cost.sd:.3f})."
    )

    png = common.png_path(args, NAME)
    plot(args.ks, per_run, png, f"fair digits: removing fairness culprits ({n_filters} filters, mean ± sd over runs)")
    summary = {
        "worst_group_before": b["worst"].mean,
        "worst_group_before_sd": b["worst"].sd,
        "worst_group_best": tm[best]["worst"].mean,
        "worst_group_best_sd": tm[best]["worst"].sd,
        "best_k": float(args.ks[best]),
        "worst_group_gain": gain.mean,
        "worst_group_gain_sd": gain.sd,
        "overall_before": b["overall"].mean,
        "overall_at_best_k": tm[best]["overall"].mean,
        "overall_cost": cost.mean,
        "overall_cost_sd": cost.sd,
        "random_worst_at_best_k": rnd[best]["worst"].mean,
        "random_overall_at_best_k": rnd[best]["overall"].mean,
        "loo_best_k": float(args.ks[loo_best]),
        "loo_worst_group_gain": loo_gain.mean,
        "loo_worst_group_gain_sd": loo_gain.sd,
        "loo_overall_cost": loo_cost.mean,
        "loo_overall_cost_sd": loo_cost.sd,
        "tmab_evals": evals.mean,
        "tmab_converged": float(converged),
        "runs": float(len(runs)),
        "seconds": time.perf_counter() - start,
    }
    paths = common.report(NAME, args, start, tables=tables, images={"per_group_accuracy_vs_k": png}, summary=summary,
                          header=header)
    return {"ks": args.ks, "curves": curves, "spreads": spreads, "per_run": per_run, "runs": runs,
            "networks": networks, "best_k": args.ks[best], "gain": gain, "cost": cost, "summary": summary, **paths}


if __name__ == "__main__":
    common.run_script(main)
