"""``nsl-report``: compare the saved results of one ``nsl-train`` run or of a multirun group, offline.

Reads what each run wrote (``neuron_shapley/<game>.pt`` and ``<game>_curve.pt``, ``metrics.json``,
``.hydra/overrides.yaml``), prints the runs side by side (metrics, repair outcome, per game: convergence,
evaluations, how concentrated the values are, the top filters with value ± standard error) and saves value
histograms and removal curves side by side as PNGs. When runs repeat a setting over seeds, they are also pooled
(:mod:`nsl.report.pool`): mean ± sd per group of runs that differ only in their seeds, clear differences from the
baseline group marked, one figure per measure. Figures are drawn on their own Agg canvases: running the report
never changes the plotting backend of the process.

    nsl-train -m repair=none,filter_dropout seed=0,1,2
    nsl-report outputs/train/multiruns/<date>_<time>
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import Tensor

from nsl.report import pool
from nsl.report.curves import RemovalCurve
from nsl.report.plots import excluded_note, new_figure
from nsl.report.tables import markdown
from nsl.shapley.result import ShapleyResult
from nsl.shapley.semivalues import values_suffix

RESULT_KEYS = {"values", "stderr", "counts", "n_evals", "converged"}
NOT_RESULTS = ("repaired_model.pt", "repaired_model.plan.pt")
TAILS = ("auto", "top", "bottom")
MISSING = "—"


@dataclass
class Run:
    """One run's saved results: ``results[game]``, ``curves[game]``, final ``metrics`` and ``repairs``."""

    path: Path
    key: str
    name: str
    results: dict[str, ShapleyResult]
    curves: dict[str, RemovalCurve] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    repairs: list[dict[str, Any]] = field(default_factory=list)
    has_metrics: bool = False
    overrides: list[str] | None = None  # the command-line overrides (.hydra/overrides.yaml), None without one


# ------------------------------------------------------------------------------------------------ spread
def half_mass(values: Tensor) -> int:
    """How many players (largest |value| first) hold half of the total |value|: small = concentrated."""
    mass = values.detach().double().abs().sort(descending=True).values
    total = float(mass.sum())
    if total == 0:
        return 0
    return int((mass.cumsum(0) < 0.5 * total).sum()) + 1


def gini(values: Tensor) -> float:
    """Gini coefficient of |value| (0: all players equal, → 1: one player holds everything)."""
    x = values.detach().double().abs().sort().values
    n, total = len(x), float(x.sum())
    if n == 0 or total == 0:
        return 0.0
    ranks = torch.arange(1, n + 1, dtype=torch.float64)
    return float(((2 * ranks - n - 1) * x).sum() / (n * total))


def concentration(result: ShapleyResult) -> tuple[int, float] | None:
    """``(half_mass, gini)`` of a result's values, or ``None`` while some filters lack the samples to be ranked:
    their zero estimates would pass for a flat or a concentrated distribution (all-zero values give 0 and 0)."""
    if result.n_ranked < result.n_players:
        return None
    return half_mass(result.values), gini(result.values)


def unranked_cell(result: ShapleyResult) -> str:
    """What a table shows instead of a number computed from estimates that are not findings yet."""
    return f"n/a (only {result.n_ranked:,} of {result.n_players:,} filters sampled enough to rank)"


def ranked_cell(result: ShapleyResult) -> str:
    """``2,048`` when every filter is ranked, else ``12 of 2,048 (2,036 with < 2 samples)``."""
    left = result.n_players - result.n_ranked
    if left == 0:
        return f"{result.n_players:,}"
    return f"{result.n_ranked:,} of {result.n_players:,} ({left:,} with < {result.min_rank_samples} samples)"


# ------------------------------------------------------------------------------------------------ loading
def _load_result(path: Path) -> ShapleyResult | None:
    """The ShapleyResult saved at ``path``, or None when the file holds something else."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a torch file, or one that needs unpickling arbitrary objects: not ours
        return None
    if not isinstance(data, dict) or not set(data) >= RESULT_KEYS:
        return None
    return ShapleyResult.from_dict(data)


def _natural(text: str) -> list[Any]:
    """Sort key that puts job 2 before job 10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _run_name(run_dir: Path, saved: dict[str, Any]) -> str:
    if saved.get("name"):
        return str(saved["name"])
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        return ",".join(str(o) for o in OmegaConf.to_container(OmegaConf.load(overrides))) or "default"
    return run_dir.name


