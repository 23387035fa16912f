"""Sample efficiency: evaluations until tmab certifies its top-10, against the budget each method of the field needs
for ≥ 90 % of seeds to be ε-correct; ε-precision and normalised squared error at budgets of 1N … 30N.

Every method runs on the same game behind one meter (``nsl.games.CountingGame``), so every coalition any method
evaluates is counted alike, v(N) and v(∅) included. Methods:

- ``tmab``: nsl's default estimator, run until it certifies (``converged=True``), and, for the budget table, with
  ``max_evals`` fixed;
- ``original_tmab``: the original TMAB-Shapley rule as a configuration of the same loop
  (:data:`nsl.shapley.ORIGINAL_TMAB`);
- the field's (``experiments/benchmarks/competitors.py``): Captum ``ShapleyValueSampling``, antithetic
  permutation Monte Carlo, and shapiq's ``PermutationSamplingSV``, ``KernelSHAP`` with paired sampling, the same
  with uniform weights over coalition sizes (Leverage SHAP's sampling) and ``SVARM``.

Games: network-shaped games with exact values (``nsl.games.synthetic.network_game``: rare large marginals, a
flat boundary, strong interactions; a fresh instance per seed) and the digits CNN's accuracy game with a long
antithetic Monte Carlo reference. A method's 90 % budget is the smallest budget of a ladder (1N, 2N, 3N, 5N, …)
at which ≥ 90 % of the seeds return an ε-correct top-10 (ε: the tolerance tmab certified on that game);
"(a, b]" brackets it between two rungs.

    python -m experiments.benchmarks.sample_efficiency            # full setting (about an hour on 2 cores)
    python -m experiments.benchmarks.sample_efficiency --quick    # smoke setting
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from experiments import common
from experiments.benchmarks.competitors import COMPETITORS, min_budget
from nsl.games import AccuracyGame, CountingGame, Game
from nsl.games.synthetic import network_game
from nsl.shapley import ORIGINAL_TMAB, monte_carlo, tmab
from nsl.shapley.metrics import eps_correct, eps_precision, normalized_squared_error

LADDER = (1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500)  # budgets in units of N
TABLE_BUDGETS = (1, 2, 5, 10, 30)
ANYTIME = ("captum", "antithetic_mc", "permutation_sv")
PER_BUDGET = ("kernelshap_paired", "kernelshap_uniform", "svarm", "original_tmab")
METHODS = ("tmab", *ANYTIME, *PER_BUDGET)
TARGET = 0.9


def budgets_for(n: int, cap: int, method: str) -> list[int]:
    """The ladder in evaluations up to ``cap``·N, from the method's smallest possible budget."""
    least = 2 if method in ("tmab", "original_tmab") else min_budget(method, n)
    return [m * n for m in LADDER if m <= cap and m * n >= least]


def scores(values: Tensor, truth: Tensor, epsilon_value: float) -> tuple[bool, float, float]:
    """(ε-correct, ε-precision, normalised squared error) of an estimate's top-10."""
    return (
        eps_correct(values, truth, 10, epsilon_value),
        eps_precision(values, truth, 10, epsilon_value),
        normalized_squared_error(values, truth),
    )


def play(game: Game, truth: Tensor, seed: int, caps: dict[str, int]) -> dict[str, Any]:
    """Every method on one game with one seed: tmab's certified run, then each method along the ladder."""
    meter = CountingGame(game)
    n = meter.n_players
    start = time.perf_counter()
    certified = tmab(meter, 10, seed=seed)
    epsilon_value = float(certified.epsilon_value)  # ε in value units, what tmab certified
    out: dict[str, Any] = {
        "n": n,
        "epsilon_value": epsilon_value,
        "tmab": {"evals": certified.n_evals, "converged": certified.converged,
                 "correct": eps_correct(certified.values, truth, 10, epsilon_value),
                 "seconds": time.perf_counter() - start},
        "ladder": {},
    }
    for method in METHODS:
        cap = caps["anytime"] if method in ANYTIME else caps.get(method, caps["per_budget"])
        budgets = budgets_for(n, cap, method)
        if method == "tmab":
            budgets = [b for b in budgets if b <= max(TABLE_BUDGETS) * n]
        if method in COMPETITORS:
            estimates = COMPETITORS[method](meter, budgets, seed)
        else:
            options = ORIGINAL_TMAB if method == "original_tmab" else {}
            estimates = {b: tmab(meter, 10, seed=seed, max_evals=b, **options).values for b in budgets}
        out["ladder"][method] = {b: scores(v, truth, epsilon_value) for b, v in estimates.items()}
    return out


