"""Scale benchmark: TMAB-Shapley with the 17,216 conv filters of Inception-v3 as players, on CPU.

Builds torchvision Inception-v3 with random weights (no download), makes every ``Conv2d`` filter a player
(``nsl.FilterPlayers``), plays an ``AccuracyGame`` on a few random 299x299 images labelled with the model's
own predictions (so v(N) = 1), and measures what the estimators cost at this size:

- throughput: plain forward passes/s next to masked coalition evaluations/s on the same batch;
- the estimators' own overhead (everything outside the game's calls: order sampling, coalition masks, the
  bandit's certificate ``top_k_certificate``, ``RunningStats.update``) and the game's overhead outside the
  model's forward (hook registration in ``FilterPlayers.mask``, input tiling, scoring), per scan and per
  evaluation, in seconds and as a fraction of the forward time; both are measured by timing the game's calls
  (the library's meter, ``nsl.games.CountingGame``) and the model's forward (hooks) and subtracting from the total;
- the bandit update (confidence radii + ``top_k_certificate`` + ``RunningStats.update``) and a whole scan's
  bookkeeping at N = 1k, 4k, 17k and 100k players with synthetic statistics, as time and time/N (plotted to
  ``scale.png``);
- memory: peak RSS (``resource.getrusage``) after each phase, the estimator's state and per-call allocations.

A random Inception-v3 with PyTorch's default initialisation predicts the argmax of its classifier bias for
every input (the features reach the logits ~1e-7 strong), so every coalition has value 1: every scan
truncates after ``patience`` evaluations. That keeps the run to a few dozen Inception evaluations while the
estimators do their full per-scan bookkeeping over all players; a trained network needs up to N evaluations
per scan (measured here with a near-free linear game of the same N).

    python -m experiments.benchmarks.scale            # full setting, about 10 min on 2 CPU cores
    python -m experiments.benchmarks.scale --quick    # smoke setting (75x75 images), seconds
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
import torchvision
from torch import Tensor, nn

from experiments import common
from nsl import AccuracyGame, FilterPlayers, monte_carlo, tmab
from nsl.games import CountingGame
from nsl.shapley import RunningStats
from nsl.shapley.bounds import top_k_certificate  # the bandit's rule itself: its cost per player is measured here
from nsl.shapley.tmab import confidence_radius


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def best_time(fn: Callable[[], object], repeat: int = 5, min_seconds: float = 0.05, warmup: bool = True) -> float:
    """Seconds per call of ``fn``: best of ``repeat`` batches, each of enough calls to last ``min_seconds``.

    The best batch is the one least disturbed by other work on a shared machine (as ``timeit`` advises).
    """
    loops = 1
    if warmup:
        start = time.perf_counter()
        fn()
        loops = max(1, math.ceil(min_seconds / max(time.perf_counter() - start, 1e-9)))
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, (time.perf_counter() - start) / loops)
    return best


class ForwardClock:
    """Times every call of ``model.forward`` (masking hooks included) with a pre- and a post-forward hook."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._start = 0.0

    @contextmanager
    def attach(self, model: nn.Module) -> Iterator[ForwardClock]:
        def pre(_m: nn.Module, _inp: tuple) -> None:
            self._start = time.perf_counter()

        def post(_m: nn.Module, _inp: tuple, _out: Tensor) -> None:
            self.seconds += time.perf_counter() - self._start
            self.calls += 1

        handles = [model.register_forward_pre_hook(pre), model.register_forward_hook(post)]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()


class ConstantGame:
    """Every coalition is worth 0: scans truncate after ``patience`` evaluations (isolates bookkeeping cost)."""

    def __init__(self, n_players: int, chunk_size: int) -> None:
        self.n_players = n_players
        self.chunk_size = chunk_size

    def __call__(self, present: Tensor) -> Tensor:
        return torch.zeros(present.reshape(-1, self.n_players).shape[0], dtype=torch.float64)


