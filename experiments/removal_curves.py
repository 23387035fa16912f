"""Removal curves on digits: do certified Neuron Shapley analyses, with several semivalues, find the filters that
matter better than cheaper scores?

For each ``--train-seeds`` entry, trains the default digits CNN with that seed (weights, data order and data split)
and ranks its filters on the accuracy game of that network's validation images by one certified ``tmab`` analysis
per semivalue of ``--semivalues`` (default Shapley, Banzhaf, Beta(1,4), Beta(1,16): each analysis certifies its
top ``--top-k`` with ``tmab``'s ε-δ certificate, or stops at ``--max-rows`` rows uncertified) and by every baseline
of ``nsl.baselines`` (leave-one-out, integrated gradients over channel gates, Taylor, weight norms, mean activation,
random). The ``tmab`` analyses, the random ranking and the random orders run once per ``--estimator-seeds`` entry,
the deterministic baselines once per network. Each finished analysis is saved under ``--cache`` (default
``<--out>/../analyses``) with a key naming the network (data, training seed, epochs, channels, filter-dropout rate,
evaluation images, and a fingerprint of weights and images) and the game, so a rerun, or
``experiments.filter_dropout`` on the same network (its p = 0 runs train these networks bit for bit), loads it.

Overall: removes each ranking's top filters one by one and reports the accuracy after 0, 5, 10, 15, 20 and 30
removals and the normalised area under each curve (mean accuracy over 0..max removed; lower = the ranking found the
filters that matter). Class-specific (paper Fig. 2a), for each digit of ``--classes`` and each run: a certified
``tmab`` analysis per semivalue on the digit's class game (its validation images), leave-one-out on the same class
game, integrated gradients and Taylor on that digit's validation images only, the run's overall-accuracy ranking
(first semivalue) and random orders; then the digit's accuracy and the accuracy on all other digits, on held-out
test images, as each ranking's top filters are removed, their AUCs and the selectivity (others' AUC − the digit's).

Every cell is mean ± sd over training seeds × estimator seeds (deterministic rankings: over training seeds); bold:
differs from leave-one-out (on the same game) by more than the spreads. Under each table a verdict line: the best
method on each measure, whether a ``tmab`` semivalue beats leave-one-out by more than the spreads, the best
semivalue. A cost table gives, per semivalue and game, the median rows, how many analyses were certified and their
CPU seconds (as first computed, also when loaded from the cache), the baselines' cost, and the script's own CPU and
wall time. ``--seed`` is unused: the two seed lists set every seed. Writes ``removal_curves.md``,
``removal_curves.png`` and ``removal_curves_classes.png`` (mean curves with ±1 sd bands) to ``--out`` and logs them
to W&B (offline unless ``WANDB_MODE=online``).

    python -m experiments.removal_curves --train-seeds 0,1,2 --estimator-seeds 0,1,2   # the defaults
    python -m experiments.removal_curves --semivalues shapley,banzhaf --classes 3
    python -m experiments.removal_curves --classes 1,7 --quick   # smoke setting, seconds (2 semivalues, not certified)
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from torch import Tensor, nn

from experiments import certified, common, seeds
from experiments.repair_methods import fingerprint
from experiments.seeds import Spread
from nsl import AccuracyGame, ClassGame, FilterPlayers, Game
from nsl.baselines import BASELINES, baseline_result
from nsl.data import load_digits_tensors
from nsl.models import Classifier
from nsl.report import markdown, removal_curve, removal_values
from nsl.shapley import ShapleyResult

NAME = "removal_curves"
ROWS = (0, 5, 10, 15, 20, 30)
CLASS_ROWS = (0, 2, 5, 10, 20)
REFERENCE = "leave_one_out"  # bold = differs from it by more than the spreads
FIRST = ("leave_one_out", "integrated_gradients", "taylor")  # baselines shown first, next to the tmab columns
CLASS_BASELINES = FIRST  # the baselines that can be restricted to one class's game or images
QUICK_ROWS = 20_000  # --quick: rows per analysis (the pipeline runs; nothing is certified)


def seeded(name: str) -> bool:
    """Whether a ranking changes with the estimator seed: the ``tmab`` analyses and the random ones."""
    return "tmab" in name or name.startswith("random")


def digits_list(text: str) -> list[int]:
    """Parse ``--classes`` (``"0,3,8"``; empty for none) into distinct digits 0-9."""
    parts = [t.strip() for t in text.split(",") if t.strip()]
    if not all(p.isdigit() and int(p) <= 9 for p in parts) or len(set(parts)) != len(parts):
        raise ValueError(f"--classes {text!r} must be distinct comma-separated digits 0-9 (e.g. 0,3,8), or ''.")
    return [int(p) for p in parts]


def quick_semivalues(value: str) -> str:
    """``--quick``'s semivalues unless others were given: two, so the pipeline compares columns."""
    return "shapley,banzhaf" if value == certified.SEMIVALUES else value