def _overrides(run_dir: Path) -> list[str] | None:
    """The run's command-line overrides from ``.hydra/overrides.yaml`` (None when the run has no such file)."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    return [str(o) for o in OmegaConf.to_container(OmegaConf.load(path)) or []]


def saved_results(results_dir: Path) -> dict[str, ShapleyResult]:
    """Every ``<name>.pt`` ShapleyResult in ``results_dir`` by result name (``class_3`` for a picked class), in
    the order the callback wrote them (its order of games; ties by name). Curves and weights are not results."""
    results = {}
    for path in sorted(results_dir.glob("*.pt"), key=lambda p: (p.stat().st_mtime_ns, p.name)):
        if path.name in NOT_RESULTS or path.name.endswith("_curve.pt"):
            continue
        result = _load_result(path)
        if result is not None:
            results[path.stem] = result
    return results


def load_run(run_dir: Path, results_dir: Path, key: str, results: dict[str, ShapleyResult] | None = None) -> Run:
    """A run from its folder and the folder of its ``<game>.pt`` files (``results``: those files, if loaded)."""
    results = saved_results(results_dir) if results is None else results
    curves = {}
    for game in results:
        curve_path = results_dir / f"{game}_curve.pt"
        if curve_path.is_file():
            curves[game] = RemovalCurve.load(curve_path)
    saved: dict[str, Any] = {}
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        saved = json.loads(metrics_path.read_text())
    return Run(
        path=run_dir,
        key=key,
        name=_run_name(run_dir, saved),
        results=results,
        curves=curves,
        metrics={k: float(v) for k, v in (saved.get("metrics") or {}).items()},
        repairs=list(saved.get("repair") or []),
        has_metrics=metrics_path.is_file(),
        overrides=_overrides(run_dir),
    )


def find_runs(folder: str | Path) -> list[Run]:
    """Every run under ``folder``: the folder itself when it is a run, else each subfolder holding results.

    A run is a folder with ``neuron_shapley/<game>.pt`` result files (or such files directly in it).
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{str(root)!r} is not a folder; expected an nsl-train run folder "
                                "or a multirun folder whose subfolders are runs.")
    folders = sorted({p.parent for p in root.rglob("*.pt")}, key=lambda p: _natural(p.as_posix()))
    found = {folder: results for folder in folders if (results := saved_results(folder))}  # each file loaded once
    if not found:
        raise FileNotFoundError(
            f"no Shapley results under {str(root)!r}: expected <run>/neuron_shapley/<game>.pt files "
            "(written by nsl-train's NeuronShapley callback) in this folder or in its subfolders (a multirun)."
        )
    runs = []
    for results_dir, results in found.items():
        run_dir = results_dir.parent if results_dir.name == "neuron_shapley" else results_dir
        key = run_dir.relative_to(root).as_posix() if run_dir != root else root.resolve().name
        runs.append(load_run(run_dir, results_dir, key, results))
    return runs


# ------------------------------------------------------------------------------------------------ tables
def _metric_order(key: str) -> tuple[int, str]:
    stage = key.replace("/", "_").split("_")[0]
    return ({"test": 0, "val": 1, "train": 2}.get(stage, 3), key)


def format_value(value: float, stderr: float) -> str:
    """``+0.1234 ± 0.0012``: four significant digits for the value, two for its standard error."""
    return f"{value:+.4g} ± {stderr:.2g}"


def runs_table(runs: Sequence[Run]) -> str:
    """Runs side by side: name, folder, final metrics, each repair's outcome and its before → after (the
    "after" of a repair that was rolled back is the discarded repaired model)."""
    columns = ["", *[r.key for r in runs]]
    rows: list[list[Any]] = [["name", *[r.name for r in runs]]]
    keys = sorted({k for r in runs for k in r.metrics}, key=_metric_order)
    for key in keys:
        rows.append([key, *[f"{r.metrics[key]:.4f}" if key in r.metrics else MISSING for r in runs]])
    repair_rows: dict[str, dict[str, str]] = {}
    for r in runs:
        for repair in r.repairs:
            if repair.get("outcome"):
                repair_rows.setdefault(f"repair {repair.get('name', '')}: outcome", {})[r.key] = repair["outcome"]
            for row in repair.get("report") or []:
                label = f"repair {repair.get('name', '')}: {row['metric']}"
                repair_rows.setdefault(label, {})[r.key] = f"{row['before']:.4f} → {row['after']:.4f}"
    for label, cells in repair_rows.items():
        rows.append([label, *[cells.get(r.key, MISSING) for r in runs]])
    rows.append(["Shapley games", *[", ".join(r.results) for r in runs]])
    return markdown(columns, rows)


def _order(result: ShapleyResult, tail: str) -> tuple[Tensor, str]:
    """The players to list, and which end of the ranking they are."""
    if tail not in TAILS:
        raise ValueError(f"tail={tail!r}: accepted are {', '.join(TAILS)}.")
    lowest = tail == "bottom" or (tail == "auto" and result.tail == "bottom")
    return result.ranking(descending=not lowest), "lowest" if lowest else "highest"


