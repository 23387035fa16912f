"""Removal curves on digits: does Neuron Shapley find the filters that matter better than cheaper scores?

Trains the default digits CNN, ranks its filters by TMAB-Shapley and by every baseline of ``nsl.baselines``
(weight norms, mean activation, Taylor, leave-one-out, integrated gradients over channel gates, random), all on
the same accuracy game on validation images, then removes each ranking's top filters one by one. Prints the
accuracy after 0, 5, 10, 15, 20 and 30 removals and the normalised area under each curve (mean accuracy over
0..max removed; lower = the ranking found the filters that matter).

Class-specific curves (paper Fig. 2a), for each digit of ``--classes``: TMAB-Shapley on that digit's class game
(its validation images), then the digit's accuracy and the accuracy on all other digits, on held-out test
images, as its top filters are removed, next to the same curves for the overall-accuracy TMAB ranking and for
random orders. Writes ``removal_curves.md``, ``removal_curves.png`` and ``removal_curves_classes.png`` to
``--out`` and logs them to W&B (offline unless ``WANDB_MODE=online``).

    python -m experiments.removal_curves
    python -m experiments.removal_curves --classes 1,7 --quick   # smoke setting, seconds
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from torch import Tensor

from experiments import common
from nsl import AccuracyGame, ClassGame, FilterPlayers, Game, tmab
from nsl.baselines import BASELINES, baseline_result
from nsl.data import load_digits_tensors
from nsl.models import Classifier
from nsl.report import markdown, removal_curve, removal_values
from nsl.shapley import ShapleyResult

NAME = "removal_curves"
ROWS = (0, 5, 10, 15, 20, 30)
CLASS_ROWS = (0, 2, 5, 10, 20)
CLASS_STYLE = {"class tmab": "tab:red", "overall tmab": "tab:blue", "random": "gray"}


def digits_list(text: str) -> list[int]:
    """Parse ``--classes`` (``"0,3,8"``; empty for none) into distinct digits 0-9."""
    parts = [t.strip() for t in text.split(",") if t.strip()]
    if not all(p.isdigit() and int(p) <= 9 for p in parts) or len(set(parts)) != len(parts):
        raise ValueError(f"--classes {text!r} must be distinct comma-separated digits 0-9 (e.g. 0,3,8), or ''.")
    return [int(p) for p in parts]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = common.parser(__doc__, NAME, quick="tiny smoke setting (small model, 3 epochs)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--eval-size", type=int, default=300, help="validation images in the game")
    p.add_argument("--top-k", type=int, default=10, help="top-k that TMAB separates")
    p.add_argument("--max-evals", type=int, default=2000, help="TMAB budget (coalitions evaluated)")
    p.add_argument("--max-removed", type=int, default=30)
    p.add_argument("--ig-steps", type=int, default=32, help="integrated-gradients quadrature points")
    p.add_argument("--n-random", type=int, default=10, help="random orders averaged for the random curve")
    p.add_argument("--classes", type=str, default="0,3,8", help="digits for class-specific curves; '' for none")
    p.add_argument("--class-removed", type=int, default=20, help="filters removed in the class-specific curves")
    quick = {"epochs": 3, "eval_size": 60, "max_evals": 150, "max_removed": 10, "ig_steps": 4, "n_random": 2,
             "class_removed": lambda n: min(n, 8)}
    positive = ("epochs", "eval_size", "top_k", "max_evals", "max_removed", "n_random", "class_removed")
    args = common.parse_args(p, argv, quick=quick, positive=positive)
    args.class_list = digits_list(args.classes)
    return args


def auc(values: list[float]) -> float:
    """Trapezoid area under a curve sampled at 0, 1, ..., n removals, divided by n (a mean accuracy)."""
    n = len(values) - 1
    if n == 0:
        return float(values[0])
    return float(sum((a + b) / 2 for a, b in itertools.pairwise(values)) / n)


def plot(curves: dict[str, list[float]], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for name, values in curves.items():
        style = {"color": "gray", "linestyle": "--"} if name.startswith("random") else {}
        lw = 2.5 if name == "tmab" else 1.3
        ax.plot(range(len(values)), values, label=f"{name} (AUC {auc(values):.3f})", linewidth=lw, **style)
    ax.set_xlabel("top-ranked filters removed")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title)
    ax.legend(fontsize=8)
    common.save_figure(fig, path)


def class_curves(
    model: Classifier, players: FilterPlayers, overall: ShapleyResult, args: argparse.Namespace
) -> dict[int, dict[str, Any]]:
    """For each digit: its own accuracy and the other digits' accuracy (test images) as filters are removed.

    Rankings: TMAB on the digit's class game (validation images), the overall-accuracy TMAB ranking, and the
    mean of ``n_random`` random orders (the same orders for both curves).
    """
    x_val, y_val = load_digits_tensors("val", val_size=args.eval_size, seed=args.seed)
    x_test, y_test = load_digits_tensors("test", val_size=args.eval_size, seed=args.seed)
    steps = list(range(min(args.class_removed, len(players)) + 1))
    found: dict[int, dict[str, Any]] = {}
    for digit in args.class_list:
        rank_game = ClassGame(model, players, x_val, y_val, digit)
        result = tmab(rank_game, args.top_k, max_evals=args.max_evals, seed=args.seed)
        own = ClassGame(model, players, x_test, y_test, digit)
        rest = y_test != digit
        others = AccuracyGame(model, players, x_test[rest], y_test[rest])
        randoms = common.random_orders(len(players), args.n_random, args.seed + 1000 + digit)

        def curve(game: Game, orders: list[Tensor]) -> list[float]:
            return torch.stack([removal_values(game, o, steps) for o in orders]).mean(0).tolist()

        orders = {"class tmab": [result.ranking()], "overall tmab": [overall.ranking()], "random": randoms}
        found[digit] = {
            "result": result,
            "degenerate": abs(rank_game.full_value() - rank_game.empty_value()) <= 0.5 * abs(rank_game.full_value()),
            "n_images": (len(rank_game.targets), len(own.targets), len(others.targets)),
            "own": {name: curve(own, o) for name, o in orders.items()},
            "others": {name: curve(others, o) for name, o in orders.items()},
        }
        r = result
        print(f"  digit {digit}: tmab on {len(rank_game.targets)} validation images, {r.n_evals} evaluations, "
              f"{r.seconds:.1f} s, converged={r.converged}")
    return found


def plot_classes(found: dict[int, dict[str, Any]], path: Path) -> None:
    """One panel per digit: its accuracy (solid) and the other digits' accuracy (dashed) per ranking."""
    fig, axes = plt.subplots(1, len(found), figsize=(4.2 * len(found), 3.9), dpi=110, squeeze=False, sharey=True)
    for ax, (digit, data) in zip(axes[0], found.items(), strict=True):
        for name, color in CLASS_STYLE.items():
            label = f"digit-{digit} tmab" if name == "class tmab" else name
            own, others = data["own"][name], data["others"][name]
            ax.plot(range(len(own)), own, color=color, linewidth=2.2, label=f"{label}: digit {digit}")
            ax.plot(range(len(others)), others, color=color, linewidth=1.3, linestyle="--", label=f"{label}: others")
        ax.set_title(f"digit {digit}")
        ax.set_xlabel("top-ranked filters removed")
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("test accuracy")
    common.save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison; returns the curves, AUCs and the markdown table (for tests and notebooks)."""
    args = parse(argv)
    start = time.perf_counter()
    model, players, x, y = common.trained_digits(args)
    game = AccuracyGame(model, players, x, y)
    full = game.full_value()
    print(f"trained SmallCNN in {time.perf_counter() - start:.1f} s: {len(players)} filters, "
          f"validation accuracy {full:.3f} on {len(x)} images")

    results = {"tmab": tmab(game, args.top_k, max_evals=args.max_evals, seed=args.seed)}
    options: dict[str, dict[str, Any]] = {
        "leave_one_out": {"game": game},
        "integrated_gradients": {"steps": args.ig_steps},
        "random": {"seed": args.seed},
    }
    for name in BASELINES:
        results[name] = baseline_result(name, model, players, x, y, k=args.top_k, **options.get(name, {}))
    for name, result in results.items():
        print(f"  {name:<22}{result.seconds:>7.2f} s {result.n_evals:>6} game evaluations")

    max_removed = min(args.max_removed, len(players))
    curves: dict[str, list[float]] = {}
    random_mean: list[float] = []
    for name, result in results.items():
        n_random = args.n_random if name == "tmab" else 0
        curve = removal_curve(game, result.ranking(), max_removed=max_removed, n_random=n_random, seed=args.seed)
        curves[name] = curve.ranked
        random_mean = curve.random if name == "tmab" else random_mean
    random_key = f"random (mean of {args.n_random})"
    curves[random_key] = random_mean
    areas = {name: auc(values) for name, values in curves.items()}

    names = list(curves)
    columns = ["removed", *names]
    rows = [[str(r), *(curves[n][r] for n in names)] for r in ROWS if r <= max_removed]
    rows.append(["AUC", *(areas[n] for n in names)])
    table = markdown(columns, rows, floats=".3f")
    header = (
        f"Accuracy on {len(x)} validation images after removing each ranking's top filters "
        f"({len(players)} filters; TMAB: {results['tmab'].n_evals} evaluations, converged="
        f"{results['tmab'].converged}). AUC = mean accuracy over 0..{max_removed} removed, lower is better.\n"
    )
    print("\nAUC, best first: " + ", ".join(f"{n} {a:.3f}" for n, a in sorted(areas.items(), key=lambda t: t[1])))

    args.out.mkdir(parents=True, exist_ok=True)
    plot(curves, args.out / "removal_curves.png", f"digits SmallCNN, {len(players)} filters")
    tables = {"overall": (columns, rows)}
    images = {"overall_curves": args.out / "removal_curves.png"}
    summary: dict[str, float] = {f"auc/{name}": a for name, a in areas.items()}
    found: dict[int, dict[str, Any]] = {}
    if args.class_list:
        print("\nclass-specific rankings:")
        found = class_curves(model, players, results["tmab"], args)
        class_columns, class_rows, ks = class_table(found)
        class_n = len(next(iter(found.values()))["own"]["random"]) - 1
        tables["class_specific"] = (class_columns, class_rows)
        plot_classes(found, args.out / "removal_curves_classes.png")
        images["class_specific_curves"] = args.out / "removal_curves_classes.png"
        sizes = next(iter(found.values()))["n_images"]
        header += (
            f"\nClass-specific (paper Fig. 2a): TMAB on each digit's class game (its ~{sizes[0]} validation "
            "images), then accuracy on that digit's held-out test images (digit) and on the test images of all "
            "other digits (others) after removing each ranking's top filters; overall tmab = the ranking above; "
            f"random = mean of {args.n_random} random orders. AUC = mean over 0..{class_n} removed.\n"
        )
        degenerate = [d for d, data in found.items() if data["degenerate"]]
        if degenerate:
            header += (
                f"The network with every filter off predicts digit {degenerate} for every image (v(∅) ≈ v(N) in "
                "these class games), and removing many filters drifts toward predicting that digit.\n"
            )
        for digit, data in found.items():
            for name in CLASS_STYLE:
                for k in ks:
                    summary[f"digit_{digit}/{name.replace(' ', '_')}/own_at_{k}"] = data["own"][name][k]
                    summary[f"digit_{digit}/{name.replace(' ', '_')}/others_at_{k}"] = data["others"][name][k]
            own, others = data["own"]["class tmab"], data["others"]["class tmab"]
            print(f"removing digit {digit}'s top filters: digit {digit} "
                  + ", ".join(f"{own[k]:.3f} ({k})" for k in ks) + "; other digits "
                  + ", ".join(f"{others[k]:.3f} ({k})" for k in ks))

    paths = common.report(NAME, args, start, tables=tables, images=images, summary=summary, header=header)
    return {"auc": areas, "curves": curves, "full_value": full, "table": table, "class_curves": found,
            "model": model, **paths}


def class_table(found: dict[int, dict[str, Any]]) -> tuple[list[str], list[list[Any]], list[int]]:
    """Rows (digit, ranking) with the digit's and the other digits' accuracy after k removed, and AUCs."""
    n = len(next(iter(found.values()))["own"]["random"]) - 1
    ks = [k for k in CLASS_ROWS if k <= n]
    columns = ["digit", "ranking", *(f"digit @{k}" for k in ks), *(f"others @{k}" for k in ks), "digit AUC",
               "others AUC"]
    rows = []
    for digit, data in found.items():
        for name in CLASS_STYLE:
            own, others = data["own"][name], data["others"][name]
            label = f"digit-{digit} tmab" if name == "class tmab" else name
            rows.append([digit, label, *(own[k] for k in ks), *(others[k] for k in ks), auc(own), auc(others)])
    return columns, rows, ks


if __name__ == "__main__":
    common.run_script(main)