def quick_rows(value: int) -> int:
    """``--quick``'s rows per analysis unless another budget was given."""
    return QUICK_ROWS if value == certified.MAX_ROWS else value


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = common.parser(__doc__, NAME, quick="tiny smoke setting (small model, 3 epochs, one network, two tmab runs, "
                                           "shapley and banzhaf, 20,000 rows per analysis)")
    seeds.add_seed_flags(p)
    certified.add_semivalue_flags(p)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--eval-size", type=int, default=300, help="validation images in the game")
    p.add_argument("--top-k", type=int, default=10, help="top-k that each tmab analysis certifies")
    p.add_argument("--max-removed", type=int, default=30)
    p.add_argument("--ig-steps", type=int, default=32, help="integrated-gradients quadrature points")
    p.add_argument("--n-random", type=int, default=10, help="random orders averaged for the random curve, per run")
    p.add_argument("--classes", type=str, default="0,3,8", help="digits for class-specific curves; '' for none")
    p.add_argument("--class-removed", type=int, default=20, help="filters removed in the class-specific curves")
    quick = {"epochs": 3, "eval_size": 60, "max_removed": 10, "ig_steps": 4, "n_random": 2,
             "class_removed": lambda n: min(n, 8), "semivalues": quick_semivalues, "max_rows": quick_rows}
    positive = ("epochs", "eval_size", "top_k", "max_removed", "n_random", "class_removed")
    args = common.parse_args(p, argv, quick=quick, positive=positive)
    args.class_list = digits_list(args.classes)
    return certified.finish_semivalue_args(args)


def network_key(model: nn.Module, inputs: Tensor, targets: Tensor, *, data: str, train_seed: int, epochs: int,
                dropout: float = 0.0) -> str:
    """The part of a cached analysis' key that names the network and its evaluation images, the same in every
    script: data, training seed, epochs, channels per layer, filter-dropout rate, number of evaluation images, and a
    fingerprint of the weights (with buffers) and the images, so that only the same network on the same images
    shares an analysis (a different torch thread count in training gives another network). Append ``|<game>``
    (``accuracy``, ``class=3``) for :func:`experiments.certified.certified`."""
    channels = ",".join(str(layer.size) for layer in FilterPlayers(model).layers)
    return (f"{data}|train_seed={train_seed}|epochs={epochs}|channels={channels}|dropout={dropout:g}|"
            f"eval={len(targets)}|fingerprint={fingerprint(model, inputs, targets)}")


def auc(values: Sequence[float]) -> float:
    """Trapezoid area under a curve sampled at 0, 1, ..., n removals, divided by n (a mean accuracy)."""
    n = len(values) - 1
    if n == 0:
        return float(values[0])
    return float(sum((a + b) / 2 for a, b in itertools.pairwise(values)) / n)


def samples(runs: Sequence[dict[str, Any]], name: str, part: str = "curves") -> list[list[float]]:
    """The runs' curves of ranking ``name``: every run for the seeded rankings, one per trained network (its first
    estimator run) for the deterministic ones, which do not depend on the estimator seed."""
    return [run[part][name] for run in runs if seeded(name) or run["first"]]


def analyses(game: Game, key: str, e: int, args: argparse.Namespace, prefix: str = "") -> dict[str, ShapleyResult]:
    """One certified ``tmab`` analysis of ``game`` per semivalue with estimator seed ``e``, by column name."""
    return {f"{prefix}{certified.method_name(sv)}": certified.certified(
        game, semivalue=sv, seed=e, top_k=args.top_k, max_rows=args.max_rows, cache=args.cache, key=key)
        for sv in args.semivalue_list}


