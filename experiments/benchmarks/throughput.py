"""Throughput: plain inference passes/s next to masked game evaluations/s on the same evaluation batch.

A Shapley run is thousands of coalition evaluations; one can hardly cost less than a plain forward pass of
the evaluation batch, so this prints every masked mode as a ratio of plain inference. Coalitions come as a
removal scan produces them (K consecutive coalitions of one random order) or uniformly at random; each is
measured with the shared prefix (``share_prefix=True``: layers below the first differing layer run once per
chunk, activations below the first removed filter are cached) and without it.

``--per-row`` measures what a per-example estimator does instead: one forward pass of B rows, each row its own
(coalition, example) pair (``game.example_values``), with coalitions drawn as a scan would reach them (a random
position p, then a random set of p filters removed). It prints rows/s of plain inference on B rows next to
per-row evaluation with and without the block-boundary prefix cache, and on a ResNet the floor that cache can
reach: layer4 + head alone on a cached layer3 output.

    python -m experiments.benchmarks.throughput                        # digits CNN, 300-image batch
    python -m experiments.benchmarks.throughput --model resnet18 --ks 1 --chunks 3 --kinds scan --seconds 1
    python -m experiments.benchmarks.throughput --model resnet18 --layers 'layer4.*' --ks 1 4 --chunks 3 --kinds scan
    python -m experiments.benchmarks.throughput --per-row --seconds 4 --rounds 20     # digits CNN, all convs
    python -m experiments.benchmarks.throughput --per-row --model resnet18 --layers 'layer4.*' --batch 128 --seconds 2
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch
from torch import Tensor

from nsl import AccuracyGame, FilterPlayers
from nsl.data import load_digits_tensors
from nsl.models import SmallCNN, resnet18


def rate(fn: Callable[[], None], calls_per_run: int, min_seconds: float) -> float:
    """Calls per second of ``fn`` (each run counts ``calls_per_run``), after a warm-up."""
    fn()
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds or done < 3 * calls_per_run:
        fn()
        done += calls_per_run
    return done / elapsed


def scan_chunks(n: int, k: int, count: int, generator: torch.Generator) -> list[Tensor]:
    """``count`` chunks of K consecutive coalitions of random removal scans (what tmab evaluates)."""
    chunks = []
    for _ in range(count):
        order = torch.randperm(n, generator=generator)
        rank = torch.empty(n, dtype=torch.long)
        rank[order] = torch.arange(n)
        start = int(torch.randint(1, max(2, n - k), (1,), generator=generator))
        chunks.append(rank.unsqueeze(0) >= torch.arange(start, start + k).unsqueeze(1))
    return chunks


def random_coalitions(r: int, n: int, generator: torch.Generator) -> Tensor:
    """R coalitions as a per-example scan draws them: a random position p per row, then p random players removed."""
    p = torch.randint(0, n + 1, (r, 1), generator=generator)
    rank = torch.rand(r, n, generator=generator).argsort(dim=1).argsort(dim=1)
    return rank >= p


def resnet_tail(net: torch.nn.Module, x: Tensor) -> Callable[[], Tensor] | None:
    """layer4 + head of a torchvision ResNet on its layer3 output for ``x``, taken once (None for other models)."""
    if not all(hasattr(net, name) for name in ("conv1", "layer3", "layer4", "avgpool", "fc")):
        return None
    with torch.inference_mode():
        h = net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))))

    def tail() -> Tensor:
        with torch.inference_mode():
            return net.fc(torch.flatten(net.avgpool(net.layer4(h)), 1))

    return tail


def interleaved(fns: dict[str, Callable[[], None]], seconds: float, rounds: int = 5) -> dict[str, list[float]]:
    """Calls per second of each function in each of ``rounds`` rounds; a round gives every function a slice of
    ``seconds / rounds`` in turn, so load from other processes falls on every mode alike instead of on whichever
    ran while it lasted, and rates of one round can be compared with each other."""
    for fn in fns.values():
        fn()  # warm-up: first-call allocation and kernel selection
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            done, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < seconds / rounds or done == 0:
                fn()
                done += 1
            samples[name].append(done / elapsed)
    return samples


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def per_row(
    net: torch.nn.Module, players: FilterPlayers, x: Tensor, y: Tensor, seconds: float, sync: Callable[[], None],
    rounds: int = 5,
) -> list[dict]:
    """Rows/s of plain inference on the batch, of per-row masked evaluation of as many rows (with and without
    the prefix cache), of layer4 + head alone on a ResNet, and each as a ratio of plain inference."""
    rows, n = len(x), len(players)
    gen = torch.Generator().manual_seed(1)
    draws = [
        (random_coalitions(rows, n, gen), torch.randint(0, rows, (rows,), generator=gen).to(x.device))
        for _ in range(4)
    ]

    def plain() -> None:
        with torch.inference_mode():
            net(x)
        sync()

    def masked(game: AccuracyGame) -> Callable[[], None]:
        state = {"i": 0}

        def run() -> None:
            game.example_values(*draws[state["i"] % len(draws)])
            state["i"] += 1
            sync()

        return run

    cached = AccuracyGame(net, players, x, y, max_rows=rows)
    cached_at = cached.prefix_module  # chosen and verified here, before timing
    fns = {f"plain model(x), {rows} rows": plain}
    if cached_at is None:
        fns["per-row masked (no prefix to cache)"] = masked(cached)
    else:
        fns[f"per-row masked, prefix cache at {cached_at}"] = masked(cached)
        fns["per-row masked, prefix cache off"] = masked(
            AccuracyGame(net, players, x, y, max_rows=rows, share_prefix=False)
        )
    tail = resnet_tail(net, x)
    if tail is not None:

        def floor() -> None:
            tail()
            sync()

        fns["layer4 + head on cached layer3 output"] = floor
    samples = interleaved(fns, seconds, rounds)
    plain = samples[next(iter(fns))]
    return [  # ratio: the median of per-round ratios, robust to load that changes between rounds
        {
            "mode": name,
            "rows_per_s": median(rates) * rows,
            "ratio": median([r / p for r, p in zip(rates, plain, strict=True)]),
            "prefix_module": cached_at,
        }
        for name, rates in samples.items()
    ]


def build(model: str, batch: int, device: torch.device) -> tuple[torch.nn.Module, Tensor, Tensor, str]:
    torch.manual_seed(0)
    if model == "small_cnn":
        net = SmallCNN()
        x, _ = load_digits_tensors("train")
        x = x[:batch]
        what = f"SmallCNN, {batch} digits images (8x8)"
    elif model == "resnet18":
        net = resnet18(num_classes=10)
        x = torch.randn(batch, 3, 32, 32)
        what = f"torchvision ResNet-18 (random weights), {batch} images 3x32x32"
    else:
        raise ValueError(f"--model {model!r} is not supported; use small_cnn or resnet18.")
    net = net.to(device).eval()
    x = x.to(device)
    with torch.inference_mode():
        y = net(x).argmax(1)  # the model's own predictions: v(N) = 1
    return net, x, y, what


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small_cnn", choices=["small_cnn", "resnet18"])
    parser.add_argument("--batch", type=int, default=None, help="evaluation images (300 digits, 256 ResNet)")
    parser.add_argument("--layers", nargs="+", default=None, help="glob patterns of player layers (default all)")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 16], help="coalitions per forward pass")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement (per mode with --per-row)")
    parser.add_argument("--chunks", type=int, default=16, help="distinct scan chunks cycled through per mode")
    parser.add_argument("--kinds", nargs="+", default=["scan", "random"], choices=["scan", "random"])
    parser.add_argument(
        "--per-row", action="store_true", help="per-row coalitions vs plain inference (--ks/--kinds/--chunks unused)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="--per-row: turns the modes take (more: steadier)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    batch = args.batch or (300 if args.model == "small_cnn" else 256)
    device = torch.device(args.device)
    net, x, y, what = build(args.model, batch, device)
    players = FilterPlayers(net, layers=args.layers)
    n = len(players)
    gen = torch.Generator().manual_seed(0)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def plain() -> None:
        with torch.inference_mode():
            net(x)
        sync()

    plain_rate = rate(plain, 1, args.seconds) if not args.per_row else float("nan")
    cpu = platform.processor() or platform.machine()
    print(f"device: {device} ({cpu}, torch {torch.__version__}, threads {torch.get_num_threads()})")
    print(f"model: {what}; {n} filters in {len(players.layers)} layers\n")
    if args.per_row:
        return report_per_row(per_row(net, players, x, y, args.seconds, sync, args.rounds))
    print(f"{'mode':<34}{'shared prefix':>15}{'ratio':>7}{'tiled':>10}{'ratio':>7}")
    print(f"{'plain model(x)':<34}{plain_rate:>15.3g}{1.0:>7.2f}")
    rows = [{"mode": "plain", "shared": plain_rate, "tiled": plain_rate}]
    for k in args.ks:
        for kind in args.kinds:
            chunks = scan_chunks(n, k, args.chunks, gen) if kind == "scan" else [torch.rand(k, n, generator=gen) > 0.5]
            rates = {}
            for share in (True, False):
                game = AccuracyGame(net, players, x, y, chunk_size=k, share_prefix=share)
                state = {"i": 0}

                def masked(game: AccuracyGame = game, chunks: list[Tensor] = chunks, state: dict = state) -> None:
                    game(chunks[state["i"] % len(chunks)])
                    state["i"] += 1
                    sync()

                for chunk in chunks:  # verify and fill the caches before timing
                    game(chunk)
                rates[share] = rate(masked, k, args.seconds)
            label = f"masked, K={k}, {kind} coalitions"
            print(
                f"{label:<34}{rates[True]:>15.3g}{rates[True] / plain_rate:>7.2f}"
                f"{rates[False]:>10.3g}{rates[False] / plain_rate:>7.2f}"
            )
            rows.append({"mode": label, "shared": rates[True], "tiled": rates[False]})
    return rows


def report_per_row(results: list[dict]) -> list[dict]:
    """Print the per-row rates side by side, with the issue's targets next to the measured ratios."""
    print("per-row: one forward pass of B rows, each row its own random coalition and example; x plain is the")
    print("median over rounds of the rate / plain inference in the same round")
    print(f"{'mode':<52}{'rows/s':>10}{'x plain':>9}")
    for row in results:
        print(f"{row['mode']:<52}{row['rows_per_s']:>10.4g}{row['ratio']:>9.2f}")
    masked = results[1]["ratio"]  # with the prefix cache where the model has one
    print(f"\nper-row / plain inference rows/s: {masked:.2f} (target >= 0.9)")
    if results[-1]["mode"].startswith("layer4"):
        print(f"per-row cost / layer4 + head cost: {results[-1]['ratio'] / masked:.2f} (target <= 1.5)")
    return results


if __name__ == "__main__":
    main()