def game_table(runs: Sequence[Run], game: str, top_k: int = 10, tail: str = "auto") -> str:
    """One game across runs: method, convergence, evaluations, value spread, then the top-k filters."""
    columns = ["", *[r.key for r in runs]]
    present = [r.results.get(game) for r in runs]

    def row(label: str, fn: Any) -> list[Any]:
        return [label, *[fn(res) if res is not None else MISSING for res in present]]

    rows = [
        row("method", lambda res: (res.method or "?") + values_suffix(res.semivalue)),
        row("filters", lambda res: res.n_players),
        row("converged", lambda res: res.converged),
        row("evaluations", lambda res: res.n_evals),
        row("value of all filters", lambda res: MISSING if res.full_value is None else f"{res.full_value:.4f}"),
        *value_rows(present),
    ]
    orders = [_order(res, tail) if res is not None else None for res in present]
    ends = {o[1] for o in orders if o is not None}
    for rank in range(top_k):
        cells = []
        for res, order in zip(present, orders, strict=True):
            if res is None or order is None or rank >= min(len(order[0]), res.n_ranked):  # ranked filters only
                cells.append(MISSING)
                continue
            i = int(order[0][rank])
            name = res.names[i] if res.names else str(i)
            cells.append(f"{name} {format_value(float(res.values[i]), float(res.stderr[i]))}")
        rows.append([f"#{rank + 1} ({'/'.join(sorted(ends))})", *cells])
    return markdown(columns, rows)


def value_rows(present: Sequence[ShapleyResult | None]) -> list[list[Any]]:
    """Rows of a game table that summarise values: ranked filters, sum, half-mass and Gini. A result whose filters
    are not all ranked gets "n/a (only X of N filters sampled ...)" instead of numbers from zero estimates."""
    def row(label: str, fn: Any) -> list[Any]:
        cells = []
        for res in present:
            if res is None:
                cells.append(MISSING)
            else:
                spread = concentration(res)
                cells.append(unranked_cell(res) if spread is None else fn(res, spread))
        return [label, *cells]

    return [
        ["ranked filters", *[MISSING if res is None else ranked_cell(res) for res in present]],
        row("sum of values", lambda res, _: f"{float(res.values.sum()):.4f}"),
        row("filters holding half of Σ abs(value)", lambda _, spread: spread[0]),
        row("Gini of abs(value)", lambda _, spread: f"{spread[1]:.3f}"),
    ]


def games_of(runs: Sequence[Run]) -> list[str]:
    """Every game that some run played, in the order first seen."""
    return list(dict.fromkeys(g for r in runs for g in r.results))


def report_text(
    runs: Sequence[Run], top_k: int = 10, tail: str = "auto", games: Sequence[str] | None = None,
    baseline: str | None = None,
) -> str:
    """The whole comparison as markdown: the runs table, one table per game, then (when some setting was run
    with several seeds) the runs pooled over seeds against the ``baseline`` group (:func:`nsl.report.pool.pooled_text`).
    """
    games = list(games) if games else games_of(runs)
    unknown = [g for g in games if all(g not in r.results for r in runs)]
    if unknown:
        raise ValueError(f"games {unknown}: no run has results for them; the runs have {games_of(runs)}.")
    parts = [f"# nsl-report: {len(runs)} run{'s' if len(runs) != 1 else ''}", "", runs_table(runs)]
    without = [r.key for r in runs if not r.has_metrics]
    if without:
        parts += ["", f"No metrics.json in {without} (runs written before nsl-train saved it): metrics shown as —."]
    for game in games:
        parts += ["", f"## {game}", "", game_table(runs, game, top_k, tail)]
    if pool.needs_pooling(runs):
        parts += ["", pool.pooled_text([_only(r, games) for r in runs], baseline)]
    elif len(runs) > 1:
        parts += ["", "Each setting ran once (no seeds to pool): rerun the multirun with seed=0,1,2 to get mean ± sd "
                  "per setting and the clear differences from the baseline."]
    return "\n".join(parts) + "\n"


def _only(run: Run, games: Sequence[str]) -> Run:
    """The run with only the results and curves of ``games`` (what the report was asked about)."""
    return replace(run, results={g: r for g, r in run.results.items() if g in games},
                   curves={g: c for g, c in run.curves.items() if g in games})


# ------------------------------------------------------------------------------------------------ figures
def _axes_row(n: int, title: str) -> tuple[Any, list[Any]]:
    fig = new_figure((3.6 * n + 0.6, 3.2))
    axes = fig.subplots(1, n, sharey=True, squeeze=False)[0]
    fig.suptitle(title)
    return fig, list(axes)


