"""Interactions among the top culprit filters of the digits CNN, and an audit of cheap importance scores.

Trains the default digits model (``Classifier(SmallCNN())``, 15 epochs, real Lightning Trainer, CPU), builds
the accuracy game over 300 validation images, ranks the filters (by default TMAB-Shapley under a budget of
``--max-evals`` evaluations, about two minutes on 2 CPU cores; ``--rank loo``: leave-one-out, N + 1
evaluations, about 20 s in all), restricts the game to the top k with every other filter on, computes its
2^k Harsanyi dividends exactly, and reports

- the pairwise Shapley interaction index among the culprits (matrix printed, heatmap saved as PNG);
- the audit: leave-one-out, gradient×activation and integrated gradients on channel gates (the multilinear
  extension of the sub-game), Shapley and Banzhaf, as allocations of the dividends, against the three
  principles (alone → i; only to members; exactly once).

Outputs go to ``--out`` (default ``outputs/interactions_audit/``): ``pairwise_interactions.png``,
``pairwise_interactions.csv``, ``audit.md``, ``summary.json``.

    python -m experiments.interactions_audit
    python -m experiments.interactions_audit --rank loo --top-k 10
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from experiments import common
from nsl import AccuracyGame, FilterPlayers, tmab
from nsl.baselines import game_leave_one_out
from nsl.data import load_digits_tensors
from nsl.games import METRICS
from nsl.interactions import (
    PairwiseInteractions,
    SubGame,
    audit,
    harsanyi,
    largest_dividends,
    order_profile,
    pairwise_from_dividends,
    plot_interactions,
    shapley_from_dividends,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--top-k", type=int, default=8, help="culprits whose interactions are computed")
    parser.add_argument("--rank", choices=["tmab", "loo"], default="tmab", help="how the culprits are found")
    parser.add_argument("--max-evals", type=int, default=6000, help="evaluation budget of --rank tmab")
    parser.add_argument("--metric", default="accuracy", choices=list(METRICS))
    parser.add_argument("--eval-size", type=int, default=300, help="validation images in the game")
    parser.add_argument("--ig-steps", type=int, default=20, help="Riemann steps of integrated gradients")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs/interactions_audit"))
    args = parser.parse_args()
    if not 2 <= args.top_k <= 16:
        parser.error("--top-k must lie in [2, 16]")

    start = time.perf_counter()
    model, _ = common.train_model("digits_cnn", epochs=args.epochs, seed=args.seed)
    x, y = load_digits_tensors("val", val_size=args.eval_size, seed=args.seed)
    players = FilterPlayers(model)
    game = AccuracyGame(model, players, x, y, metric=args.metric)
    print(f"trained SmallCNN in {time.perf_counter() - start:.1f} s: {len(players)} filters, "
          f"{args.metric} {game.full_value():.4f} on {len(x)} validation images")

    loo = game_leave_one_out(game)
    if args.rank == "tmab":
        result = tmab(game, args.top_k, max_evals=args.max_evals, seed=args.seed)
        culprits = result.top_k.tolist()
        how = (f"TMAB-Shapley (top_k={args.top_k}, {result.n_evals} evaluations, "
               f"converged={result.converged})")
        score = result.values
    else:
        culprits = torch.argsort(loo, descending=True, stable=True)[: args.top_k].tolist()
        how = f"leave-one-out (N + 1 = {len(players) + 1} evaluations), ties broken by filter index"
        score = loo
    names = [players.names[i] for i in culprits]
    print(f"culprits: top {args.top_k} by {how}")

    sub = SubGame(game, culprits)  # every other filter stays on
    t0 = time.perf_counter()
    dividends = harsanyi(sub)
    seconds = time.perf_counter() - t0
    k = args.top_k
    v_all, v_none = float(dividends.sum()), float(dividends[0])
    print(f"sub-game: {k} culprits, {2**k} coalitions evaluated in {seconds:.1f} s; "
          f"v(all culprits on) = {v_all:.4f}, v(all {k} off) = {v_none:.4f}")
    phi = shapley_from_dividends(dividends)
    print(f"\n{'filter':<18}{'rank score':>11}{'LOO':>9}{'Shapley':>9}   (Shapley within the sub-game)")
    for i, name in enumerate(names):
        print(f"{name:<18}{float(score[culprits[i]]):>11.4f}{float(loo[culprits[i]]):>9.4f}{float(phi[i]):>9.4f}")
    profile = order_profile(dividends)
    orders = ", ".join(f"{o}: {float(v):.3f}" for o, v in enumerate(profile) if o)
    print(f"\nsum of |dividends| by order: {orders}")
    print("largest interactions (order >= 2): " + "; ".join(
        "{" + ", ".join(names[i] for i in s) + f"}} {v:+.4f}" for s, v in largest_dividends(dividends, 5, 2)))

    matrix = pairwise_from_dividends(dividends)
    pairs = PairwiseInteractions(matrix, torch.zeros_like(matrix), culprits, names, "exact", 2**k)
    print("\npairwise Shapley interaction index (diagonal: Shapley value)")
    print(pairs.format())

    table = audit(dividends, names=names, ig_steps=args.ig_steps)
    markdown = table.to_markdown()
    print("\naudit of attribution methods on the culprit sub-game\n")
    print(markdown)

    args.out.mkdir(parents=True, exist_ok=True)
    fig = plot_interactions(matrix, names, title=f"Pairwise interactions, top {k} filters ({args.metric})")
    fig.savefig(args.out / "pairwise_interactions.png", dpi=120)
    with open(args.out / "pairwise_interactions.csv", "w") as f:
        f.write("filter," + ",".join(names) + "\n")
        for name, row in zip(names, matrix.tolist(), strict=True):
            f.write(name + "," + ",".join(f"{v:.6g}" for v in row) + "\n")
    (args.out / "audit.md").write_text(
        f"# Attribution audit: top {k} filters of SmallCNN on digits ({args.metric})\n\n"
        f"Culprits by {how}; every other filter on.\n\n{markdown}\n"
    )
    summary = {
        "culprits": names,
        "rank": args.rank,
        "metric": args.metric,
        "full_value": game.full_value(),
        "subgame_all_on": v_all,
        "subgame_all_off": v_none,
        "shapley": phi.tolist(),
        "pairwise": matrix.tolist(),
        "audit": table.as_dicts(),
        "seconds": time.perf_counter() - start,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nwrote {args.out}/pairwise_interactions.png, pairwise_interactions.csv, audit.md, summary.json "
          f"in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    common.run_script(main)
