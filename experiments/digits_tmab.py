"""Neuron Shapley on the embedded digits data: how many evaluations tmab needs to certify the digits CNN's top-10,
with three value functions of the same network.

Trains the digits ``SmallCNN`` (104 filters) and runs ``tmab`` with its defaults on the accuracy game and on two
smoother value functions of the same predictions (mean true-class probability, negative cross-entropy), and
reports for each: certified or not, evaluations, seconds, ε, and the spread of the boundary filters' samples
relative to ε (``(sd/ε)²`` over the ten filters around rank 10: the evaluations a certificate needs scale with it).
With ``--reference P`` it also runs a P-permutation antithetic Monte Carlo of the accuracy game (untruncated, so
both estimate the same values) and checks tmab's top-10 against it: ε-correct or not, overlap, and how well the
reference itself separates its top-10 (its own standard errors).

    python -m experiments.digits_tmab
    python -m experiments.digits_tmab --reference 400
    python -m experiments.digits_tmab --quick
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from experiments import common
from nsl import AccuracyGame, ShapleyResult, monte_carlo, tmab
from nsl.shapley.metrics import eps_correct

METRICS = ("accuracy", "true_class_probability", "neg_cross_entropy")


def boundary_spread(result: ShapleyResult) -> float:
    """Median of (sample sd / ε)² over the ten filters around the k-th (the cost of certifying, up to a factor)."""
    order = result.ranking()
    k = result.k
    near = order[max(0, k - 5) : k + 5]
    sd = result.stderr[near] * result.counts[near].double().sqrt()
    return statistics.median(((sd / result.epsilon_value) ** 2).tolist())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__, "digits_tmab")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--eval-size", type=int, default=300, help="validation images in the games")
    p.add_argument("--max-evals", type=int, default=None, help="tmab budget (default: tmab's, 200 per filter)")
    p.add_argument("--metrics", nargs="+", default=list(METRICS), choices=METRICS)
    p.add_argument("--reference", type=int, default=0, help="antithetic Monte Carlo permutations for a reference")
    p.add_argument("--threads", type=int, default=2)
    args = common.parse_args(p, argv, quick={"epochs": 1, "eval_size": 60, "max_evals": 600, "reference": 4},
                             positive=("epochs", "top_k", "eval_size", "threads"))
    start = time.perf_counter()
    with common.torch_threads(args.threads):
        model, players, x, y = common.trained_digits(args)
        budget = {} if args.max_evals is None else {"max_evals": args.max_evals}
        rows, results = [], {}
        for metric in args.metrics:
            game = AccuracyGame(model, players, x, y, metric=metric)
            result = tmab(game, args.top_k, seed=args.seed, **budget)
            results[metric] = result
            rows.append([
                metric, f"{game.full_value():.3f}", result.converged, f"{result.n_evals:,}", f"{result.seconds:.0f}",
                f"{result.epsilon_value:.4f}", f"{boundary_spread(result):,.0f}",
                f"{int(result.counts.min())}–{int(result.counts.max())}",
            ])
            print(f"{metric}: converged={result.converged}, {result.n_evals} evaluations, {result.seconds:.0f} s")
        tables = {"tmab on the digits CNN": (
            ["value", "v(N)", "certified", "evaluations", "seconds", "ε", "(sd/ε)² near rank 10", "samples per filter"],
            rows)}
        summary: dict[str, float] = {f"{m}/evals": r.n_evals for m, r in results.items()}
        header = (f"SmallCNN on digits, {len(players)} filters, {len(y)} validation images; tmab defaults "
                  f"(δ = 0.05, top-{args.top_k})" + ("" if args.max_evals is None else f", budget {args.max_evals:,}")
                  + ".")
        if args.reference and "accuracy" in results:
            game = AccuracyGame(model, players, x, y)
            ref = monte_carlo(game, args.reference, antithetic=True, seed=args.seed + 1, top_k=args.top_k)
            mine = results["accuracy"]
            k = args.top_k
            order = ref.ranking()
            se = ref.stderr
            z = (ref.values[order[:k]] - ref.values[order[k]]) / (se[order[:k]] ** 2 + se[order[k]] ** 2).sqrt()
            correct = eps_correct(mine.values, ref.values, k, mine.epsilon_value)
            shared = len(set(mine.top_k.tolist()) & set(ref.top_k.tolist()))
            tables["against a long reference"] = (
                ["reference evaluations", "reference median stderr", "ref. top-10 separated at z > 2",
                 "tmab top-10 ε-correct", "shared with the reference's top-10"],
                [[f"{ref.n_evals:,}", f"{float(se.median()):.4f}", f"{int((z > 2).sum())}/{k}", correct,
                  f"{shared}/{k}"]])
            summary.update({"reference/evals": ref.n_evals, "accuracy/eps_correct": float(correct)})
            header += (f" Reference: antithetic Monte Carlo, {args.reference} permutations; ranks 8–13 "
                       f"{[round(float(ref.values[i]), 4) for i in order[7:13]]}.")
        paths = common.report("digits_tmab", args, start, tables=tables, images={}, summary=summary, header=header)
    return {"results": results, "tables": tables, **paths}


if __name__ == "__main__":
    common.run_script(main)