def rows_note(result: ShapleyResult) -> str:
    return f"{(result.n_rows or 0) / 1e6:.2f} M rows, {'certified' if result.converged else 'not certified'}"


def network_runs(train_seed: int, args: argparse.Namespace) -> tuple[Classifier, list[dict[str, Any]]]:
    """Train the digits CNN with ``train_seed``; rank its filters (deterministic baselines once, the tmab analyses
    and the random ranking per estimator seed) and remove each ranking's top filters. Returns the model and one
    dict per run."""
    start = time.perf_counter()
    model, _ = common.train_model("digits_cnn", epochs=args.epochs, seed=train_seed, channels=args.channels)
    players = FilterPlayers(model)
    x, y = load_digits_tensors("val", val_size=args.eval_size, seed=train_seed)
    test = load_digits_tensors("test", val_size=args.eval_size, seed=train_seed) if args.class_list else None
    game = AccuracyGame(model, players, x, y)
    full = game.full_value()
    network = network_key(model, x, y, data="digits", train_seed=train_seed, epochs=args.epochs)
    print(f"training seed {train_seed}: SmallCNN in {time.perf_counter() - start:.1f} s, {len(players)} filters, "
          f"validation accuracy {full:.3f} on {len(x)} images")
    max_removed = min(args.max_removed, len(players))
    steps = list(range(max_removed + 1))
    options: dict[str, dict[str, Any]] = {"leave_one_out": {"game": game},
                                          "integrated_gradients": {"steps": args.ig_steps}}
    order = [*FIRST, *(n for n in BASELINES if n not in FIRST)]
    fixed = {name: baseline_result(name, model, players, x, y, k=args.top_k, **options.get(name, {}))
             for name in order if not seeded(name)}
    fixed_curves = {name: removal_curve(game, r.ranking(), max_removed=max_removed, n_random=0).ranked
                    for name, r in fixed.items()}
    print("  " + ", ".join(f"{name} {r.seconds:.2f} s" for name, r in fixed.items()))
    class_fixed = class_baselines(model, players, (x, y), args) if args.class_list else {}
    runs = []
    for e in args.estimator_seeds:
        found = analyses(game, f"{network}|accuracy", e, args)
        rand = baseline_result("random", model, players, x, y, k=args.top_k, seed=e)
        randoms = common.random_orders(len(players), args.n_random, e)
        curves = {name: removal_curve(game, r.ranking(), max_removed=max_removed, n_random=0).ranked
                  for name, r in found.items()}
        curves |= fixed_curves | {
            "random": removal_curve(game, rand.ranking(), max_removed=max_removed, n_random=0).ranked,
            f"random (mean of {args.n_random})": torch.stack([removal_values(game, o, steps) for o in randoms])
            .mean(0).tolist()}
        runs.append({"train_seed": train_seed, "estimator_seed": e, "first": e == args.estimator_seeds[0],
                     "full_value": full, "n_filters": len(players), "n_images": len(x), "key": network,
                     "results": {**found, **fixed, "random": rand}, "curves": curves,
                     "auc": {name: auc(c) for name, c in curves.items()}})
        print(f"  estimator seed {e}: " + "; ".join(
            f"{name} {rows_note(r)}, {certified.cpu_seconds(r):.0f} s CPU, AUC {runs[-1]['auc'][name]:.3f}"
            for name, r in found.items()))
        if args.class_list:
            runs[-1]["classes"] = class_runs(model, players, found, class_fixed, (x, y), test, e, network, args)
    return model, runs


def class_baselines(model: Classifier, players: FilterPlayers, val: tuple[Tensor, Tensor],
                    args: argparse.Namespace) -> dict[int, dict[str, ShapleyResult]]:
    """Per digit, the deterministic baselines restricted to it: leave-one-out on its class game, integrated
    gradients and Taylor on its validation images only (they do not depend on the estimator seed)."""
    x, y = val
    found: dict[int, dict[str, ShapleyResult]] = {}
    for digit in args.class_list:
        mask = y == digit
        options = {"leave_one_out": {"game": ClassGame(model, players, x, y, digit)},
                   "integrated_gradients": {"steps": args.ig_steps}}
        found[digit] = {f"class {name}": baseline_result(name, model, players, x[mask], y[mask], k=args.top_k,
                                                         **options.get(name, {})) for name in CLASS_BASELINES}
    return found


