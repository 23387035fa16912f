"""Fairness repair (paper Fig. 3b): remove the filters that certified analyses blame for unfairness, by semivalue.

Trains the digits CNN on fair digits (group-1 images are inverted and, in training, rare outside digits 0–4, so
the model is worse on group 1) and plays the fairness game on validation images: the accuracy of the group the
full model serves worst (``worst_group_accuracy``, the library's default; it decomposes over examples, so ``tmab``
samples (coalition, example) pairs). Each method ranks the filters, and its k most negative ones are zeroed with
``nsl.repair.prune_filters`` for k = 0, 1, 2, 3, 5, 8, 10:

- ``tmab <semivalue>``: a certified analysis (``experiments.certified``: ``tmab(tail="bottom")`` until its bottom
  ``--top-k`` are certified, or ``--max-rows`` rows) per semivalue of ``--semivalues``: Shapley weighs every
  coalition size alike, Banzhaf coalitions of about half the filters, Beta(1,4) and Beta(1,16) coalitions near the
  full model, where a repair acts;
- ``leave_one_out``: v(N) − v(N∖{i}) on the same game, the other extreme;
- ``integrated_gradients`` and ``taylor`` on the worst group's validation images (the game's objective: their
  correct-class probability, resp. log-probability): IG from all filters off to all on; Taylor is Molchanov's
  gate-gradient × activation criterion with its sign kept (``nsl.baselines.taylor`` is its absolute value, which
  cannot tell a filter that hurts the group from one that serves it);
- ``random``: the mean over ``--n-random`` random orders.

Every number is measured on the TEST split: the worst group's accuracy (minimum over groups, so a repair that
leaves the other group worse off shows) and overall accuracy (its cost), per method and k, plus each method's best
k. Error bars: one network per ``--train-seeds`` entry; the baselines once per network (deterministic), tmab per
semivalue and random (seed e + 1) once per ``--estimator-seeds`` entry e. Cells are mean ± sd over those runs,
**bold** where a method differs from leave-one-out at the same k by more than the two spreads (``seeds.clear``),
† where it so differs from random; the best-repair table bolds a best k that so differs from k = 0. A cost table
gives each semivalue's rows, certified count and CPU seconds, and the script's own CPU and wall time; an
auto-written verdict line goes with every table. Analyses are cached under ``--cache`` by network identity (data,
training seed, epochs, channels, validation images, game, a hash of the weights and images), so a rerun only
re-measures. Writes ``fairness_repair.md`` and ``fairness_repair.png`` to ``--out`` and logs both to one W&B run.
``--seed`` is not used: the seed lists replace it; ``--max-evals`` is refused (the budget is ``--max-rows``).

    python -m experiments.fairness_repair          # 3 × 3 seeds, 4 semivalues
    python -m experiments.fairness_repair --quick  # smoke setting, seconds (shapley, banzhaf; 20,000 rows)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from torch import Tensor, nn

from experiments import certified, common, seeds
from experiments import repair_methods as rm
from nsl import AccuracyGame, FilterPlayers
from nsl.baselines import as_result, baseline_result
from nsl.games import FairnessGame

NAME = "fairness_repair"
KS = (0, 1, 2, 3, 5, 8, 10)
KEYS = ("group0", "group1", "worst", "overall")
QUICK_SEMIVALUES = "shapley,banzhaf"
QUICK_ROWS = 20_000


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = common.parser(__doc__, NAME, quick="tiny smoke setting (small model, seconds)")
    common.add_removal_flags(p, KS, top_k_help="culprits each certified analysis separates (bottom tail)", n_random=5)
    for action in p._actions:  # the budget is --max-rows; --max-evals is refused below
        if action.dest == "max_evals":
            action.help = argparse.SUPPRESS
    seeds.add_seed_flags(p)
    certified.add_semivalue_flags(p)
    quick = {"epochs": 3, "n_random": 2, "top_k": 3,
             "semivalues": lambda v: QUICK_SEMIVALUES if v == certified.SEMIVALUES else v,
             "max_rows": lambda v: QUICK_ROWS if v == certified.MAX_ROWS else v}
    given = sys.argv[1:] if argv is None else argv
    if any(a.split("=")[0] == "--max-evals" for a in given):
        raise ValueError("--max-evals no longer applies: every analysis is certified within --max-rows rows.")
    return certified.finish_semivalue_args(common.parse_removal_args(p, argv, quick=quick))


def group_games(model: nn.Module, players: FilterPlayers, x: Tensor, y: Tensor, groups: Tensor) -> dict[str, Any]:
    """The test metrics as library games: each group's accuracy, the worst group (minimum over groups), overall."""
    games: dict[str, Any] = {
        f"group{g}": AccuracyGame(model, players, x[groups == g], y[groups == g]) for g in torch.unique(groups).tolist()
    }
    games["worst"] = FairnessGame(model, players, x, y, groups, metric="min_group_accuracy")  # whichever is worst
    games["overall"] = AccuracyGame(model, players, x, y)
    return games


