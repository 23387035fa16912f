"""Truncation on digits (paper Fig. 5): where does accuracy collapse along random removal orders, and what does
truncating the scans there save and cost?

Trains the default digits CNN and, on its accuracy game (validation images), removes the filters along many
random orders, recording the whole trajectory (value after 0, 1, ..., N removals). For each truncation level τ
(a fraction of |v(N) − v(∅)|) it reports where performance collapses (the fraction of filters removed when the
value first comes within τ·|v(N) − v(∅)| of v(∅), over the orders), and runs ``monte_carlo`` with and without
truncation on the same permutations: how far the truncated scans went, the fraction of the scans' evaluations
truncation skips, and the bias it introduces (max and mean |difference| of the values, top-10 overlap). Every
coalition is counted and recorded by one library meter (``nsl.games.CountingGame``), so the trajectories and the
scans' depths are read back from what the estimator really evaluated. A truncated scan only evaluates coalitions
the untruncated scan of the same permutation evaluated, so the truncated runs are answered from the untruncated
run's record (:class:`Replay`: same values, same counts; any coalition not recorded is evaluated afresh and
counted in the report).

Error bars: one network per ``--train-seeds`` entry (weights, data order and split follow the seed) and, on each,
one run per ``--estimator-seeds`` entry e (the e-seeded permutations, shared by the truncated and untruncated
estimators). Every cell is mean ± sd over those runs; differences larger than the spread are marked.
Writes ``truncation.md`` and ``truncation.png`` (normalised trajectories with the tolerance bands; what each
level saves and costs, mean ± sd) to ``--out`` and logs both to W&B. ``--seed`` is not used: the seed lists
replace it.

    python -m experiments.truncation
    python -m experiments.truncation --quick   # smoke setting, seconds
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from torch import Tensor

from experiments import common, seeds
from nsl import AccuracyGame, FilterPlayers, monte_carlo
from nsl.data import load_digits_tensors
from nsl.games import CountingGame
from nsl.validation import resolve_top_k

NAME = "truncation"
COLORS = ("tab:green", "tab:orange", "tab:red", "tab:purple", "tab:brown")
# The measures of one truncation level in one run, in table order, with their cell format.
MEASURES = {
    "tolerance": ".4f", "collapse p10": ".3f", "collapse median": ".3f", "collapse p90": ".3f",
    "stop median": ".3f", "evaluations": ".0f", "skipped": ".3f", "max abs Δφ": ".4f", "mean abs Δφ": ".4f",
    "mean abs Δφ / stderr": ".2f", "top overlap": ".1f", "Σφ": ".3f",
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = common.parser(__doc__, NAME, quick="tiny smoke setting (small model, few orders)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--eval-size", type=int, default=300, help="validation images in the game")
    p.add_argument("--orders", type=int, default=30, help="random removal orders (= Monte Carlo permutations) per run")
    p.add_argument("--truncations", type=str, default="0.1,0.25,0.5", help="comma-separated levels in (0, 1)")
    p.add_argument("--patience", type=int, default=5, help="evaluations within tolerance before a scan stops")
    p.add_argument("--top-k", type=int, default=10, help="size of the top set whose overlap is reported")
    seeds.add_seed_flags(p)
    quick = {"epochs": 3, "eval_size": 60, "orders": 8, "top_k": lambda k: min(k, 5)}
    args = common.parse_args(p, argv, quick=quick, positive=("epochs", "eval_size", "orders", "patience", "top_k"))
    args.levels = levels(args.truncations)
    resolve_top_k(args.top_k, sum(args.channels), name="--top-k")  # below the model's filters
    return args


def levels(text: str) -> list[float]:
    """Parse ``"0.1,0.25"`` into sorted distinct truncation levels, each in (0, 1)."""
    try:
        values = sorted({float(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise ValueError(
            f"--truncations {text!r} must be comma-separated numbers in (0, 1), e.g. 0.1,0.25,0.5."
        ) from None
    if not values or not all(0 < v < 1 for v in values):
        raise ValueError(f"--truncations {text!r} must be comma-separated numbers in (0, 1), e.g. 0.1,0.25,0.5.")
    return values


def coalition(order: Tensor, removed: int) -> Tensor:
    """The coalition of a removal scan along ``order`` after its first ``removed`` players are gone."""
    rank = torch.empty(len(order), dtype=torch.long)
    rank[order] = torch.arange(len(order))
    return rank >= removed


def trajectory(meter: CountingGame, order: Tensor) -> Tensor:
    """Values after removing ``order[:t]``, t = 0..N, read from a recording meter that saw the whole scan."""
    try:
        return torch.tensor([meter.value_of(coalition(order, t)) for t in range(len(order) + 1)])
    except KeyError:
        raise RuntimeError("a coalition of this order was never evaluated: not a scanned order.") from None


def scan_depth(meter: CountingGame, order: Tensor) -> int:
    """How many players the scan along ``order`` removed before it stopped: the first t whose coalition the
    recording meter never saw, minus one (N for a scan that ran to the end)."""
    n = len(order)
    return next((t - 1 for t in range(1, n) if not meter.was_evaluated(coalition(order, t))), n)


def collapse_points(trajectories: Tensor, v_empty: float, tolerance: float) -> Tensor:
    """Per trajectory, the first number of filters removed at which the value is within ``tolerance`` of v(∅)."""
    within = (trajectories - v_empty).abs() <= tolerance  # (P, N+1); the last column (v(∅) itself) is always True
    return within.double().argmax(dim=1)


def quantiles(x: Tensor) -> tuple[float, float, float]:
    q = torch.quantile(x.double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    return float(q[0]), float(q[1]), float(q[2])


class Replay:
    """A game answered from a recording meter: the recorded value of every coalition it saw; any other coalition
    is evaluated by the meter's own game (not recorded, counted in ``fresh``). Players and chunk size are the
    meter's, so an estimator batches exactly as on the game itself."""

    def __init__(self, recorder: CountingGame) -> None:
        self.recorder = recorder
        self.n_players = recorder.n_players
        self.fresh = 0

    @property
    def players(self) -> Any:
        return self.recorder.players

    @property
    def chunk_size(self) -> Any:
        return self.recorder.chunk_size

    def __call__(self, present: Tensor) -> Tensor:
        rows = torch.as_tensor(present).reshape(-1, self.n_players).bool()
        values = torch.empty(len(rows), dtype=torch.float64)
        missing = []
        for i, row in enumerate(rows):
            if self.recorder.was_evaluated(row):
                values[i] = self.recorder.value_of(row)
            else:
                missing.append(i)
        if missing:
            values[missing] = torch.as_tensor(self.recorder.game(rows[missing])).double().reshape(-1).cpu()
            self.fresh += len(missing)
        return values


