"""Calibration of tmab's certificate: how often is a certified top-k wrong? Printed next to δ.

``converged=True`` promises that, with probability ≥ 1 − δ, the returned top-k is ε-correct (every returned
player's true value ≥ the true k-th value − ε, every player left out ≤ it + ε). This benchmark checks the
promise on games with exactly known Shapley values, each run on a fresh instance of its family with its own
estimator seed, default settings.

Per-example families (``nsl.games.synthetic.network_examples_game``: a mean over M examples of per-example
network-shaped games; tmab samples (coalition, example) pairs, one model row each):

- ``rare``: each example is right while its 1–3 key players are present and the network has not collapsed;
  most per-example marginals are exactly 0, a key's is a rare flip to 1;
- ``band``: ``rare`` plus one player whose marginal is 1 only in a narrow band of mid-scan positions (3.5 % of
  them), far from where the other players' marginals live;
- ``voting``: weighted majority votes with one heavy player, pivotal only in a narrow band of counts;

at N = 100 and 300 players, M = 100 examples, 200 runs per family. Full-set families
(``nsl.games.synthetic.network_game``: one value per coalition, M = 1, so a row is an evaluation):

- ``rare``: a steep collapse after a few percent of a scan, so key players' marginals are rare large events;
- ``flat``: the k-th value inside a plateau of 15 equal players;
- ``interactions``: strong pairwise and triple interactions on top of the collapse;
- ``degenerate``: v(∅) = v(N), values of both signs (certified on both ends, ``tail="both"``);
- ``constant``: every marginal 0 (nothing may be certified);

at N = 100, 40 runs per family by default: with the rare-event floor each run needs about 0.1–0.3 M evaluations
at N = 100 (about 7,000 before the floor), so the full-set families get fewer runs than the per-example ones.

For each family it prints the runs, how many certified, how many of those are not ε-correct, that share with
its one-sided 95 % Clopper–Pearson upper bound, δ, the median rows to certify and their full-set equivalent
(rows / M). ``--floor-ablation`` runs the per-example families again with ``rare_event_floor=False`` (same games,
same seeds) and prints both side by side: what soundness costs in rows. An ablation switches the safeguards
off one at a time on the full-set ``rare`` family (the pooled variance prior, the anytime intervals, the union
bound, the rare-event floor), to show that the harness sees a broken certificate and what each buys.

    python -m experiments.benchmarks.calibration --floor-ablation   # the full setting (about 3 h on 2 cores)
    python -m experiments.benchmarks.calibration --shapes --ablation-runs 0 --floor-ablation   # per-example only
    python -m experiments.benchmarks.calibration --quick            # smoke setting, seconds
    python -m experiments.benchmarks.calibration --semivalues banzhaf,beta(1,4),beta(1,16) --shapes \
        --ablation-runs 0 --example-sizes 60 --examples 60     # the other semivalues, per-example families

``--semivalues`` calibrates other semivalues (:mod:`nsl.shapley.semivalues`) the same way, against their exact
values (``game.semivalue(...)``); the floor and safeguard ablations stay Shapley's.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Any

import torch

from experiments import common
from experiments.certified import parse_semivalues
from experiments.seeds import plural
from nsl.games.synthetic import EXAMPLE_SHAPES, NETWORK_SHAPES, network_examples_game, network_game
from nsl.shapley import tmab
from nsl.shapley.metrics import eps_correct

DELTA = 0.05  # tmab's default δ: every run uses the defaults, so this is the promise checked
TAILS = {"degenerate": "both"}  # a degenerate game's culprits are its negative players: certify both ends
ABLATIONS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "no pooled prior": {"prior_samples": 0},
    "fixed-n intervals": {"anytime": False},
    "no union bound": {"union_bound": False},
    "no rare-event floor": {"rare_event_floor": False},
    "none of the four (min 2 samples)": {"prior_samples": 0, "anytime": False, "union_bound": False,
                                         "rare_event_floor": False, "min_samples": 2},
}
NO_FLOOR = {"rare_event_floor": False}

# A job: (kind, shape, N, M, game seed, tmab options as sorted items, top-k, rows budget or None). Hashable, so
# that a run asked for twice (the floor ablation's default rows are the per-example families' runs) runs once.
Job = tuple[str, str, int, int, int, tuple[tuple[str, Any], ...], int, int | None]


def job(kind: str, shape: str, n: int, m: int, seed: int, options: dict[str, Any], top_k: int,
        max_rows: int | None) -> Job:
    """One seeded run's description; ``kind`` is ``"examples"`` (per-example game) or ``"full-set"``."""
    return (kind, shape, n, m, seed, tuple(sorted(options.items())), top_k, max_rows)


