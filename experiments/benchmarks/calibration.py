"""Calibration of tmab's certificate: how often is a certified top-k wrong? Printed next to δ.

``converged=True`` promises that, with probability ≥ 1 − δ, the returned top-k is ε-correct (every returned
player's true value ≥ the true k-th value − ε, every player left out ≤ it + ε). This benchmark checks the
promise on network-shaped games with exactly known Shapley values (``nsl.games.synthetic.network_game``), each
run on a fresh instance of its family with its own estimator seed, default settings:

- ``rare``: a steep collapse after a few percent of a scan, so key players' marginals are rare large events;
- ``flat``: the k-th value inside a plateau of 15 equal players;
- ``interactions``: strong pairwise and triple interactions on top of the collapse;
- ``degenerate``: v(∅) = v(N), values of both signs (certified on both ends, ``tail="both"``);
- ``constant``: every marginal 0 (nothing may be certified);

at N = 100, 300 and 1,000 players. For each family it prints the runs, how many certified, how many of those
are not ε-correct, that share with its one-sided 95 % Clopper–Pearson upper bound, δ, and the evaluations to
certify. An ablation switches the safeguards off one at a time on the ``rare`` family (the pooled variance
prior, the anytime intervals, the union bound), to show that the harness sees a broken certificate and what
each safeguard buys.

    python -m experiments.benchmarks.calibration            # 200 runs per family at N = 100 and 300, 40 at 1,000
    python -m experiments.benchmarks.calibration --quick    # smoke setting, seconds
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Any

import torch

from experiments import common
from nsl.games.synthetic import NETWORK_SHAPES, network_game
from nsl.shapley import tmab
from nsl.shapley.metrics import eps_correct

TAILS = {"degenerate": "both"}  # a degenerate game's culprits are its negative players: certify both ends
ABLATIONS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "no pooled prior": {"prior_samples": 0},
    "fixed-n intervals": {"anytime": False},
    "no union bound": {"union_bound": False},
    "none of the three (min 2 samples)": {"prior_samples": 0, "anytime": False, "union_bound": False,
                                          "min_samples": 2},
}


def one_run(job: tuple[str, int, int, dict[str, Any]]) -> dict[str, Any]:
    """One seeded run: a fresh game of the family, tmab with the given options, checked against exact values."""
    shape, n, seed, options = job
    torch.set_num_threads(1)
    game = network_game(n, shape, seed=seed)
    truth = game.shapley()
    start = time.perf_counter()
    result = tmab(game, 10, tail=TAILS.get(shape, "top"), seed=10_000 + seed, **options)
    correct = result.epsilon is not None and eps_correct(result.values, truth, result.k, result.epsilon, result.tail)
    return {
        "converged": bool(result.converged),
        "correct": bool(correct),
        "evals": int(result.n_evals),
        "seconds": time.perf_counter() - start,
        "epsilon": result.epsilon,
    }


def clopper_pearson_upper(failures: int, trials: int, confidence: float = 0.95) -> float:
    """One-sided upper confidence bound on a failure rate from ``failures`` in ``trials`` (exact binomial)."""
    if trials == 0:
        return 1.0
    if failures >= trials:
        return 1.0
    low, high = failures / trials, 1.0
    for _ in range(60):  # bisection on P(Binomial(trials, p) ≤ failures) = 1 − confidence
        mid = (low + high) / 2
        tail = sum(math.comb(trials, j) * mid**j * (1 - mid) ** (trials - j) for j in range(failures + 1))
        low, high = (mid, high) if tail > 1 - confidence else (low, mid)
    return high


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts, the share of certified runs that are wrong with its upper bound, evaluations to certify."""
    certified = [r for r in runs if r["converged"]]
    wrong = sum(not r["correct"] for r in certified)
    evals = sorted(r["evals"] for r in certified)
    return {
        "runs": len(runs),
        "certified": len(certified),
        "wrong": wrong,
        "share": wrong / len(certified) if certified else 0.0,
        "upper": clopper_pearson_upper(wrong, len(certified)),
        "median_evals": statistics.median(evals) if evals else None,
        "seconds": sum(r["seconds"] for r in runs),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every family at every size, then the ablation; returns the tables and the summary."""
    start = time.perf_counter()
    jobs: list[tuple[str, int, int, dict[str, Any]]] = []
    plan = []
    for shape in args.shapes:
        for n in args.sizes:
            runs = args.runs if n <= 300 else args.runs_large
            plan.append((shape, n, runs))
            jobs += [(shape, n, seed, {}) for seed in range(runs)]
    ablation = [(name, opts) for name, opts in ABLATIONS.items()]
    for _, opts in ablation:
        jobs += [("rare", args.ablation_size, seed, opts) for seed in range(args.ablation_runs)]
    print(f"{len(jobs)} runs on {args.workers} worker(s)")
    results = common.parallel_map(one_run, jobs, args.workers)
    cursor = 0
    rows, summary = [], {}
    for shape, n, runs in plan:
        s = summarise(results[cursor : cursor + runs])
        cursor += runs
        rows.append([shape, n, TAILS.get(shape, "top"), s["runs"], s["certified"], s["wrong"],
                     f"{s['share']:.3f} (≤ {s['upper']:.3f})", 0.05,
                     "—" if s["median_evals"] is None else f"{s['median_evals']:,.0f}", f"{s['seconds']:.0f}"])
        summary[f"{shape}/{n}/false_certificate_share"] = s["share"]
        summary[f"{shape}/{n}/certified"] = s["certified"]
        print(f"  {shape:<12} N={n:<5} certified {s['certified']}/{s['runs']}, wrong {s['wrong']}, "
              f"share {s['share']:.3f} (95% upper {s['upper']:.3f}) vs δ = 0.05, median evals {s['median_evals']}")
    ablation_rows = []
    for name, _ in ablation:
        s = summarise(results[cursor : cursor + args.ablation_runs])
        cursor += args.ablation_runs
        ablation_rows.append([name, s["runs"], s["certified"], s["wrong"], f"{s['share']:.3f} (≤ {s['upper']:.3f})",
                              "—" if s["median_evals"] is None else f"{s['median_evals']:,.0f}"])
        summary[f"ablation/{name}/false_certificate_share"] = s["share"]
        print(f"  ablation {name:<34} certified {s['certified']}/{s['runs']}, wrong {s['wrong']}")
    all_certified = sum(r[4] for r in rows)
    all_wrong = sum(r[5] for r in rows)
    overall = all_wrong / all_certified if all_certified else 0.0
    summary["overall/false_certificate_share"] = overall
    header = (
        f"tmab with default settings (δ = 0.05, ε = 0.01 of the value scale, top-10) on fresh instances of each "
        f"family; 'wrong' = certified but not ε-correct against the exact values; 'share' = wrong / certified "
        f"with its one-sided 95 % Clopper–Pearson upper bound. Over all families: {all_wrong} wrong of "
        f"{all_certified} certified ({overall:.4f}) against δ = 0.05. Ablation: the 'rare' family at "
        f"N = {args.ablation_size}, {args.ablation_runs} runs per setting. {time.perf_counter() - start:.0f} s "
        f"on {args.workers} worker(s)."
    )
    tables = {
        "calibration": (["family", "N", "tail", "runs", "certified", "wrong", "share (95% upper)", "δ",
                         "median evaluations to certify", "CPU s"], rows),
        "ablation": (["safeguards", "runs", "certified", "wrong", "share (95% upper)",
                      "median evaluations to certify"], ablation_rows),
    }
    paths = common.report("calibration", args, start, tables=tables, images={}, summary=summary, header=header)
    return {"tables": tables, "summary": summary, **paths}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = common.parser(__doc__, "calibration", quick="smoke setting: few small runs")
    p.add_argument("--shapes", nargs="+", default=list(NETWORK_SHAPES), choices=NETWORK_SHAPES)
    p.add_argument("--sizes", nargs="+", type=int, default=[100, 300, 1000])
    p.add_argument("--runs", type=int, default=200, help="seeded runs per family at N ≤ 300")
    p.add_argument("--runs-large", type=int, default=40, help="seeded runs per family at N > 300")
    p.add_argument("--ablation-size", type=int, default=300)
    p.add_argument("--ablation-runs", type=int, default=40)
    p.add_argument("--workers", type=int, default=2)
    quick = {"sizes": [100], "runs": 2, "runs_large": 1, "ablation_size": 100, "ablation_runs": 2}
    return common.parse_args(p, argv, quick=quick, positive=("runs", "runs_large", "ablation_runs", "workers"))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(parse(argv))


if __name__ == "__main__":
    common.run_script(main)