def synthetic_job(job: tuple[str, int, int, dict[str, int]]) -> dict[str, Any]:
    """One seed of a network-shaped family: a fresh instance and its exact values."""
    shape, n, seed, caps = job
    torch.set_num_threads(1)
    game = network_game(n, shape, seed=seed)
    return play(game, game.shapley(), 20_000 + seed, caps)


def digits_game(args: argparse.Namespace) -> tuple[AccuracyGame, Tensor, dict[str, Any]]:
    """The digits CNN's accuracy game on validation images, with a long antithetic Monte Carlo reference."""
    model, players, x, y = common.trained_digits(args)
    game = AccuracyGame(model, players, x, y)
    start = time.perf_counter()
    reference = monte_carlo(game, args.reference_perms, antithetic=True, seed=args.seed + 1000)
    order = reference.ranking()
    info = {
        "filters": game.n_players, "images": len(y), "reference_evals": reference.n_evals,
        "reference_seconds": time.perf_counter() - start,
        "median_stderr": float(reference.stderr.median()),
        "rank10": (float(reference.values[order[9]]), float(reference.stderr[order[9]])),
        "rank11": (float(reference.values[order[10]]), float(reference.stderr[order[10]])),
    }
    return game, reference.values, info


def ninety(runs: list[dict[str, Any]], method: str) -> tuple[int | None, int | None]:
    """The smallest ladder budget with ≥ 90 % of seeds ε-correct, and the rung before it (None: never)."""
    budgets = sorted(set.intersection(*(set(r["ladder"][method]) for r in runs)))
    previous = None
    for b in budgets:
        share = sum(r["ladder"][method][b][0] for r in runs) / len(runs)
        if share >= TARGET:
            return b, previous
        previous = b
    return None, budgets[-1] if budgets else None


def game_rows(title: str, runs: list[dict[str, Any]]) -> tuple[list[list[Any]], list[list[Any]], dict[str, float]]:
    """The target row and the budget-table rows of one game; the summary scalars."""
    n = runs[0]["n"]
    certified = [r["tmab"] for r in runs if r["tmab"]["converged"]]
    nsl_evals = statistics.median(r["evals"] for r in certified) if certified else math.inf
    correct = sum(r["correct"] for r in certified)
    target = [title, f"{nsl_evals:,.0f}", f"{len(certified)}/{len(runs)}", f"{correct}/{len(certified)}"]
    summary: dict[str, float] = {f"{title}/tmab/evals_to_certify": nsl_evals}
    for method in METHODS[1:]:
        b, previous = ninety(runs, method)
        if b is None:
            target.append(f"> {previous:,} (> {previous / nsl_evals:.1f}×)" if previous else "—")
            summary[f"{title}/{method}/ratio_lower_bound"] = (previous or 0) / nsl_evals
        else:
            low = f"{previous:,}" if previous else "0"
            target.append(f"({low}, {b:,}] ({b / nsl_evals:.1f}×)")
            summary[f"{title}/{method}/ratio"] = b / nsl_evals
    table = []
    for method in METHODS:
        row = [title, method]
        for m in TABLE_BUDGETS:
            cells = [r["ladder"][method].get(m * n) for r in runs]
            cells = [c for c in cells if c is not None]
            row.append(f"{statistics.mean(c[1] for c in cells):.2f} / {statistics.median(c[2] for c in cells):.3f}"
                       if cells else "—")
        table.append(row)
    return [target], table, summary


