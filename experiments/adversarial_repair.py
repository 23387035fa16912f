"""Adversarial repair (paper Fig. 3c), retried: remove the filters that serve an attack more than the task.

The first try (digits CNN, 104 filters, game = attack success) did not separate: the filters that help the attack
most were filters the model needs to classify at all (a broken model is hit by nothing). This version changes
the three things that could be the obstacle:

- the game: ``AdversarialGame(net_of_clean=True)``, value = targeted attack success − clean accuracy of the same
  coalition on the same validation images, so a filter's value is its help to the attack minus its help to
  clean classification (``--game success`` plays attack success alone, the first try's game);
- the network: ``--data shapes`` (default) trains the 240-filter ``wide_cnn`` on generated 32×32 RGB shapes
  (``experiment=shapes_cnn``); ``--data digits`` the digits SmallCNN;
- the evidence: every training seed × estimator seed (``--train-seeds``, ``--estimator-seeds``).

For each trained network the adversarial examples are made once (targeted L∞ PGD, random wrong target per
image) on correctly classified validation images against the full model; ``tmab`` ranks the filters (once per
estimator seed), leave-one-out on the same game ranks them once, and random orders (``--n-random`` per
estimator seed) are the control. The top k of each ranking are zeroed with ``nsl.repair.prune_filters`` and
measured on TEST images never used in the analysis: transfer success (examples made against the unrepaired
model), adaptive success (examples made again against the repaired model, same targets and start) and clean
accuracy (the cost). Writes ``adversarial_repair.md`` and ``adversarial_repair.png`` (attack success against
clean accuracy, and against k, with ±1 sd bands) to ``--out`` and logs both to one W&B run.

    python -m experiments.adversarial_repair                  # shapes, 3 × 3 seeds (~25 min on 2 cores)
    python -m experiments.adversarial_repair --data digits    # the first try's network, new game
    python -m experiments.adversarial_repair --quick          # smoke setting, seconds
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from torch import Tensor

from experiments import common, seeds
from nsl import FilterPlayers, tmab
from nsl.baselines import baseline_result
from nsl.games import AccuracyGame, AdversarialGame
from nsl.train import compose_config

NAME = "adversarial_repair"
KS = (0, 1, 2, 3, 5, 10, 20)
METRICS = ("transfer", "adaptive", "clean")
RANKINGS = ("tmab", "leave_one_out", "random")
DATA = {  # --data: training variant, default L-inf radius, default epochs, quick SmallCNN channels
    "shapes": ("shapes_cnn", 8 / 255, 6, (4, 6, 8, 10)),
    "digits": ("digits_cnn", 32 / 255, 15, (4, 6, 8)),
}
STYLE = {"tmab": "tab:red", "leave_one_out": "tab:blue", "random": "gray"}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = common.parser(__doc__, NAME, quick="tiny smoke setting (small model, 1 epoch)")
    common.add_removal_flags(p, KS, top_k_help="top contributors TMAB separates", n_random=2)
    seeds.add_seed_flags(p)
    p.add_argument("--data", choices=sorted(DATA), default="shapes", help="generated shapes (wide CNN) or digits")
    p.add_argument("--game", choices=("net", "success"), default="net",
                   help="net: attack success − clean accuracy (default); success: attack success alone")
    p.add_argument("--eps", type=float, default=None, help="L-inf radius (default 8/255 shapes, 32/255 digits)")
    p.add_argument("--steps", type=int, default=10, help="PGD steps")
    p.set_defaults(max_evals=1500)  # ~6 per filter of the shapes network: a 32×32 evaluation costs ~20× a digits one
    p.add_argument("--eval-size", type=int, default=100, help="validation images in the game (correctly classified)")
    p.add_argument("--test-size", type=int, default=200, help="test images measured")
    p.add_argument("--train-size", type=int, default=2000, help="generated training images (shapes only)")
    quick = {"epochs": 1, "max_evals": 60, "n_random": 1, "top_k": 3, "steps": 3, "eval_size": 32, "test_size": 32,
             "train_size": 200}
    args = common.parse_removal_args(p, argv, quick=quick, positive=("steps", "eval_size", "test_size", "train_size"),
                                     check_filters=False)  # checked below, against the --data network
    experiment, eps, epochs, quick_channels = DATA[args.data]
    given = sys.argv[1:] if argv is None else argv
    if not args.quick and not any(a.split("=")[0] == "--epochs" for a in given):
        args.epochs = epochs  # the network's own default
    args.experiment = experiment
    args.channels = quick_channels if args.quick else None  # None: the variant's own network
    n_filters = sum(args.channels or compose_config([f"experiment={experiment}"]).model.net.channels)
    if args.ks[-1] > n_filters:
        raise ValueError(f"--ks asks to remove {args.ks[-1]} filters; the {args.data} network has only {n_filters}.")
    args.eps = eps if args.eps is None else args.eps
    if not 0 < args.eps <= 1:
        raise ValueError(f"--eps={args.eps} must be an L-inf radius in (0, 1] (inputs lie in [0, 1]).")
    return args


def attack_metrics(transfer: AdversarialGame, clean: AccuracyGame, attack: dict[str, Any]) -> dict[str, float]:
    """Transfer and adaptive attack success and clean accuracy of the model as it is now.

    ``transfer`` holds examples made against the unrepaired model; the adaptive attack is made afresh against
    the model as it is with ``attack`` (same options and seed, so the same targets and start points).
    """
    adaptive = AdversarialGame(clean.model, clean.players, clean.inputs, clean.targets, **attack)
    return {"transfer": transfer.full_value(), "adaptive": adaptive.full_value(), "clean": clean.full_value()}


def correctly_classified(model: torch.nn.Module, x: Tensor, y: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """The first ``size`` of the images the model classifies correctly (an attack on a miss means nothing)."""
    with torch.inference_mode():
        keep = model(x).argmax(1) == y
    return x[keep][:size], y[keep][:size]


Images = tuple[Tensor, Tensor]


def train(args: argparse.Namespace, seed: int) -> tuple[Any, FilterPlayers, Images, Images]:
    """The network of ``--data`` trained with ``seed``, its filters, the game's and the test images."""
    overrides = [f"data.train_size={args.train_size}"] if args.data == "shapes" else []
    model, dm = common.train_model(args.experiment, epochs=args.epochs, seed=seed, channels=args.channels,
                                   overrides=overrides)
    x_val, y_val = dm.tensors("val")[:2]
    x_test, y_test = dm.tensors("test")[:2]
    return (model, FilterPlayers(model), correctly_classified(model, x_val, y_val, args.eval_size),
            (x_test[: args.test_size], y_test[: args.test_size]))