class LinearGame:
    """``v(S) = Σ_{i∈S} w_i`` with random ``w ≥ 0``: nearly free, never truncates early (a full scan)."""

    def __init__(self, n_players: int, chunk_size: int, seed: int) -> None:
        self.n_players = n_players
        self.chunk_size = chunk_size
        self.w = torch.rand(n_players, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def __call__(self, present: Tensor) -> Tensor:
        return present.reshape(-1, self.n_players).double() @ self.w


def synthetic_stats(n: int, seed: int) -> RunningStats:
    """Running statistics of ``n`` players as after a few dozen scans (small, noisy marginals)."""
    gen = torch.Generator().manual_seed(seed)
    stats = RunningStats(n)
    stats.count = torch.randint(5, 60, (n,), generator=gen)
    stats.mean = torch.randn(n, generator=gen, dtype=torch.float64) * 1e-3
    var = torch.rand(n, generator=gen, dtype=torch.float64) * 1e-5
    stats.m2 = var * (stats.count - 1)
    stats.low = stats.mean - 4 * var.sqrt()
    stats.high = stats.mean + 4 * var.sqrt()
    return stats


def build_inception(seed: int) -> nn.Module:
    """Inception-v3, 1000 classes, PyTorch's default initialisation (fast), eval mode; nothing downloaded."""
    torch.manual_seed(seed)
    return torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False).eval()


def trace_path(model: nn.Module) -> str:
    """Which path ``FilterPlayers`` takes to pair convs with BatchNorms: the torch.fx graph or module order."""
    try:
        torch.fx.symbolic_trace(model)
    except Exception as err:  # the same broad fallback FilterPlayers uses
        return f"module order (torch.fx failed: {type(err).__name__})"
    return "torch.fx graph"