def class_runs(model: Classifier, players: FilterPlayers, overall: Mapping[str, ShapleyResult],
               fixed: Mapping[int, Mapping[str, ShapleyResult]], val: tuple[Tensor, Tensor],
               test: tuple[Tensor, Tensor], e: int, network: str, args: argparse.Namespace
               ) -> dict[int, dict[str, Any]]:
    """For each digit, one run: its own accuracy and the other digits' accuracy (test images) as filters are removed.

    Rankings: a certified tmab analysis per semivalue with seed ``e`` on the digit's class game (the network's
    ``val`` images), the digit's deterministic baselines ``fixed``, the run's overall-accuracy ranking of the first
    semivalue, and the mean of ``n_random`` random orders (seeded by ``e`` and the digit; the same for both curves).
    """
    (x_val, y_val), (x_test, y_test) = val, test
    steps = list(range(min(args.class_removed, len(players)) + 1))
    first = certified.method_name(args.semivalue_list[0])
    found: dict[int, dict[str, Any]] = {}
    for digit in args.class_list:
        rank_game = ClassGame(model, players, x_val, y_val, digit)
        results = analyses(rank_game, f"{network}|class={digit}", e, args, prefix="class ")
        own = ClassGame(model, players, x_test, y_test, digit)
        rest = y_test != digit
        others = AccuracyGame(model, players, x_test[rest], y_test[rest])
        randoms = common.random_orders(len(players), args.n_random, e + 1000 + digit)

        def curve(game: Game, orders: list[Tensor]) -> list[float]:
            return torch.stack([removal_values(game, o, steps) for o in orders]).mean(0).tolist()

        orders = {name: [r.ranking()] for name, r in {**results, **fixed[digit]}.items()}
        orders |= {f"overall {first}": [overall[first].ranking()], "random": randoms}
        found[digit] = {
            "results": {**results, **fixed[digit]},
            "degenerate": abs(rank_game.full_value() - rank_game.empty_value()) <= 0.5 * abs(rank_game.full_value()),
            "n_images": (len(rank_game.targets), len(own.targets), len(others.targets)),
            "own": {name: curve(own, o) for name, o in orders.items()},
            "others": {name: curve(others, o) for name, o in orders.items()},
        }
        print(f"    digit {digit} ({len(rank_game.targets)} validation images): "
              + "; ".join(f"{name} {rows_note(r)}" for name, r in results.items()))
    return found


def colors(names: Sequence[str]) -> dict[str, Any]:
    """A colour per ranking: reds for the tmab semivalues, grey for random, distinct colours for the others."""
    tmab = [n for n in names if "tmab" in n and not n.startswith("overall")]
    reds = plt.get_cmap("autumn")
    palette = iter(["tab:blue", "tab:green", "tab:purple", "tab:brown", "tab:olive", "tab:cyan", "tab:pink",
                    "black"] * 3)
    out: dict[str, Any] = {}
    for name in names:
        if name in tmab:
            out[name] = reds(0.75 * tmab.index(name) / max(1, len(tmab) - 1))
        else:
            out[name] = "gray" if name.startswith("random") else next(palette)
    return out


def plot(runs: dict[str, list[list[float]]], areas: dict[str, Spread], path: Path, title: str) -> None:
    """Mean removal curve of each ranking with a ±1 sd band over its runs."""
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    palette = colors(list(runs))
    for name, curves in runs.items():
        style = {"linestyle": ":" if name == "random" else "--"} if name.startswith("random") else {}
        lw = 2.2 if "tmab" in name else 1.3
        seeds.band(ax, range(len(curves[0])), curves, color=palette[name], label=f"{name} (AUC {areas[name]:.3f})",
                   linewidth=lw, **style)
    ax.set_xlabel("top-ranked filters removed")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title)
    ax.legend(fontsize=7)
    common.save_figure(fig, path)


