"""Removal curves on digits: does Neuron Shapley find the filters that matter better than cheaper scores?

For each ``--train-seeds`` entry, trains the default digits CNN with that seed (weights, data order and data split)
and ranks its filters by TMAB-Shapley and by every baseline of ``nsl.baselines`` (weight norms, mean activation,
Taylor, leave-one-out, integrated gradients over channel gates, random), all on the same accuracy game on that
network's validation images; TMAB, the random ranking and the random orders run once per ``--estimator-seeds``
entry, the deterministic baselines once per network. Then removes each ranking's top filters one by one and reports
the accuracy after 0, 5, 10, 15, 20 and 30 removals and the normalised area under each curve (mean accuracy over
0..max removed; lower = the ranking found the filters that matter), each as mean ± sd over the runs, with the
differences from TMAB that are larger than the spread in bold.

Class-specific curves (paper Fig. 2a), for each digit of ``--classes`` and each run: TMAB on that digit's class
game (its validation images), then the digit's accuracy and the accuracy on all other digits, on held-out test
images, as its top filters are removed, next to the same curves for the run's overall-accuracy TMAB ranking and for
random orders. ``--seed`` is unused: the two seed lists set every seed. Writes ``removal_curves.md``,
``removal_curves.png`` and ``removal_curves_classes.png`` (mean curves with ±1 sd bands) to ``--out`` and logs them
to W&B (offline unless ``WANDB_MODE=online``).

    python -m experiments.removal_curves
    python -m experiments.removal_curves --classes 1,7 --quick   # smoke setting, seconds
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from torch import Tensor

from experiments import common, seeds
from experiments.seeds import Spread
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
SEEDED = ("tmab", "random")  # rankings that change with the estimator seed (and the random orders)


def digits_list(text: str) -> list[int]:
    """Parse ``--classes`` (``"0,3,8"``; empty for none) into distinct digits 0-9."""
    parts = [t.strip() for t in text.split(",") if t.strip()]
    if not all(p.isdigit() and int(p) <= 9 for p in parts) or len(set(parts)) != len(parts):
        raise ValueError(f"--classes {text!r} must be distinct comma-separated digits 0-9 (e.g. 0,3,8), or ''.")
    return [int(p) for p in parts]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = common.parser(__doc__, NAME, quick="tiny smoke setting (small model, 3 epochs, one network, two TMAB runs)")
    seeds.add_seed_flags(p)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--eval-size", type=int, default=300, help="validation images in the game")
    p.add_argument("--top-k", type=int, default=10, help="top-k that TMAB separates")
    p.add_argument("--max-evals", type=int, default=2000, help="TMAB budget per run (coalitions evaluated)")
    p.add_argument("--max-removed", type=int, default=30)
    p.add_argument("--ig-steps", type=int, default=32, help="integrated-gradients quadrature points")
    p.add_argument("--n-random", type=int, default=10, help="random orders averaged for the random curve, per run")
    p.add_argument("--classes", type=str, default="0,3,8", help="digits for class-specific curves; '' for none")
    p.add_argument("--class-removed", type=int, default=20, help="filters removed in the class-specific curves")
    quick = {"epochs": 3, "eval_size": 60, "max_evals": 150, "max_removed": 10, "ig_steps": 4, "n_random": 2,
             "class_removed": lambda n: min(n, 8)}
    positive = ("epochs", "eval_size", "top_k", "max_evals", "max_removed", "n_random", "class_removed")
    args = common.parse_args(p, argv, quick=quick, positive=positive)
    args.class_list = digits_list(args.classes)
    return args


def auc(values: Sequence[float]) -> float:
    """Trapezoid area under a curve sampled at 0, 1, ..., n removals, divided by n (a mean accuracy)."""
    n = len(values) - 1
    if n == 0:
        return float(values[0])
    return float(sum((a + b) / 2 for a, b in itertools.pairwise(values)) / n)


def samples(runs: Sequence[dict[str, Any]], name: str, part: str = "curves") -> list[list[float]]:
    """The runs' curves of ranking ``name``: every run for the seeded rankings, one per trained network (its first
    estimator run) for the deterministic ones, which do not depend on the estimator seed."""
    seeded = name in SEEDED or name.startswith("random")
    return [run[part][name] for run in runs if seeded or run["first"]]


def network_runs(train_seed: int, args: argparse.Namespace) -> tuple[Classifier, list[dict[str, Any]]]:
    """Train the digits CNN with ``train_seed``; rank its filters (deterministic baselines once, TMAB and the random
    ranking per estimator seed) and remove each ranking's top filters. Returns the model and one dict per run."""
    start = time.perf_counter()
    model, _ = common.train_model("digits_cnn", epochs=args.epochs, seed=train_seed, channels=args.channels)
    players = FilterPlayers(model)
    x, y = load_digits_tensors("val", val_size=args.eval_size, seed=train_seed)
    test = load_digits_tensors("test", val_size=args.eval_size, seed=train_seed) if args.class_list else None
    game = AccuracyGame(model, players, x, y)
    full = game.full_value()
    print(f"training seed {train_seed}: SmallCNN in {time.perf_counter() - start:.1f} s, {len(players)} filters, "
          f"validation accuracy {full:.3f} on {len(x)} images")
    max_removed = min(args.max_removed, len(players))
    options: dict[str, dict[str, Any]] = {"leave_one_out": {"game": game},
                                          "integrated_gradients": {"steps": args.ig_steps}}
    fixed = {name: baseline_result(name, model, players, x, y, k=args.top_k, **options.get(name, {}))
             for name in BASELINES if name not in SEEDED}
    fixed_curves = {name: removal_curve(game, r.ranking(), max_removed=max_removed, n_random=0).ranked
                    for name, r in fixed.items()}
    print("  " + ", ".join(f"{name} {r.seconds:.2f} s" for name, r in fixed.items()))
    runs = []
    for e in args.estimator_seeds:
        result = tmab(game, args.top_k, max_evals=args.max_evals, seed=e)
        rand = baseline_result("random", model, players, x, y, k=args.top_k, seed=e)
        with_random = removal_curve(game, result.ranking(), max_removed=max_removed, n_random=args.n_random, seed=e)
        curves = {"tmab": with_random.ranked, **fixed_curves,
                  "random": removal_curve(game, rand.ranking(), max_removed=max_removed, n_random=0).ranked,
                  f"random (mean of {args.n_random})": with_random.random}
        runs.append({"train_seed": train_seed, "estimator_seed": e, "first": e == args.estimator_seeds[0],
                     "full_value": full, "n_filters": len(players), "n_images": len(x),
                     "results": {"tmab": result, **fixed, "random": rand}, "curves": curves,
                     "auc": {name: auc(c) for name, c in curves.items()}})
        print(f"  estimator seed {e}: tmab {result.n_evals} evaluations, {result.seconds:.1f} s, "
              f"converged={result.converged}, AUC {runs[-1]['auc']['tmab']:.3f}")
        if args.class_list:
            runs[-1]["classes"] = class_runs(model, players, result, (x, y), test, e, args)
    return model, runs


