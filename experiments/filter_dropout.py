"""Filter dropout (paper Fig. 4): do networks trained with filter dropout depend less on a few filters?

Runs one Hydra multirun of the ``nsl-train`` app over dropout rates and training seeds, all runs in one W&B group::

    nsl-train -m experiment=filter_dropout repair=filter_dropout \
        callbacks.filter_dropout.p=0,0.05,0.1,0.2,0.3 seed=0,1,2

(``p = 0`` is the baseline: it trains bitwise as without the dropout callback). Each run's NeuronShapley callback
plays the accuracy game at fit end with the first estimator seed; this script reads every run folder (the saved
``neuron_shapley/accuracy.pt`` and ``checkpoints/last.ckpt``, the model the callback analysed, rebuilt from the
run's own ``.hydra/config.yaml``) and runs the same estimator on the same game with the other estimator seeds.
Per run and estimator seed, on the TEST split: accuracy with all filters, after removing the top 10/20/30 filters
of that ranking, after removing 30 random filters (mean of ``--n-random``) and the lowest-valued half; and how
evenly the value is spread: the filters holding half of the total |value| and the Gini coefficient of |value|.
Every cell is mean ± sd over training seeds × estimator seeds. Writes ``filter_dropout.md`` and
``filter_dropout.png`` to ``--out`` and logs them to W&B in the multirun's group.

    python -m experiments.filter_dropout                      # digits SmallCNN (104 filters)
    python -m experiments.filter_dropout --data shapes        # the wide CNN on generated shapes (240 filters)
    python -m experiments.filter_dropout --quick              # smoke setting
    python -m experiments.filter_dropout --sweep-dir outputs/.../multiruns/<time>   # re-read a finished sweep
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from experiments import common, seeds
from nsl import FilterPlayers, tmab
from nsl.games import AccuracyGame
from nsl.models import Classifier
from nsl.report import parse_counts
from nsl.report.compare import gini, half_mass
from nsl.shapley import ShapleyResult

NAME = "filter_dropout"
EXPERIMENTS = {"digits": "filter_dropout", "shapes": "filter_dropout_shapes"}
PS = "0.05,0.1,0.2,0.3"
REMOVED = "10,20,30"
QUICK = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=4",
    "callbacks.neuron_shapley.max_evals=60",
    "callbacks.neuron_shapley.eval_size=64",
    "callbacks.neuron_shapley.top_k=3",
    "callbacks.neuron_shapley.curve_steps=3",
]
QUICK_CHANNELS = {"digits": "[4,6,8]", "shapes": "[4,6,8,10]"}
SPREAD = ("half_mass", "gini", "max_value")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = common.parser(__doc__, NAME, quick="tiny smoke setting (small model, 4 batches, one rate)")
    seeds.add_seed_flags(p)
    p.add_argument("--data", choices=sorted(EXPERIMENTS), default="digits", help="digits SmallCNN or shapes wide CNN")
    p.add_argument("--ps", default=PS, help="dropout rates swept next to the baseline p = 0, comma-separated")
    p.add_argument("--removed", default=REMOVED, help="top filters removed, comma-separated (the last also at random)")
    p.add_argument("--n-random", type=int, default=5, help="random removals averaged per run")
    p.add_argument("--sweep-dir", type=Path, default=None, help="read this finished multirun instead of running")
    p.add_argument("overrides", nargs="*", help="more nsl-train overrides, e.g. trainer.max_epochs=10")
    quick = {"n_random": 2, "removed": lambda v: "2,4,6" if v == REMOVED else v,
             "ps": lambda v: "0.2" if v == PS else v}
    args = common.parse_args(p, argv, quick=quick, positive=("n_random",))
    args.removed = parse_counts(args.removed, "--removed")
    if args.removed[0] < 1:
        raise ValueError(f"--removed={args.removed} must count at least one filter.")
    try:
        args.ps = tuple(float(x) for x in args.ps.split(","))
    except ValueError:
        raise ValueError(f"--ps={args.ps!r} must be comma-separated dropout rates such as 0.05,0.1.") from None
    if not all(0 < x < 1 for x in args.ps) or len(set(args.ps)) != len(args.ps):
        raise ValueError(f"--ps={args.ps} must be distinct rates in (0, 1) (the baseline p = 0 is always run).")
    if args.sweep_dir is not None and not args.sweep_dir.is_dir():
        raise ValueError(f"--sweep-dir={args.sweep_dir} is not a folder; give a finished multirun's folder.")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise ValueError(f"overrides {bad} are not key=value; e.g. trainer.max_epochs=5.")
    return args


def sweep_overrides(args: argparse.Namespace) -> list[str]:
    """The multirun's overrides: rates (with the baseline 0), training seeds, the callback's estimator seed."""
    rates = ",".join(str(p) for p in (0.0, *args.ps))
    quick = [*QUICK, f"model.net.channels={QUICK_CHANNELS[args.data]}"] if args.quick else []
    if args.quick and args.data == "shapes":
        quick.append("data.train_size=200")
    return [f"experiment={EXPERIMENTS[args.data]}", "repair=filter_dropout", f"callbacks.filter_dropout.p={rates}",
            f"seed={','.join(map(str, args.train_seeds))}",
            f"callbacks.neuron_shapley.seed={args.estimator_seeds[0]}", *quick, *args.overrides]


def run_sweep(sweep_dir: Path, overrides: list[str], wandb: bool) -> None:
    """The runs as one Hydra multirun (a subprocess of the ``nsl-train`` app) into ``sweep_dir``."""
    cmd = [sys.executable, "-m", "nsl.train", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}",
           "trainer.enable_progress_bar=false", *([] if wandb else ["logger=none"])]
    print("running: nsl-train " + " ".join(cmd[3:]), flush=True)
    env = {**os.environ, "WANDB_SILENT": "true"}
    env.setdefault("WANDB_MODE", "offline")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nsl-train failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def load_run(job_dir: Path) -> dict[str, Any]:
    """A finished job's rate, seed, config, analysed model (last checkpoint) and accuracy-game result."""
    cfg = OmegaConf.load(job_dir / ".hydra" / "config.yaml")
    model: Classifier = instantiate(cfg.model)
    ckpt = job_dir / "checkpoints" / "last.ckpt"
    result_path = job_dir / "neuron_shapley" / "accuracy.pt"
    for path in (ckpt, result_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: was {job_dir} run with callbacks=default and game=accuracy?")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    if state["epoch"] != cfg.trainer.max_epochs - 1:
        raise ValueError(
            f"{ckpt} is from epoch {state['epoch']}, not the last one ({cfg.trainer.max_epochs - 1}) that the "
            "callback analysed; run with callbacks.model_checkpoint.monitor=null (as experiment=filter_dropout does)."
        )
    model.load_state_dict(state["state_dict"])
    model.eval()
    p = float(OmegaConf.select(cfg, "callbacks.filter_dropout.p", default=0.0))
    players = FilterPlayers(model)
    data = instantiate(cfg.data)
    return {"p": p, "seed": int(cfg.seed), "cfg": cfg, "model": model, "players": players, "data": data,
            "test_game": AccuracyGame(model, players, *data.tensors("test")[:2]),
            "result": ShapleyResult.load(result_path), "wandb": sorted(job_dir.glob("wandb/offline-run-*"))}


def callback_game(run: dict[str, Any]) -> AccuracyGame:
    """The accuracy game the run's callback played: the first ``eval_size`` validation examples of its data."""
    x, y = run["data"].tensors("val")[:2]
    size = run["cfg"].callbacks.neuron_shapley.eval_size
    return AccuracyGame(run["model"], run["players"], x[:size], y[:size])


def estimator_results(run: dict[str, Any], estimator_seeds: tuple[int, ...]) -> dict[int, ShapleyResult]:
    """The callback's result for the first estimator seed, the same estimator's on the same game for the others."""
    spec = run["cfg"].callbacks.neuron_shapley
    results = {estimator_seeds[0]: run["result"]}
    if len(estimator_seeds) > 1:
        game = callback_game(run)
        for e in estimator_seeds[1:]:
            results[e] = tmab(game, spec.top_k, tail="top", max_evals=spec.max_evals, seed=e)
    return results


def measure(
    run: dict[str, Any], result: ShapleyResult, removed: tuple[int, ...], n_random: int, seed: int
) -> dict[str, float]:
    """Test accuracy of the run's model after removals by ``result``'s ranking, and the spread of its values."""
    game = run["test_game"]
    n = game.n_players
    if n != result.n_players:
        raise ValueError(f"the result has {result.n_players} players, the checkpoint's model {n}.")
    ranking = result.ranking()
    if removed[-1] > n // 2:
        raise ValueError(f"--removed={removed} removes more than half of the model's {n} filters.")
    present = torch.ones(2 + len(removed) + n_random, n, dtype=torch.bool)
    present[1, ranking[n - n // 2:]] = False
    for i, k in enumerate(removed):
        present[2 + i, ranking[:k]] = False
    for r, order in enumerate(common.random_orders(n, n_random, seed)):
        present[2 + len(removed) + r, order[: removed[-1]]] = False
    acc = game(present).tolist()
    out = {"full": acc[0], "bottom_half": acc[1], "random": sum(acc[2 + len(removed):]) / n_random}
    out |= {f"top{k}": acc[2 + i] for i, k in enumerate(removed)}
    values = result.values
    return out | {"half_mass": float(half_mass(values)), "gini": gini(values), "max_value": float(values.max()),
                  "n_evals": float(result.n_evals), "converged": float(result.converged), "n": float(n)}


def plot(
    rates: list[float], rows: dict[float, list[dict[str, Any]]], removed: tuple[int, ...], path: Path, title: str
) -> None:
    """Left: values sorted by rank (mean over runs, ±1 sd band) per rate. Right: test accuracy after removing
    each run's top k filters against k, per rate (bands), random removal dashed."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4), dpi=110)
    cmap = plt.get_cmap("viridis")
    for i, p in enumerate(rates):
        color = "black" if p == 0 else cmap(i / max(1, len(rates) - 1))
        label = "baseline (p = 0)" if p == 0 else f"p = {p:g}"
        runs = rows[p]
        seeds.band(left, list(range(1, len(runs[0]["sorted"]) + 1)), [r["sorted"] for r in runs], color=color,
                   label=label)
        ks = [0, *removed]
        seeds.band(right, ks, [[r["full"], *(r[f"top{k}"] for k in ks[1:])] for r in runs], color=color,
                   label=label, marker="o", ms=3)
        random = [seeds.spread(r[key] for r in runs).mean for key in ("full", "random")]
        right.plot([0, ks[-1]], random, color=color, linestyle="--", linewidth=0.9,
                   label=f"{ks[-1]} random filters (dashed)" if p == 0 else None)
    left.set(xlabel="filter rank", ylabel="Shapley value (accuracy game)", title="values sorted (mean ± sd)",
             xscale="log")
    left.axhline(0, color="black", linewidth=0.5)
    right.set(xlabel="top filters removed", ylabel="test accuracy", title=title, ylim=(-0.02, 1.02))
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    common.save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run (or read) the sweep and compare the rates; returns the per-run measurements and report paths."""
    args = parse(argv)
    start = time.perf_counter()
    sweep = args.sweep_dir
    if sweep is None:
        sweep = (args.out / "multiruns" / time.strftime("%Y-%m-%d_%H-%M-%S")).resolve()
        run_sweep(sweep, sweep_overrides(args), wandb=not args.no_wandb)
    train_seconds = time.perf_counter() - start
    jobs = sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())
    runs = [load_run(j) for j in jobs]
    rates = sorted({r["p"] for r in runs})
    if 0.0 not in rates:
        raise ValueError(f"{sweep} holds no baseline run (callbacks.filter_dropout.p=0); rates found: {rates}.")
    rows: dict[float, list[dict[str, Any]]] = {p: [] for p in rates}
    for run in runs:
        for e, result in estimator_results(run, args.estimator_seeds).items():
            m = measure(run, result, args.removed, args.n_random, seed=1000 * run["seed"] + e)
            rows[run["p"]].append(m | {"train_seed": run["seed"], "estimator_seed": e,
                                       "sorted": result.values.sort(descending=True).values.tolist()})
    keys = ["full", *(f"top{k}" for k in args.removed), "random", "bottom_half", *SPREAD]
    stats = {p: {k: seeds.spread(r[k] for r in rows[p]) for k in keys} for p in rates}
    base = stats[0.0]
    n = int(rows[0.0][0]["n"])
    labels = {"full": "test acc", "random": f"{args.removed[-1]} random removed",
              "bottom_half": f"lowest {n // 2} removed", "half_mass": "half-mass filters",
              "gini": "Gini", "max_value": "max value"}
    labels |= {f"top{k}": f"top {k} removed" for k in args.removed}
    columns = ["p", *(labels[k] for k in keys)]
    table = [[("0 (baseline)" if p == 0 else f"{p:g}"),
              *(format(s[k], ".1f" if k == "half_mass" else ".3f") if p == 0 else
                seeds.mark(s[k], base[k], ".1f" if k == "half_mass" else ".3f") for k in keys)]
             for p, s in stats.items()]
    cfg = runs[0]["cfg"]
    group = f"{cfg.task_name}-{sweep.name}"
    n_runs = {p: len(rows[p]) for p in rates}
    certified = sum(int(r["converged"]) for p in rates for r in rows[p])
    header = (
        f"## Filter dropout (Fig. 4) on {args.data}\n\n"
        f"One multirun, `nsl-train -m experiment={EXPERIMENTS[args.data]} repair=filter_dropout "
        f"callbacks.filter_dropout.p={','.join(f'{p:g}' for p in rates)} seed={','.join(map(str, args.train_seeds))}`"
        f" (W&B group `{group}`): {n} filters, {cfg.trainer.max_epochs} epochs per run; p = 0 trains bitwise as "
        f"without dropout. Accuracy game on {cfg.callbacks.neuron_shapley.eval_size} validation images, tmab "
        f"(top_k={cfg.callbacks.neuron_shapley.top_k}, {cfg.callbacks.neuron_shapley.max_evals} evaluations; "
        f"certified in {certified} of {sum(n_runs.values())} runs): estimator seed {args.estimator_seeds[0]} by the "
        f"callback, the others by this script on the same game. Accuracy on each run's test split after removing "
        f"that run's top filters. Spread of the values: half-mass filters = how many filters (largest first) hold "
        f"half of the total absolute value; Gini = Gini coefficient of the absolute values (0: all equal, larger: "
        f"concentrated). {seeds.seed_note(args)} Bold: differs from the baseline by more than the two spreads."
    )
    png = common.png_path(args, NAME)
    plot(rates, rows, args.removed, png, f"{args.data}: accuracy after removing the top filters")
    summary: dict[str, float] = {"seconds": time.perf_counter() - start, "sweep_seconds": train_seconds}
    for p, s in stats.items():
        for k, v in s.items():
            summary[f"p={p:g}/{k}"] = v.mean
            summary[f"p={p:g}/{k}_sd"] = v.sd
    config = {"sweep_dir": str(sweep), "data": args.data, "ps": list(args.ps), "n_random": args.n_random,
              "removed": list(args.removed),
              "train_seeds": list(args.train_seeds), "estimator_seeds": list(args.estimator_seeds),
              "quick": args.quick, "overrides": list(args.overrides)}
    if args.project == common.PROJECT:  # the report joins the training runs' W&B project and group
        args.project = OmegaConf.select(cfg, "logger.wandb.project", default=common.PROJECT)
    args.group = args.group or group
    tables = {"Test accuracy after removals and spread of the values, per dropout rate": (columns, table)}
    paths = common.report(NAME, args, start, tables=tables, images={"values_and_removals": png}, summary=summary,
                          header=header, config=config)
    return {"stats": stats, "rows": rows, "sweep_dir": sweep, "runs": runs, "group": group, **paths}


if __name__ == "__main__":
    common.run_script(main)