def one_run(spec: Job) -> dict[str, Any]:
    """One seeded run: a fresh game of the family, tmab with the given options, checked against exact values."""
    kind, shape, n, m, seed, options, top_k, max_rows = spec
    torch.set_num_threads(1)
    game = network_examples_game(n, m, shape, seed=seed) if kind == "examples" else network_game(n, shape, seed=seed)
    truth = game.semivalue(dict(options).get("semivalue", "shapley"))  # exact values of the semivalue estimated
    budget = {} if max_rows is None else {"max_rows": max_rows}
    start = time.process_time()
    result = tmab(game, top_k, tail=TAILS.get(shape, "top"), seed=10_000 + seed, **budget, **dict(options))
    eps = result.epsilon_value
    correct = eps is not None and eps_correct(result.values, truth, result.k, eps, result.tail)
    return {
        "converged": bool(result.converged),
        "correct": bool(correct),
        "rows": int(result.n_rows),
        "full_set": result.n_rows / int(getattr(game, "rows_per_eval", 1)),  # rows / M
        "sampling": result.sampling,
        "seconds": time.process_time() - start,
        "epsilon_value": eps,
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
    """Counts, the share of certified runs that are wrong with its upper bound, rows to certify (medians)."""
    certified = [r for r in runs if r["converged"]]
    wrong = sum(not r["correct"] for r in certified)
    return {
        "runs": len(runs),
        "certified": len(certified),
        "wrong": wrong,
        "share": wrong / len(certified) if certified else 0.0,
        "upper": clopper_pearson_upper(wrong, len(certified)),
        "median_rows": statistics.median(r["rows"] for r in certified) if certified else None,
        "median_full_set": statistics.median(r["full_set"] for r in certified) if certified else None,
        "sampling": "/".join(sorted({r["sampling"] for r in runs})),
        "seconds": sum(r["seconds"] for r in runs),
    }


def count(x: float | None) -> str:
    """A count for the tables: thousands separated, '—' where there is none."""
    return "—" if x is None else f"{x:,.0f}"


def fmt_share(s: dict[str, Any]) -> str:
    """wrong / certified with its 95 % upper bound, as the tables print it."""
    return f"{s['share']:.3f} (≤ {s['upper']:.3f})"


def plan_runs(args: argparse.Namespace) -> tuple[list[tuple[str, Any, list[Job]]], list[Job]]:
    """The blocks of the report, each ``(table, label, jobs)``, and every distinct job once, in order."""
    blocks: list[tuple[str, Any, list[Job]]] = []
    for semivalue in args.semivalue_list:
        chosen = {} if semivalue == "shapley" else {"semivalue": semivalue}
        for shape in args.example_shapes:
            for n in args.example_sizes:
                jobs = [job("examples", shape, n, args.examples, s, chosen, args.top_k, None)
                        for s in range(args.example_runs)]
                blocks.append(("calibration", ("examples", shape, n, args.examples, semivalue), jobs))
        for shape in args.shapes:
            for n in args.sizes:
                runs = args.runs if n <= 300 else args.runs_large
                jobs = [job("full-set", shape, n, 1, s, chosen, args.top_k, args.full_set_max_rows)
                        for s in range(runs)]
                blocks.append(("calibration", ("full-set", shape, n, 1, semivalue), jobs))
    for shape in args.example_shapes if "shapley" in args.semivalue_list else []:
        for n in args.example_sizes:
            jobs = [job("examples", shape, n, args.examples, s, {}, args.top_k, None) for s in range(args.example_runs)]
            if args.floor_ablation:
                blocks.append(("floor", (shape, n, "on (default)"), jobs))
                off = [job("examples", shape, n, args.examples, s, NO_FLOOR, args.top_k, None)
                       for s in range(args.example_runs)]
                blocks.append(("floor", (shape, n, "off"), off))
    for name, options in ABLATIONS.items():
        if args.ablation_runs:
            jobs = [job("full-set", "rare", args.ablation_size, 1, s, options, args.top_k, args.full_set_max_rows)
                    for s in range(args.ablation_runs)]
            blocks.append(("ablation", name, jobs))
    unique = list(dict.fromkeys(j for _, _, jobs in blocks for j in jobs))
    return blocks, unique


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every family at every size, the floor ablation and the safeguard ablation; returns tables and summary."""
    start = time.perf_counter()
    blocks, unique = plan_runs(args)
    if not unique:
        raise ValueError("nothing to run: give --example-shapes or --shapes (or --ablation-runs > 0).")
    print(f"{len(unique)} runs on {args.workers} worker(s)")
    done = dict(zip(unique, common.parallel_map(one_run, unique, args.workers), strict=True))
    rows, floor_rows, ablation_rows, summary = [], [], [], {}
    floor_on: dict[tuple[str, int], float | None] = {}
    for table, label, jobs in blocks:
        s = summarise([done[j] for j in jobs])
        if table == "calibration":
            kind, shape, n, m, semivalue = label
            family = f"per-example {shape}" if kind == "examples" else shape
            tail = TAILS.get(shape, "top")
            rows.append([semivalue, family, s["sampling"], n, m, tail, s["runs"], s["certified"], s["wrong"],
                         fmt_share(s), DELTA, count(s["median_rows"]), count(s["median_full_set"]),
                         f"{s['seconds']:.0f}"])
            prefix = "" if semivalue == "shapley" else f"{semivalue}/"
            key = f"{prefix}{'examples/' if kind == 'examples' else ''}{shape}/{n}"
            summary[f"{key}/false_certificate_share"] = s["share"]
            summary[f"{key}/certified"] = s["certified"]
            if s["median_rows"] is not None:
                summary[f"{key}/median_rows"] = s["median_rows"]
            print(f"  {semivalue:<10} {family:<22} N={n:<5} M={m:<4} runs {s['runs']}, certified {s['certified']}, "
                  f"wrong "
                  f"{s['wrong']}, share {s['share']:.3f} (95% upper {s['upper']:.3f}) vs δ = {DELTA}, median rows "
                  f"to certify {count(s['median_rows'])} (full-set equivalent {count(s['median_full_set'])})")
        elif table == "floor":
            shape, n, floor = label
            cost = "—"
            if floor == "on (default)":
                floor_on[(shape, n)] = s["median_rows"]
            elif floor_on.get((shape, n)) and s["median_rows"]:
                cost = f"{floor_on[(shape, n)] / s['median_rows']:.1f}×"
                summary[f"floor/{shape}/{n}/rows_ratio"] = floor_on[(shape, n)] / s["median_rows"]
            floor_rows.append([f"per-example {shape}", n, args.examples, floor, s["runs"], s["certified"], s["wrong"],
                               fmt_share(s), DELTA, count(s["median_rows"]), count(s["median_full_set"]), cost])
            summary[f"floor/{shape}/{n}/{floor.split()[0]}/false_certificate_share"] = s["share"]
            print(f"  floor {floor:<13} per-example {shape:<7} N={n:<5} certified {s['certified']}/{s['runs']}, "
                  f"wrong {s['wrong']} (95% upper {s['upper']:.3f}), median rows {count(s['median_rows'])}")
        else:
            ablation_rows.append([label, s["runs"], s["certified"], s["wrong"], fmt_share(s), count(s["median_rows"])])
            summary[f"ablation/{label}/false_certificate_share"] = s["share"]
            print(f"  ablation {label:<34} certified {s['certified']}/{s['runs']}, wrong {s['wrong']}")
    all_certified = sum(r[7] for r in rows)
    all_wrong = sum(r[8] for r in rows)
    overall = all_wrong / all_certified if all_certified else 0.0
    summary["overall/false_certificate_share"] = overall
    capped = "" if args.full_set_max_rows is None else (
        f" Full-set runs were capped at {args.full_set_max_rows:,} rows each (a smoke setting: most do not certify).")
    header = (
        f"tmab with default settings (δ = {DELTA}, ε = 0.01 of the value scale, top-{args.top_k}) on fresh "
        f"instances of each family; 'wrong' = certified but not ε-correct against the exact values; 'share' = "
        f"wrong / certified with its one-sided 95 % Clopper–Pearson upper bound. Rows are (coalition, example) "
        f"pairs through the game; the full-set equivalent is rows / M (M = {args.examples} examples for the "
        f"per-example families; M = 1 for the full-set ones, whose rows are evaluations). Per-example families: "
        f"{plural(args.example_runs, 'run')} each; full-set families: {plural(args.runs, 'run')} each at N ≤ 300 "
        f"and {args.runs_large} above (fewer than the per-example ones: with the rare-event floor a full-set run at "
        f"N = 100 needs about 0.1–0.3 M evaluations). Over all families: {all_wrong} wrong of {all_certified} "
        f"certified ({overall:.4f}) against δ = {DELTA}.{capped} {time.perf_counter() - start:.0f} s on "
        f"{plural(args.workers, 'worker')}."
    )
    tables = {
        "calibration": (["semivalue", "family", "sampling", "N", "M", "tail", "runs", "certified", "wrong",
                         "share (95% upper)", "δ", "median rows to certify", "full-set equivalent", "CPU s"], rows),
    }
    if floor_rows:
        tables["rare-event floor"] = (
            ["family", "N", "M", "rare-event floor", "runs", "certified", "wrong", "share (95% upper)", "δ",
             "median rows to certify", "full-set equivalent", "rows with / without the floor"], floor_rows)
        header += (" Rare-event floor: the per-example families again with rare_event_floor=False (same games and "
                   "estimator seeds): false certificates without it, and the rows it costs.")
    if ablation_rows:
        tables["ablation"] = (["safeguards", "runs", "certified", "wrong", "share (95% upper)",
                               "median rows to certify"], ablation_rows)
        header += (f" Ablation: the full-set 'rare' family at N = {args.ablation_size}, "
                   f"{plural(args.ablation_runs, 'run')} per setting.")
    paths = common.report("calibration", args, start, tables=tables, images={}, summary=summary, header=header)
    return {"tables": tables, "summary": summary, **paths}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = common.parser(__doc__, "calibration", quick="smoke setting: few small runs, full-set runs capped")
    p.add_argument("--example-shapes", nargs="*", default=list(EXAMPLE_SHAPES), choices=EXAMPLE_SHAPES,
                   help="per-example families (the flag with no names: none)")
    p.add_argument("--example-sizes", nargs="+", type=int, default=[100, 300], help="N of the per-example families")
    p.add_argument("--examples", type=int, default=100, help="M, examples per per-example game")
    p.add_argument("--example-runs", type=int, default=200, help="seeded runs per per-example family and size")
    p.add_argument("--floor-ablation", action="store_true",
                   help="also run the per-example families with rare_event_floor=False")
    p.add_argument("--shapes", nargs="*", default=list(NETWORK_SHAPES), choices=NETWORK_SHAPES,
                   help="full-set families (the flag with no names: none)")
    p.add_argument("--sizes", nargs="+", type=int, default=[100], help="N of the full-set families")
    p.add_argument("--runs", type=int, default=40, help="seeded runs per full-set family at N ≤ 300")
    p.add_argument("--runs-large", type=int, default=10, help="seeded runs per full-set family at N > 300")
    p.add_argument("--full-set-max-rows", type=int, default=None,
                   help="rows budget of each full-set run (default: tmab's own)")
    p.add_argument("--ablation-size", type=int, default=100)
    p.add_argument("--ablation-runs", type=int, default=40, help="runs per safeguard setting (0: no ablation)")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--semivalues", default="shapley",
                   help="semivalues to calibrate, comma-separated (e.g. shapley,banzhaf,beta(1,4)); the floor and "
                        "safeguard ablations use Shapley")
    p.add_argument("--workers", type=int, default=2)
    quick = {"example_sizes": [30], "examples": 20, "example_runs": 2, "floor_ablation": True, "sizes": [40],
             "runs": 1, "runs_large": 1, "full_set_max_rows": 5000, "ablation_size": 40, "ablation_runs": 1}
    args = common.parse_args(p, argv, quick=quick,
                             positive=("example_runs", "examples", "runs", "runs_large", "top_k", "workers"))
    args.semivalue_list = parse_semivalues(args.semivalues)
    if args.ablation_runs < 0:
        raise ValueError(f"--ablation-runs={args.ablation_runs} must be ≥ 0 (0: no ablation).")
    if args.full_set_max_rows is not None and args.full_set_max_rows < 1:
        raise ValueError(f"--full-set-max-rows={args.full_set_max_rows} must be a positive integer.")
    # Build one game of every size asked for now, so that a size the families do not accept fails before any run.
    for n in args.example_sizes if args.example_shapes else []:
        network_examples_game(n, args.examples, args.example_shapes[0])
    for n in [*(args.sizes if args.shapes else []), *([args.ablation_size] if args.ablation_runs else [])]:
        network_game(n, "constant")
    smallest = min([*(args.example_sizes if args.example_shapes else []),
                    *(args.sizes if args.shapes else []), *([args.ablation_size] if args.ablation_runs else [])],
                   default=args.top_k + 1)
    if smallest <= args.top_k:
        raise ValueError(f"--top-k={args.top_k} needs games of more players; the smallest size asked is {smallest}.")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(parse(argv))


if __name__ == "__main__":
    common.run_script(main)