def plot(games: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Share of seeds with an ε-correct top-10 against the budget, per method; tmab's certified median marked."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(games), figsize=(5.2 * len(games), 4.2), dpi=100, squeeze=False)
    for ax, (title, runs) in zip(axes[0], games.items(), strict=True):
        for j, method in enumerate(METHODS):
            budgets = sorted(set.intersection(*(set(r["ladder"][method]) for r in runs)))
            shares = [sum(r["ladder"][method][b][0] for r in runs) / len(runs) for b in budgets]
            ax.plot(budgets, shares, marker=".", label=method, color=f"C{j}", linewidth=1.4)
        certified = [r["tmab"]["evals"] for r in runs if r["tmab"]["converged"]]
        if certified:
            ax.axvline(statistics.median(certified), color="C0", linestyle="--", linewidth=1.2,
                       label="tmab certified (median)")
        ax.axhline(TARGET, color="gray", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("coalitions evaluated")
        ax.set_ylabel("share of seeds with an ε-correct top-10")
        ax.set_title(title, fontsize=10)
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    caps = {"anytime": args.max_budget, "per_budget": args.max_per_budget, "svarm": args.svarm_max_budget}
    plan = [(shape, n) for shape in args.shapes for n in args.sizes]
    jobs = [(shape, n, seed, caps) for shape, n in plan for seed in range(args.seeds)]
    print(f"{len(jobs)} synthetic runs on {args.workers} worker(s)")
    results = common.parallel_map(synthetic_job, jobs, args.workers)
    games = {f"{shape} N={n}": results[i * args.seeds : (i + 1) * args.seeds] for i, (shape, n) in enumerate(plan)}
    notes = []
    if args.digits:
        with common.torch_threads(args.threads):
            game, reference, info = digits_game(args)
            digits_caps = {"anytime": args.digits_max_budget, "per_budget": args.digits_max_per_budget,
                           "svarm": min(args.svarm_max_budget, args.digits_max_per_budget)}
            title = f"digits CNN N={info['filters']}"
            games[title] = [play(game, reference, 30_000 + s, digits_caps) for s in range(args.digits_seeds)]
        notes.append(
            f"Digits: SmallCNN accuracy on {info['images']} validation images, {info['filters']} filters; reference "
            f"antithetic Monte Carlo, {args.reference_perms} permutations ({info['reference_evals']:,} evaluations, "
            f"{info['reference_seconds']:.0f} s), median standard error {info['median_stderr']:.4f}; rank 10 = "
            f"{info['rank10'][0]:.4f} ± {info['rank10'][1]:.4f}, rank 11 = {info['rank11'][0]:.4f} ± "
            f"{info['rank11'][1]:.4f}; {args.digits_seeds} method seeds."
        )
    targets, budget_rows, summary = [], [], {}
    for title, runs in games.items():
        target, table, scalars = game_rows(title, runs)
        targets += target
        budget_rows += table
        summary.update(scalars)
    eps = {title: statistics.median(r["epsilon_value"] for r in runs) for title, runs in games.items()}
    header = (
        "tmab: default settings until certified (δ = 0.05, top-10); the other columns: the 90 % budget of each "
        "method (smallest ladder budget with ≥ 90 % of seeds ε-correct; bracketed by the rung below) and its ratio "
        "to tmab's median evaluations to certify. ε per game (median): "
        + ", ".join(f"{t}: {e:.4f}" for t, e in eps.items())
        + f". {args.seeds} seeds per synthetic game (a fresh instance each). Budget table: mean ε-precision / "
        f"median normalised squared error at 1N, 2N, 5N, 10N, 30N. {time.perf_counter() - start:.0f} s.\n\n"
        + "\n\n".join(notes)
    )
    png = common.png_path(args, "sample_efficiency")
    plot(games, png)
    tables = {
        "evaluations to the top-10": (
            ["game", "tmab: evals to certify (median)", "certified", "ε-correct", *METHODS[1:]], targets),
        "ε-precision / normalised squared error by budget": (
            ["game", "method", *(f"{m}N" for m in TABLE_BUDGETS)], budget_rows),
    }
    paths = common.report("sample_efficiency", args, start, tables=tables, images={"figure": png}, summary=summary,
                          header=header)
    return {"games": games, "tables": tables, "summary": summary, **paths}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = common.parser(__doc__, "sample_efficiency", quick="smoke setting (small games, few seeds and rungs)")
    p.add_argument("--shapes", nargs="+", default=["rare", "flat", "interactions"])
    p.add_argument("--sizes", nargs="+", type=int, default=[100, 300])
    p.add_argument("--seeds", type=int, default=20, help="seeds (fresh game instances) per synthetic game")
    p.add_argument("--max-budget", type=int, default=500, help="largest budget of anytime methods, × N")
    p.add_argument("--max-per-budget", type=int, default=100, help="largest budget of per-budget methods, × N")
    p.add_argument("--svarm-max-budget", type=int, default=30,
                   help="largest budget of shapiq's SVARM, × N (its bookkeeping is O(budget·N) per rung: slow)")
    p.add_argument("--digits", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--digits-seeds", type=int, default=5)
    p.add_argument("--digits-max-budget", type=int, default=200)
    p.add_argument("--digits-max-per-budget", type=int, default=30)
    p.add_argument("--reference-perms", type=int, default=400, help="antithetic permutations of the reference")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--eval-size", type=int, default=100, help="validation images in the digits game")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    quick = {"shapes": ["rare"], "sizes": [40], "seeds": 2, "max_budget": 30, "max_per_budget": 10,
             "svarm_max_budget": 10, "digits_seeds": 1, "digits_max_budget": 10, "digits_max_per_budget": 5,
             "reference_perms": 4, "epochs": 1, "eval_size": 40}
    positive = ("seeds", "digits_seeds", "max_budget", "max_per_budget", "svarm_max_budget", "reference_perms",
                "workers", "threads")
    return common.parse_args(p, argv, quick=quick, quick_channels=(4, 6, 8), positive=positive)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(parse(argv))


if __name__ == "__main__":
    common.run_script(main)