def network_key(args: argparse.Namespace, train_seed: int, model: nn.Module, game: FairnessGame, *data: Tensor) -> str:
    """What a cached analysis of this network's fairness game depends on (``data``: its images, labels, groups)."""
    channels = "-".join(map(str, args.channels))
    return (f"fair_digits_cnn|train_seed={train_seed}|epochs={args.epochs}|channels={channels}|val={len(game.targets)}"
            f"|game=fairness:{game.metric}:group={game.worst_group_code}|fingerprint={rm.fingerprint(model, *data)}")


def network_runs(args: argparse.Namespace, train_seed: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train the network of ``train_seed``; the baselines on it once, tmab per semivalue and random once per
    estimator seed. Returns the network's record (model, data, baseline rankings and curves) and one record per
    estimator seed (analyses, culprits, every method's curve: metrics per k)."""
    start = time.perf_counter()
    model, dm = common.train_model("fair_digits_cnn", epochs=args.epochs, seed=train_seed, channels=args.channels)
    x_val, y_val, g_val = dm.tensors("val")
    test = dm.tensors("test")
    players = FilterPlayers(model)
    game = FairnessGame(model, players, x_val, y_val, g_val)  # worst_group_accuracy: decomposes over examples
    games = group_games(model, players, *test)

    def measure() -> dict[str, float]:
        return {key: g.full_value() for key, g in games.items()}

    k_max = args.ks[-1]
    worst = g_val == game.worst_group_code
    rankings: dict[str, Tensor] = {}
    cpu: dict[str, float] = {}
    clock = time.process_time()
    loo = baseline_result("leave_one_out", model, players, k=k_max, game=game)
    rankings[rm.LOO] = loo.culprits(k_max, negative=True)
    cpu[rm.LOO] = time.process_time() - clock
    for name in rm.BASELINE_METHODS[1:]:  # the worst group's correct-class probability (IG) / log-probability
        clock = time.process_time()
        scores = rm.objective_scores(name, model, players, [(x_val[worst], y_val[worst], 1.0)])
        rankings[name] = as_result(scores, players, name, k=k_max).culprits(k_max, negative=True)
        cpu[name] = time.process_time() - clock
    curves = {name: common.removal_rows(model, players, order, args.ks, measure) for name, order in rankings.items()}
    key = network_key(args, train_seed, model, game, x_val, y_val, g_val)
    print(f"training seed {train_seed}: trained in {time.perf_counter() - start:.1f} s, {len(players)} filters, "
          f"validation worst group {game.worst_group_code} at {game.full_value():.3f} ({int(worst.sum())} images); "
          f"leave-one-out {loo.n_evals} evaluations")
    network = {"train_seed": train_seed, "model": model, "data": dm, "players": players, "game": game,
               "rankings": rankings, "curves": curves, "baseline_cpu": cpu, "loo_evals": loo.n_evals,
               "n_val": len(y_val), "n_worst": int(worst.sum()), "test_groups": test[2], "key": key}
    runs = []
    for e in args.estimator_seeds:
        results, spent, culprits, semivalue_curves = rm.semivalue_runs(
            args, game, key, e, tail="bottom", negative=True, k_max=k_max, model=model, players=players,
            measure=measure, describe=lambda c: f"worst group k=0 {c[0]['worst']:.3f}, best "
                                               f"{max(row['worst'] for row in c):.3f}")
        run_curves = {**curves, **semivalue_curves}
        randoms = common.random_orders(len(players), args.n_random, e + 1)
        run_curves[rm.RANDOM] = common.mean_rows(
            [common.removal_rows(model, players, o, args.ks, measure) for o in randoms])
        runs.append({"train_seed": train_seed, "estimator_seed": e, "results": results, "culprits": culprits,
                     "curves": run_curves, "cpu": spent})
    return network, runs


def best_repair(ks: tuple[int, ...], stats: list[dict[str, seeds.Spread]], curves: list[list[dict[str, float]]]
                ) -> dict[str, Any]:
    """The best k by the mean worst-group curve (k = 0 included: nothing repairs; ties: the smallest k), and per
    run the gain in worst-group accuracy and the change in overall accuracy there, against k = 0."""
    best = rm.best_index(stats, "worst", higher=True)
    return {"index": best, "k": ks[best],
            "gain": seeds.spread(c[best]["worst"] - c[0]["worst"] for c in curves),
            "cost": seeds.spread(c[best]["overall"] - c[0]["overall"] for c in curves)}


def best_verdict(names: tuple[str, ...], stats: dict[str, list[dict[str, seeds.Spread]]],
                 best: dict[str, dict[str, Any]]) -> str:
    """One line on the best-repair table: the largest gain, the best semivalue, and the two against leave-one-out."""
    def text(name: str) -> str:
        b, s = best[name], stats[name]
        clearly = "clearly" if seeds.clear(s[b["index"]]["worst"], s[0]["worst"]) else "not clearly"
        return (f"{name} at k = {b['k']} (worst group {b['gain'].mean:+.3f} ± {b['gain'].sd:.3f}, {clearly} above "
                f"k = 0; overall {b['cost'].mean:+.3f} ± {b['cost'].sd:.3f})")

    order = sorted(names, key=lambda n: -stats[n][best[n]["index"]]["worst"].mean)
    tmab = [n for n in order if n.startswith("tmab ")]
    line = f"**Best repair**: {text(order[0])}."
    if tmab:
        top, loo = tmab[0], rm.LOO
        a, b = stats[top][best[top]["index"]]["worst"], stats[loo][best[loo]["index"]]["worst"]
        relation = "not clearly apart from"
        if seeds.clear(a, b):
            relation = "clearly above" if a.mean > b.mean else "clearly below"
        line += f" Best semivalue: {text(top)}; at its best k it is {relation} leave_one_out at its best k ({b})."
    return line


def plot(ks: tuple[int, ...], names: tuple[str, ...], per_run: dict[str, list[list[dict[str, float]]]], path: Path,
         title: str) -> None:
    """Worst-group test accuracy vs k (left) and overall test accuracy vs k (right), one line per method: the mean
    over runs with a ±1 sd band."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), dpi=110)
    for name in names:
        style = rm.line_style(name, names)
        seeds.band(left, ks, [[r["worst"] for r in run] for run in per_run[name]], label=name, marker="o", ms=3,
                   **style)
        seeds.band(right, ks, [[r["overall"] for r in run] for run in per_run[name]], label=name, marker="o", ms=3,
                   **style)
    left.set(xlabel="filters removed (k)", ylabel="worst-group test accuracy", title="the repair (min over groups)")
    right.set(xlabel="filters removed (k)", ylabel="overall test accuracy", title="its cost")
    left.legend(fontsize=7, handlelength=3.5)
    fig.suptitle(title)
    common.save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the experiment; returns every method's curves and spreads, every run and the report paths (for tests)."""
    args = parse(argv)
    start, cpu_start = time.perf_counter(), time.process_time()
    networks, runs, names, tmab_names, per_run, stats = rm.gather(args, network_runs)
    best = {name: best_repair(args.ks, stats[name], per_run[name]) for name in names}

    best_rows = []
    for name in names:
        b, s = best[name], stats[name]
        i = b["index"]
        best_rows.append([name, b["k"], seeds.mark(s[i]["worst"], s[0]["worst"]), format(b["gain"]),
                          format(s[i]["overall"]), format(b["cost"]), format(s[i]["group0"]), format(s[i]["group1"])])
    baseline_cost = {rm.LOO: f"{networks[0]['loo_evals']} evaluations per network"}
    baseline_cost.update({name: f"{networks[0]['n_worst']} worst-group images per network" for name in names
                          if name in rm.BASELINE_METHODS[1:]})
    agreement_rows, analyses, cost = rm.culprits_and_costs(args, runs, networks, tmab_names, baseline_cost)
    cpu_total, wall_total = time.process_time() - cpu_start, time.perf_counter() - start

    verdicts = [
        rm.verdict(args.ks, stats, names, "worst", higher=True, measure="Worst-group accuracy",
                   beside=("overall", "overall")),
        rm.verdict(args.ks, stats, names, "overall", higher=True, measure="Overall accuracy",
                   beside=("worst", "worst group")),
        best_verdict(names, stats, best),
        rm.cost_line(analyses, cpu_total, wall_total),
    ]
    tables = {
        "Worst-group test accuracy (minimum over groups) by method and k": rm.method_table(args.ks, stats, names,
                                                                                           "worst"),
        "Overall test accuracy (the cost) by method and k": rm.method_table(args.ks, stats, names, "overall"),
        "Best repair per method (best k by the mean worst-group curve)": (
            ["method", "best k", "worst group at best k", "gain per run", "overall at best k", "overall change per run",
             "group 0", "group 1"], best_rows),
        "Culprits shared by two estimator seeds on the same network": (["k", *tmab_names], agreement_rows),
        "Cost of the analyses": (rm.COST_COLUMNS, cost),
    }

    n_filters = len(networks[0]["players"])
    groups = torch.cat([n["test_groups"] for n in networks])
    b = stats[rm.RANDOM][0]
    header = (
        f"## Fairness repair on fair digits, certified analyses by semivalue\n\n"
        f"{seeds.seed_note(args)} Leave-one-out, integrated_gradients and taylor are deterministic: their cells are "
        f"over the {seeds.plural(len(networks), 'network')}; random (mean of {args.n_random} random removals) is "
        f"drawn anew for every run.\n\n"
        f"SmallCNN ({n_filters} filters) trained {args.epochs} epochs on fair digits; fairness game = accuracy of the "
        f"group worst on the full model (worst_group_accuracy, per-example sampling) on {networks[0]['n_val']} "
        f"validation images; certified tmab(top_k={args.top_k}, tail='bottom', max_rows={args.max_rows:,}) per "
        f"semivalue; integrated_gradients / taylor (signed) on the worst group's validation images. Filters zeroed "
        f"with prune_filters; all accuracies on the test images of each network's split (group 0 / group 1 images "
        f"per split: {int((groups == 0).sum()) / len(networks):.0f} / {int((groups == 1).sum()) / len(networks):.0f} "
        f"on average); worst group = minimum over groups. **Bold**: differs from leave_one_out at the same k by more "
        f"than the two spreads together (|Δmean| > sd + sd); †: so differs from random. Before: worst group "
        f"{b['worst']}, overall {b['overall']}.\n\n" + "\n".join(f"- {v}" for v in verdicts)
    )

    png = common.png_path(args, NAME)
    plot(args.ks, names, per_run, png, f"fair digits: removing fairness culprits ({n_filters} filters, mean ± sd)")
    summary: dict[str, float] = {
        "worst_group_before": b["worst"].mean, "overall_before": b["overall"].mean, "runs": float(len(runs)),
        "cpu_seconds": cpu_total, "seconds": wall_total,
    }
    for name in names:
        s, key = stats[name], rm.slug(name)
        for i, k in enumerate(args.ks):
            for m in ("worst", "overall"):
                summary[f"{key}/{m}_at_{k}"] = s[i][m].mean
                summary[f"{key}/{m}_at_{k}_sd"] = s[i][m].sd
        summary[f"{key}/best_k"] = float(best[name]["k"])
        summary[f"{key}/worst_group_gain"] = best[name]["gain"].mean
        summary[f"{key}/worst_group_gain_sd"] = best[name]["gain"].sd
        summary[f"{key}/overall_cost"] = best[name]["cost"].mean
    rm.cost_summary(summary, analyses)
    paths = common.report(NAME, args, start, tables=tables, images={"worst_group_accuracy_vs_k": png},
                          summary=summary, header=header)
    return {"ks": args.ks, "names": names, "stats": stats, "per_run": per_run, "runs": runs, "networks": networks,
            "best": best, "verdicts": verdicts, "summary": summary, "args": args, **paths}


if __name__ == "__main__":
    common.run_script(main)