def one_network(args: argparse.Namespace, t: int) -> list[dict[str, Any]]:
    """Every estimator seed's curves on the network trained with seed ``t`` (leave-one-out computed once)."""
    start = time.perf_counter()
    model, players, (x_val, y_val), (x_test, y_test) = train(args, t)
    attack = {"attack": "pgd", "eps": args.eps, "steps": args.steps, "targeted": True}
    game = AdversarialGame(model, players, x_val, y_val, seed=t, net_of_clean=args.game == "net", **attack)
    test_attack = {**attack, "seed": t + 1}
    transfer = AdversarialGame(model, players, x_test, y_test, **test_attack)
    clean = AccuracyGame(model, players, x_test, y_test)
    v_full, v_empty = game.full_value(), game.empty_value()
    print(f"train seed {t}: {len(players)} filters trained in {time.perf_counter() - start:.0f} s; game on "
          f"{len(y_val)} correct validation images, v(N) = {v_full:+.3f}, v(∅) = {v_empty:+.3f}; "
          f"test: clean {clean.full_value():.3f}, attack success {transfer.full_value():.3f}")

    def measure() -> dict[str, float]:
        return attack_metrics(transfer, clean, test_attack)

    k_max = args.ks[-1]
    loo = baseline_result("leave_one_out", model, players, x_val, y_val, k=k_max, game=game)
    loo_rows = common.removal_rows(model, players, loo.culprits(k_max), args.ks, measure)
    runs = []
    for e in args.estimator_seeds:
        result = tmab(game, args.top_k, tail="top", max_evals=args.max_evals, seed=e)
        curves = common.ranking_curves(model, players, {"tmab": result.culprits(k_max)}, args.ks, measure,
                                       n_random=args.n_random, seed=1000 * t + e)
        curves["leave_one_out"] = loo_rows
        runs.append({"train_seed": t, "estimator_seed": e, "curves": curves, "result": result,
                     "filters": [players.names[i] for i in result.culprits(k_max).tolist()],
                     "v_full": v_full, "v_empty": v_empty, "n_images": len(y_val)})
        print(f"  estimator seed {e}: tmab {result.n_evals} evaluations, converged={result.converged}, "
              f"{result.seconds:.0f} s; k={k_max}: transfer {curves['tmab'][-1]['transfer']:.3f}, clean "
              f"{curves['tmab'][-1]['clean']:.3f} (random {curves['random'][-1]['transfer']:.3f}, "
              f"{curves['random'][-1]['clean']:.3f})")
    return runs


def aggregate(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, seeds.Spread]]]:
    """Per ranking and k, the Spread of each metric over all runs."""
    return {name: seeds.spread_rows([run["curves"][name] for run in runs]) for name in RANKINGS}


