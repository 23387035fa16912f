"""Scaffolding every experiment script shares, so a script holds only its study.

- :func:`parser`: one ``argparse`` parser with the flags every script takes (``--seed``, ``--out``, ``--quick``,
  ``--project``, ``--group``, ``--no-wandb``); a script adds its own.
- :func:`parse_args` (``--quick`` settings, SmallCNN ``channels``, the seed lists of :mod:`experiments.seeds`),
  :func:`check_positive`; the repair
  experiments' flags: :func:`add_removal_flags`, :func:`parse_removal_args`.
- :func:`train_model`: the model of an ``nsl-train`` training variant (``nsl/conf/experiment/*.yaml``), fitted
  exactly as the app fits it; :func:`trained_digits`: the digits model with its players and validation images.
- :func:`quiet_trainer`: a Trainer that only trains (scripts measure the model afterwards).
- :func:`ranking_curves` (:func:`removal_rows`, :func:`mean_rows`): metrics after pruning each ranking's first k
  filters (undone after), and their mean over random rankings: the curves of the repair experiments.
- :func:`torch_threads`: pinned torch threads for a benchmark.
- :func:`png_path`, :func:`save_figure`, :func:`report`: the figure, the markdown report and one W&B run, then a line
  saying
  what was written.
- :func:`run_script`: the ``__main__`` entry.

Scripts run from the repository root as modules, e.g. ``python -m experiments.fairness_repair --quick``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from experiments import seeds
from nsl import FilterPlayers, prune_filters
from nsl.data import load_digits_tensors
from nsl.report import parse_counts, report_experiment
from nsl.train import QUIET, compose_config, fit_model

PROJECT = "nsl-experiments"  # the W&B project every experiment logs to
DIGITS_CHANNELS = (24, 32, 48)  # the digits SmallCNN of the paper experiments (104 filters)


def parser(doc: str, name: str, *, quick: str = "tiny smoke setting (small model, seconds)") -> argparse.ArgumentParser:
    """The parser of a script whose module docstring is ``doc``, with the shared flags already added."""
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("outputs") / name, help="where the report and figures go")
    p.add_argument("--project", default=PROJECT, help="W&B project")
    p.add_argument("--group", default=None, help="W&B group")
    p.add_argument("--no-wandb", action="store_true", help="write the files only")
    p.add_argument("--quick", action="store_true", help=quick)
    return p


def parse_args(
    p: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    *,
    quick: Mapping[str, Any] = {},
    quick_channels: tuple[int, ...] = (6, 8, 10),
    positive: Sequence[str] = (),
) -> argparse.Namespace:
    """Parse ``argv``; set ``args.channels`` (SmallCNN's, smaller with ``--quick``); with ``--quick`` apply the
    ``quick`` settings (a value, or a function of the flag's value); check the ``positive`` flags."""
    args = p.parse_args(argv)
    args.channels = quick_channels if args.quick else DIGITS_CHANNELS
    seeded = hasattr(args, "train_seeds")  # the script took seeds.add_seed_flags
    if args.quick:
        # seed lists given explicitly win over --quick's (a test may want two networks in the smoke setting)
        quick_seeds = {k: v for k, v in seeds.QUICK.items() if seeded and getattr(args, k) == p.get_default(k)}
        for key, value in {**quick_seeds, **quick}.items():
            setattr(args, key, value(getattr(args, key)) if callable(value) else value)
    check_positive(args, *positive)
    return seeds.finish_seed_args(args) if seeded else args


def add_removal_flags(p: argparse.ArgumentParser, ks: Sequence[int], *, top_k_help: str, n_random: int) -> None:
    """The flags of a repair experiment: training, TMAB budget, the filters removed (``--ks``), random controls."""
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--top-k", type=int, default=10, help=top_k_help)
    p.add_argument("--max-evals", type=int, default=3000, help="TMAB budget (coalitions evaluated)")
    p.add_argument("--ks", type=str, default=",".join(map(str, ks)), help="filters removed, comma-separated")
    p.add_argument("--n-random", type=int, default=n_random, help="random removals averaged for the control")


def parse_removal_args(
    p: argparse.ArgumentParser, argv: Sequence[str] | None, *, quick: Mapping[str, Any], positive: Sequence[str] = (),
    check_filters: bool = True,
) -> argparse.Namespace:
    """:func:`parse_args` for :func:`add_removal_flags`: ``--ks`` parsed, and (with ``check_filters``, for the
    digits SmallCNN) no more removals than filters."""
    args = parse_args(p, argv, quick={"ks": "0,1,3", **quick}, quick_channels=(4, 6, 8),
                      positive=("epochs", "top_k", "max_evals", "n_random", *positive))
    args.ks = parse_counts(args.ks)
    if check_filters and args.ks[-1] > sum(args.channels):
        raise ValueError(f"--ks asks to remove {args.ks[-1]} filters; the model has only {sum(args.channels)}.")
    return args


def check_positive(args: argparse.Namespace, *names: str) -> None:
    """Every named flag is a positive integer; ValueError naming the flag and its value otherwise."""
    for name in names:
        value = getattr(args, name)
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')}={value} must be a positive integer.")


def train_model(
    experiment: str, *, epochs: int, seed: int, channels: Sequence[int] | None = None, overrides: Sequence[str] = ()
) -> tuple[L.LightningModule, L.LightningDataModule]:
    """Fit the model of the training variant ``experiment`` for ``epochs`` epochs with ``seed`` (weights, data
    order and data split), with SmallCNN ``channels`` when given; returns the model in eval mode and its data."""
    options = [f"experiment={experiment}", f"trainer.max_epochs={epochs}", f"seed={seed}", f"data.seed={seed}"]
    if channels is not None:
        options.append(f"model.net.channels=[{','.join(map(str, channels))}]")
    return fit_model(compose_config([*options, *overrides]))


def trained_digits(args: argparse.Namespace) -> tuple[L.LightningModule, FilterPlayers, Tensor, Tensor]:
    """The ``digits_cnn`` model trained as the flags say (``--epochs``, ``--seed``, ``channels``), its filters as
    players, and the first ``--eval-size`` validation images and labels it is analysed on."""
    model, _ = train_model("digits_cnn", epochs=args.epochs, seed=args.seed, channels=args.channels)
    x, y = load_digits_tensors("val", val_size=args.eval_size, seed=args.seed)
    return model, FilterPlayers(model), x, y


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads (benchmarks pin them), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def png_path(args: argparse.Namespace, name: str) -> Path:
    """``<--out>/<name>.png``, with the folder made."""
    args.out.mkdir(parents=True, exist_ok=True)
    return args.out / f"{name}.png"


def quiet_trainer(max_epochs: int, **overrides: Any) -> L.Trainer:
    """A CPU Trainer without logger, checkpoints, progress bar or model summary (``overrides`` win)."""
    return L.Trainer(**{"max_epochs": max_epochs, "accelerator": "cpu", **QUIET, **overrides})


def removal_rows(
    model: nn.Module, players: FilterPlayers, order: Tensor, ks: Sequence[int], measure: Callable[[], dict[str, float]]
) -> list[dict[str, float]]:
    """``measure()`` after zeroing the first k filters of ``order`` with ``prune_filters`` (undone after), per k."""
    rows = []
    for k in ks:
        pruned = prune_filters(model, players, order[:k]) if k else None
        try:
            rows.append(measure())
        finally:
            if pruned is not None:
                pruned.undo()
    return rows


def mean_rows(runs: Sequence[list[dict[str, float]]]) -> list[dict[str, float]]:
    """Entry-wise mean of several :func:`removal_rows` outputs (e.g. over random orders)."""
    return [{key: sum(r[i][key] for r in runs) / len(runs) for key in runs[0][i]} for i in range(len(runs[0]))]


def ranking_curves(
    model: nn.Module,
    players: FilterPlayers,
    rankings: Mapping[str, Tensor],
    ks: Sequence[int],
    measure: Callable[[], dict[str, float]],
    *,
    n_random: int,
    seed: int,
) -> dict[str, list[dict[str, float]]]:
    """:func:`removal_rows` for each ranking, and under ``"random"`` their mean over ``n_random`` random orders."""
    curves = {name: removal_rows(model, players, order, ks, measure) for name, order in rankings.items()}
    randoms = random_orders(len(players), n_random, seed)
    curves["random"] = mean_rows([removal_rows(model, players, order, ks, measure) for order in randoms])
    return curves


def random_orders(n_players: int, count: int, seed: int) -> list[Tensor]:
    """``count`` random orders of the players from one generator seeded with ``seed`` (the global RNG untouched)."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randperm(n_players, generator=generator) for _ in range(count)]


def save_figure(fig: Figure, path: Path) -> Path:
    """Lay out, write and close a pyplot figure; returns ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plain_config(args: argparse.Namespace, drop: Sequence[str] = ()) -> dict[str, Any]:
    """The parsed flags as W&B config values: tuples as lists, paths as strings."""
    config = {}
    for key, value in vars(args).items():
        if key in drop:
            continue
        config[key] = list(value) if isinstance(value, tuple) else str(value) if isinstance(value, Path) else value
    return config


def report(
    name: str,
    args: argparse.Namespace,
    start: float,
    *,
    tables: Mapping[str, tuple[Sequence[str], Sequence[Sequence[Any]]]],
    images: Mapping[str, Path],
    summary: Mapping[str, float],
    header: str,
    config: Mapping[str, Any] | None = None,
    floats: str = ".3f",
) -> dict[str, Any]:
    """Write ``<out>/<name>.md`` and log tables, images, summary and flags to one W&B run (unless ``--no-wandb``);
    print the report and what was written. Returns ``{"markdown": path, "wandb_dir": run dir or None}``."""
    paths = report_experiment(
        name, args.out, tables=tables, images=images, summary=summary,
        config=plain_config(args) if config is None else config, header=header, project=args.project,
        group=args.group, wandb=not args.no_wandb, floats=floats,
    )
    print("\n" + paths["markdown"].read_text())
    written = ", ".join(str(p) for p in [paths["markdown"], *images.values()])
    print(f"\nwrote {written} ({time.perf_counter() - start:.0f} s in all)")
    return paths


def run_script(main: Callable[[], Any]) -> None:
    """The ``__main__`` entry of a script: TF32-style matmuls where the hardware has them, then ``main()``."""
    torch.set_float32_matmul_precision("high")
    main()


def parallel_map(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int, label: str = "runs") -> list[Any]:
    """``[fn(job) for job in jobs]`` on ``workers`` spawned processes (in order), printing progress as jobs end.

    The benchmarks run many independent seeded jobs; spawn (not fork) keeps torch's threads sane in workers.
    """
    results: list[Any] = []
    start = time.perf_counter()
    step = max(1, len(jobs) // 20)

    def done(i: int) -> None:
        if (i + 1) % step == 0 or i + 1 == len(jobs):
            print(f"  {i + 1}/{len(jobs)} {label} done, {time.perf_counter() - start:.0f} s", flush=True)

    if workers == 1:
        for i, job in enumerate(jobs):
            results.append(fn(job))
            done(i)
        return results
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for i, result in enumerate(pool.imap(fn, jobs, chunksize=1)):
            results.append(result)
            done(i)
    return results