def plot_histograms(runs: Sequence[Run], game: str, path: Path) -> Path:
    """The game's value histograms of all runs side by side, on shared bins and axes."""
    values = [ranked_values(r.results[game]) for r in runs if game in r.results]
    edges = np.histogram_bin_edges(np.concatenate(values), bins=40)
    fig, axes = _axes_row(len(runs), f"{game}: Shapley values (ranked filters)")
    for ax, run in zip(axes, runs, strict=True):
        ax.set_title(f"{run.key}: {run.name}", fontsize=8)
        ax.set_xlabel("Shapley value")
        if game in run.results:
            result = run.results[game]
            ax.hist(ranked_values(result), bins=edges, color="tab:blue")
            if result.n_ranked < result.n_players:
                ax.set_title(f"{run.key}: {run.name}{excluded_note(result)}", fontsize=7)
        else:
            ax.text(0.5, 0.5, "not played", ha="center", va="center", transform=ax.transAxes)
    axes[0].set_ylabel("filters")
    fig.tight_layout()
    fig.savefig(path)
    return path


def ranked_values(result: ShapleyResult) -> np.ndarray:
    """The values of the ranked filters (an unsampled filter's 0 is no value), for histograms."""
    return result.values[result.ranked].double().cpu().numpy()


def plot_curves(runs: Sequence[Run], game: str, path: Path) -> Path:
    """The game's removal curves of all runs side by side: top filters first against random removal."""
    fig, axes = _axes_row(len(runs), f"{game}: value as filters are removed")
    for ax, run in zip(axes, runs, strict=True):
        ax.set_title(f"{run.key}: {run.name}", fontsize=8)
        ax.set_xlabel("filters removed")
        curve = run.curves.get(game)
        if curve is None:
            ax.text(0.5, 0.5, "no removal curve saved", ha="center", va="center", transform=ax.transAxes)
            continue
        ax.plot(curve.removed, curve.ranked, marker="o", markersize=3, label="Shapley (top first)")
        mean, std = np.asarray(curve.random), np.asarray(curve.random_std)
        ax.plot(curve.removed, mean, color="gray", label="random")
        ax.fill_between(curve.removed, mean - std, mean + std, color="gray", alpha=0.25)
        ax.legend(fontsize=7)
    axes[0].set_ylabel(game)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_report(runs: Sequence[Run], out: Path, games: Sequence[str] | None = None) -> list[Path]:
    """``report_<game>_values.png`` and, where curves were saved, ``report_<game>_removal.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for game in games or games_of(runs):
        written.append(plot_histograms(runs, game, out / f"report_{game}_values.png"))
        if any(game in r.curves for r in runs):
            written.append(plot_curves(runs, game, out / f"report_{game}_removal.png"))
    return written


# ------------------------------------------------------------------------------------------------ CLI
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nsl-report",
        description="Compare the saved Neuron Shapley results of one nsl-train run or of a multirun group.",
    )
    p.add_argument("folder", type=Path, help="a run folder, or a multirun folder whose subfolders are runs")
    p.add_argument("--out", type=Path, default=None, help="where report.md and the PNGs go (default: the folder)")
    p.add_argument("--top-k", type=int, default=10, help="filters listed per game and run (default: 10)")
    p.add_argument("--tail", choices=TAILS, default="auto",
                   help="list the highest or lowest values; auto: the end each result certified (default)")
    p.add_argument("--games", default=None, help="comma-separated games to report (default: all played)")
    p.add_argument("--no-plots", action="store_true", help="print the tables only")
    p.add_argument("--baseline", default=None, metavar="OVERRIDE",
                   help="the group the others are compared with, by one of its overrides (e.g. repair=none); "
                        "default: repair=none, else callbacks.filter_dropout.p=0, else the first group")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``nsl-report``: print the comparison, write ``report.md`` and the PNGs."""
    args = parser().parse_args(argv)
    if args.top_k < 1:
        parser().error(f"--top-k={args.top_k}: accepted are integers ≥ 1.")
    games = [g.strip() for g in args.games.split(",") if g.strip()] if args.games else None
    try:
        runs = find_runs(args.folder)
        text = report_text(runs, args.top_k, args.tail, games, args.baseline)
    except (FileNotFoundError, ValueError) as error:
        print(f"nsl-report: error: {error}", file=sys.stderr)
        return 2
    out = args.out or args.folder
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(text)
    written = [out / "report.md"]
    if not args.no_plots:
        written += plot_report(runs, out, games)
        if pool.needs_pooling(runs):
            chosen = games or games_of(runs)
            written += pool.plot_pooled([_only(r, chosen) for r in runs], out, args.baseline)
    print(text)
    print("Written: " + ", ".join(str(p) for p in written))
    return 0


__all__ = [
    "Run",
    "concentration",
    "find_runs",
    "format_value",
    "game_table",
    "gini",
    "half_mass",
    "load_run",
    "main",
    "plot_report",
    "report_text",
    "runs_table",
    "saved_results",
]
