"""Sample efficiency: evaluations until each estimator names the reference top-10 (Neuron Shapley, Fig. 3a).

On one game at a time, four estimators run against the same budget of coalition evaluations (by default 100
per player, ``tmab``'s own default) and their top-10 is compared with a long reference after every few scans:

- ``tmab``: ``nsl.shapley.tmab`` with its defaults (``tail="top"``);
- ``monte_carlo``: ``nsl.shapley.monte_carlo`` with the same truncation, antithetic permutations;
- ``captum``: Captum's ``ShapleyValueSampling`` over filter masks (one run; its estimate after j permutations,
  rebuilt from the logged evaluations, is exactly what ``n_samples=j`` returns with the same seed);
- ``original``: the original TMAB rule (empirical Bernstein bound with R = 1, δ = 0.2, no ε, no union bound,
  truncation 0.2 with patience 5), built here from ``nsl.shapley`` building blocks.

Games: (1) the digits ``SmallCNN`` accuracy game on validation images, reference = a long truncated antithetic
Monte Carlo (cache it with ``--reference-file``); (2) a synthetic 104-player Harsanyi game with pairwise and
triple interactions and a planted top-10, reference = its exact Shapley values. Prints per game: evaluations
and seconds until precision@10 ≥ 0.9, precision at the end of the budget, samples per filter for ``tmab``
against ``monte_carlo``; writes ``sample_efficiency.md`` and ``sample_efficiency.png`` to ``--out``.

    python experiments/sample_efficiency.py
    python experiments/sample_efficiency.py --reference-file outputs/digits_reference.pt  # reuse a reference
    python experiments/sample_efficiency.py --quick   # smoke setting, seconds
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch
from captum.attr import ShapleyValueSampling
from torch import Tensor

from nsl import AccuracyGame, FilterPlayers, ShapleyResult, monte_carlo, tmab
from nsl.data import load_digits_tensors
from nsl.games.synthetic import HarsanyiGame
from nsl.report import markdown, report_experiment
from nsl.shapley import RunningStats
from nsl.shapley.scan import PermutationSampler, Truncation
from nsl.shapley.tmab import unresolved
from nsl.training import train_digits_model

METHODS = ("tmab", "monte_carlo", "captum", "original")
TARGET = 0.9  # precision@k that counts as "found the top-k"
TRUNCATION = 0.25  # tmab's default truncation, given to monte_carlo too
ORIGINAL = {"delta": 0.2, "range": 1.0, "truncation": 0.2, "patience": 5}


class MeteredGame:
    """Counts the coalitions that reach ``game`` and caches v(N) and v(∅) (the games here are deterministic).

    Estimators run in chunks (``resume=``) to record their progress; each chunk asks for v(N) and v(∅) again,
    and the cache makes the chunks cost exactly what one uninterrupted run costs. With ``log=True`` every
    evaluated coalition, its value and a timestamp are kept (to rebuild Captum's estimate after each sample).
    """

    def __init__(self, game: Any, chunk_size: int | None = None) -> None:
        self.game = game
        self.n_players = int(game.n_players)
        self.chunk_size = int(chunk_size or getattr(game, "chunk_size", 64) or 64)
        self.players = getattr(game, "players", None)
        self.n_evals = 0
        self.seconds = 0.0
        self._cache: dict[bool, float] = {}
        self.log: list[tuple[Tensor, Tensor, float]] | None = None

    def __call__(self, present: Tensor) -> Tensor:
        present = present.reshape(-1, self.n_players).bool()
        full, empty = present.all(dim=1), (~present).all(dim=1)
        values = torch.empty(len(present), dtype=torch.float64)
        todo = torch.ones(len(present), dtype=torch.bool)
        for key, rows in ((True, full), (False, empty)):
            if key in self._cache and self.log is None:
                values[rows] = self._cache[key]
                todo &= ~rows
        if bool(todo.any()):
            start = time.perf_counter()
            fresh = torch.as_tensor(self.game(present[todo])).double().reshape(-1).cpu()
            self.seconds += time.perf_counter() - start
            self.n_evals += int(todo.sum())
            values[todo] = fresh
            if self.log is not None:
                self.log.append((present[todo].clone(), fresh.clone(), time.perf_counter()))
        for key, rows in ((True, full), (False, empty)):
            if bool(rows.any()):
                self._cache[key] = float(values[rows][0])
        return values


@dataclass
class Trace:
    """One estimator's run: checkpoints (evaluations, seconds, precision@k) and its final statistics."""

    method: str
    evals: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    precision: list[float] = field(default_factory=list)
    values: Tensor | None = None
    counts: Tensor | None = None
    converged: bool = False

    def add(self, evals: int, seconds: float, precision: float) -> None:
        self.evals.append(int(evals))
        self.seconds.append(float(seconds))
        self.precision.append(float(precision))

    def first_reaching(self, target: float = TARGET) -> tuple[int | None, float | None]:
        """Evaluations and seconds at the first checkpoint with precision ≥ ``target`` (None if never)."""
        for e, s, p in zip(self.evals, self.seconds, self.precision, strict=True):
            if p >= target - 1e-9:
                return e, s
        return None, None


def next_step(used: int, n_players: int, growth: float = 0.1) -> int:
    """Evaluations until the next checkpoint: 10 % of those used so far, at least one per player."""
    return max(n_players, math.ceil(growth * used))


def precision_at_k(values: Tensor, reference_top: Tensor) -> float:
    """Share of the reference's top-k found among the k highest ``values`` (ties broken by index)."""
    k = len(reference_top)
    top = torch.sort(values, descending=True, stable=True).indices[:k]
    return len(set(top.tolist()) & set(reference_top.tolist())) / k


# ---------------------------------------------------------------------------------------------- estimators


def run_tmab(game: MeteredGame, ref_top: Tensor, budget: int, seed: int) -> Trace:
    """``tmab`` with its defaults, run in growing chunks (``resume=``) up to ``budget`` evaluations."""
    trace, result, start, k = Trace("tmab"), None, time.perf_counter(), len(ref_top)
    base = game.n_evals
    chunk = 0
    while game.n_evals - base < budget:
        left = budget - (game.n_evals - base)
        # +2: every call asks for v(N) and v(∅) again (served from the cache, but counted by tmab's budget).
        step = min(next_step(game.n_evals - base, game.n_players), left)
        result = tmab(game, k, tail="top", max_evals=step + 2, seed=seed + chunk, resume=result)
        chunk += 1
        trace.add(game.n_evals - base, time.perf_counter() - start, precision_at_k(result.values, ref_top))
        if result.converged:
            break
    trace.values, trace.counts, trace.converged = result.values, result.counts, bool(result.converged)
    return trace


def run_monte_carlo(game: MeteredGame, ref_top: Tensor, budget: int, seed: int) -> Trace:
    """Truncated antithetic ``monte_carlo`` (tmab's truncation) in growing chunks up to ``budget`` evaluations."""
    trace, result, start = Trace("monte_carlo"), None, time.perf_counter()
    base, chunk, pairs = game.n_evals, 0, 1
    while game.n_evals - base < budget:
        before = game.n_evals
        result = monte_carlo(
            game, 2 * pairs, truncation=TRUNCATION, antithetic=True, seed=seed + chunk, top_k=len(ref_top),
            max_evals=budget - (game.n_evals - base) + 2, resume=result,
        )
        chunk += 1
        per_pair = max(1.0, (game.n_evals - before) / pairs)
        pairs = max(1, round(next_step(game.n_evals - base, game.n_players) / per_pair))
        trace.add(game.n_evals - base, time.perf_counter() - start, precision_at_k(result.values, ref_top))
    trace.values, trace.counts = result.values, result.counts
    return trace


class UnitRange:
    """``RunningStats`` seen through the original rule's bound: range R = 1 for every player."""

    def __init__(self, stats: RunningStats, value_range: float) -> None:
        self.stats = stats
        self.value_range = torch.full_like(stats.mean, value_range)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stats, name)


