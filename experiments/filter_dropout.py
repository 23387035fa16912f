"""Filter dropout (paper Fig. 4): are networks trained with filter dropout less dependent on a few filters?

Runs the Hydra multirun ``nsl-train -m experiment=filter_dropout repair=none,filter_dropout`` (the same digits
CNN trained with and without filter dropout, each analysed by the NeuronShapley callback with the accuracy
game; both runs in one W&B group), then reads both run folders: the Shapley values the callback saved
(``neuron_shapley/accuracy.pt``) and the analysed model (``checkpoints/last.ckpt``, rebuilt from the run's own
``.hydra/config.yaml``). On the TEST split it measures each model's accuracy with all filters, without its
top-30 filters, without its lowest-valued half, and without 30 random filters (mean of ``--n-random``), and
plots both value distributions. Writes ``filter_dropout.md`` and ``filter_dropout.png`` to ``--out`` and logs
them to W&B in the multirun's group.

    python -m experiments.filter_dropout
    python -m experiments.filter_dropout --quick                       # smoke setting
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

from experiments import common
from nsl import FilterPlayers
from nsl.data import load_digits_tensors
from nsl.games import AccuracyGame
from nsl.models import Classifier
from nsl.shapley import ShapleyResult

NAME = "filter_dropout"
REPAIRS = ("none", "filter_dropout")
QUICK = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=4",
    "model.net.channels=[4,6,8]",
    "callbacks.neuron_shapley.max_evals=60",
    "callbacks.neuron_shapley.eval_size=64",
    "callbacks.neuron_shapley.top_k=3",
    "callbacks.neuron_shapley.curve_steps=3",
]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = common.parser(__doc__, NAME, quick="tiny smoke setting (small model, 4 batches)")
    p.add_argument("--remove-top", type=int, default=30, help="top-valued filters removed")
    p.add_argument("--n-random", type=int, default=5, help="random removals averaged for the control")
    p.add_argument("--sweep-dir", type=Path, default=None, help="read this finished multirun instead of running")
    p.add_argument("overrides", nargs="*", help="more nsl-train overrides, e.g. callbacks.filter_dropout.p=0.2")
    args = p.parse_args(argv)
    if args.quick:
        args.remove_top, args.n_random = 5, 2
    common.check_positive(args, "remove_top", "n_random")
    if args.sweep_dir is not None and not args.sweep_dir.is_dir():
        raise ValueError(f"--sweep-dir={args.sweep_dir} is not a folder; give a finished multirun's folder.")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise ValueError(f"overrides {bad} are not key=value; e.g. trainer.max_epochs=5.")
    return args


def run_sweep(sweep_dir: Path, overrides: list[str], wandb: bool) -> None:
    """Both training runs as one Hydra multirun (a subprocess of the ``nsl-train`` app) into ``sweep_dir``."""
    cmd = [
        sys.executable, "-m", "nsl.train", "-m", "experiment=filter_dropout", f"repair={','.join(REPAIRS)}",
        f"hydra.sweep.dir={sweep_dir}", "trainer.enable_progress_bar=false",
        *([] if wandb else ["logger=none"]), *overrides,
    ]
    print("running: nsl-train " + " ".join(cmd[3:]), flush=True)
    env = {**os.environ, "WANDB_SILENT": "true"}
    env.setdefault("WANDB_MODE", "offline")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nsl-train failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    print("\n".join(line for line in proc.stdout.splitlines() if line.startswith("  ") or "finished" in line))


def load_run(job_dir: Path) -> dict[str, Any]:
    """A finished job's repair choice, config, analysed model (last checkpoint) and accuracy-game result."""
    cfg = OmegaConf.load(job_dir / ".hydra" / "config.yaml")
    choices = OmegaConf.load(job_dir / ".hydra" / "hydra.yaml").hydra.runtime.choices
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
    return {
        "repair": choices.repair,
        "cfg": cfg,
        "model": model.eval(),
        "result": ShapleyResult.load(result_path),
        "wandb": sorted(job_dir.glob("wandb/offline-run-*")),
    }


def half_mass(values: torch.Tensor) -> int:
    """How many top filters hold half of the total positive value (larger = value spread over more filters)."""
    positive = values.clamp(min=0).sort(descending=True).values
    if float(positive.sum()) <= 0:
        return 0
    return int((positive.cumsum(0) < 0.5 * positive.sum()).sum()) + 1