def class_runs(model: Classifier, players: FilterPlayers, overall: ShapleyResult, val: tuple[Tensor, Tensor],
               test: tuple[Tensor, Tensor], e: int, args: argparse.Namespace) -> dict[int, dict[str, Any]]:
    """For each digit, one run: its own accuracy and the other digits' accuracy (test images) as filters are removed.

    Rankings: TMAB with seed ``e`` on the digit's class game (the network's ``val`` images), the run's
    overall-accuracy TMAB ranking, and the mean of ``n_random`` random orders (seeded by ``e`` and the digit; the
    same for both curves).
    """
    (x_val, y_val), (x_test, y_test) = val, test
    steps = list(range(min(args.class_removed, len(players)) + 1))
    found: dict[int, dict[str, Any]] = {}
    for digit in args.class_list:
        rank_game = ClassGame(model, players, x_val, y_val, digit)
        result = tmab(rank_game, args.top_k, max_evals=args.max_evals, seed=e)
        own = ClassGame(model, players, x_test, y_test, digit)
        rest = y_test != digit
        others = AccuracyGame(model, players, x_test[rest], y_test[rest])
        randoms = common.random_orders(len(players), args.n_random, e + 1000 + digit)

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
        print(f"    digit {digit}: tmab on {len(rank_game.targets)} validation images, {result.n_evals} evaluations, "
              f"{result.seconds:.1f} s, converged={result.converged}")
    return found


def plot(runs: dict[str, list[list[float]]], areas: dict[str, Spread], path: Path, title: str) -> None:
    """Mean removal curve of each ranking with a ±1 sd band over its runs."""
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for name, curves in runs.items():
        style = {"color": "gray", "linestyle": ":" if name == "random" else "--"} if name.startswith("random") else {}
        lw = 2.5 if name == "tmab" else 1.3
        seeds.band(ax, range(len(curves[0])), curves, label=f"{name} (AUC {areas[name]:.3f})", linewidth=lw, **style)
    ax.set_xlabel("top-ranked filters removed")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title)
    ax.legend(fontsize=7)
    common.save_figure(fig, path)