def run_original(game: MeteredGame, ref_top: Tensor, budget: int, seed: int) -> Trace:
    """The original TMAB rule: Bernstein bound with R = 1, δ = 0.2, ε = 0, no union bound, truncation 0.2/5.

    The truncation is absolute (value within 0.2 of v(∅), the original "0.2 above chance accuracy").
    The threshold is nsl's midpoint between the k-th and (k+1)-th mean: with the (k+1)-th mean itself as the
    threshold and no ε, that player's interval always straddles it and the rule could never stop.
    """
    trace, start, k = Trace("original"), time.perf_counter(), len(ref_top)
    base = game.n_evals
    sampler = PermutationSampler(game, truncation=None, patience=1, antithetic=False, batch_size=None, seed=seed)
    sampler.truncation = Truncation(ORIGINAL["truncation"], ORIGINAL["patience"])
    next_mark = next_step(0, game.n_players)
    while (used := game.n_evals - base) < budget:
        view = UnitRange(sampler.stats, ORIGINAL["range"])
        active = unresolved(view, k, ORIGINAL["delta"], 0.0, 1, "bernstein", "top")  # type: ignore[arg-type]
        if not bool(active.any()):
            trace.converged = True
            break
        sampler.scan(active)
        if game.n_evals - base >= next_mark:
            trace.add(game.n_evals - base, time.perf_counter() - start, precision_at_k(sampler.stats.mean, ref_top))
            next_mark = game.n_evals - base + next_step(game.n_evals - base, game.n_players)
    used = game.n_evals - base
    if not trace.evals or trace.evals[-1] != used:
        trace.add(used, time.perf_counter() - start, precision_at_k(sampler.stats.mean, ref_top))
    trace.values, trace.counts = sampler.stats.mean.clone(), sampler.stats.count.clone()
    return trace