def measure(run: dict[str, Any], remove_top: int, n_random: int, seed: int) -> dict[str, float]:
    """Test accuracy of the run's model: full, without its top filters, its lowest half, random filters."""
    data = run["cfg"].data
    x, y = load_digits_tensors("test", val_size=data.val_size, test_size=data.test_size, seed=data.seed)
    model, result = run["model"], run["result"]
    players = FilterPlayers(model)
    if players.n_players != result.n_players:
        raise ValueError(f"the result has {result.n_players} players, the checkpoint's model {players.n_players}.")
    n = players.n_players
    if remove_top > n // 2:
        raise ValueError(f"--remove-top={remove_top} is more than half of the model's {n} filters.")
    game = AccuracyGame(model, players, x, y)
    ranking = result.ranking()
    present = torch.ones(3 + n_random, n, dtype=torch.bool)
    present[1, ranking[:remove_top]] = False
    present[2, ranking[n - n // 2 :]] = False
    for r, order in enumerate(common.random_orders(n, n_random, seed)):
        present[3 + r, order[:remove_top]] = False
    acc = game(present)
    return {
        "full": float(acc[0]),
        "top": float(acc[1]),
        "bottom_half": float(acc[2]),
        "random": float(acc[3:].mean()),
        "half_mass": float(half_mass(result.values)),
        "max_value": float(result.values.max()),
        "n_evals": float(result.n_evals),
        "converged": float(result.converged),
        "n": float(n),
    }


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    """Value histograms of both runs on shared bins (left) and values sorted by rank (right)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    values = [run["result"].values.double() for run in runs]
    lo, hi = min(float(v.min()) for v in values), max(float(v.max()) for v in values)
    bins = torch.linspace(lo, hi if hi > lo else lo + 1e-6, 31).tolist()
    for run, v, color in zip(runs, values, ("tab:gray", "tab:blue"), strict=False):
        label = "filter dropout" if run["repair"] == "filter_dropout" else "baseline"
        left.hist(v.tolist(), bins=bins, alpha=0.55, color=color, label=label)
        right.plot(range(1, len(v) + 1), v.sort(descending=True).values.tolist(), color=color, label=label)
    left.set(xlabel="Shapley value (accuracy game)", ylabel="filters", title="value histogram", yscale="log")
    right.set(xlabel="filter rank", ylabel="Shapley value", title="values sorted")
    right.axhline(0, color="black", linewidth=0.6)
    left.legend()
    right.legend()
    common.save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run (or read) the multirun and compare the two runs; returns the measurements and report paths."""
    args = parse(argv)
    start = time.perf_counter()
    sweep = args.sweep_dir
    if sweep is None:
        sweep = (args.out / "multiruns" / time.strftime("%Y-%m-%d_%H-%M-%S")).resolve()
        run_sweep(sweep, [*(QUICK if args.quick else []), *args.overrides], wandb=not args.no_wandb)
    jobs = sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())
    runs = sorted((load_run(j) for j in jobs), key=lambda r: str(r["repair"] != "none"))
    if [r["repair"] for r in runs] != list(REPAIRS):
        raise ValueError(f"{sweep} holds runs {[r['repair'] for r in runs]}; expected one each of {REPAIRS}.")
    stats = {r["repair"]: measure(r, args.remove_top, args.n_random, args.seed) for r in runs}
    n = int(stats["none"]["n"])
    columns = ["run", "test acc", f"top-{args.remove_top} removed", f"lowest {n // 2} removed",
               f"{args.remove_top} random removed (mean of {args.n_random})", "filters holding half the value",
               "max value", "tmab evals", "converged"]
    labels = {"none": "baseline", "filter_dropout": "filter dropout"}
    rows = [
        [labels[name], s["full"], s["top"], s["bottom_half"], s["random"], int(s["half_mass"]), s["max_value"],
         int(s["n_evals"]), bool(s["converged"])]
        for name, s in stats.items()
    ]
    tables = {"Test accuracy after removing filters, by each run's own Shapley ranking": (columns, rows)}
    base, drop = stats["none"], stats["filter_dropout"]
    group = f"{runs[0]['cfg'].task_name}-{sweep.name}"
    header = (
        f"## Filter dropout (Fig. 4)\n\n"
        f"`nsl-train -m experiment=filter_dropout repair=none,filter_dropout`: SmallCNN ({n} filters) on digits, "
        f"{runs[0]['cfg'].trainer.max_epochs} epochs, with and without filter dropout; accuracy game on "
        f"{runs[0]['cfg'].callbacks.neuron_shapley.eval_size} validation images, tmab with "
        f"{runs[0]['cfg'].callbacks.neuron_shapley.max_evals} evaluations per run; W&B group `{group}`. Accuracy "
        f"is measured on the test split with each model's own ranking.\n\n"
        f"Removing the top {args.remove_top}: baseline {base['full']:.3f} → {base['top']:.3f}, filter dropout "
        f"{drop['full']:.3f} → {drop['top']:.3f}. Half of the positive value sits in {int(base['half_mass'])} "
        f"(baseline) vs {int(drop['half_mass'])} (dropout) filters."
    )

    png = common.png_path(args, NAME)
    plot(runs, png)
    summary = {f"{labels[k].replace(' ', '_')}/{m}": v for k, s in stats.items() for m, v in s.items()}
    summary["seconds"] = time.perf_counter() - start
    config = {"sweep_dir": str(sweep), "remove_top": args.remove_top, "n_random": args.n_random,
              "quick": args.quick, "overrides": list(args.overrides)}
    # The report joins the training runs: their W&B project and group, unless the flags say otherwise.
    if args.project == common.PROJECT:
        args.project = OmegaConf.select(runs[0]["cfg"], "logger.wandb.project", default=common.PROJECT)
    args.group = args.group or group
    paths = common.report(NAME, args, start, tables=tables, images={"value_histograms": png}, summary=summary,
                   header=header, config=config)
    return {"stats": stats, "sweep_dir": sweep, "runs": runs, "group": group, **paths}


if __name__ == "__main__":
    common.run_script(main)