def plot(ks: tuple[int, ...], runs: list[dict[str, Any]], stats: dict[str, list[dict[str, seeds.Spread]]],
         path: Path, title: str) -> None:
    """Left: transfer (solid) and adaptive (dashed) success against clean accuracy, one point per k with ±1 sd
    in both directions. Right: transfer success and clean accuracy against k, ±1 sd bands."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), dpi=110)
    for name in RANKINGS:
        color = STYLE[name]
        for metric, ls in (("transfer", "-"), ("adaptive", "--")):
            rows = stats[name]
            left.errorbar([r["clean"].mean for r in rows], [r[metric].mean for r in rows],
                          xerr=[r["clean"].sd for r in rows], yerr=[r[metric].sd for r in rows], color=color,
                          linestyle=ls, marker="o", ms=3, capsize=2, label=f"{name}: {metric}")
        curves = [run["curves"][name] for run in runs]
        seeds.band(right, ks, [[r["transfer"] for r in c] for c in curves], color=color, label=f"{name}: transfer")
        seeds.band(right, ks, [[r["clean"] for r in c] for c in curves], color=color, linestyle=":",
                   label=f"{name}: clean accuracy")
    left.set(xlabel="clean test accuracy", ylabel="targeted attack success on test images",
             title="success against clean accuracy (k grows leftwards)")
    left.invert_xaxis()
    right.set(xlabel="filters removed (k)", ylabel="rate on test images", title=title, ylim=(-0.02, 1.02))
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    common.save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the experiment; returns the per-run curves, their spreads and the report paths (for tests)."""
    args = parse(argv)
    start = time.perf_counter()
    runs = [run for t in args.train_seeds for run in one_network(args, t)]
    stats = aggregate(runs)
    n_filters = len(runs[0]["result"].values)
    rows = []
    for i, k in enumerate(args.ks):
        for name in RANKINGS:
            r, rnd = stats[name][i], stats["random"][i]
            cells = [format(r[m]) if name == "random" else seeds.mark(r[m], rnd[m]) for m in METRICS]
            rows.append([k, name, *cells])
    columns = ["k", "ranking", "transfer success", "adaptive success", "clean accuracy"]
    certified = sum(run["result"].converged for run in runs)
    evals = seeds.spread(run["result"].n_evals for run in runs)
    sizes = seeds.spread(run["n_images"] for run in runs)
    game_text = ("attack success − clean accuracy (net_of_clean)" if args.game == "net" else "attack success alone")
    before, after = stats["tmab"][0], stats["tmab"][-1]
    header = (
        f"## Adversarial repair on {args.data}\n\n"
        f"{n_filters} filters ({args.experiment}, {args.epochs} epochs). Game: {game_text}, targeted L∞ PGD "
        f"(eps = {args.eps * 255:.0f}/255, {args.steps} steps, random wrong target per image) made once per network "
        f"on {sizes.mean:.0f} correctly classified validation images; tmab(top_k="
        f"{args.top_k}, max_evals={args.max_evals}): {evals:.0f} evaluations, {certified}/{len(runs)} runs "
        f"certified. Top k of each ranking zeroed; measured on {args.test_size} test images: transfer = examples made "
        f"against the unrepaired model, adaptive = made again against the repaired model. Leave-one-out is "
        f"deterministic per network (its spread is over training seeds only); random = mean of {args.n_random} "
        f"orders per run. {seeds.seed_note(args)} Bold: differs from random removal of the same k by more than the "
        f"two spreads.\n\n"
        f"Before: transfer success {before['transfer']:.3f}, clean accuracy {before['clean']:.3f}. "
        f"k = {args.ks[-1]} by tmab: transfer {after['transfer']:.3f}, adaptive {after['adaptive']:.3f}, clean "
        f"{after['clean']:.3f}."
    )
    png = common.png_path(args, NAME)
    plot(args.ks, runs, stats, png, f"{args.data}: removing the attack's top filters ({n_filters} filters)")
    summary: dict[str, float] = {"seconds": time.perf_counter() - start, "tmab_evals": evals.mean,
                                 "tmab_certified": float(certified)}
    for name in RANKINGS:
        for i, k in enumerate(args.ks):
            for m in METRICS:
                summary[f"{name}/{m}_at_{k}"] = stats[name][i][m].mean
                summary[f"{name}/{m}_at_{k}_sd"] = stats[name][i][m].sd
    culprits = [[run["train_seed"], run["estimator_seed"], ", ".join(run["filters"][:5])] for run in runs]
    tables = {"Attack success and clean accuracy on test images": (columns, rows),
              "tmab's top 5 filters per run": (["train seed", "estimator seed", "filters"], culprits)}
    paths = common.report(NAME, args, start, tables=tables, images={"attack_success_vs_clean": png},
                          summary=summary, header=header)
    return {"ks": args.ks, "runs": runs, "stats": stats, "summary": summary, **paths}


if __name__ == "__main__":
    common.run_script(main)