def one_run(args: argparse.Namespace, game: AccuracyGame, estimator_seed: int) -> dict[str, Any]:
    """Trajectories along the ``estimator_seed`` orders and, per level, truncated against untruncated Monte Carlo
    on those permutations: the run's measures per level (:data:`MEASURES`) and what they were read from."""
    n = game.n_players
    v_full, v_empty = game.full_value(), game.empty_value()
    span = abs(v_full - v_empty)
    recorder = CountingGame(game, record=True)
    exact_scans = monte_carlo(recorder, args.orders, truncation=None, seed=estimator_seed, top_k=args.top_k)
    # The untruncated scans visit every coalition of their orders: read the trajectories back from them.
    orders = common.random_orders(n, args.orders, estimator_seed)  # the orders monte_carlo(seed=seed) scans
    trajectories = torch.stack([trajectory(recorder, order) for order in orders]).double()
    marginals = torch.zeros(args.orders, n, dtype=torch.float64)
    for p, order in enumerate(orders):
        marginals[p, order] = trajectories[p, :-1] - trajectories[p, 1:]
    mismatch = float((marginals.mean(0) - exact_scans.values).abs().max())
    top_ref = set(exact_scans.top_k.tolist())
    scan_evals = exact_scans.n_evals - 2  # v(N) and v(∅) are evaluated once per run, not per scan
    mean_stderr = float(exact_scans.stderr.mean())
    replay = Replay(recorder)
    rows: dict[float, dict[str, float]] = {}
    fractions: dict[float, Tensor] = {}
    truncated = {}
    for tau in args.levels:
        tolerance = tau * span
        fractions[tau] = collapse_points(trajectories, v_empty, tolerance).double() / n
        meter = CountingGame(replay, record=True)
        cut = monte_carlo(meter, args.orders, truncation=tau, patience=args.patience, seed=estimator_seed,
                          top_k=args.top_k)
        stops = torch.tensor([scan_depth(meter, order) for order in orders], dtype=torch.float64) / n
        diff = (cut.values - exact_scans.values).abs()
        p10, p50, p90 = quantiles(fractions[tau])
        rows[tau] = {
            "tolerance": tolerance, "collapse p10": p10, "collapse median": p50, "collapse p90": p90,
            "stop median": float(stops.median()), "evaluations": float(cut.n_evals),
            "skipped": 1 - (cut.n_evals - 2) / scan_evals, "max abs Δφ": float(diff.max()),
            "mean abs Δφ": float(diff.mean()), "mean abs Δφ / stderr": float(diff.mean()) / mean_stderr,
            "top overlap": float(len(top_ref & set(cut.top_k.tolist()))), "Σφ": float(cut.values.sum()),
        }
        truncated[tau] = cut
    return {"v_full": v_full, "v_empty": v_empty, "trajectories": trajectories, "fractions": fractions,
            "mismatch": mismatch, "untruncated": exact_scans, "truncated": truncated, "rows": rows,
            "mean_stderr": mean_stderr, "fresh": replay.fresh}