def mask_factor_bytes(players: FilterPlayers, k: int, batch: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of the keep factors that mask K coalitions of a batch of B rows: a (K·B, C) tensor per masked layer
    (whatever the image size), i.e. K·B·N values."""
    return k * batch * players.n_players * torch.finfo(dtype).bits // 8


def run_estimator(name: str, call: Callable[[], Any], timed: CountingGame, clock: ForwardClock) -> dict[str, Any]:
    """Run one estimator and split its wall time into forward, game overhead and estimator overhead."""
    timed.n_evals, timed.calls, timed.seconds = 0, 0, 0.0  # this run only; the recorded values are kept
    fwd0, calls0 = clock.seconds, clock.calls
    start = time.perf_counter()
    result = call()
    total = time.perf_counter() - start
    forward = clock.seconds - fwd0
    scans = int(result.counts.max())  # every active player gets one sample per scan; all start active
    est = total - timed.seconds
    game_over = timed.seconds - forward
    return {
        "estimator": name,
        "scans": scans,
        "evals": result.n_evals,
        "calls": timed.calls,
        "forwards": clock.calls - calls0,
        "converged": result.converged,
        "total_s": total,
        "forward_s": forward,
        "game_overhead_s": game_over,
        "estimator_overhead_s": est,
        "forward_ms_per_eval": 1e3 * forward / result.n_evals,
        "game_overhead_ms_per_eval": 1e3 * game_over / result.n_evals,
        "estimator_ms_per_scan": 1e3 * est / max(scans, 1),
        "estimator_ms_per_eval": 1e3 * est / result.n_evals,
        "game_overhead_pct": 100 * game_over / forward,
        "estimator_overhead_pct": 100 * est / forward,
        "counted_evals": timed.n_evals,
    }


def scaling(
    ns: list[int], k: int, patience: int, scans: int, seed: int, micro: float
) -> list[dict[str, float]]:
    """Bandit update and whole-scan bookkeeping at each N, with synthetic statistics and a constant game."""

    def bench(fn: Callable[[], object]) -> float:
        return best_time(fn, min_seconds=micro)

    rows = []
    for n in ns:
        stats = synthetic_stats(n, seed)
        level = 0.05 / n
        t_unres = bench(
            lambda stats=stats, level=level: top_k_certificate(stats.mean, confidence_radius(stats, level), 10, 1e-4)
        )
        t_bern = bench(
            lambda stats=stats, level=level: top_k_certificate(
                stats.mean, confidence_radius(stats, level, "bernstein"), 10, 1e-4, "both"
            )
        )
        gen = torch.Generator().manual_seed(seed)
        players = torch.randperm(n, generator=gen)
        marginals = torch.randn(n, generator=gen, dtype=torch.float64) * 1e-3
        t_update = bench(lambda stats=stats, p=players, m=marginals: stats.update(p, m))
        t_perm = bench(lambda n=n, gen=gen: torch.randperm(n, generator=gen))
        rank = torch.randperm(n, generator=gen)
        chunk = torch.arange(1, k + 1)
        t_masks = bench(lambda rank=rank, chunk=chunk: rank.unsqueeze(0) >= chunk.unsqueeze(1))
        timed = CountingGame(ConstantGame(n, k))
        start = time.perf_counter()
        result = tmab(
            timed, 10, sampler="scan", min_samples=scans, patience=patience, truncation=0.25, seed=seed, max_evals=None
        )
        per_scan = (time.perf_counter() - start - timed.seconds) / int(result.counts.max())
        rows.append(
            {
                "n": n,
                "certificate_us": 1e6 * t_unres,
                "certificate_bernstein_both_us": 1e6 * t_bern,
                "update_us": 1e6 * t_update,
                "randperm_us": 1e6 * t_perm,
                "masks_us": 1e6 * t_masks,
                "scan_overhead_ms": 1e3 * per_scan,
                "bandit_ns_per_player": 1e9 * (t_unres + t_update) / n,
                "scan_ns_per_player": 1e9 * per_scan / n,
            }
        )
    return rows


def plot_scaling(rows: list[dict[str, float]], path: Path) -> None:
    """Log-log plot of the bandit update and per-scan overhead against N, with time/N beside it."""
    ns = [r["n"] for r in rows]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    series = {
        "certificate (clt, top)": [r["certificate_us"] for r in rows],
        "certificate (bernstein, both)": [r["certificate_bernstein_both_us"] for r in rows],
        "RunningStats.update (all N)": [r["update_us"] for r in rows],
        "whole scan bookkeeping (tmab)": [1e3 * r["scan_overhead_ms"] for r in rows],
    }
    for label, ys in series.items():
        ax.plot(ns, ys, marker="o", label=label)
        ax2.plot(ns, [1e3 * y / n for y, n in zip(ys, ns, strict=True)], marker="o", label=label)
    ref = series["certificate (clt, top)"]
    ax.plot(ns, [ref[0] * n / ns[0] for n in ns], color="gray", linestyle="--", label="O(N) reference")
    ax.set(xscale="log", yscale="log", xlabel="players N", ylabel="µs per call", title="time per call")
    ax2.set(xscale="log", xlabel="players N", ylabel="ns per player", title="time / N (flat = linear)")
    ax2.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    common.save_figure(fig, path)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = common.parser(__doc__, "scale", quick="smoke setting: 75x75 images, 1 image, tiny runs")
    parser.add_argument("--images", type=int, default=2, help="random evaluation images B")
    parser.add_argument("--size", type=int, default=299, help="image side (Inception-v3 needs at least 75)")
    parser.add_argument("--chunk", type=int, default=5, help="coalitions per forward pass K")
    parser.add_argument("--scans", type=int, default=5, help="tmab min_samples and monte_carlo permutations")
    parser.add_argument("--patience", type=int, default=5, help="truncation patience (evaluations)")
    parser.add_argument("--reps", type=int, default=2, help="repeats of each Inception throughput measurement")
    parser.add_argument("--ns", type=int, nargs="+", default=[1000, 4000, 17216, 100000], help="N for scaling")
    parser.add_argument("--budget", type=int, default=50, help="max_evals asked of tmab in the long-scan check")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for every measurement")
    parser.add_argument("--micro-seconds", type=float, default=0.05, help="least time per micro-benchmark batch")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.size, args.chunk, args.scans, args.patience, args.reps = 1, 75, 2, 2, 2, 1
        args.ns, args.micro_seconds = [1000, 4000], 0.005
    common.check_positive(args, "images", "chunk", "scans", "patience", "reps", "budget", "threads")
    if args.size < 75:
        parser.error(f"--size={args.size} is too small; Inception-v3 needs images of at least 75x75.")
    if args.chunk > 1 and args.patience % args.chunk:
        print(f"note: --patience {args.patience} is not a multiple of --chunk {args.chunk}; each truncated scan "
              "evaluates the rest of its last chunk too")
    if any(n < 12 for n in args.ns):
        parser.error(f"--ns={args.ns}: every N must be at least 12 (top-10 needs 11 players plus one).")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns every measured number (for tests and notebooks) and the markdown path."""
    args = parse(argv)
    with common.torch_threads(args.threads):
        return benchmark(args)


def sig(x: Any, digits: int = 3) -> Any:
    """Floats rounded to ``digits`` significant digits (table cells); anything else unchanged."""
    return float(f"{x:.{digits}g}") if isinstance(x, float) and math.isfinite(x) else x


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """The measurements of :func:`main` with parsed arguments and the thread count already set."""
    wall = time.perf_counter()
    micro = args.micro_seconds
    rss: list[list[Any]] = [["after imports", peak_rss_mib()]]

    # --- players ----------------------------------------------------------------------------------------------
    start = time.perf_counter()
    model = build_inception(args.seed)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    players = FilterPlayers(model)
    players_s = time.perf_counter() - start
    n = len(players)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    with_bn = sum(layer.mask_at != layer.name for layer in players.layers)
    path = trace_path(model)
    rss.append(["model + players", peak_rss_mib()])
    print(f"Inception-v3: {n} filters in {len(players.layers)} conv layers (model built in {build_s:.2f} s, "
          f"FilterPlayers in {players_s:.2f} s via {path}; BatchNorm found for {with_bn}/{len(convs)} convs)")

    # --- game ---------------------------------------------------------------------------------------------------
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.images, 3, args.size, args.size, generator=gen)
    with torch.inference_mode():
        logits = model(x)
    y = logits.argmax(dim=1)
    feature_part = float((logits - model.fc.bias.detach()).abs().max())
    game = AccuracyGame(model, players, x, y, chunk_size=args.chunk)
    timed = CountingGame(game, record=True)
    rss.append([f"game ({args.images} images, 1 forward)", peak_rss_mib()])

    # --- throughput ---------------------------------------------------------------------------------------------
    k = args.chunk
    half = torch.rand(k, n, generator=gen) > 0.5  # a random half of the filters on, as deep in a scan

    def plain(rows: Tensor) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                model(rows)

        return run

    tiled = x.repeat(k, 1, 1, 1)
    t_plain = best_time(plain(x), repeat=args.reps, warmup=False)
    t_plain_k = best_time(plain(tiled), repeat=args.reps, warmup=False) if k > 1 else t_plain
    t_masked_1 = best_time(lambda: timed(half[:1]), repeat=args.reps, warmup=False)
    t_masked_k = best_time(lambda: timed(half), repeat=args.reps, warmup=False) if k > 1 else t_masked_1
    hook_bytes = mask_factor_bytes(players, k, args.images)
    rss.append([f"masked forward, K={k} ({k * args.images} rows)", peak_rss_mib()])
    throughput = [
        ["plain model(x)", args.images, 1 / t_plain, t_plain, 1.0],
        [f"plain model(x tiled {k}x)", k * args.images, k / t_plain_k, t_plain_k / k, t_plain / (t_plain_k / k)],
        ["masked game, K=1", args.images, 1 / t_masked_1, t_masked_1, t_plain / t_masked_1],
        [f"masked game, K={k}", k * args.images, k / t_masked_k, t_masked_k / k, t_plain / (t_masked_k / k)],
    ]

    # --- per-call pieces at this N ------------------------------------------------------------------------------
    def enter_exit(present: Tensor) -> Callable[[], None]:
        def run() -> None:
            with players.mask(present):
                pass

        return run

    def bench(fn: Callable[[], object]) -> float:
        return best_time(fn, min_seconds=micro)

    rank = torch.randperm(n, generator=gen)
    chunk = torch.arange(1, k + 1)
    logits_k = logits.detach().expand(k, *logits.shape).clone()
    stats = synthetic_stats(n, args.seed)
    every = torch.randperm(n, generator=gen)
    marg = torch.randn(n, generator=gen, dtype=torch.float64) * 1e-3
    pieces = [
        ["order sampling: randperm(N)", "scan", bench(lambda: torch.randperm(n, generator=gen))],
        [f"coalition masks ({k}, N) in removal_scan", "game call", bench(lambda: rank[None] >= chunk[:, None])],
        [
            "bandit certificate (clt, top-10)",
            "scan",
            bench(lambda: top_k_certificate(stats.mean, confidence_radius(stats, 0.05 / n), 10, 1e-4)),
        ],
        ["RunningStats.update (all N players)", "scan", bench(lambda: stats.update(every, marg))],
        ["FilterPlayers.mask enter+exit, K=1", "game call", bench(enter_exit(half[:1]))],
        [f"FilterPlayers.mask enter+exit, K={k}", "game call", bench(enter_exit(half))],
        [f"input tiling x.repeat({k}) ", "game call", bench(lambda: x.repeat(k, 1, 1, 1))],
        [f"score: torchmetrics accuracy of ({k}, B, C) logits", "game call", bench(lambda: game.score(logits_k))],
    ]

    # --- estimators on Inception --------------------------------------------------------------------------------
    clock = ForwardClock()
    runs = []
    options = {"truncation": 0.25, "patience": args.patience, "seed": args.seed}
    with clock.attach(model):
        runs.append(run_estimator(
            "tmab", lambda: tmab(timed, 10, sampler="scan", min_samples=args.scans, max_evals=None, **options), timed,
            clock))
        rss.append(["after tmab", peak_rss_mib()])
        runs.append(run_estimator(
            "monte_carlo", lambda: monte_carlo(timed, args.scans, **options), timed, clock))
        rss.append(["after monte_carlo", peak_rss_mib()])
    values_seen = sorted({round(v, 9) for v in timed.recorded_values()})
    for r in runs:
        print(f"{r['estimator']}: {r['scans']} scans, {r['evals']} evaluations in {r['total_s']:.1f} s; estimator "
              f"overhead {r['estimator_ms_per_scan']:.2f} ms/scan = {r['estimator_overhead_pct']:.4f}% of forward")

    # --- a long scan at this N with a near-free game: per-evaluation bookkeeping and the budget's granularity ---
    long_rows = []
    batches = [64] if args.quick else sorted({k, 64})  # K=64 keeps the smoke setting's long scans short
    for batch in batches:
        lin = CountingGame(LinearGame(n, batch, args.seed))
        start = time.perf_counter()
        res = monte_carlo(lin, 1, seed=args.seed)
        total = time.perf_counter() - start
        long_rows.append([f"monte_carlo, 1 scan, K={batch}", "none", res.n_evals, total,
                          1e6 * (total - lin.seconds) / res.n_evals])
    lin = CountingGame(LinearGame(n, batches[0], args.seed))
    start = time.perf_counter()
    res = tmab(lin, 10, max_evals=args.budget, seed=args.seed)
    total = time.perf_counter() - start
    long_rows.append([f"tmab, K={batches[0]}", str(args.budget), res.n_evals, total,
                      1e6 * (total - lin.seconds) / res.n_evals])
    budget_evals = res.n_evals
    fwd_per_eval = runs[0]["forward_s"] / runs[0]["evals"]

    # --- scaling of the bandit update ---------------------------------------------------------------------------
    scale_rows = scaling(args.ns, k, args.patience, args.scans, args.seed, micro)
    rss.append([f"after scaling (N up to {max(args.ns)})", peak_rss_mib()])

    # --- memory -------------------------------------------------------------------------------------------------
    state_bytes = sum(t.nbytes for t in RunningStats(n).state_dict().values())
    names_bytes = sys.getsizeof(players.names) + sum(sys.getsizeof(s) for s in players.names)
    params_bytes = sum(p.nbytes for p in model.parameters()) + sum(b.nbytes for b in model.buffers())
    memory = [
        ["model parameters + buffers", params_bytes / 2**20],
        ["RunningStats (count, mean, m2, low, high)", state_bytes / 2**20],
        [f"coalition masks per game call ({k}, N) bool", k * n / 2**20],
        [f"masking keep factors per call (K={k}, {len(players.layers)} masked layers)", hook_bytes / 2**20],
        ["player names (Python strings)", names_bytes / 2**20],
        *[[f"peak RSS {label}", value] for label, value in rss],
    ]

    # --- report -------------------------------------------------------------------------------------------------
    setup = [
        ["players N (conv filters)", str(n)],
        ["conv layers / with their BatchNorm masked", f"{len(players.layers)} / {with_bn}"],
        ["conv-BatchNorm pairing", path],
        ["model build / FilterPlayers construction (s)", f"{build_s:.2f} / {players_s:.2f}"],
        ["evaluation batch", f"{args.images} random images {args.size}x{args.size}, labels = own predictions"],
        ["coalitions per forward pass K", str(k)],
        ["torch threads", str(torch.get_num_threads())],
        ["game share_prefix (prefix cache / shared prefix)", str(getattr(game, "share_prefix", "n/a"))],
        ["max |logits - fc.bias| (feature part of the logits)", f"{feature_part:.1e}"],
        ["distinct coalition values seen", ", ".join(f"{v:g}" for v in values_seen)],
    ]
    est_cols = ["estimator", "scans", "evals", "game calls", "model forwards", "total s", "forward s",
                "forward ms/eval", "game overhead ms/eval", "game overhead % fwd", "estimator ms/scan",
                "estimator ms/eval", "estimator % fwd"]
    est_keys = ["estimator", "scans", "evals", "calls", "forwards", "total_s", "forward_s", "forward_ms_per_eval",
                "game_overhead_ms_per_eval", "game_overhead_pct", "estimator_ms_per_scan", "estimator_ms_per_eval",
                "estimator_overhead_pct"]
    est_rows = [[r[key] for key in est_keys] for r in runs]
    scale_cols = ["N", "certificate µs", "certificate (bernstein, both) µs", "RunningStats.update µs",
                  "bandit ns/player", "randperm µs", f"({k}, N) masks µs", "tmab scan bookkeeping ms",
                  "scan ns/player"]
    scale_table = [[r["n"], r["certificate_us"], r["certificate_bernstein_both_us"], r["update_us"],
                    r["bandit_ns_per_player"], r["randperm_us"], r["masks_us"], r["scan_overhead_ms"],
                    r["scan_ns_per_player"]] for r in scale_rows]
    tables = {
        "setup": (["item", "value"], setup),
        "throughput (one evaluation = the batch under one coalition)": (
            ["mode", "rows per pass", "evaluations/s", "s per evaluation", "ratio to plain"], throughput),
        "estimators on Inception-v3 (overhead = time outside the game's calls / outside the model's forward)": (
            est_cols, est_rows),
        f"per-call pieces at N = {n}": (
            ["piece", "once per", "µs"], [[name, per, 1e6 * t] for name, per, t in pieces]),
        f"one long scan at N = {n} with a near-free linear game": (
            ["run", "max_evals", "evals done", "wall s", "estimator µs/eval"], long_rows),
        "bandit update and scan bookkeeping vs N (synthetic statistics, best of 5)": (scale_cols, scale_table),
        "memory (MiB)": (["item", "MiB"], memory),
    }
    header = (
        f"## Scale: Inception-v3, {n} filters as players ({args.images} random {args.size}x{args.size} images, "
        f"CPU, {torch.get_num_threads()} torch thread(s))\n\n"
        f"A masked evaluation costs {fwd_per_eval:.2f} s of forward here; the estimators' own work is "
        f"{runs[0]['estimator_ms_per_scan']:.1f} ms (tmab) and {runs[1]['estimator_ms_per_scan']:.1f} ms "
        f"(monte_carlo) per scan. Asked for max_evals={args.budget}, tmab evaluated {budget_evals} coalitions: "
        "the budget is checked between scans only."
    )
    tables = {key: (cols, [[sig(c) for c in row] for row in rows]) for key, (cols, rows) in tables.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / "scale.png"
    plot_scaling(scale_rows, png)
    summary = {
        "n_players": n,
        "forward_s_per_eval": fwd_per_eval,
        "tmab_estimator_ms_per_scan": runs[0]["estimator_ms_per_scan"],
        "tmab_estimator_overhead_pct": runs[0]["estimator_overhead_pct"],
        "monte_carlo_estimator_ms_per_scan": runs[1]["estimator_ms_per_scan"],
        "game_overhead_ms_per_eval": runs[0]["game_overhead_ms_per_eval"],
        "masked_over_plain": t_plain / t_masked_1,
        "budget_asked": args.budget,
        "budget_evals_done": budget_evals,
        "peak_rss_mib": peak_rss_mib(),
    }
    config = common.plain_config(args, drop=["ns"]) | {"ns": ",".join(map(str, args.ns))}
    logged = common.report("scale", args, wall, tables=tables, images={"bandit_scaling": png}, summary=summary,
                    header=header, config=config, floats=",.10g")
    seconds = time.perf_counter() - wall
    return {
        "n_players": n,
        "conv_layers": len(players.layers),
        "with_batchnorm": with_bn,
        "trace_path": path,
        "runs": runs,
        "scaling": scale_rows,
        "throughput": throughput,
        "budget_evals": budget_evals,
        "long_rows": long_rows,
        "values_seen": values_seen,
        "hook_bytes": hook_bytes,
        "state_bytes": state_bytes,
        "markdown": logged["markdown"],
        "png": png,
        "wandb_dir": logged["wandb_dir"],
        "summary": summary,
        "seconds": seconds,
    }


if __name__ == "__main__":
    main()
