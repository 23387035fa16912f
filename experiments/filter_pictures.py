"""Filter pictures on digits (paper Fig. 1): which images drive the filters that Neuron Shapley ranks highest?

Trains the default digits CNN, finds the top filters of the accuracy game and of one class game (``--digit``)
with TMAB-Shapley, and for each of those filters shows the evaluation images that activate it most (mean
activation of its channel where the players mask it, i.e. after its BatchNorm), upscaled from 8×8, titled with
the filter's name and Shapley value. The table lists the labels of each filter's top images and the share of the
commonest label among them (1.0 = the filter responds to one digit only). Writes ``filter_pictures.md`` and
``filter_pictures.png`` to ``--out`` and logs both to W&B (offline unless ``WANDB_MODE=online``).

    python -m experiments.filter_pictures
    python -m experiments.filter_pictures --quick   # smoke setting, seconds
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from experiments import common
from nsl import AccuracyGame, ClassGame, FilterPlayers, tmab
from nsl.players import PlayerLayer, preserve_mode
from nsl.shapley import ShapleyResult

NAME = "filter_pictures"
UPSCALE = 4  # 8×8 digits shown as 32×32, nearest neighbour


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = common.parser(__doc__, NAME, quick="tiny smoke setting (small model, few epochs)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--eval-size", type=int, default=300, help="validation images in the games and pictures")
    p.add_argument("--digit", type=int, default=3, help="class of the class-specific game (0-9)")
    p.add_argument("--top", type=int, default=6, help="top filters pictured per game")
    p.add_argument("--images", type=int, default=8, help="most-activating images shown per filter")
    p.add_argument("--top-k", type=int, default=10, help="top-k that TMAB separates")
    p.add_argument("--max-evals", type=int, default=3000, help="TMAB budget per game (coalitions evaluated)")
    quick = {"epochs": 3, "eval_size": 80, "max_evals": 200, "top": lambda n: min(n, 3),
             "images": lambda n: min(n, 4), "top_k": lambda k: min(k, 3)}
    args = common.parse_args(p, argv, quick=quick, positive=("epochs", "eval_size", "top", "images", "top_k"))
    check(args)
    return args


def check(args: argparse.Namespace) -> None:
    """Reject settings that cannot work before anything is trained."""
    if not 0 <= args.digit <= 9:
        raise ValueError(f"--digit {args.digit} is not a digits class; use 0-9.")
    common.check_positive(args, "max_evals")
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

    handles = [modules[layer.mask_at].register_forward_hook(make(i, layer)) for i, layer in enumerate(players.layers)]
    try:
        with preserve_mode(model):
            model.eval()
            for start in range(0, len(inputs), batch_size):
                model(inputs[start : start + batch_size])
    finally:
        for h in handles:
            h.remove()
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
    common.save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Rank filters on the two games and picture them; returns the rows and files (for tests and notebooks)."""
    args = parse(argv)
    start = time.perf_counter()
    model, players, x, y = common.trained_digits(args)
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
    paths = common.report(NAME, args, start, tables={"top_filters": (columns, rows)}, images={"filter_pictures": png},
                   summary=summary, header=header)
    return {"rows": rows, "columns": columns, "share": share, "results": results, "activations": acts,
            "labels": y, "model": model, **paths}


if __name__ == "__main__":
    common.run_script(main)