def plot(runs: list[dict[str, Any]], taus: list[float], top_k: int, path: Path) -> None:
    """Left: every trajectory, as the share of v(N) − v(∅) left, with the tolerance bands and the mean over each
    run's orders (mean ± sd over runs); right: per level, what truncation saves and costs (mean ± sd over runs)."""
    normalised = [(r["trajectories"] - r["v_empty"]) / (r["v_full"] - r["v_empty"]) for r in runs]
    n = normalised[0].shape[1] - 1
    x = (torch.arange(n + 1) / n).tolist()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.3), dpi=110, gridspec_kw={"width_ratios": [1.4, 1]})
    rows = torch.cat(normalised)
    for row in rows:
        ax.plot(x, row, color="tab:blue", alpha=max(0.02, min(0.3, 6 / len(rows))), linewidth=0.6)
    seeds.band(ax, x, [t.mean(0).tolist() for t in normalised], color="black", linewidth=2,
               label="mean over orders (±1 sd over runs)")
    for color, tau in zip(COLORS, sorted(taus, reverse=True), strict=False):
        ax.axhspan(-tau, tau, color=color, alpha=0.12, label=f"τ = {tau:g} band")
    ax.axhline(0, color="gray", linestyle="--", linewidth=1, label="v(∅)")
    low, high = float(rows.min()), float(rows.max())
    ax.set_ylim(low - 0.05, high + 0.05)  # the bands may reach past the values; show the values
    ax.set_xlabel("fraction of filters removed (random order)")
    ax.set_ylabel("(v − v(∅)) / (v(N) − v(∅))")
    ax.set_title(f"{len(rows)} random removal trajectories ({len(runs)} runs), {n} filters")
    ax.legend(fontsize=7, loc="upper right")
    lines = {"collapse median": "collapse (median over orders)", "stop median": "truncated scans stop (median)",
             "skipped": "evaluations skipped", "top overlap": f"top-{top_k} overlap (share)"}
    for (key, label), color in zip(lines.items(), ("tab:blue", "tab:gray", "tab:green", "tab:red"), strict=True):
        scale = top_k if key == "top overlap" else 1
        seeds.band(bx, taus, [[r["rows"][t][key] / scale for t in taus] for r in runs], color=color, label=label,
                   marker="o", ms=3)
    bx.set_xticks(taus, [f"{t:g}" for t in taus])
    bx.set_ylim(0, 1.02)
    bx.set_xlabel("truncation level τ")
    bx.set_ylabel("fraction")
    bx.set_title("what truncation saves and costs")
    bx.legend(fontsize=7)
    common.save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Record the trajectories and compare truncated with untruncated Monte Carlo over training × estimator seeds;
    returns the table, the per-level spreads and every run."""
    start = time.perf_counter()
    args = parse(argv)
    runs: list[dict[str, Any]] = []
    for t in args.train_seeds:
        t0 = time.perf_counter()
        model, _ = common.train_model("digits_cnn", epochs=args.epochs, seed=t, channels=args.channels)
        x, y = load_digits_tensors("val", val_size=args.eval_size, seed=t)
        game = AccuracyGame(model, FilterPlayers(model), x, y)
        print(f"training seed {t}: trained SmallCNN in {time.perf_counter() - t0:.1f} s: {game.n_players} filters, "
              f"v(N) = {game.full_value():.3f}, v(∅) = {game.empty_value():.3f} on {len(x)} validation images")
        for e in args.estimator_seeds:
            t0 = time.perf_counter()
            run = {"train_seed": t, "estimator_seed": e, "model": model, **one_run(args, game, e)}
            runs.append(run)
            cells = ", ".join(f"τ={tau:g}: {r['skipped']:.0%} skipped, overlap {r['top overlap']:.0f}/{args.top_k}"
                              for tau, r in run["rows"].items())
            print(f"  estimator seed {e}: untruncated {run['untruncated'].n_evals} evaluations, "
                  f"{time.perf_counter() - t0:.1f} s; {cells}")

    taus = args.levels
    stats = {tau: {key: seeds.spread(r["rows"][tau][key] for r in runs) for key in MEASURES} for tau in taus}
    v_full, v_empty = seeds.spread(r["v_full"] for r in runs), seeds.spread(r["v_empty"] for r in runs)
    exact_evals = seeds.spread(r["untruncated"].n_evals for r in runs)
    exact_sum = seeds.spread(float(r["untruncated"].values.sum()) for r in runs)
    stderr = seeds.spread(r["mean_stderr"] for r in runs)
    fresh = sum(r["fresh"] for r in runs)
    one = seeds.Spread(1.0, 0.0, 1)
    everything = seeds.Spread(float(args.top_k), 0.0, 1)

    def cell(tau: float, key: str) -> str:
        s, spec = stats[tau][key], MEASURES[key]
        if key == "mean abs Δφ / stderr":
            return seeds.mark(s, one, spec)
        if key == "top overlap":
            return f"{seeds.mark(s, everything, spec)} /{args.top_k}"
        if key == "Σφ":
            return seeds.mark(s, exact_sum, spec)
        return format(s, spec)

    columns = ["τ", *(f"top-{args.top_k} overlap" if key == "top overlap" else key for key in MEASURES)]
    rows = [[f"{tau:g}", *(cell(tau, key) for key in MEASURES)] for tau in taus]
    compared = ("skipped", "top overlap", "mean abs Δφ / stderr", "Σφ")
    diff_columns = ["levels", *(f"Δ {f'top-{args.top_k} overlap' if k == 'top overlap' else k}" for k in compared)]
    diff_rows = [
        [f"τ = {a:g} → {b:g}", *(
            f"{stats[b][k].mean - stats[a][k].mean:+{MEASURES[k]}} "
            f"({'clear' if seeds.clear(stats[a][k], stats[b][k]) else 'within spread'})" for k in compared
        )]
        for a, b in itertools.pairwise(taus)
    ]

    summary: dict[str, float] = {"v_full": v_full.mean, "v_empty": v_empty.mean, "untruncated_evals": exact_evals.mean,
                                 "runs": float(len(runs)), "replay_fresh_evals": float(fresh)}
    names = {"collapse median": "collapse_median", "skipped": "skipped", "max abs Δφ": "max_abs_diff",
             "mean abs Δφ": "mean_abs_diff", "mean abs Δφ / stderr": "mean_abs_diff_over_stderr"}
    for tau in taus:
        for key, name in names.items():
            summary[f"tau_{tau:g}/{name}"] = stats[tau][key].mean
            summary[f"tau_{tau:g}/{name}_sd"] = stats[tau][key].sd
        summary[f"tau_{tau:g}/top_overlap"] = stats[tau]["top overlap"].mean / args.top_k
        summary[f"tau_{tau:g}/top_overlap_sd"] = stats[tau]["top overlap"].sd / args.top_k
    summary["seconds"] = time.perf_counter() - start

    png = common.png_path(args, NAME)
    plot(runs, taus, args.top_k, png)
    n = runs[0]["trajectories"].shape[1] - 1
    header = (
        f"{seeds.seed_note(args)} Each run: {args.orders} random removal orders (the estimator seed's permutations, "
        f"scanned by Monte Carlo with and without truncation).\n\n"
        f"Digits SmallCNN, {n} filters, accuracy game on {args.eval_size} validation images: v(N) = {v_full}, "
        f"v(∅) = {v_empty}. collapse = fraction of filters removed when the value first comes within "
        f"τ·|v(N) − v(∅)| of v(∅) (10th/50th/90th percentile over a run's orders); stop = how far the truncated "
        f"scans removed (median over orders; the estimator's rule, patience {args.patience}, in whole forward "
        f"passes). Untruncated Monte Carlo: {exact_evals:.0f} evaluations per run, Σφ = {exact_sum} "
        f"(= v(N) − v(∅)); skipped = share of the untruncated scans' evaluations not made (a forward pass evaluates "
        f"a few coalitions, so a scan may overrun its stop); Δφ = truncated − untruncated value per filter (mean "
        f"stderr of the untruncated values {stderr:.4f}); overlap with the untruncated top-{args.top_k}. The "
        f"truncated runs are answered from the untruncated run's record ({fresh} coalitions had to be evaluated "
        f"afresh).\n\n"
        f"**Bold**: differs by more than its spread from: 1 (mean abs Δφ / stderr), {args.top_k} (overlap: the "
        f"untruncated top set itself), the untruncated Σφ (Σφ). Second table: change between consecutive levels, "
        f"'clear' when |Δmean| > sd + sd.\n"
    )
    tables = {"truncation_levels": (columns, rows), "level_differences": (diff_columns, diff_rows)}
    paths = common.report(NAME, args, start, tables=tables, images={"trajectories": png}, summary=summary,
                          header=header)
    return {"rows": rows, "columns": columns, "stats": stats, "runs": runs, "levels": taus,
            "diff_rows": diff_rows, "v_full": v_full.mean, "v_empty": v_empty.mean, "summary": summary, **paths}


if __name__ == "__main__":
    common.run_script(main)