def class_label(name: str, digit: int) -> str:
    """``"class tmab shapley"`` -> ``"digit-3 tmab shapley"``; other rankings keep their name."""
    return f"digit-{digit} {name[len('class '):]}" if name.startswith("class ") else name


def plot_classes(found: dict[int, dict[str, Any]], path: Path) -> None:
    """One panel per digit: its accuracy (solid) and the other digits' accuracy (dashed) per ranking, mean ± 1 sd
    (the tmab semivalues, leave-one-out, the overall ranking and random; the tables have every ranking)."""
    fig, axes = plt.subplots(1, len(found), figsize=(4.6 * len(found), 4.2), dpi=110, squeeze=False, sharey=True)
    for ax, (digit, data) in zip(axes[0], found.items(), strict=True):
        names = [n for n in data["own"] if "tmab" in n or n in (f"class {REFERENCE}", "random")]
        palette = colors(names)
        for name in names:
            own = [run["own"][name] for run in data["runs"] if seeded(name) or run["first"]]
            others = [run["others"][name] for run in data["runs"] if seeded(name) or run["first"]]
            x = range(len(own[0]))
            label = class_label(name, digit)
            seeds.band(ax, x, own, color=palette[name], linewidth=2.0, label=f"{label}: digit {digit}")
            seeds.band(ax, x, others, color=palette[name], linewidth=1.2, linestyle="--", label=f"{label}: others")
        ax.set_title(f"digit {digit}")
        ax.set_xlabel("top-ranked filters removed")
        ax.legend(fontsize=6)
    axes[0, 0].set_ylabel("test accuracy")
    common.save_figure(fig, path)


def verdict(measures: Mapping[str, tuple[Mapping[str, Spread], bool]], *, reference: str,
            semivalues: Sequence[str], label: Callable[[str], str] = str) -> str:
    """One line under a table: the best method (mean) on each measure, whether a tmab semivalue differs from
    ``reference`` by more than the spreads, and which semivalue is best. ``measures`` maps a measure's label to its
    cells by method and whether lower is better; measures where every method is equal (nothing removed) are
    skipped."""
    best_by: dict[str, list[str]] = {}
    ahead: dict[str, list[str]] = {sv: [] for sv in semivalues}
    behind: dict[str, list[str]] = {sv: [] for sv in semivalues}
    wins: Counter[str] = Counter()
    clear_wins: Counter[str] = Counter()
    used = 0
    for measure, (cells, lower) in measures.items():
        means = {n: s.mean for n, s in cells.items() if s.n}
        if not means or max(means.values()) - min(means.values()) <= 1e-12:
            continue
        used += 1
        sign = 1.0 if lower else -1.0
        best_by.setdefault(min(means, key=lambda n: sign * means[n]), []).append(measure)
        ref = cells[reference]
        for sv in semivalues:
            if seeds.clear(cells[sv], ref):
                (ahead if sign * (cells[sv].mean - ref.mean) < 0 else behind)[sv].append(measure)
        top = min(semivalues, key=lambda n: sign * cells[n].mean)
        wins[top] += 1
        clear_wins[top] += all(seeds.clear(cells[top], cells[o]) for o in semivalues if o != top)
    if not used:
        return "Verdict: every method gives the same value on every measure."
    ranked = sorted(best_by.items(), key=lambda t: -len(t[1]))
    parts = ["best mean: " + "; ".join(f"{label(n)} on {len(ms)} of {used} ({', '.join(ms)})" for n, ms in ranked)]
    lead = {sv: ms for sv, ms in ahead.items() if ms}
    if lead:
        parts.append(f"clearly better than {label(reference)} (by more than the spreads): "
                     + "; ".join(f"{label(sv)} on {', '.join(ms)}" for sv, ms in lead.items()))
    else:
        parts.append(f"no tmab semivalue beats {label(reference)} by more than the spreads on any measure")
    lag = {sv: ms for sv, ms in behind.items() if ms}
    if lag:
        parts.append(f"clearly worse than {label(reference)}: "
                     + "; ".join(f"{label(sv)} on {len(ms)} of {used}" for sv, ms in lag.items()))
    if len(semivalues) > 1:
        most = max(wins.values())
        tops = [sv for sv in semivalues if wins[sv] == most]
        ahead_all = ", ".join(str(clear_wins[sv]) for sv in tops)
        parts.append(f"best semivalue: {' and '.join(label(sv) for sv in tops)}{' (tied)' * (len(tops) > 1)}, the "
                     f"best mean among the {len(semivalues)} on {most} of {used} measures, ahead of every other "
                     f"semivalue by more than the spreads on {ahead_all}")
    return "Verdict: " + "; ".join(parts) + "."