def run_captum(game: MeteredGame, ref_top: Tensor, budget: int, seed: int) -> tuple[Trace, float]:
    """Captum's ``ShapleyValueSampling`` over filter masks, as many permutations as ``budget`` allows.

    Returns the trace (the estimate after every permutation, rebuilt from the logged evaluations) and the
    largest difference between the rebuilt final estimate and Captum's own output (a check of the rebuild).
    """
    n = game.n_players
    n_samples = max(1, (budget - 1) // n)
    attribution, log, start = captum_attribution(game, n_samples, seed)
    trace = Trace("captum")
    estimates = captum_running_means(log, n)
    for j, (mean, stamp) in enumerate(estimates, 1):
        trace.add(1 + j * n, stamp - start, precision_at_k(mean, ref_top))
    trace.values = estimates[-1][0]
    trace.counts = torch.full((n,), n_samples, dtype=torch.int64)
    return trace, float((trace.values - attribution).abs().max())


def captum_attribution(game: MeteredGame, n_samples: int, seed: int) -> tuple[Tensor, list, float]:
    """Run Captum on the game: inputs a (1, N) row of ones, baselines zeros, one feature per filter."""
    n = game.n_players

    def forward(x: Tensor) -> Tensor:  # (k, N) perturbed inputs -> (k,) coalition values
        return game(x > 0.5)

    ones = torch.ones(1, n, dtype=torch.float64)
    game.log = []
    torch.manual_seed(seed)  # Captum draws its permutations from the global generator
    start = time.perf_counter()
    try:
        attribution = ShapleyValueSampling(forward).attribute(
            ones, baselines=torch.zeros_like(ones), feature_mask=torch.arange(n).unsqueeze(0),
            n_samples=n_samples, perturbations_per_eval=game.chunk_size,
        )
        log = game.log
    finally:
        game.log = None
    return attribution.reshape(-1).double(), log, start


def captum_running_means(log: list[tuple[Tensor, Tensor, float]], n: int) -> list[tuple[Tensor, float]]:
    """Captum's estimate after each permutation, from its evaluations in order: v(∅), then N per permutation."""
    present = torch.cat([p for p, _, _ in log])
    values = torch.cat([v for _, v, _ in log])
    stamps = torch.cat([torch.full((len(v),), t, dtype=torch.float64) for _, v, t in log])
    if len(present) < 1 + n or (len(present) - 1) % n or bool(present[0].any()):
        raise RuntimeError("Captum's evaluations do not follow v(∅) then N coalitions per permutation.")
    v_empty = values[0]
    total = torch.zeros(n, dtype=torch.float64)
    out = []
    for j in range(1, len(present), n):
        rows, vals = present[j : j + n], values[j : j + n]
        sizes = rows.sum(dim=1)
        if not torch.equal(sizes, torch.arange(1, n + 1)):
            raise RuntimeError("a Captum permutation did not add one filter at a time.")
        added = torch.cat([rows[:1], rows[1:] & ~rows[:-1]]).double().argmax(dim=1)
        marginals = vals - torch.cat([v_empty.reshape(1), vals[:-1]])
        total[added] += marginals
        out.append((total / (len(out) + 1), float(stamps[j + n - 1])))
    return out


# -------------------------------------------------------------------------------------------------- games


def synthetic_game(n_players: int = 104, k: int = 10, seed: int = 0) -> tuple[HarsanyiGame, Tensor]:
    """A Harsanyi game with a planted, well-separated top-k and noisy marginals; returns it and exact values.

    Target Shapley values: the planted k from 0.045 down to 0.030, the rest around 0.005 (at most 0.015), a
    scale like the digits CNN's accuracy game. Random pairwise (≈5 per player) and triple (≈2 per player)
    dividends make each marginal depend on the coalition (std ≈ 0.05); the singleton dividends absorb the
    interactions' shares, so the exact values are the targets. v(∅) = 0.1, like chance accuracy.
    """
    if n_players < k + 3:
        raise ValueError(f"n_players={n_players} is too small for a planted top-{k}; use at least {k + 3}.")
    g = torch.Generator().manual_seed(seed)
    target = (0.005 + 0.004 * torch.randn(n_players, generator=g, dtype=torch.float64)).clamp(-0.005, 0.015)
    planted = torch.randperm(n_players, generator=g)[:k]
    target[planted] = torch.linspace(0.045, 0.030, k, dtype=torch.float64)
    dividends: dict[tuple[int, ...], float] = {}
    for size, count, scale in ((2, 5 * n_players // 2, 0.02), (3, 2 * n_players // 3, 0.03)):
        for _ in range(count):
            members = tuple(sorted(torch.randperm(n_players, generator=g)[:size].tolist()))
            dividends[members] = dividends.get(members, 0.0) + scale * float(torch.randn(1, generator=g))
    shares = torch.zeros(n_players, dtype=torch.float64)
    for members, a in dividends.items():
        shares[list(members)] += a / len(members)
    for i in range(n_players):
        dividends[(i,)] = float(target[i] - shares[i])
    game = HarsanyiGame(n_players, dividends, offset=0.1)
    return game, game.shapley()


def load_reference(path: Path | None, fingerprint: dict[str, Any]) -> ShapleyResult | None:
    """The cached digits reference at ``path`` (None if there is none); ValueError if made for another setting."""
    if path is None or not path.is_file():
        return None
    saved = torch.load(path, weights_only=True)
    if not isinstance(saved, dict) or saved.get("fingerprint") != fingerprint:
        have = saved.get("fingerprint") if isinstance(saved, dict) else type(saved).__name__
        raise ValueError(
            f"--reference-file {path} was made for another setting ({have}); this run needs {fingerprint}. "
            "Delete it or point --reference-file elsewhere."
        )
    return ShapleyResult.from_dict(saved["result"])


def digits_reference(
    game: MeteredGame, n_permutations: int, seed: int, path: Path | None, fingerprint: dict[str, Any]
) -> ShapleyResult:
    """A long truncated antithetic ``monte_carlo`` (tmab's truncation); saved to ``path`` when given."""
    start = time.perf_counter()
    ref = monte_carlo(game, n_permutations, truncation=TRUNCATION, antithetic=True, seed=seed)
    ref.seconds = time.perf_counter() - start
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"fingerprint": fingerprint, "result": ref.to_dict()}, path)
    return ref


def separation(values: Tensor, stderr: Tensor, k: int) -> float:
    """z-score of the reference's k-th against its (k+1)-th value: how well its own top-k is separated."""
    order = torch.sort(values, descending=True, stable=True).indices
    a, b = order[k - 1], order[k]
    se = math.sqrt(float(stderr[a]) ** 2 + float(stderr[b]) ** 2)
    return float(values[a] - values[b]) / se if se > 0 else math.inf


# ------------------------------------------------------------------------------------------------ reports


def benchmark(
    game: MeteredGame, ref_values: Tensor, k: int, budget: int, seed: int, log: Callable[[str], None] = print
) -> dict[str, Trace]:
    """Run the four estimators on ``game`` against the reference's top-k, each with ``budget`` evaluations."""
    ref_top = torch.sort(ref_values, descending=True, stable=True).indices[:k]
    traces: dict[str, Trace] = {}
    for method in METHODS:
        if method == "tmab":
            trace = run_tmab(game, ref_top, budget, seed)
        elif method == "monte_carlo":
            trace = run_monte_carlo(game, ref_top, budget, seed)
        elif method == "captum":
            trace, gap = run_captum(game, ref_top, budget, seed)
            log(f"    captum: rebuilt estimate vs captum's output, max |diff| = {gap:.1e}")
        else:
            trace = run_original(game, ref_top, budget, seed)
        traces[method] = trace
        log(f"    {method:<12} {trace.evals[-1]:>7} evaluations {trace.seconds[-1]:>7.1f} s, "
            f"precision@{k} {trace.precision[-1]:.2f}" + (", converged" if trace.converged else ""))
    return traces


def spread(xs: list[float | None], spec: str) -> str:
    """One run: the number ("never" if None); several: median and range, with how many runs never got there."""
    if len(xs) == 1:
        return "never" if xs[0] is None else format(xs[0], spec)
    got = sorted(x for x in xs if x is not None)
    if not got:
        return "never"
    med = statistics.median([*got, *([math.inf] * (len(xs) - len(got)))])
    text = ("never" if math.isinf(med) else format(med, spec)) + f" ({format(got[0], spec)}–{format(got[-1], spec)})"
    return text + (f", {len(xs) - len(got)} never" if len(got) < len(xs) else "")


def method_rows(runs: list[dict[str, Trace]]) -> list[list[Any]]:
    """One row per method: to precision ≥ 0.9 (and = 1), and at the end of its budget; medians over runs."""
    rows = []
    for method in runs[0]:
        ts = [r[method] for r in runs]
        rows.append([
            method,
            spread([t.first_reaching()[0] for t in ts], ","),
            spread([t.first_reaching()[1] for t in ts], ".1f"),
            spread([t.first_reaching(1.0)[0] for t in ts], ","),
            spread([t.evals[-1] for t in ts], ","),
            spread([t.seconds[-1] for t in ts], ".1f"),
            spread([t.precision[-1] for t in ts], ".2f"),
            f"{sum(t.converged for t in ts)}/{len(ts)}",
        ])
    return rows


METHOD_COLUMNS = [
    "method", f"evals to P@10 ≥ {TARGET}", "seconds to it", "evals to P@10 = 1", "evals used", "seconds",
    "P@10 at end", "converged",
]
SAMPLE_COLUMNS = ["method", "mean", "median", "min", "max", "ref ranks 6-15", "other filters"]


def sample_rows(traces: dict[str, Trace], ref_values: Tensor, k: int) -> list[list[Any]]:
    """Samples per filter (Fig. 3a): overall and on the filters near the reference's top-k boundary."""
    order = torch.sort(ref_values, descending=True, stable=True).indices
    near = order[max(0, k - 5) : k + 5]
    other = torch.ones(len(ref_values), dtype=torch.bool)
    other[near] = False
    rows = []
    for method in ("tmab", "monte_carlo"):
        c = traces[method].counts.double()
        rows.append([
            method, f"{float(c.mean()):.1f}", f"{float(c.median()):.0f}", int(c.min()), int(c.max()),
            f"{float(c[near].mean()):.1f}", f"{float(c[other].mean()):.1f}",
        ])
    return rows


def plot(results: dict[str, dict[str, Any]], path: Path, k: int) -> None:
    """Top row: precision@k against evaluations per game; bottom row: samples per filter against ref rank."""
    fig, axes = plt.subplots(2, len(results), figsize=(6.5 * len(results), 8.5), dpi=100, squeeze=False)
    colors = {"tmab": "C0", "monte_carlo": "C1", "captum": "C2", "original": "C3"}
    for col, (title, res) in enumerate(results.items()):
        ax = axes[0][col]
        for method, t in res["traces"].items():
            ax.step(t.evals, t.precision, where="post", label=method, color=colors[method], linewidth=1.6)
        ax.axhline(TARGET, color="gray", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("coalitions evaluated")
        ax.set_ylabel(f"precision@{k} vs reference")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
        ax = axes[1][col]
        order = torch.sort(res["reference"], descending=True, stable=True).indices
        for method in ("tmab", "monte_carlo"):
            counts = res["traces"][method].counts[order]
            ax.plot(range(1, len(counts) + 1), counts.tolist(), marker=".", linestyle="-", linewidth=0.8,
                    label=f"{method} ({int(counts.sum()):,} samples)", color=colors[method])
        ax.axvline(k + 0.5, color="gray", linestyle=":", linewidth=1)
        ax.set_xlabel("filter's rank in the reference")
        ax.set_ylabel("samples (marginals) per filter")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--eval-size", type=int, default=100,
                        help="validation images in the digits game (100 keeps the run near 15 min on 2 cores)")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--budget-per-player", type=int, default=100,
                        help="evaluations per player for every method (100 is tmab's default budget)")
    parser.add_argument("--reference-perms", type=int, default=200,
                        help="antithetic Monte Carlo permutations in the digits reference")
    parser.add_argument("--reference-file", type=Path, default=None,
                        help="load the digits reference from here if it exists, else compute and save it")
    parser.add_argument("--synthetic-players", type=int, default=104)
    parser.add_argument("--repeats", type=int, default=5, help="runs (estimator seeds) on the synthetic game")
    parser.add_argument("--games", nargs="+", default=["synthetic", "digits"], choices=["synthetic", "digits"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: on a shared 2-core machine 2 threads contend and run slower)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs/sample_efficiency"))
    parser.add_argument("--no-wandb", action="store_true", help="write the files only")
    parser.add_argument("--quick", action="store_true", help="tiny smoke setting (small model, small budgets)")
    args = parser.parse_args(argv)
    args.channels = (24, 32, 48)
    if args.quick:
        args.epochs, args.eval_size, args.channels, args.reference_perms = 1, 60, (6, 8, 10), 6
        args.budget_per_player, args.synthetic_players, args.repeats = 10, 24, 1
    positive = ("threads", "epochs", "eval_size", "budget_per_player", "reference_perms", "repeats")
    for name in (*positive, "synthetic_players"):
        value = getattr(args, name)
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')}={value} is not accepted; use a positive int.")
    if not 1 <= args.top_k < args.synthetic_players - 2:
        raise ValueError(f"--top-k={args.top_k} is not accepted; use an int in [1, {args.synthetic_players - 3}].")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns per game the traces, the reference and the tables (for tests)."""
    args = parse(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark proper, with parsed arguments."""
    start = time.perf_counter()
    fingerprint = {"epochs": args.epochs, "eval_size": args.eval_size, "seed": args.seed,
                   "channels": list(args.channels), "permutations": args.reference_perms}
    cached_ref = load_reference(args.reference_file, fingerprint) if "digits" in args.games else None
    k = args.top_k
    results: dict[str, dict[str, Any]] = {}
    tables: dict[str, tuple[list[str], list[list[Any]]]] = {}
    notes: list[str] = []
    summary: dict[str, float] = {}

    if "synthetic" in args.games:
        raw, exact_values = synthetic_game(args.synthetic_players, k, args.seed)
        game = MeteredGame(raw, chunk_size=4)
        n = game.n_players
        budget = args.budget_per_player * n
        title = f"synthetic Harsanyi game, {n} players (exact reference)"
        print(f"\n{title}: budget {budget:,} evaluations per method, {args.repeats} runs (estimator seeds)")
        runs = []
        for r in range(args.repeats):
            print(f"  run {r + 1}/{args.repeats} (seed {args.seed + r})")
            runs.append(benchmark(game, exact_values, k, budget, args.seed + r))
        traces = runs[0]
        order = torch.sort(exact_values, descending=True, stable=True).indices
        span = float(raw(torch.ones(1, n, dtype=torch.bool))[0]) - raw.offset
        note = (f"**{title}.** Exact values: rank {k} = {float(exact_values[order[k - 1]]):.4f}, rank {k + 1} = "
                f"{float(exact_values[order[k]]):.4f}; v(N) − v(∅) = {span:.3f}. Budget {budget:,} evaluations "
                f"per method; {args.repeats} runs with different estimator seeds on the same game: median "
                "(min–max) over the runs; the figure and the samples table show the first run.")
        results[title] = {"traces": traces, "reference": exact_values}
        tables["synthetic: evaluations to the top-10"] = (METHOD_COLUMNS, method_rows(runs))
        tables["synthetic: samples per filter"] = (SAMPLE_COLUMNS, sample_rows(traces, exact_values, k))
        notes.append(note)
        for m in METHODS:
            reach = [r[m].first_reaching()[0] for r in runs]
            summary[f"synthetic/{m}/median_evals_to_target"] = statistics.median(
                [math.inf if e is None else e for e in reach])
            summary[f"synthetic/{m}/mean_final_precision"] = statistics.mean(r[m].precision[-1] for r in runs)

    if "digits" in args.games:
        t0 = time.perf_counter()
        model = train_digits_model(args.epochs, args.seed, args.channels)
        x, y = load_digits_tensors("val", val_size=args.eval_size, seed=args.seed)
        players = FilterPlayers(model)
        game = MeteredGame(AccuracyGame(model, players, x, y))
        n = game.n_players
        budget = args.budget_per_player * n
        print(f"\ndigits SmallCNN: {n} filters, trained in {time.perf_counter() - t0:.0f} s, accuracy "
              f"{game(torch.ones(1, n, dtype=torch.bool))[0]:.3f} on {len(x)} validation images")
        cached = cached_ref is not None
        ref = cached_ref or digits_reference(game, args.reference_perms, args.seed + 1000, args.reference_file,
                                             fingerprint)
        if len(ref.values) != n:
            raise ValueError(f"the reference has {len(ref.values)} players, the game {n}.")
        order = ref.ranking()
        z = separation(ref.values, ref.stderr, k)
        within = int(((ref.values[order[k - 1]] - ref.values[order]).abs() <= ref.stderr[order[k - 1]]).sum())
        ref_note = (f"reference: monte_carlo, {args.reference_perms} antithetic permutations, truncation "
                    f"{TRUNCATION}: {ref.n_evals:,} evaluations, {ref.seconds:.0f} s"
                    + (" (loaded from --reference-file)" if cached else "")
                    + f"; median stderr {float(ref.stderr.median()):.4f}, rank {k} = "
                    f"{float(ref.values[order[k - 1]]):.4f} ± {float(ref.stderr[order[k - 1]]):.4f}, rank {k + 1} = "
                    f"{float(ref.values[order[k]]):.4f} ± {float(ref.stderr[order[k]]):.4f}, z(rank {k} vs "
                    f"{k + 1}) = {z:.2f}; {within} filters lie within one stderr of rank {k}'s value")
        print("  " + ref_note)
        title = f"digits SmallCNN accuracy game, {n} filters, {len(x)} images (MC reference)"
        print(f"{title}: budget {budget:,} evaluations per method")
        traces = benchmark(game, ref.values, k, budget, args.seed)
        results[title] = {"traces": traces, "reference": ref.values}
        tables["digits: evaluations to the top-10"] = (METHOD_COLUMNS, method_rows([traces]))
        tables["digits: samples per filter"] = (SAMPLE_COLUMNS, sample_rows(traces, ref.values, k))
        notes.append(f"**{title}.** Budget {budget:,} evaluations per method; {ref_note}.")
        summary.update({f"digits/{m}/precision": t.precision[-1] for m, t in traces.items()})
        summary.update({f"digits/{m}/evals": t.evals[-1] for m, t in traces.items()})
        summary["digits/reference_z"] = z

    header = (
        f"Evaluations (coalitions the game computed) until each method's top-{k} shares ≥ {TARGET:.0%} with the "
        f"reference (P@{k} ≥ {TARGET}), and P@{k} at the end of its budget. tmab: defaults (tail='top'); "
        f"monte_carlo: truncation {TRUNCATION}, antithetic; captum: ShapleyValueSampling over filter masks; "
        "original: Bernstein bound with R = 1, δ = 0.2, no ε, no union bound, truncation 0.2 / patience 5. "
        "'ref ranks 6-15': mean samples on the filters around the reference's top-10 boundary.\n\n"
        + "\n\n".join(notes)
    )
    for key, (columns, rows) in tables.items():
        print(f"\n{key}\n" + markdown(columns, rows))
    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / "sample_efficiency.png"
    plot(results, png, k)
    config = {key: (list(v) if isinstance(v, tuple) else v) for key, v in vars(args).items()}
    report = report_experiment(
        "sample_efficiency", args.out, tables=tables, images={"figure": png}, summary=summary, config=config,
        header=header, wandb=not args.no_wandb,
    )
    print(f"\nwrote {report['markdown']} and {png} ({time.perf_counter() - start:.0f} s in all)")
    return {"results": results, "tables": tables, "markdown": report["markdown"], "wandb_dir": report["wandb_dir"]}


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    main()
