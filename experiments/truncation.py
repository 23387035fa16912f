"""Truncation on digits (paper Fig. 5): where does accuracy collapse along random removal orders, and what does
truncating the scans there save and cost?

Trains the default digits CNN and, on its accuracy game (validation images), removes the filters along many
random orders, recording the whole trajectory (value after 0, 1, ..., N removals). For each truncation level τ
(a fraction of |v(N) − v(∅)|) it reports where performance collapses (the fraction of filters removed when the
value first comes within τ·|v(N) − v(∅)| of v(∅), over the orders), and runs ``monte_carlo`` with and without
truncation on the same permutations: how far the truncated scans went, the fraction of the scans' evaluations
truncation skips, and the bias it introduces (max and mean |difference| of the values, top-10 overlap). Every
coalition is counted and recorded by one library meter (``nsl.games.CountingGame``), so the trajectories and the
scans' depths are read back from what the estimator really evaluated. Writes ``truncation.md`` and
``truncation.png`` (trajectories with the tolerance bands; collapse points) to ``--out`` and logs both to W&B.

    python -m experiments.truncation
    python -m experiments.truncation --quick   # smoke setting, seconds
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from torch import Tensor

from experiments import common
from nsl import AccuracyGame, monte_carlo
from nsl.games import CountingGame

NAME = "truncation"
COLORS = ("tab:green", "tab:orange", "tab:red", "tab:purple", "tab:brown")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = common.parser(__doc__, NAME, quick="tiny smoke setting (small model, few orders)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--eval-size", type=int, default=300, help="validation images in the game")
    p.add_argument("--orders", type=int, default=50, help="random removal orders (= Monte Carlo permutations)")
    p.add_argument("--truncations", type=str, default="0.1,0.25,0.5", help="comma-separated levels in (0, 1)")
    p.add_argument("--patience", type=int, default=5, help="evaluations within tolerance before a scan stops")
    p.add_argument("--top-k", type=int, default=10, help="size of the top set whose overlap is reported")
    quick = {"epochs": 3, "eval_size": 60, "orders": 8, "top_k": lambda k: min(k, 5)}
    args = common.parse_args(p, argv, quick=quick, positive=("epochs", "eval_size", "orders", "patience", "top_k"))
    args.levels = levels(args.truncations)
    if args.top_k >= sum(args.channels):
        raise ValueError(f"--top-k {args.top_k} must be below the model's {sum(args.channels)} filters.")
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


def plot(trajectories: Tensor, v_full: float, v_empty: float, fractions: dict[float, Tensor], path: Path) -> None:
    """Left: every trajectory with the tolerance bands around v(∅); right: where each order first enters a band."""
    span = abs(v_full - v_empty)
    n = trajectories.shape[1] - 1
    x = torch.arange(n + 1) / n
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.3), dpi=110, gridspec_kw={"width_ratios": [1.6, 1]})
    for row in trajectories:
        ax.plot(x, row, color="tab:blue", alpha=max(0.04, min(0.3, 6 / len(trajectories))), linewidth=0.8)
    ax.plot(x, trajectories.mean(0), color="black", linewidth=2, label="mean over orders")
    for color, tau in zip(COLORS, sorted(fractions, reverse=True), strict=False):
        ax.axhspan(v_empty - tau * span, v_empty + tau * span, color=color, alpha=0.12, label=f"τ = {tau:g} band")
    ax.axhline(v_empty, color="gray", linestyle="--", linewidth=1, label=f"v(∅) = {v_empty:.2f}")
    low, high = float(trajectories.min()), float(trajectories.max())
    ax.set_ylim(low - 0.05 * span, high + 0.05 * span)  # the bands may reach past the values; show the values
    ax.set_xlabel("fraction of filters removed (random order)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"{len(trajectories)} random removal trajectories, {n} filters")
    ax.legend(fontsize=7, loc="upper right")
    taus = sorted(fractions)
    bx.boxplot([fractions[t].numpy() for t in taus], orientation="horizontal", widths=0.6)
    bx.set_yticks(range(1, len(taus) + 1), [f"τ = {t:g}" for t in taus])
    bx.set_xlim(0, 1)
    bx.set_xlabel("fraction removed when the value first enters the band")
    bx.set_title("where performance collapses")
    common.save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Record the trajectories and compare truncated with untruncated Monte Carlo; returns the table rows."""
    start = time.perf_counter()
    args = parse(argv)
    model, players, x, y = common.trained_digits(args)
    game = AccuracyGame(model, players, x, y)
    n = len(players)
    v_full, v_empty = game.full_value(), game.empty_value()
    span = abs(v_full - v_empty)
    print(f"trained SmallCNN in {time.perf_counter() - start:.1f} s: {n} filters, v(N) = {v_full:.3f}, "
          f"v(∅) = {v_empty:.3f} on {len(x)} validation images")

    t0 = time.perf_counter()
    recorder = CountingGame(game, record=True)
    exact_scans = monte_carlo(recorder, args.orders, truncation=None, seed=args.seed, top_k=args.top_k)
    # The untruncated scans visit every coalition of their orders: read the trajectories back from them.
    orders = common.random_orders(n, args.orders, args.seed)  # the orders monte_carlo(seed=seed) scans
    trajectories = torch.stack([trajectory(recorder, order) for order in orders]).double()
    marginals = torch.zeros(args.orders, n, dtype=torch.float64)
    for p, order in enumerate(orders):
        marginals[p, order] = trajectories[p, :-1] - trajectories[p, 1:]
    mismatch = float((marginals.mean(0) - exact_scans.values).abs().max())
    print(f"untruncated monte_carlo ({args.orders} trajectories): {exact_scans.n_evals} evaluations, "
          f"{time.perf_counter() - t0:.1f} s (max |value − trajectory mean| = {mismatch:.2g})")
    top_ref = set(exact_scans.top_k.tolist())
    scan_evals = exact_scans.n_evals - 2  # v(N) and v(∅) are evaluated once per run, not per scan

    columns = ["τ", "tolerance", "collapse p10", "collapse median", "collapse p90", "stop median", "evaluations",
               "skipped", "max |Δφ|", "mean |Δφ|", "mean |Δφ| / stderr", f"top-{args.top_k} overlap", "Σφ"]
    rows: list[list[Any]] = []
    fractions: dict[float, Tensor] = {}
    summary: dict[str, float] = {"v_full": v_full, "v_empty": v_empty, "untruncated_evals": exact_scans.n_evals}
    mean_stderr = float(exact_scans.stderr.mean())
    for tau in args.levels:
        tolerance = tau * span
        fractions[tau] = collapse_points(trajectories, v_empty, tolerance).double() / n
        meter = CountingGame(game, record=True)
        cut = monte_carlo(meter, args.orders, truncation=tau, patience=args.patience, seed=args.seed, top_k=args.top_k)
        stops = torch.tensor([scan_depth(meter, order) for order in orders], dtype=torch.float64) / n
        diff = (cut.values - exact_scans.values).abs()
        skipped = 1 - (cut.n_evals - 2) / scan_evals
        overlap = len(top_ref & set(cut.top_k.tolist()))
        p10, p50, p90 = quantiles(fractions[tau])
        rows.append([
            f"{tau:g}", tolerance, p10, p50, p90, float(stops.median()), cut.n_evals, skipped,
            float(diff.max()), float(diff.mean()), float(diff.mean()) / mean_stderr,
            f"{overlap}/{args.top_k}", float(cut.values.sum()),
        ])
        summary.update({
            f"tau_{tau:g}/collapse_median": p50,
            f"tau_{tau:g}/skipped": skipped,
            f"tau_{tau:g}/max_abs_diff": float(diff.max()),
            f"tau_{tau:g}/mean_abs_diff": float(diff.mean()),
            f"tau_{tau:g}/top_overlap": overlap / args.top_k,
        })
        print(f"  τ = {tau:g}: {cut.n_evals} evaluations ({skipped:.0%} skipped), max |Δφ| {float(diff.max()):.4f}, "
              f"top-{args.top_k} overlap {overlap}/{args.top_k}")

    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / "truncation.png"
    plot(trajectories, v_full, v_empty, fractions, png)
    header = (
        f"Digits SmallCNN, {n} filters, accuracy game on {len(x)} validation images: v(N) = {v_full:.3f}, "
        f"v(∅) = {v_empty:.3f}. {args.orders} random removal orders. collapse = fraction of filters removed when the "
        f"value first comes within τ·|v(N) − v(∅)| of v(∅) (10th/50th/90th percentile over orders); stop = how far "
        f"the truncated scans removed (the estimator's rule, patience {args.patience}, in whole forward passes). "
        f"Monte Carlo with and without truncation on "
        f"the same {args.orders} permutations (untruncated: {exact_scans.n_evals} evaluations, Σφ = "
        f"{float(exact_scans.values.sum()):.3f}): skipped = share of the untruncated scans' {scan_evals} "
        "evaluations not made (a forward pass evaluates a few coalitions, so a scan may overrun its stop); "
        "Δφ = truncated − untruncated value per filter (mean stderr of the untruncated values "
        f"{mean_stderr:.4f}); overlap with the untruncated top-{args.top_k}; Σφ against v(N) − v(∅) = "
        f"{v_full - v_empty:.3f}.\n"
    )
    tables = {"truncation_levels": (columns, rows)}
    paths = common.report(NAME, args, start, tables=tables, images={"trajectories": png}, summary=summary,
                          header=header, floats=".4f")
    return {"rows": rows, "columns": columns, "trajectories": trajectories, "fractions": fractions,
            "v_full": v_full, "v_empty": v_empty, "mismatch": mismatch, "summary": summary,
            "untruncated": exact_scans, "model": model, **paths}


if __name__ == "__main__":
    common.run_script(main)
