"""Filter pictures on digits (paper Fig. 1): which images drive the filters that Neuron Shapley ranks highest?

Trains the default digits CNN, finds the top filters of the accuracy game and of one class game (``--digit``)
with TMAB-Shapley, and for each of those filters shows the evaluation images that activate it most (mean
activation of its channel where the players mask it, i.e. after its BatchNorm), upscaled from 8×8, titled with
the filter's name and Shapley value. The table lists the labels of each filter's top images and the share of the
commonest label among them (1.0 = the filter responds to one digit only). Writes ``filter_pictures.md`` and
``filter_pictures.png`` to ``--out`` and logs both to W&B (offline unless ``WANDB_MODE=online``).

    python experiments/filter_pictures.py
    python experiments/filter_pictures.py --quick   # smoke setting, seconds
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nsl import AccuracyGame, ClassGame, FilterPlayers, tmab
from nsl.data import load_digits_tensors
from nsl.players import PlayerLayer
from nsl.report import markdown, report_experiment
from nsl.shapley import ShapleyResult
from nsl.training import train_digits_model

UPSCALE = 4  # 8×8 digits shown as 32×32, nearest neighbour


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--eval-size", type=int, default=300, help="validation images in the games and pictures")
    parser.add_argument("--digit", type=int, default=3, help="class of the class-specific game (0-9)")
    parser.add_argument("--top", type=int, default=6, help="top filters pictured per game")
    parser.add_argument("--images", type=int, default=8, help="most-activating images shown per filter")
    parser.add_argument("--top-k", type=int, default=10, help="top-k that TMAB separates")
    parser.add_argument("--max-evals", type=int, default=3000, help="TMAB budget per game (coalitions evaluated)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs/filter_pictures"))
    parser.add_argument("--no-wandb", action="store_true", help="write the files only")
    parser.add_argument("--quick", action="store_true", help="tiny smoke setting (small model, few epochs)")
    args = parser.parse_args(argv)
    args.channels = (24, 32, 48)
    if args.quick:
        args.epochs, args.eval_size, args.max_evals, args.channels = 3, 80, 200, (6, 8, 10)
        args.top, args.images, args.top_k = min(args.top, 3), min(args.images, 4), min(args.top_k, 3)
    check(args)
    return args


def check(args: argparse.Namespace) -> None:
    """Reject settings that cannot work before anything is trained."""
    if not 0 <= args.digit <= 9:
        raise ValueError(f"--digit {args.digit} is not a digits class; use 0-9.")
    for name in ("epochs", "eval_size", "top", "images", "top_k", "max_evals"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(args, name)} must be >= 1.")
    if args.images > args.eval_size:
        raise ValueError(f"--images {args.images} exceeds the {args.eval_size} evaluation images (--eval-size).")
    n_filters = sum(args.channels)
    if args.top_k >= n_filters or args.top > n_filters:
        raise ValueError(f"--top-k {args.top_k} / --top {args.top} must be below the model's {n_filters} filters.")


@torch.no_grad()
def channel_activations(model: nn.Module, players: FilterPlayers, inputs: Tensor, batch_size: int = 256) -> Tensor:
    """Mean activation of every player's channel per image, shape (B, N), measured where the players mask it.

    Hooks sit on each ``layers[i].mask_at`` module (the BatchNorm after a conv) and are removed again; the
    model's train/eval flags are restored.
    """
    modules = dict(model.named_modules())
    per_layer: list[list[Tensor]] = [[] for _ in players.layers]

    def make(i: int, layer: PlayerLayer):
        def hook(_module: nn.Module, _inputs: tuple, out: Tensor) -> None:
            cdim = layer.channel_dim % out.dim()
            moved = out.detach().movedim(cdim, 1).reshape(out.shape[0], out.shape[cdim], -1)
            per_layer[i].append(moved.double().mean(dim=2).cpu())

        return hook

    modes = [(m, m.training) for m in model.modules()]
    handles = [modules[layer.mask_at].register_forward_hook(make(i, layer)) for i, layer in enumerate(players.layers)]
    try:
        model.eval()
        for start in range(0, len(inputs), batch_size):
            model(inputs[start : start + batch_size])
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
    return torch.cat([torch.cat(chunks) for chunks in per_layer], dim=1)


def top_images(acts: Tensor, filters: list[int], n: int) -> dict[int, list[int]]:
    """Indices of the ``n`` images with the highest mean activation of each filter, strongest first."""
    return {f: torch.topk(acts[:, f], n).indices.tolist() for f in filters}


def plot(blocks: list[dict[str, Any]], images: Tensor, path: Path) -> None:
    """One row per filter: its most-activating images, upscaled; one block of rows per game."""
    n_rows = sum(len(b["filters"]) for b in blocks)
    n_cols = max(len(idx) for b in blocks for idx in b["images"].values())
    fig = plt.figure(figsize=(1.05 * n_cols + 0.4, 1.25 * n_rows + 0.5 * len(blocks)), dpi=100)
    subfigs = fig.subfigures(len(blocks), 1, height_ratios=[len(b["filters"]) + 0.4 for b in blocks], squeeze=False)
    big = F.interpolate(images, scale_factor=UPSCALE, mode="nearest")[:, 0]
    for subfig, block in zip(subfigs[:, 0], blocks, strict=True):
        subfig.suptitle(block["title"], fontsize=10, fontweight="bold")
        axes = subfig.subplots(len(block["filters"]), n_cols, squeeze=False)
        for row, f in enumerate(block["filters"]):
            for col in range(n_cols):
                ax = axes[row, col]
                ax.set_xticks([])
                ax.set_yticks([])
                idx = block["images"][f]
                if col >= len(idx):
                    ax.axis("off")
                    continue
                ax.imshow(big[idx[col]].numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
                ax.set_xlabel(str(block["labels"][f][col]), fontsize=7, labelpad=1)
                if col == 0:
                    ax.set_title(f"{block['names'][f]}  φ={block['values'][f]:.3f}", fontsize=8, loc="left")
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Rank filters on the two games and picture them; returns the rows and files (for tests and notebooks)."""
    args = parse(argv)
    start = time.perf_counter()
    model = train_digits_model(args.epochs, args.seed, args.channels)
    x, y = load_digits_tensors("val", val_size=args.eval_size, seed=args.seed)
    players = FilterPlayers(model)
    games = {
        "accuracy": AccuracyGame(model, players, x, y),
        f"class {args.digit}": ClassGame(model, players, x, y, args.digit),
    }
    print(f"trained SmallCNN in {time.perf_counter() - start:.1f} s: {len(players)} filters, validation accuracy "
          f"{games['accuracy'].full_value():.3f} on {len(x)} images ({int((y == args.digit).sum())} of digit "
          f"{args.digit})")
    results: dict[str, ShapleyResult] = {}
    for name, game in games.items():
        results[name] = tmab(game, args.top_k, max_evals=args.max_evals, seed=args.seed)
        r = results[name]
        print(f"  tmab on the {name} game: {r.n_evals} evaluations, {r.seconds:.1f} s, converged={r.converged}")

    acts = channel_activations(model, players, x)
    blocks, rows = [], []
    for name, result in results.items():
        filters = result.ranking()[: args.top].tolist()
        chosen = top_images(acts, filters, args.images)
        labels = {f: [int(y[i]) for i in chosen[f]] for f in filters}
        block = {
            "title": f"top {args.top} filters of the {name} game (TMAB-Shapley)",
            "filters": filters,
            "images": chosen,
            "labels": labels,
            "names": {f: players.names[f] for f in filters},
            "values": {f: float(result.values[f]) for f in filters},
        }
        blocks.append(block)
        for rank, f in enumerate(filters, 1):
            label, count = Counter(labels[f]).most_common(1)[0]
            rows.append([
                name,
                rank,
                players.names[f],
                float(result.values[f]),
                float(result.stderr[f]),
                " ".join(map(str, labels[f])),
                label,
                count / len(labels[f]),
            ])
    columns = ["game", "rank", "filter", "Shapley value", "stderr", f"labels of top-{args.images} images",
               "commonest", "share"]

    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / "filter_pictures.png"
    plot(blocks, x, png)
    digit_share = [r[-1] for r in rows if r[0] != "accuracy" and r[-2] == args.digit]
    share = {name: sum(r[-1] for r in rows if r[0] == name) / args.top for name in results}
    header = (
        f"Top {args.top} filters of the digits SmallCNN ({len(players)} filters) by TMAB-Shapley on the accuracy game "
        f"and on the digit-{args.digit} class game ({len(x)} validation images), each with the labels of the "
        f"{args.images} validation images that activate it most (mean activation after its BatchNorm). share = "
        f"fraction of those images carrying the commonest label. Mean share: "
        + ", ".join(f"{name} {s:.2f}" for name, s in share.items())
        + f"; {len(digit_share)} of the {args.top} class-game filters respond most to digit {args.digit}.\n"
    )
    summary = {f"{name.replace(' ', '_')}/mean_share": s for name, s in share.items()}
    summary["class_filters_preferring_digit"] = float(len(digit_share))
    report = report_experiment(
        "filter_pictures",
        args.out,
        tables={"top_filters": (columns, rows)},
        images={"filter_pictures": png},
        summary=summary,
        config={k: v for k, v in vars(args).items() if k != "channels"} | {"channels": list(args.channels)},
        header=header,
        wandb=not args.no_wandb,
    )
    print("\n" + header + "\n" + markdown(columns, rows, floats=".3f"))
    print(f"\nwrote {report['markdown']} and {png} ({time.perf_counter() - start:.0f} s in all)")
    return {"rows": rows, "columns": columns, "share": share, "results": results, "activations": acts,
            "labels": y, "model": model, **report}


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    main()
