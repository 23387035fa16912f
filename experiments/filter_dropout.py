"""Filter dropout (paper Fig. 4): do networks trained with filter dropout depend less on a few filters, and which
ranking (certified Neuron Shapley analyses with several semivalues, leave-one-out, integrated gradients, Taylor,
random) finds the filters they still depend on?

Runs one Hydra multirun of the ``nsl-train`` app over dropout rates and training seeds, all runs in one W&B group::

    nsl-train -m experiment=filter_dropout repair=filter_dropout \
        callbacks.filter_dropout.p=0,0.05,0.1,0.2,0.3 seed=0,1,2

(``p = 0`` is the baseline: it trains bitwise as without the dropout callback, and bitwise as
``experiments.removal_curves`` trains the same training seed). This script reads every run folder (the model the
run's callback analysed, ``checkpoints/last.ckpt``, rebuilt from the run's own ``.hydra/config.yaml``) and ranks its
filters on the accuracy game of its first ``--eval-size`` validation images (digits default: the whole 300-image
validation split, the game of ``experiments.removal_curves``): one certified ``tmab`` analysis per semivalue of
``--semivalues`` and ``--estimator-seeds`` entry (its top ``--top-k`` certified (ε-δ), or stopped at ``--max-rows``
rows uncertified; cached under ``--cache`` with the network's key, so the p = 0 networks share their analyses with
``experiments.removal_curves``, same ``--top-k`` and ``--max-rows``), leave-one-out on the same game, integrated
gradients and Taylor on the same images (once per network), and the callback's own uncertified ``tmab`` analysis
(Shapley with the experiment's budget, digits: top 30, 3,000 evaluations on 256 images; the first estimator seed):
what the earlier, uncertified tables measured.

Per network, ranking and estimator seed, on the TEST split: accuracy after removing the top 10/20/30 filters of each
ranking (random: mean of ``--n-random`` random orders per estimator seed), with all filters and after removing the
lowest-valued half; and how evenly each value method spreads the value: the filters holding half of the total
|value| and the Gini coefficient of |value|. Every cell is mean ± sd over training seeds × estimator seeds
(deterministic rankings: over training seeds). Tables: removal accuracy per rate and ranking (bold: differs from
leave-one-out by more than the spreads; a verdict line: best ranking per measure, whether a tmab semivalue beats
leave-one-out clearly, the best semivalue), the value methods per rate (bold: differs from the same method's p = 0;
a verdict line: which rates differ clearly), and the cost (median rows, certified count, CPU s per semivalue and
rate; this script's CPU and wall time and the sweep's). Writes ``filter_dropout.md`` and ``filter_dropout.png`` to
``--out`` and logs them to W&B in the multirun's group.

    python -m experiments.filter_dropout --train-seeds 0,1,2 --estimator-seeds 0,1,2   # digits SmallCNN, the defaults
    python -m experiments.filter_dropout --data shapes        # the wide CNN on generated shapes (240 filters)
    python -m experiments.filter_dropout --quick              # smoke setting (2 semivalues, not certified)
    python -m experiments.filter_dropout --sweep-dir outputs/.../multiruns/<time>   # re-read a finished sweep
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from experiments import certified, common, seeds
from experiments.removal_curves import network_key, quick_rows, quick_semivalues, verdict
from experiments.seeds import Spread
from nsl import FilterPlayers
from nsl.baselines import baseline_result
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
    "trainer.max_epochs=2",
    "callbacks.neuron_shapley.max_evals=60",
    "callbacks.neuron_shapley.eval_size=64",
    "callbacks.neuron_shapley.top_k=3",
    "callbacks.neuron_shapley.curve_steps=3",
]
QUICK_CHANNELS = {"digits": "[4,6,8]", "shapes": "[4,6,8,10]"}
REFERENCE = "leave_one_out"  # bold in the removal table = differs from it by more than the spreads
BASELINES = ("leave_one_out", "integrated_gradients", "taylor")
UNCERTIFIED = "tmab shapley, uncertified (callback)"  # the run's own analysis, as in the earlier tables
SPREAD = ("half_mass", "gini", "max_value")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = common.parser(__doc__, NAME, quick="tiny smoke setting (small model, 2 epochs, one rate, shapley and banzhaf, "
                                           "20,000 rows per analysis)")
    seeds.add_seed_flags(p)
    certified.add_semivalue_flags(p)
    p.add_argument("--data", choices=sorted(EXPERIMENTS), default="digits", help="digits SmallCNN or shapes wide CNN")
    p.add_argument("--ps", default=PS, help="dropout rates swept next to the baseline p = 0, comma-separated")
    p.add_argument("--removed", default=REMOVED, help="top filters removed, comma-separated")
    p.add_argument("--top-k", type=int, default=10,
                   help="top-k each tmab analysis certifies (10: as experiments.removal_curves, whose analyses the "
                        "p = 0 networks share; deeper removals use the uncertified ranks below it)")
    p.add_argument("--eval-size", type=int, default=None,
                   help="validation images in the game (default: digits the whole validation split, shapes the "
                        "callback's eval_size)")
    p.add_argument("--ig-steps", type=int, default=32, help="integrated-gradients quadrature points")
    p.add_argument("--n-random", type=int, default=5, help="random removals averaged per run")
    p.add_argument("--sweep-dir", type=Path, default=None, help="read this finished multirun instead of running")
    p.add_argument("overrides", nargs="*", help="more nsl-train overrides, e.g. trainer.max_epochs=10")
    quick = {"n_random": 2, "ig_steps": 4, "removed": lambda v: "2,4,6" if v == REMOVED else v,
             "ps": lambda v: "0.2" if v == PS else v, "semivalues": quick_semivalues, "max_rows": quick_rows}
    args = common.parse_args(p, argv, quick=quick, positive=("n_random", "top_k", "ig_steps"))
    args.removed = parse_counts(args.removed, "--removed")
    if args.removed[0] < 1:
        raise ValueError(f"--removed={args.removed} must count at least one filter.")
    if args.eval_size is not None and args.eval_size < 1:
        raise ValueError(f"--eval-size={args.eval_size} must be a positive integer.")
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
    return certified.finish_semivalue_args(args)


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


def load_run(job_dir: Path, eval_size: int | None = None) -> dict[str, Any]:
    """A finished job's rate, seed, config, analysed model (last checkpoint), the callback's accuracy-game result,
    the accuracy game this script plays (first ``eval_size`` validation images; ``None``: digits the whole split,
    shapes the callback's eval_size) and that network's cache key."""
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
    data_name = str(cfg.data._target_).rsplit(".", 1)[-1].removesuffix("DataModule").lower()
    x, y = data.tensors("val")[:2]
    if eval_size is None:
        eval_size = len(y) if data_name == "digits" else int(cfg.callbacks.neuron_shapley.eval_size)
    if eval_size > len(y):
        raise ValueError(f"--eval-size={eval_size} is more than the {len(y)} validation images of {job_dir}.")
    x, y = x[:eval_size], y[:eval_size]
    key = network_key(model, x, y, data=data_name, train_seed=int(cfg.seed), epochs=int(cfg.trainer.max_epochs),
                      dropout=p)
    return {"p": p, "seed": int(cfg.seed), "cfg": cfg, "model": model, "players": players, "data": data,
            "inputs": x, "targets": y, "game": AccuracyGame(model, players, x, y), "key": key,
            "test_game": AccuracyGame(model, players, *data.tensors("test")[:2]),
            "result": ShapleyResult.load(result_path), "wandb": sorted(job_dir.glob("wandb/offline-run-*"))}


def analyses(run: dict[str, Any], args: argparse.Namespace) -> dict[int, dict[str, ShapleyResult]]:
    """Per estimator seed, one certified tmab analysis of the run's accuracy game per semivalue, by column name
    (loaded from ``--cache`` when this network's analysis was saved before, by this script or removal_curves)."""
    return {e: {certified.method_name(sv): certified.certified(
        run["game"], semivalue=sv, seed=e, top_k=args.top_k, max_rows=args.max_rows, cache=args.cache,
        key=f"{run['key']}|accuracy") for sv in args.semivalue_list} for e in args.estimator_seeds}


def baselines(run: dict[str, Any], args: argparse.Namespace) -> dict[str, ShapleyResult]:
    """The deterministic rankings of the run's network (once per network): leave-one-out on its game, integrated
    gradients and Taylor on the game's images, and the callback's own uncertified analysis."""
    options = {"leave_one_out": {"game": run["game"]}, "integrated_gradients": {"steps": args.ig_steps}}
    found = {name: baseline_result(name, run["model"], run["players"], run["inputs"], run["targets"], k=args.top_k,
                                   **options.get(name, {})) for name in BASELINES}
    return found | {UNCERTIFIED: run["result"]}


def measure(run: dict[str, Any], result: ShapleyResult, removed: tuple[int, ...]) -> dict[str, Any]:
    """Test accuracy of the run's model after removing ``result``'s top k filters (each k) and its lowest-valued
    half, and the spread of its values."""
    game = run["test_game"]
    n = game.n_players
    if n != result.n_players:
        raise ValueError(f"the result has {result.n_players} players, the checkpoint's model {n}.")
    ranking = result.ranking()
    if removed[-1] > n // 2:
        raise ValueError(f"--removed={removed} removes more than half of the model's {n} filters.")
    present = torch.ones(2 + len(removed), n, dtype=torch.bool)
    present[1, ranking[n - n // 2:]] = False
    for i, k in enumerate(removed):
        present[2 + i, ranking[:k]] = False
    acc = game(present).tolist()
    out = {"full": acc[0], "bottom_half": acc[1]} | {f"top{k}": acc[2 + i] for i, k in enumerate(removed)}
    values = result.values
    return out | {"half_mass": float(half_mass(values)), "gini": gini(values), "max_value": float(values.max()),
                  "n_rows": float(result.n_rows or 0), "converged": float(result.converged), "n": float(n),
                  "sorted": values.sort(descending=True).values.tolist()}


def random_removals(run: dict[str, Any], removed: tuple[int, ...], n_random: int, seed: int) -> dict[str, float]:
    """Test accuracy after removing the first k filters of ``n_random`` random orders (mean over the orders), each k."""
    game = run["test_game"]
    n = game.n_players
    orders = common.random_orders(n, n_random, seed)
    present = torch.ones(len(orders) * len(removed), n, dtype=torch.bool)
    for r, order in enumerate(orders):
        for i, k in enumerate(removed):
            present[r * len(removed) + i, order[:k]] = False
    acc = game(present).view(len(orders), len(removed)).double().mean(0).tolist()
    return {"full": game.full_value()} | {f"top{k}": a for k, a in zip(removed, acc, strict=True)}


def plot(rates: list[float], records: dict[float, list[dict[str, Any]]], method: str, removed: tuple[int, ...],
         path: Path, title: str) -> None:
    """Left: ``method``'s values sorted by rank (mean over runs, ±1 sd band) per rate. Right: test accuracy after
    removing each run's top k filters of ``method`` against k, per rate (bands), random removal dashed."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4), dpi=110)
    cmap = plt.get_cmap("viridis")
    for i, p in enumerate(rates):
        color = "black" if p == 0 else cmap(i / max(1, len(rates) - 1))
        label = "baseline (p = 0)" if p == 0 else f"p = {p:g}"
        runs = [r for r in records[p] if r["method"] == method]
        seeds.band(left, list(range(1, len(runs[0]["sorted"]) + 1)), [r["sorted"] for r in runs], color=color,
                   label=label)
        ks = [0, *removed]
        seeds.band(right, ks, [[r["full"], *(r[f"top{k}"] for k in ks[1:])] for r in runs], color=color,
                   label=label, marker="o", ms=3)
        randoms = [r for r in records[p] if r["method"] == "random"]
        right.plot(ks, [seeds.spread(r["full"] for r in randoms).mean,
                        *(seeds.spread(r[f"top{k}"] for r in randoms).mean for k in ks[1:])],
                   color=color, linestyle="--", linewidth=0.9, label="random filters (dashed)" if p == 0 else None)
    left.set(xlabel="filter rank", ylabel=f"{method} value (accuracy game)", title="values sorted (mean ± sd)",
             xscale="log")
    left.axhline(0, color="black", linewidth=0.5)
    right.set(xlabel="top filters removed", ylabel="test accuracy", title=title, ylim=(-0.02, 1.02))
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    common.save_figure(fig, path)


def dropout_verdict(stats: Mapping[float, Mapping[str, Mapping[str, Spread]]], methods: Sequence[str],
                    labels: Mapping[str, str], keys: Sequence[str]) -> str:
    """One line: per value method, at which rates each measure of ``keys`` differs from that method's p = 0 by
    more than the spreads, and in which direction."""
    rates = [p for p in stats if p != 0]
    parts = []
    for method in methods:
        base = stats[0.0][method]
        found = []
        for key in keys:
            for word, sign in (("higher", 1), ("lower", -1)):
                at = [f"{p:g}" for p in rates
                      if seeds.clear(stats[p][method][key], base[key]) and
                      sign * (stats[p][method][key].mean - base[key].mean) > 0]
                if at:
                    found.append(f"{labels[key]} {word} at p = {', '.join(at)}")
        parts.append(f"{method}: {'; '.join(found) or 'no measure at any rate'}")
    return "Verdict, clearly different from the same method's p = 0 (by more than the spreads): " + " | ".join(
        parts) + "."


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run (or read) the sweep and compare the rates and rankings; returns the per-run measurements, the tables'
    statistics, verdicts and cost rows, and the report paths."""
    args = parse(argv)
    start, cpu_start = time.perf_counter(), time.process_time()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    sweep = args.sweep_dir
    if sweep is None:
        sweep = (args.out / "multiruns" / time.strftime("%Y-%m-%d_%H-%M-%S")).resolve()
        run_sweep(sweep, sweep_overrides(args), wandb=not args.no_wandb)
    train_seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    sweep_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    jobs = sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())
    runs = [load_run(j, args.eval_size) for j in jobs]
    rates = sorted({r["p"] for r in runs})
    if 0.0 not in rates:
        raise ValueError(f"{sweep} holds no baseline run (callbacks.filter_dropout.p=0); rates found: {rates}.")
    tmab_names = [certified.method_name(sv) for sv in args.semivalue_list]
    methods = [*tmab_names, UNCERTIFIED, *BASELINES, "random"]
    rows: dict[float, list[dict[str, Any]]] = {p: [] for p in rates}
    for run in runs:
        seed_info = {"p": run["p"], "train_seed": run["seed"]}
        for name, result in baselines(run, args).items():
            rows[run["p"]].append(measure(run, result, args.removed) | seed_info |
                                  {"method": name, "estimator_seed": args.estimator_seeds[0], "result": result})
        for e, found in analyses(run, args).items():
            for name, result in found.items():
                rows[run["p"]].append(measure(run, result, args.removed) | seed_info |
                                      {"method": name, "estimator_seed": e, "result": result})
            rows[run["p"]].append(random_removals(run, args.removed, args.n_random, seed=1000 * run["seed"] + e) |
                                  seed_info | {"method": "random", "estimator_seed": e})
        first = [r for r in rows[run["p"]] if r["train_seed"] == run["seed"]][: len(BASELINES) + 2 + len(tmab_names)]
        k = args.removed[0]
        print(f"p = {run['p']:g}, training seed {run['seed']}, top {k} removed: "
              + "; ".join(f"{r['method']} {r[f'top{k}']:.3f}" for r in first))
    removal_keys = [f"top{k}" for k in args.removed]
    value_keys = ["full", *removal_keys, "bottom_half", *SPREAD]
    stats = {p: {m: {k: seeds.spread(r[k] for r in rows[p] if r["method"] == m)
                     for k in (value_keys if m != "random" else ["full", *removal_keys])} for m in methods}
             for p in rates}
    n = int(rows[0.0][0]["n"])
    labels = {"full": "test acc", "bottom_half": f"lowest {n // 2} removed", "half_mass": "half-mass filters",
              "gini": "Gini", "max_value": "max value"} | {f"top{k}": f"top {k} removed" for k in args.removed}

    # removal accuracy: rate × k rows, one column per ranking, bold against leave-one-out
    removal_columns = ["p", "removed", *methods]
    removal_table = [[("0 (baseline)" if p == 0 else f"{p:g}"), str(k),
                      *(format(stats[p][m][f"top{k}"], ".3f") if m == REFERENCE else
                        seeds.mark(stats[p][m][f"top{k}"], stats[p][REFERENCE][f"top{k}"]) for m in methods)]
                     for p in rates for k in args.removed]
    measures = {f"p = {p:g} top {k}": ({m: stats[p][m][f"top{k}"] for m in methods}, True)
                for p in rates for k in args.removed}
    verdicts = {"removal": verdict(measures, reference=REFERENCE, semivalues=tmab_names)}

    # value methods: method × rate rows, bold against the same method's p = 0
    value_methods = [*tmab_names, UNCERTIFIED]
    value_columns = ["method", "p", *(labels[k] for k in value_keys)]
    value_table = []
    for m in value_methods:
        base = stats[0.0][m]
        for p in rates:
            s = stats[p][m]
            spec = {k: ".1f" if k == "half_mass" else ".3f" for k in value_keys}
            value_table.append([m, "0 (baseline)" if p == 0 else f"{p:g}",
                                *(format(s[k], spec[k]) if p == 0 else seeds.mark(s[k], base[k], spec[k])
                                  for k in value_keys)])
    verdicts["values"] = dropout_verdict(stats, value_methods, labels, [removal_keys[0], "half_mass", "gini"])

    # cost: per tmab semivalue and rate
    results = {p: {m: [r["result"] for r in rows[p] if r["method"] == m] for m in tmab_names} for p in rates}
    cost_columns = ["method", *(f"p = {p:g}" for p in rates), "all rates"]
    cost_table = [[m, *(certified.cost_cell(results[p][m]) for p in rates),
                   certified.cost_cell([r for p in rates for r in results[p][m]])] for m in tmab_names]
    eval_size = len(runs[0]["targets"])
    loo = [r["result"].seconds for p in rates for r in rows[p] if r["method"] == REFERENCE]
    cost_table.append([REFERENCE, *(f"{(n + 1) * eval_size / 1e6:.3f} M rows" for _ in rates),
                       f"{(n + 1) * eval_size / 1e6:.3f} M rows per network, {seeds.spread(loo).mean:.2f} s wall"])
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    for line in verdicts.values():
        print(line)

    cfg = runs[0]["cfg"]
    spec = cfg.callbacks.neuron_shapley
    group = f"{cfg.task_name}-{sweep.name}"
    n_runs = sum(len(args.estimator_seeds) for _ in runs)
    done = ", ".join(f"{m}: {sum(r.converged for p in rates for r in results[p][m])} of {n_runs}" for m in tmab_names)
    header = (
        f"## Filter dropout (Fig. 4) on {args.data}\n\n"
        f"One multirun, `nsl-train -m experiment={EXPERIMENTS[args.data]} repair=filter_dropout "
        f"callbacks.filter_dropout.p={','.join(f'{p:g}' for p in rates)} seed={','.join(map(str, args.train_seeds))}`"
        f" (W&B group `{group}`): {n} filters, {cfg.trainer.max_epochs} epochs per run; p = 0 trains bitwise as "
        f"without dropout. Rankings on the accuracy game of {eval_size} validation images: per semivalue and "
        f"estimator seed a tmab analysis, its top {args.top_k} certified (ε-δ) or stopped at {args.max_rows:,} rows "
        f"(certified in {done}); {', '.join(BASELINES)} once per network on the same game and images; {UNCERTIFIED} "
        f"= the run's callback's analysis (top_k = {spec.top_k}, {spec.max_evals} evaluations on {spec.eval_size} "
        f"images, estimator seed {args.estimator_seeds[0]}); random = mean of {args.n_random} random orders per "
        f"estimator seed. Accuracy on each run's test split after removing that ranking's top filters. Spread of "
        f"the values: half-mass filters = how many filters (largest first) hold half of the total absolute value; "
        f"Gini = Gini coefficient of the absolute values (0: all equal, larger: concentrated). {seeds.seed_note(args)}"
        f" The deterministic rankings' ± is over the training seeds only.\n\n"
        f"Removal table: bold = differs from {REFERENCE} on the same networks by more than the two spreads; lower "
        f"= the ranking found the filters the network depends on. {verdicts['removal']}\n\n"
        f"Value table: bold = differs from the same method's baseline (p = 0) by more than the two spreads. "
        f"{verdicts['values']}\n\n"
        f"Cost table: median rows per analysis, how many were certified and their CPU seconds (as first computed; "
        f"analyses loaded from the cache under {args.cache} cost this script nothing). This script: {cpu:.0f} s "
        f"CPU, {wall:.0f} s wall; the sweep's training runs: {sweep_cpu:.0f} s CPU, {train_seconds:.0f} s wall."
    )
    png = common.png_path(args, NAME)
    plot(rates, rows, tmab_names[0], args.removed, png,
         f"{args.data}: accuracy after removing the top filters ({tmab_names[0]})")
    summary: dict[str, float] = {"seconds": wall, "sweep_seconds": train_seconds, "cpu_seconds": cpu,
                                 "sweep_cpu_seconds": sweep_cpu}
    for p, by_method in stats.items():
        for m, s in by_method.items():
            for k, v in s.items():
                summary[f"p={p:g}/{m}/{k}"] = v.mean
                summary[f"p={p:g}/{m}/{k}_sd"] = v.sd
    config = {"sweep_dir": str(sweep), "data": args.data, "ps": list(args.ps), "n_random": args.n_random,
              "removed": list(args.removed), "semivalues": list(args.semivalue_list), "max_rows": args.max_rows,
              "top_k": args.top_k, "eval_size": eval_size, "ig_steps": args.ig_steps, "cache": str(args.cache),
              "train_seeds": list(args.train_seeds), "estimator_seeds": list(args.estimator_seeds),
              "quick": args.quick, "overrides": list(args.overrides)}
    if args.project == common.PROJECT:  # the report joins the training runs' W&B project and group
        args.project = OmegaConf.select(cfg, "logger.wandb.project", default=common.PROJECT)
    args.group = args.group or group
    tables = {"Test accuracy after removing each ranking's top filters, per dropout rate": (removal_columns,
                                                                                             removal_table),
              "Value methods per dropout rate: accuracy after removals and spread of the values": (value_columns,
                                                                                                   value_table),
              "Cost of the tmab analyses per dropout rate": (cost_columns, cost_table)}
    paths = common.report(NAME, args, start, tables=tables, images={"values_and_removals": png}, summary=summary,
                          header=header, config=config)
    return {"stats": stats, "rows": rows, "sweep_dir": sweep, "runs": runs, "group": group, "verdicts": verdicts,
            "cost": cost_table, "tmab_names": tmab_names, "methods": methods, **paths}


if __name__ == "__main__":
    common.run_script(main)