def cost_rows(results: Mapping[str, Sequence[ShapleyResult]]) -> list[list[str]]:
    """A cost row per tmab method: :func:`experiments.certified.cost_cell` of its analyses."""
    return [[name, certified.cost_cell(rs)] for name, rs in results.items()]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison; returns the mean curves and AUCs, the per-run curves, the markdown tables and verdicts,
    the cost table (for tests and notebooks), and the last trained model."""
    args = parse(argv)
    start, cpu_start = time.perf_counter(), time.process_time()
    runs: list[dict[str, Any]] = []
    model = None
    for t in args.train_seeds:
        model, network = network_runs(t, args)
        runs.extend(network)

    names = list(runs[0]["curves"])
    tmab_names = [certified.method_name(sv) for sv in args.semivalue_list]
    per_ranking = {name: samples(runs, name) for name in names}
    stats = {name: seeds.curve_spread(curves) for name, curves in per_ranking.items()}
    areas = {name: seeds.spread(auc(c) for c in curves) for name, curves in per_ranking.items()}
    max_removed = len(per_ranking[tmab_names[0]][0]) - 1
    full = seeds.spread(run["full_value"] for run in runs if run["first"])

    def cell(name: str, value: Spread, ref: Spread) -> str:
        return format(value, ".3f") if name == REFERENCE else seeds.mark(value, ref)

    columns = ["removed", *names]
    shown = [r for r in ROWS if r <= max_removed]
    rows = [[str(r), *(cell(n, stats[n][r], stats[REFERENCE][r]) for n in names)] for r in shown]
    rows.append(["AUC", *(cell(n, areas[n], areas[REFERENCE]) for n in names)])
    table = markdown(columns, rows)
    measures = {f"{r} removed": ({n: stats[n][r] for n in names}, True) for r in shown}
    measures["AUC"] = (areas, True)
    verdicts = {"overall": verdict(measures, reference=REFERENCE, semivalues=tmab_names)}
    done = {n: sum(run["results"][n].converged for run in runs) for n in tmab_names}
    fixed = [n for n in names if not seeded(n)]
    n_runs, n_networks = seeds.plural(len(runs), "run"), seeds.plural(len(args.train_seeds), "training seed")
    header = (
        f"Accuracy on {runs[0]['n_images']} validation images (each network's own split; full network "
        f"{full:.3f}) after removing each ranking's top filters ({runs[0]['n_filters']} filters). tmab columns: one "
        f"analysis per semivalue and run, its top {args.top_k} certified (ε-δ) or stopped at {args.max_rows:,} rows "
        f"(certified in " + ", ".join(f"{n}: {done[n]} of {len(runs)}" for n in tmab_names) + "). AUC = mean "
        f"accuracy over 0..{max_removed} removed, lower is better.\n\n"
        f"{seeds.seed_note(args)} The deterministic rankings ({', '.join(fixed)}) have one value per trained "
        f"network: their ± is over the {n_networks} only. random = one random ranking per run; random (mean of "
        f"{args.n_random}) = mean of {args.n_random} random orders per run. Bold: differs from {REFERENCE} by more "
        f"than the spread (|Δmean| > its sd + {REFERENCE}'s sd).\n"
    )
    print("\nAUC, best first: " + ", ".join(f"{n} {a}" for n, a in sorted(areas.items(), key=lambda t: t[1].mean)))

    args.out.mkdir(parents=True, exist_ok=True)
    title = f"digits SmallCNN, {runs[0]['n_filters']} filters, mean ± sd over runs"
    plot(per_ranking, areas, args.out / "removal_curves.png", title)
    tables: dict[str, tuple[list[str], list[list[Any]]]] = {"overall": (columns, rows)}
    images = {"overall_curves": args.out / "removal_curves.png"}
    summary: dict[str, float] = {"runs": len(runs)}
    summary |= {f"certified_runs/{n}": float(done[n]) for n in tmab_names}
    for name, a in areas.items():
        summary[f"auc/{name}"], summary[f"auc_sd/{name}"] = a.mean, a.sd
    spent = {f"{n} (accuracy)": [run["results"][n] for run in runs] for n in tmab_names}
    found: dict[int, dict[str, Any]] = {}
    if args.class_list:
        found = gather_classes(runs, args)
        class_columns, class_rows, ks = class_table(found)
        class_n = len(found[args.class_list[0]]["own"]["random"]) - 1
        tables["class_specific"] = (class_columns, class_rows)
        verdicts["class_specific"] = class_verdict(found, tmab_names)
        plot_classes(found, args.out / "removal_curves_classes.png")
        images["class_specific_curves"] = args.out / "removal_curves_classes.png"
        class_runs_all = [r for data in found.values() for r in data["runs"]]
        sizes = seeds.spread(r["n_images"][0] for r in class_runs_all)
        spent |= {f"{n} (class games)": [r["results"][f"class {n}"] for r in class_runs_all] for n in tmab_names}
        class_done = ", ".join(f"{n}: {sum(r['results'][f'class {n}'].converged for r in class_runs_all)}"
                               for n in tmab_names)
        n_digit_runs = seeds.plural(len(class_runs_all), "digit run")
        header += (
            f"\nClass-specific (paper Fig. 2a): per run, a tmab analysis per semivalue on each digit's class game "
            f"(its {sizes.mean:.0f} ± {sizes.sd:.0f} validation images; certified of {n_digit_runs}: {class_done}); "
            f"the digit's leave_one_out on the same class game, its integrated_gradients and taylor on the digit's "
            "validation images only; then accuracy on that digit's held-out test images (digit) and on the test "
            "images of all other digits (others) after removing each ranking's top filters; overall = the run's "
            f"accuracy-game ranking of the first semivalue; random = mean of {args.n_random} random orders per run. "
            f"AUC = mean over 0..{class_n} removed; selectivity = others AUC − digit AUC (higher: the removal hits "
            f"the digit more than the rest). Each cell: mean ± sd over {n_runs} (deterministic rankings: over the "
            f"{n_networks}). Bold: differs from the digit's own leave_one_out by more than the spread.\n"
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
            for name in data["own"]:
                for part in ("own", "others"):
                    for k in ks:
                        key = f"digit_{digit}/{name.replace(' ', '_')}/{part}_at_{k}"
                        s = data[f"{part}_spread"][name][k]
                        summary[key], summary[f"{key}_sd"] = s.mean, s.sd
            first = f"class {tmab_names[0]}"
            own, others = data["own_spread"][first], data["others_spread"][first]
            print(f"removing digit {digit}'s top filters ({tmab_names[0]}): digit {digit} "
                  + ", ".join(f"{own[k]} ({k})" for k in ks) + "; other digits "
                  + ", ".join(f"{others[k]} ({k})" for k in ks))

    cost_columns, costs = ["method (game)", "cost"], cost_rows(spent)
    firsts = [run for run in runs if run["first"]]
    reference = [run["results"][REFERENCE] for run in firsts]
    loo_rows = (runs[0]["n_filters"] + 1) * runs[0]["n_images"]
    costs.append([f"{REFERENCE} (accuracy)", f"{loo_rows / 1e6:.3f} M rows per network, "
                  f"{seeds.spread(r.seconds for r in reference).mean:.2f} s wall"])
    for name in ("integrated_gradients", "taylor"):
        seconds = seeds.spread(run["results"][name].seconds for run in firsts).mean
        costs.append([f"{name} (accuracy)", f"{seconds:.2f} s wall per network (gradients, no rows)"])
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    costs.append(["whole script", f"{cpu:.0f} s CPU, {wall:.0f} s wall (training, baselines, analyses not cached, "
                                  "curves)"])
    tables["cost"] = (cost_columns, costs)
    summary |= {"cpu_seconds": cpu, "wall_seconds": wall}
    header += (f"\nCost (table cost): per tmab semivalue and game, median rows per analysis, how many were certified "
               f"and their CPU seconds (as first computed; analyses loaded from the cache under {args.cache} cost "
               f"this script nothing). This script: {cpu:.0f} s CPU, {wall:.0f} s wall.\n\n"
               + "\n\n".join(f"{name}: {line}" for name, line in verdicts.items()) + "\n")
    for line in verdicts.values():
        print(line)

    paths = common.report(NAME, args, start, tables=tables, images=images, summary=summary, header=header)
    return {"auc": {n: a.mean for n, a in areas.items()}, "auc_spread": areas,
            "curves": {n: [s.mean for s in curve] for n, curve in stats.items()}, "spreads": stats,
            "runs": runs, "full_value": full.mean, "table": table, "class_curves": found, "model": model,
            "verdicts": verdicts, "cost": costs, "tmab_names": tmab_names, "cpu_seconds": cpu, **paths}


def gather_classes(runs: Sequence[dict[str, Any]], args: argparse.Namespace) -> dict[int, dict[str, Any]]:
    """Per digit: its runs (with their training and estimator seeds), the mean curves and their spreads (seeded
    rankings over every run, deterministic ones over the first run of each network)."""
    found: dict[int, dict[str, Any]] = {}
    for digit in args.class_list:
        digit_runs = [{"train_seed": run["train_seed"], "estimator_seed": run["estimator_seed"],
                       "first": run["first"], **run["classes"][digit]} for run in runs]
        names = list(digit_runs[0]["own"])
        data: dict[str, Any] = {"runs": digit_runs}
        for part in ("own", "others"):
            data[f"{part}_spread"] = {name: seeds.curve_spread(samples(digit_runs, name, part)) for name in names}
            data[part] = {name: [s.mean for s in curve] for name, curve in data[f"{part}_spread"].items()}
            data[f"{part}_auc"] = {name: seeds.spread(auc(c) for c in samples(digit_runs, name, part))
                                   for name in names}
        data["selectivity"] = {name: seeds.spread(auc(b) - auc(a) for a, b in zip(
            samples(digit_runs, name, "own"), samples(digit_runs, name, "others"), strict=True)) for name in names}
        found[digit] = data
    return found


def class_table(found: dict[int, dict[str, Any]]) -> tuple[list[str], list[list[Any]], list[int]]:
    """Rows (digit, ranking) with the digit's and the other digits' accuracy after k removed, AUCs and selectivity,
    each mean ± sd; bold where it differs from the digit's own leave-one-out by more than the spread."""
    n = len(next(iter(found.values()))["own"]["random"]) - 1
    ks = [k for k in CLASS_ROWS if k <= n]
    columns = ["digit", "ranking", *(f"digit @{k}" for k in ks), *(f"others @{k}" for k in ks), "digit AUC",
               "others AUC", "selectivity"]
    rows = []
    ref = f"class {REFERENCE}"
    for digit, data in found.items():
        own, others = data["own_spread"], data["others_spread"]
        for name in own:
            def cell(value: Spread, base: Spread, name: str = name) -> str:
                return format(value, ".3f") if name == ref else seeds.mark(value, base)

            rows.append([digit, class_label(name, digit), *(cell(own[name][k], own[ref][k]) for k in ks),
                         *(cell(others[name][k], others[ref][k]) for k in ks),
                         cell(data["own_auc"][name], data["own_auc"][ref]),
                         cell(data["others_auc"][name], data["others_auc"][ref]),
                         cell(data["selectivity"][name], data["selectivity"][ref])])
    return columns, rows, ks


def class_verdict(found: dict[int, dict[str, Any]], tmab_names: Sequence[str]) -> str:
    """:func:`verdict` over each digit's AUC (lower better) and selectivity (higher better)."""
    measures: dict[str, tuple[Mapping[str, Spread], bool]] = {}
    for digit, data in found.items():
        measures[f"digit {digit} AUC"] = (data["own_auc"], True)
        measures[f"digit {digit} selectivity"] = (data["selectivity"], False)
    return verdict(measures, reference=f"class {REFERENCE}", semivalues=[f"class {n}" for n in tmab_names],
                   label=lambda n: n.removeprefix("class "))


if __name__ == "__main__":
    common.run_script(main)