def plot_classes(found: dict[int, dict[str, Any]], path: Path) -> None:
    """One panel per digit: its accuracy (solid) and the other digits' accuracy (dashed) per ranking, mean ± 1 sd."""
    fig, axes = plt.subplots(1, len(found), figsize=(4.2 * len(found), 3.9), dpi=110, squeeze=False, sharey=True)
    for ax, (digit, data) in zip(axes[0], found.items(), strict=True):
        for name, color in CLASS_STYLE.items():
            label = f"digit-{digit} tmab" if name == "class tmab" else name
            own = [run["own"][name] for run in data["runs"]]
            others = [run["others"][name] for run in data["runs"]]
            x = range(len(own[0]))
            seeds.band(ax, x, own, color=color, linewidth=2.2, label=f"{label}: digit {digit}")
            seeds.band(ax, x, others, color=color, linewidth=1.3, linestyle="--", label=f"{label}: others")
        ax.set_title(f"digit {digit}")
        ax.set_xlabel("top-ranked filters removed")
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("test accuracy")
    common.save_figure(fig, path)


def clear_line(areas: dict[str, Spread]) -> str:
    """Which rankings' AUC differs from TMAB's by more than the spread, and which do not."""
    ref = areas["tmab"]
    groups = {"clearly lower (better) than tmab's": [], "clearly higher (worse)": [], "within the spread": []}
    for name, a in areas.items():
        if name == "tmab":
            continue
        key = ("within the spread" if not seeds.clear(a, ref) else
               "clearly lower (better) than tmab's" if a.mean < ref.mean else "clearly higher (worse)")
        groups[key].append(name)
    return "AUC " + "; ".join(f"{k}: {', '.join(v) or 'none'}" for k, v in groups.items()) + "."


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison; returns the mean curves and AUCs, the per-run curves and the markdown table (for tests
    and notebooks), and the last trained model."""
    args = parse(argv)
    start = time.perf_counter()
    runs: list[dict[str, Any]] = []
    model = None
    for t in args.train_seeds:
        model, network = network_runs(t, args)
        runs.extend(network)

    names = list(runs[0]["curves"])
    per_ranking = {name: samples(runs, name) for name in names}
    stats = {name: seeds.curve_spread(curves) for name, curves in per_ranking.items()}
    areas = {name: seeds.spread(auc(c) for c in curves) for name, curves in per_ranking.items()}
    max_removed = len(per_ranking["tmab"][0]) - 1
    full = seeds.spread(run["full_value"] for run in runs if run["first"])

    def cell(name: str, value: Spread, ref: Spread) -> str:
        return format(value, ".3f") if name == "tmab" else seeds.mark(value, ref)

    columns = ["removed", *names]
    rows = [[str(r), *(cell(n, stats[n][r], stats["tmab"][r]) for n in names)] for r in ROWS if r <= max_removed]
    rows.append(["AUC", *(cell(n, areas[n], areas["tmab"]) for n in names)])
    table = markdown(columns, rows)
    certified = sum(run["results"]["tmab"].converged for run in runs)
    fixed = [n for n in names if n not in SEEDED and not n.startswith("random")]
    n_runs, n_networks = seeds.plural(len(runs), "run"), seeds.plural(len(args.train_seeds), "training seed")
    header = (
        f"Accuracy on {runs[0]['n_images']} validation images (each network's own split; full network "
        f"{full:.3f}) after removing each ranking's top filters ({runs[0]['n_filters']} filters; TMAB: at most "
        f"{args.max_evals} evaluations per run, certified in {certified} of {n_runs}). AUC = mean accuracy over "
        f"0..{max_removed} removed, lower is better.\n\n"
        f"{seeds.seed_note(args)} The deterministic rankings ({', '.join(fixed)}) have one value per trained "
        f"network: their ± is over the {n_networks} only. random = one random ranking per run; random (mean of "
        f"{args.n_random}) = mean of {args.n_random} random orders per run.\n\n"
        "Bold: differs from tmab by more than the spread (|Δmean| > its sd + tmab's sd). " + clear_line(areas) + "\n"
    )
    print("\nAUC, best first: " + ", ".join(f"{n} {a}" for n, a in sorted(areas.items(), key=lambda t: t[1].mean)))

    args.out.mkdir(parents=True, exist_ok=True)
    title = f"digits SmallCNN, {runs[0]['n_filters']} filters, mean ± sd over runs"
    plot(per_ranking, areas, args.out / "removal_curves.png", title)
    tables = {"overall": (columns, rows)}
    images = {"overall_curves": args.out / "removal_curves.png"}
    summary: dict[str, float] = {"runs": len(runs), "tmab_certified_runs": certified}
    for name, a in areas.items():
        summary[f"auc/{name}"], summary[f"auc_sd/{name}"] = a.mean, a.sd
    found: dict[int, dict[str, Any]] = {}
    if args.class_list:
        found = gather_classes(runs, args)
        class_columns, class_rows, ks = class_table(found)
        class_n = len(found[args.class_list[0]]["own"]["random"]) - 1
        tables["class_specific"] = (class_columns, class_rows)
        plot_classes(found, args.out / "removal_curves_classes.png")
        images["class_specific_curves"] = args.out / "removal_curves_classes.png"
        class_runs_all = [r for data in found.values() for r in data["runs"]]
        sizes = seeds.spread(r["n_images"][0] for r in class_runs_all)
        class_certified = sum(r["result"].converged for r in class_runs_all)
        n_digit_runs = seeds.plural(len(class_runs_all), "digit run")
        header += (
            f"\nClass-specific (paper Fig. 2a): per run, TMAB on each digit's class game (its {sizes.mean:.0f} ± "
            f"{sizes.sd:.0f} validation images; certified in {class_certified} of {n_digit_runs}), then accuracy on "
            "that digit's held-out test images (digit) and on the test images of all other digits (others) after "
            "removing each ranking's top filters; overall tmab = the run's ranking above; random = mean of "
            f"{args.n_random} random orders per run. AUC = mean over 0..{class_n} removed. Each cell: mean ± sd over "
            f"{n_runs}. Bold: the digit's own TMAB ranking differs from random by more than the spread.\n"
        )
        degenerate = {d: sum(r["degenerate"] for r in data["runs"]) for d, data in found.items()}
        if any(degenerate.values()):
            header += (
                "The network with every filter off predicts one digit for every image; for "
                + ", ".join(f"digit {d} in {n} of {n_runs}" for d, n in degenerate.items() if n)
                + " that is this digit (v(∅) ≈ v(N) in its class game), and removing many filters drifts toward "
                "predicting it.\n"
            )
        for digit, data in found.items():
            for name in CLASS_STYLE:
                for part in ("own", "others"):
                    for k in ks:
                        key = f"digit_{digit}/{name.replace(' ', '_')}/{part}_at_{k}"
                        s = data[f"{part}_spread"][name][k]
                        summary[key], summary[f"{key}_sd"] = s.mean, s.sd
            own, others = data["own_spread"]["class tmab"], data["others_spread"]["class tmab"]
            print(f"removing digit {digit}'s top filters: digit {digit} "
                  + ", ".join(f"{own[k]} ({k})" for k in ks) + "; other digits "
                  + ", ".join(f"{others[k]} ({k})" for k in ks))

    paths = common.report(NAME, args, start, tables=tables, images=images, summary=summary, header=header)
    return {"auc": {n: a.mean for n, a in areas.items()}, "auc_spread": areas,
            "curves": {n: [s.mean for s in curve] for n, curve in stats.items()}, "spreads": stats,
            "runs": runs, "full_value": full.mean, "table": table, "class_curves": found, "model": model, **paths}


def gather_classes(runs: Sequence[dict[str, Any]], args: argparse.Namespace) -> dict[int, dict[str, Any]]:
    """Per digit: its runs (with their training and estimator seeds), the mean curves and their spreads."""
    found: dict[int, dict[str, Any]] = {}
    for digit in args.class_list:
        digit_runs = [{"train_seed": run["train_seed"], "estimator_seed": run["estimator_seed"],
                       **run["classes"][digit]} for run in runs]
        data: dict[str, Any] = {"runs": digit_runs}
        for part in ("own", "others"):
            data[f"{part}_spread"] = {name: seeds.curve_spread([r[part][name] for r in digit_runs])
                                      for name in CLASS_STYLE}
            data[part] = {name: [s.mean for s in curve] for name, curve in data[f"{part}_spread"].items()}
            data[f"{part}_auc"] = {name: seeds.spread(auc(r[part][name]) for r in digit_runs) for name in CLASS_STYLE}
        found[digit] = data
    return found


def class_table(found: dict[int, dict[str, Any]]) -> tuple[list[str], list[list[Any]], list[int]]:
    """Rows (digit, ranking) with the digit's and the other digits' accuracy after k removed, and AUCs, each
    mean ± sd; the digit's own ranking in bold where it differs from random by more than the spread."""
    n = len(next(iter(found.values()))["own"]["random"]) - 1
    ks = [k for k in CLASS_ROWS if k <= n]
    columns = ["digit", "ranking", *(f"digit @{k}" for k in ks), *(f"others @{k}" for k in ks), "digit AUC",
               "others AUC"]
    rows = []
    for digit, data in found.items():
        for name in CLASS_STYLE:
            def cell(value: Spread, ref: Spread, name: str = name) -> str:
                return seeds.mark(value, ref) if name == "class tmab" else format(value, ".3f")

            own, others = data["own_spread"], data["others_spread"]
            label = f"digit-{digit} tmab" if name == "class tmab" else name
            rows.append([digit, label, *(cell(own[name][k], own["random"][k]) for k in ks),
                         *(cell(others[name][k], others["random"][k]) for k in ks),
                         cell(data["own_auc"][name], data["own_auc"]["random"]),
                         cell(data["others_auc"][name], data["others_auc"]["random"])])
    return columns, rows, ks


if __name__ == "__main__":
    common.run_script(main)
