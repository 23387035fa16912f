"""Removal curves on digits: does Neuron Shapley find the filters that matter better than cheaper scores?

Trains the default digits CNN, ranks its filters by TMAB-Shapley and by every baseline of ``nsl.baselines``
(weight norms, mean activation, Taylor, leave-one-out, integrated gradients over channel gates, random), all on
the same accuracy game on validation images, then removes each ranking's top filters one by one. Prints the
accuracy after 0, 5, 10, 15, 20 and 30 removals and the normalised area under each curve (mean accuracy over
0..max removed; lower = the ranking found the filters that matter), and writes ``removal_curves.md`` and
``removal_curves.png`` to ``--out``.

    python experiments/removal_curves.py
    python experiments/removal_curves.py --quick   # smoke setting, seconds
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path
from typing import Any

import lightning as L
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch

from nsl import AccuracyGame, FilterPlayers, tmab
from nsl.baselines import BASELINES, baseline_result
from nsl.data import DigitsDataModule, load_digits_tensors
from nsl.models import Classifier, SmallCNN
from nsl.report import markdown, removal_curve

ROWS = (0, 5, 10, 15, 20, 30)


def train(epochs: int, seed: int, channels: tuple[int, ...] | None = None) -> Classifier:
    """The digits classifier of experiments/digits_tmab.py (default SmallCNN unless ``channels``)."""
    L.seed_everything(seed, verbose=False)
    model = Classifier(SmallCNN() if channels is None else SmallCNN(channels=channels))
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DigitsDataModule(seed=seed))
    return model.eval()


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--eval-size", type=int, default=300, help="validation images in the game")
    parser.add_argument("--top-k", type=int, default=10, help="top-k that TMAB separates")
    parser.add_argument("--max-evals", type=int, default=2000, help="TMAB budget (coalitions evaluated)")
    parser.add_argument("--max-removed", type=int, default=30)
    parser.add_argument("--ig-steps", type=int, default=32, help="integrated-gradients quadrature points")
    parser.add_argument("--n-random", type=int, default=10, help="random orders averaged for the random curve")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs/removal_curves"))
    parser.add_argument("--quick", action="store_true", help="tiny smoke setting (small model, 1 epoch)")
    args = parser.parse_args(argv)
    args.channels = None
    if args.quick:
        args.epochs, args.eval_size, args.max_evals = 3, 60, 150
        args.max_removed, args.ig_steps, args.n_random, args.channels = 10, 4, 2, (6, 8, 10)
    return args


def auc(values: list[float]) -> float:
    """Trapezoid area under a curve sampled at 0, 1, ..., n removals, divided by n (a mean accuracy)."""
    n = len(values) - 1
    if n == 0:
        return float(values[0])
    return float(sum((a + b) / 2 for a, b in itertools.pairwise(values)) / n)


def plot(curves: dict[str, list[float]], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for name, values in curves.items():
        style = {"color": "gray", "linestyle": "--"} if name.startswith("random") else {}
        lw = 2.5 if name == "tmab" else 1.3
        ax.plot(range(len(values)), values, label=f"{name} (AUC {auc(values):.3f})", linewidth=lw, **style)
    ax.set_xlabel("top-ranked filters removed")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison; returns the curves, AUCs and the markdown table (for tests and notebooks)."""
    args = parse(argv)
    start = time.perf_counter()
    model = train(args.epochs, args.seed, args.channels)
    x, y = load_digits_tensors("val", val_size=args.eval_size, seed=args.seed)
    players = FilterPlayers(model)
    game = AccuracyGame(model, players, x, y)
    full = game.full_value()
    print(f"trained SmallCNN in {time.perf_counter() - start:.1f} s: {len(players)} filters, "
          f"validation accuracy {full:.3f} on {len(x)} images")

    results = {"tmab": tmab(game, args.top_k, max_evals=args.max_evals, seed=args.seed)}
    options: dict[str, dict[str, Any]] = {
        "leave_one_out": {"game": game},
        "integrated_gradients": {"steps": args.ig_steps},
        "random": {"seed": args.seed},
    }
    for name in BASELINES:
        results[name] = baseline_result(name, model, players, x, y, k=args.top_k, **options.get(name, {}))
    for name, result in results.items():
        print(f"  {name:<22}{result.seconds:>7.2f} s {result.n_evals:>6} game evaluations")

    max_removed = min(args.max_removed, len(players))
    curves: dict[str, list[float]] = {}
    random_mean: list[float] = []
    for name, result in results.items():
        n_random = args.n_random if name == "tmab" else 0
        curve = removal_curve(game, result.ranking(), max_removed=max_removed, n_random=n_random, seed=args.seed)
        curves[name] = curve.ranked
        random_mean = curve.random if name == "tmab" else random_mean
    random_key = f"random (mean of {args.n_random})"
    curves[random_key] = random_mean
    areas = {name: auc(values) for name, values in curves.items()}

    names = list(curves)
    rows = [[r, *(curves[n][r] for n in names)] for r in ROWS if r <= max_removed]
    rows.append(["AUC", *(areas[n] for n in names)])
    table = markdown(["removed", *names], rows, floats=".3f")
    header = (
        f"Accuracy on {len(x)} validation images after removing each ranking's top filters "
        f"({len(players)} filters; TMAB: {results['tmab'].n_evals} evaluations, converged="
        f"{results['tmab'].converged}). AUC = mean accuracy over 0..{max_removed} removed, lower is better.\n"
    )
    print("\n" + header + "\n" + table)
    print("\nAUC, best first: " + ", ".join(f"{n} {a:.3f}" for n, a in sorted(areas.items(), key=lambda t: t[1])))

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "removal_curves.md").write_text(header + "\n" + table + "\n")
    plot(curves, args.out / "removal_curves.png", f"digits SmallCNN, {len(players)} filters")
    print(f"\nwrote {args.out / 'removal_curves.md'} and {args.out / 'removal_curves.png'} "
          f"({time.perf_counter() - start:.0f} s in all)")
    return {"auc": areas, "curves": curves, "full_value": full, "table": table}


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    main()
