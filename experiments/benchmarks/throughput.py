"""Throughput: plain inference passes/s next to masked game evaluations/s on the same evaluation batch.

A Shapley run is thousands of coalition evaluations; one can hardly cost less than a plain forward pass of
the evaluation batch, so this prints every masked mode as a ratio of plain inference. Coalitions come as a
removal scan produces them (K consecutive coalitions of one random order) or uniformly at random; each is
measured with the shared prefix (``share_prefix=True``: layers below the first differing layer run once per
chunk, activations below the first removed filter are cached) and without it.

    python -m experiments.benchmarks.throughput                        # digits CNN, 300-image batch
    python -m experiments.benchmarks.throughput --model resnet18 --ks 1 --chunks 3 --kinds scan --seconds 1
    python -m experiments.benchmarks.throughput --model resnet18 --layers 'layer4.*' --ks 1 4 --chunks 3 --kinds scan
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
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--chunks", type=int, default=16, help="distinct scan chunks cycled through per mode")
    parser.add_argument("--kinds", nargs="+", default=["scan", "random"], choices=["scan", "random"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
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

    plain_rate = rate(plain, 1, args.seconds)
    cpu = platform.processor() or platform.machine()
    print(f"device: {device} ({cpu}, torch {torch.__version__}, threads {torch.get_num_threads()})")
    print(f"model: {what}; {n} filters in {len(players.layers)} layers\n")
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


if __name__ == "__main__":
    main()
