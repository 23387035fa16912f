"""Neuron Shapley on the embedded digits data: train a small CNN, find its top-10 filters with TMAB-Shapley.

With ``--reference N`` it also runs an N-permutation antithetic Monte Carlo with the same truncation (so both
estimate the same values) and reports how many of the top-10 filters the two share, how many evaluations each
needed, and how well the reference itself separates its top-10 from the rest (its own standard errors).

    python experiments/digits_tmab.py
    python experiments/digits_tmab.py --reference 400
"""

from __future__ import annotations

import argparse
import time

import torch

from nsl import AccuracyGame, FilterPlayers, monte_carlo, tmab
from nsl.data import load_digits_tensors
from nsl.models import Classifier
from nsl.training import train_digits_model


def train(epochs: int, seed: int) -> Classifier:
    return train_digits_model(epochs, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--eval-size", type=int, default=300, help="validation images in the game")
    parser.add_argument("--reference", type=int, default=0, help="Monte Carlo permutations for a reference")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    model = train(args.epochs, args.seed)
    x, y = load_digits_tensors("val", val_size=args.eval_size, seed=args.seed)
    players = FilterPlayers(model)
    game = AccuracyGame(model, players, x, y)
    print(f"trained SmallCNN in {time.perf_counter() - start:.1f} s: {len(players)} filters, "
          f"validation accuracy {game.full_value():.3f} on {len(x)} images")

    result = tmab(game, args.top_k, seed=args.seed)
    print(f"\ntmab(top_k={args.top_k}): converged={result.converged}, {result.n_evals} evaluations, "
          f"{result.seconds:.1f} s, samples per filter {int(result.counts.min())}–{int(result.counts.max())}")
    print(f"{'rank':>4}  {'filter':<18}{'value':>9}{'stderr':>9}{'samples':>9}")
    for rank, i in enumerate(result.top_k.tolist(), 1):
        print(f"{rank:>4}  {result.names[i]:<18}{result.values[i]:>9.4f}{result.stderr[i]:>9.4f}{result.counts[i]:>9}")

    if args.reference:
        k = args.top_k
        ref = monte_carlo(game, args.reference, truncation=0.25, antithetic=True, seed=args.seed + 1, top_k=k)
        shared = len(set(result.top_k.tolist()) & set(ref.top_k.tolist()))
        order = ref.ranking()
        print(f"\nmonte_carlo({args.reference} permutations, truncation 0.25, antithetic): {ref.n_evals} "
              f"evaluations, {ref.seconds:.1f} s")
        print(f"top-{k} shared with the reference: {shared}/{k}; tmab used {ref.n_evals / result.n_evals:.1f}x "
              "fewer evaluations")
        # How sure is the reference itself? z-score of each of its top-k against its (k+1)-th filter.
        se = ref.stderr
        z = (ref.values[order[:k]] - ref.values[order[k]]) / (se[order[:k]] ** 2 + se[order[k]] ** 2).sqrt()
        print(f"reference top-{k} values {[round(float(ref.values[i]), 4) for i in order[: k + 3]]} (ranks 1-{k + 3})")
        print(f"reference's own separation of its top-{k} from rank {k + 1}: {int((z > 2).sum())} of {k} at z > 2; "
              f"z = {[round(float(v), 1) for v in z]}")
        sure = set(order[:k][z > 2].tolist())
        print(f"tmab's top-{k} contains {len(sure & set(result.top_k.tolist()))} of those {len(sure)}")


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    main()
