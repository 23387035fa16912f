"""A certified top-10 on a trained CNN: rows and time to certify, soundness against a long reference, and the
rows Captum's ShapleyValueSampling needs for 90 % ε-correct runs on the same game.

One network is trained (``--data digits``: the digits ``SmallCNN``, 104 filters, 15 epochs; ``--data shapes``:
the 240-filter wide CNN of ``experiment=shapes_cnn`` on generated 32×32 shapes, 8 epochs) and analysed on
``--eval-size`` held-out validation images with its accuracy game (``AccuracyGame``: the game decomposes over
examples, so ``tmab`` samples (coalition, example) pairs, one model row each). Then:

1. **Cost.** ``tmab(game, 10, seed=s)`` with its defaults (or ``--max-rows``) for ``--seeds`` estimator seeds:
   certified or not, rows through the model, their full-set equivalent (rows / M), wall and CPU seconds
   (``time.process_time``: all threads of the process), rows per second.
2. **Soundness.** Every certified top-10 of the first ``--reference-seeds`` seeds (the same runs, more where
   there are more reference seeds) against one long reference run: ``tmab`` per example with
   ``--reference-rows`` rows, ε a tenth of the default's and at least ``--reference-min-samples`` samples per
   filter, so that the rows go to the filters near the 10th and every value has a standard error. A
   *violation beyond the reference's noise* is a returned filter whose reference value is below the reference's
   10th value − ε by more than 2 standard errors of their difference (or a filter left out above it + ε by as
   much); ε is the run's own tolerance.
3. **The field.** Captum's ``ShapleyValueSampling`` (one permutation: N evaluations of M rows after one of the
   empty coalition) is run for ``--captum-permutations`` permutations through the benchmarks' meter
   (``nsl.games.CountingGame``, via ``experiments/benchmarks/competitors.py``). Running it to 90 % ε-correct
   runs is too expensive here, so its cost is *estimated*: the per-permutation marginals are measured, centred,
   and resampled (a bootstrap of p permutations, centred at the reference values and judged against them with
   tmab's ε); the smallest p at which 90 % of the simulated runs are ε-correct gives Captum's rows,
   (1 + p·N)·M. A rare marginal missed by the measured permutations makes the spread look smaller than it is, so
   the estimate errs in Captum's favour.

    python -m experiments.benchmarks.certify_network                  # digits: 20 seeds, reference, Captum
    python -m experiments.benchmarks.certify_network --data shapes --seeds 1 --reference-seeds 0 \\
        --captum-permutations 0                                       # the wide shapes CNN: certify once
    python -m experiments.benchmarks.certify_network --quick          # tiny network, few rows, seconds
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor

from experiments import common
from experiments.benchmarks.calibration import clopper_pearson_upper
from experiments.benchmarks.competitors import COMPETITORS
from experiments.seeds import plural
from nsl import AccuracyGame, FilterPlayers, ShapleyResult, tmab
from nsl.data import load_digits_tensors
from nsl.games import CountingGame
from nsl.shapley.metrics import eps_correct

NAME = "certify_network"
DATA = {  # --data: training variant, default epochs, quick SmallCNN channels
    "digits": ("digits_cnn", 15, (4, 6, 8)),
    "shapes": ("shapes_cnn", 8, (4, 6, 8, 10)),
}
VAL_SIZE = 300  # validation images both networks' data hold out (the data configs' val_size)
TARGET = 0.9  # Captum's share of ε-correct runs to reach
REFERENCE_SEED = 1_000_003  # the reference's own estimator seed, apart from the runs' seeds 0, 1, …


def trained(args: argparse.Namespace) -> tuple[torch.nn.Module, FilterPlayers, Tensor, Tensor]:
    """The ``--data`` network trained with ``--seed``, its filters, and the first ``--eval-size`` validation images
    (the split the training held out) with their labels."""
    experiment = DATA[args.data][0]
    overrides = [f"data.train_size={args.train_size}"] if args.data == "shapes" and args.train_size else []
    model, dm = common.train_model(experiment, epochs=args.epochs, seed=args.seed, channels=args.channels,
                                   overrides=overrides)
    if args.data == "digits":
        x, y = load_digits_tensors("val", val_size=VAL_SIZE, seed=args.seed)
    else:
        x, y = dm.tensors("val")[:2]
    if args.eval_size > len(y):
        raise ValueError(f"--eval-size={args.eval_size}: the {args.data} validation split has {len(y)} images.")
    return model, FilterPlayers(model), x[: args.eval_size], y[: args.eval_size]


def certify(game: AccuracyGame, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """One tmab run with the defaults (or ``--max-rows``): its result, wall and CPU seconds, rows per second."""
    budget = {} if args.max_rows is None else {"max_rows": args.max_rows}
    wall, cpu = time.perf_counter(), time.process_time()
    result = tmab(game, args.top_k, seed=seed, **budget)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rows = int(result.n_rows)
    print(f"  seed {seed}: certified={result.converged}, {rows:,} rows ({result.sampling}), {wall:.0f} s wall, "
          f"{cpu:.0f} s CPU", flush=True)
    return {"seed": seed, "result": result, "rows": rows, "wall": wall, "cpu": cpu, "rows_per_s": rows / wall}


def reference_run(game: AccuracyGame, args: argparse.Namespace) -> ShapleyResult:
    """The long reference: tmab per example, a tenth of the default ε, at least ``--reference-min-samples``
    samples per filter, ``--reference-rows`` rows (it stops at the budget; its values come with standard errors)."""
    start = time.perf_counter()
    ref = tmab(game, args.top_k, epsilon_fraction=0.001, min_samples=args.reference_min_samples,
               max_rows=args.reference_rows, per_example=True, seed=REFERENCE_SEED)
    print(f"reference: {int(ref.n_rows):,} rows, {time.perf_counter() - start:.0f} s, samples per filter "
          f"{int(ref.counts.min()):,}–{int(ref.counts.max()):,}", flush=True)
    return ref


def violations(result: ShapleyResult, ref: ShapleyResult) -> int:
    """Filters of ``result``'s top-k that the reference puts below its k-th value − ε by more than 2 standard
    errors of the difference, plus filters left out that it puts above the k-th + ε by as much (ε: the run's)."""
    k, eps = result.k, float(result.epsilon_value)
    values, se = ref.values, torch.nan_to_num(ref.stderr, nan=math.inf)
    kth = int(values.argsort(descending=True, stable=True)[k - 1])
    noise = 2 * (se**2 + se[kth] ** 2).sqrt()
    chosen = torch.zeros(len(values), dtype=torch.bool)
    chosen[result.top_k] = True
    low = chosen & (values < values[kth] - eps - noise)
    high = ~chosen & (values > values[kth] + eps + noise)
    return int(low.sum() + high.sum())


def captum_marginals(game: AccuracyGame, permutations: int, seed: int) -> tuple[Tensor, int, float]:
    """Captum's per-permutation marginals (P, N), from its running estimates after 1, 2, …, P permutations
    (every evaluation through the benchmarks' meter), the rows the meter counted, and the wall seconds."""
    meter = CountingGame(game)
    n = meter.n_players
    budgets = [1 + j * n for j in range(1, permutations + 1)]
    start = time.perf_counter()
    estimates = COMPETITORS["captum"](meter, budgets, seed)
    seconds = time.perf_counter() - start
    means = torch.stack([estimates[b] for b in budgets])  # (P, N): the estimate after j permutations
    j = torch.arange(1, permutations + 1, dtype=torch.float64)[:, None]
    sums = means * j
    marginals = torch.cat([sums[:1], sums[1:] - sums[:-1]])
    if meter.n_evals != budgets[-1]:
        raise RuntimeError(f"Captum spent {meter.n_evals} evaluations for {permutations} permutations; "
                           f"expected {budgets[-1]}.")
    return marginals, int(meter.n_rows), seconds


def share_correct(marginals: Tensor, truth: Tensor, k: int, eps: float, p: int, simulations: int,
                  seed: int) -> float:
    """Share of simulated p-permutation Captum runs whose top-k is ε-correct against ``truth``: each run is
    ``truth`` plus the mean of p per-permutation deviations resampled from the measured ones (centred, and
    scaled by √(P/(P−1)) so that their variance is the unbiased sample variance)."""
    count = len(marginals)
    deviations = (marginals - marginals.mean(dim=0)) * math.sqrt(count / max(1, count - 1))
    draws = np.random.default_rng(seed).multinomial(p, np.full(count, 1.0 / count), size=simulations)
    runs = truth + torch.from_numpy(draws).double() @ deviations / p  # (simulations, N)
    kth = truth.sort(descending=True).values[k - 1]
    chosen = torch.zeros_like(runs, dtype=torch.bool).scatter_(1, runs.topk(k, dim=1).indices, True)
    inside_ok = torch.where(chosen, truth >= kth - eps, True).all(dim=1)
    outside_ok = torch.where(~chosen, truth <= kth + eps, True).all(dim=1)
    return float((inside_ok & outside_ok).double().mean())


def permutations_for_target(marginals: Tensor, truth: Tensor, k: int, eps: float, simulations: int,
                            limit: int = 10**7) -> int | None:
    """The fewest permutations at which ≥ 90 % of simulated Captum runs are ε-correct (doubling, then bisection;
    each count's draws seeded by the count, so a rerun finds the same), or None beyond ``limit``."""
    def ok(p: int) -> bool:
        return share_correct(marginals, truth, k, eps, p, simulations, seed=p) >= TARGET

    high = 1
    while not ok(high):
        high *= 2
        if high > limit:
            return None
    low = high // 2  # fails (or 0)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if ok(mid) else (mid, high)
    return high


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def fmt(x: float | None, spec: str = ",.0f") -> str:
    return "—" if x is None else format(x, spec)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train, certify over the seeds, compare with the reference and with Captum; write the report."""
    start = time.perf_counter()
    with common.torch_threads(args.threads):
        model, players, x, y = trained(args)
        game = AccuracyGame(model, players, x, y)
        n, m = len(players), len(y)
        print(f"{args.data}: {n} filters, {m} validation images, v(N) = {game.full_value():.3f}, "
              f"v(∅) = {game.empty_value():.3f}; trained in {time.perf_counter() - start:.0f} s", flush=True)
        runs = [certify(game, args, seed) for seed in range(max(args.seeds, args.reference_seeds))]
        ref = reference_run(game, args) if args.reference_seeds else None
        captum = captum_marginals(game, args.captum_permutations, args.seed) if args.captum_permutations else None

    cost = runs[: args.seeds]
    certified = [r for r in cost if r["result"].converged]
    rows_median = median([r["rows"] for r in certified])
    full_median = None if rows_median is None else rows_median / m  # the full-set equivalent
    per_seed = [[r["seed"], r["result"].converged, f"{r['rows']:,}", f"{r['rows'] / m:,.0f}", f"{r['wall']:.1f}",
                 f"{r['cpu']:.1f}", f"{r['rows_per_s']:,.0f}", fmt(r["result"].epsilon_value, ".4f")] for r in cost]
    wall_median, cpu_median = median([r["wall"] for r in certified]), median([r["cpu"] for r in certified])
    rate_median = median([r["rows_per_s"] for r in cost])
    summary: dict[str, float] = {"certified": len(certified), "seeds": len(cost), "median_rows_per_s": rate_median}
    cost_row = [f"{len(certified)}/{len(cost)}", fmt(rows_median), fmt(full_median), fmt(wall_median, ".1f"),
                fmt(cpu_median, ".1f"), fmt(rate_median)]
    if rows_median is not None:
        summary.update({"median_rows": rows_median, "median_wall_s": wall_median, "median_cpu_s": cpu_median})
    tables: dict[str, tuple[list[str], list[list[Any]]]] = {
        "certification": (["certified", "median rows to certify", "full-set equivalent", "median wall s",
                           "median CPU s", "median rows/s"], [cost_row]),
        "runs": (["seed", "certified", "rows", "full-set equivalent", "wall s", "CPU s", "rows/s", "ε"], per_seed),
    }
    header = (f"{args.data} CNN ({n} filters), accuracy game on {m} validation images (M = {m}), top-{args.top_k}, "
              f"tmab defaults (δ = 0.05, ε = 0.01 of the value scale)"
              + ("" if args.max_rows is None else f", budget {args.max_rows:,} rows")
              + f"; {plural(args.threads, 'torch thread')}, {os.cpu_count()} CPU cores visible. Rows are (coalition, "
              f"example) pairs through the model; the full-set equivalent is rows / M. Over "
              f"{plural(len(cost), 'seed')}: {len(certified)} certified, median {fmt(rows_median)} rows.")
    eps_values = [float(r["result"].epsilon_value) for r in runs if r["result"].epsilon_value is not None]
    eps = median(eps_values)

    if ref is not None:
        checked = [r for r in runs[: args.reference_seeds] if r["result"].converged]
        ref_rows = []
        for r in runs[: args.reference_seeds]:
            res = r["result"]
            if not res.converged:
                ref_rows.append([r["seed"], False, "—", "—", "—"])
                continue
            shared = len(set(res.top_k.tolist()) & set(ref.top_k.tolist()))
            r["violations"] = violations(res, ref)
            r["ref_correct"] = eps_correct(res.values, ref.values, res.k, float(res.epsilon_value))
            ref_rows.append([r["seed"], True, r["ref_correct"], r["violations"], f"{shared}/{res.k}"])
        bad = sum(r["violations"] > 0 for r in checked)
        plain = sum(not r["ref_correct"] for r in checked)
        order = ref.ranking()
        boundary = order[max(0, args.top_k - 3) : args.top_k + 3]
        tables["against the long reference"] = (
            ["seed", "certified", "ε-correct against the reference values", "violations beyond 2 reference s.e.",
             f"shared with the reference's top-{args.top_k}"], ref_rows)
        summary.update({"reference/certified": len(checked), "reference/runs_with_violations": bad,
                        "reference/not_eps_correct": plain, "reference/rows": int(ref.n_rows)})
        header += (f" Long reference: tmab per example, {int(ref.n_rows):,} rows, ε fraction 0.001 (certified at "
                   f"that tolerance: {ref.converged}), ≥ "
                   f"{args.reference_min_samples:,} samples per filter; median standard error near rank "
                   f"{args.top_k} {float(ref.stderr[boundary].median()):.5f} (ε = {fmt(eps, '.4f')}). Of "
                   f"{len(checked)} certified runs over {plural(args.reference_seeds, 'seed')}, {bad} have a "
                   f"violation beyond the reference's noise (95 % upper bound on that share "
                   f"{clopper_pearson_upper(bad, len(checked)):.3f}, δ = 0.05); {plain} are not ε-correct against "
                   f"the reference's values taken as exact.")

    if captum is not None and eps is not None:
        marginals, captum_rows, captum_seconds = captum
        truth = ref.values if ref is not None else marginals.mean(dim=0)
        p = permutations_for_target(marginals, truth, args.top_k, eps, args.simulations)
        rows_needed = None if p is None else (1 + p * n) * m
        ratio = None if rows_needed is None or rows_median is None else rows_needed / rows_median
        measured_rate = captum_rows / captum_seconds
        simulated = "over 10⁷ permutations" if p is None else f"{p:,} permutation{'s' * (p != 1)}"
        tables["against Captum ShapleyValueSampling"] = (
            ["method", "rows", "full-set equivalent", "how measured"],
            [["tmab (median rows to certify)", fmt(rows_median), fmt(full_median),
              f"{len(certified)} certified runs of {len(cost)}"],
             ["Captum (rows for 90 % ε-correct runs)", fmt(rows_needed), fmt(None if p is None else 1 + p * n),
              f"simulated: {simulated}, bootstrap of {args.captum_permutations} measured ones "
              f"({captum_rows:,} rows, {measured_rate:,.0f} rows/s)"],
             ["Captum / tmab", fmt(ratio, ".1f"), "", "target ≥ 10"]])
        summary.update({"captum/permutations_for_90": -1 if p is None else p, "captum/measured_rows": captum_rows})
        if ratio is not None:
            summary["captum/ratio"] = ratio
        header += (f" Captum: {args.captum_permutations} permutations measured through the meter; the permutations "
                   f"for 90 % ε-correct runs are simulated by resampling their centred per-permutation marginals "
                   f"around the {'reference' if ref is not None else 'measured mean'} values ({args.simulations:,} "
                   f"simulated runs per count; a rare marginal the measured permutations missed makes this favour "
                   f"Captum).")
    paths = common.report(NAME, args, start, tables=tables, images={}, summary=summary, header=header)
    return {"runs": runs, "reference": ref, "tables": tables, "summary": summary, **paths}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = common.parser(__doc__, NAME, quick="tiny network, few rows (seconds)")
    p.add_argument("--data", choices=sorted(DATA), default="digits", help="digits SmallCNN or the wide shapes CNN")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: 15 digits, 8 shapes)")
    p.add_argument("--train-size", type=int, default=None, help="generated training images (shapes only)")
    p.add_argument("--eval-size", type=int, default=300, help="validation images in the game (M)")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--seeds", type=int, default=10, help="estimator seeds for the cost table")
    p.add_argument("--max-rows", type=int, default=None, help="tmab's rows budget per run (default: tmab's own)")
    p.add_argument("--reference-seeds", type=int, default=20,
                   help="certified runs checked against the long reference (0: no reference)")
    p.add_argument("--reference-rows", type=int, default=10_000_000, help="the reference's rows")
    p.add_argument("--reference-min-samples", type=int, default=1000, help="the reference's samples per filter")
    p.add_argument("--captum-permutations", type=int, default=30,
                   help="Captum permutations measured for its estimate (0: no Captum comparison)")
    p.add_argument("--simulations", type=int, default=2000, help="simulated Captum runs per permutation count")
    p.add_argument("--threads", type=int, default=2)
    quick = {"epochs": 5, "train_size": 200, "eval_size": 60, "top_k": 5, "seeds": 2, "max_rows": 400_000,
             "reference_seeds": 2, "reference_rows": 500_000, "reference_min_samples": 200,
             "captum_permutations": 3, "simulations": 200}
    args = common.parse_args(p, argv, quick=quick, quick_channels=DATA["digits"][2],
                             positive=("eval_size", "top_k", "seeds", "reference_rows", "reference_min_samples",
                                       "simulations", "threads"))
    for name in ("reference_seeds", "captum_permutations"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)} must be ≥ 0 (0: skip it).")
    for name in ("epochs", "train_size", "max_rows"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')}={value} must be a positive integer.")
    if args.eval_size > VAL_SIZE:
        raise ValueError(f"--eval-size={args.eval_size}: the validation split holds {VAL_SIZE} images.")
    _, epochs, quick_channels = DATA[args.data]
    if args.epochs is None:
        args.epochs = epochs  # the network's own default
    args.channels = quick_channels if args.quick else None  # None: the variant's own network
    if args.quick and args.data == "shapes":  # a 32×32 row costs ~8× a digits one: fewer rows keep it seconds
        args.eval_size, args.max_rows, args.reference_rows = 32, 50_000, 50_000
    if args.data == "digits":
        args.train_size = None  # the digits split is fixed
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(parse(argv))


if __name__ == "__main__":
    common.run_script(main)
