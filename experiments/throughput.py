"""Throughput: plain inference passes/s next to masked game evaluations/s on the same evaluation batch.

A Shapley run is thousands of coalition evaluations; one can hardly cost less than a plain forward pass of
the evaluation batch, so this prints every masked mode as a ratio of plain inference.

    python experiments/throughput.py                 # digits CNN, 300-image batch
    python experiments/throughput.py --batch 128 --ks 1 4 16
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from nsl import AccuracyGame, FilterPlayers
from nsl.data import load_digits_tensors
from nsl.models import SmallCNN


def rate(fn, calls_per_run: int, min_seconds: float) -> float:
    """Calls per second of ``fn`` (each run counts ``calls_per_run``), after a warm-up."""
    fn()
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds or done < 3 * calls_per_run:
        fn()
        done += calls_per_run
    return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=300, help="evaluation images per coalition")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 16], help="coalitions per forward pass")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    net = SmallCNN().to(device).eval()
    x, y = load_digits_tensors("train")
    x, y = x[: args.batch].to(device), y[: args.batch].to(device)
    players = FilterPlayers(net)
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
    print(f"device: {device} ({platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()})")
    print(f"model: SmallCNN, {n} filters; evaluation batch: {len(x)} digits images\n")
    print(f"{'mode':<28}{'evaluations/s':>15}{'ratio to plain':>16}")
    print(f"{'plain model(x)':<28}{plain_rate:>15.1f}{1.0:>16.2f}")
    for k in args.ks:
        game = AccuracyGame(net, players, x, y, chunk_size=k)
        present = torch.rand(k, n, generator=gen) > 0.5  # a random half of the filters on

        def masked(game=game, present=present) -> None:
            game(present)
            sync()

        r = rate(masked, k, args.seconds)
        print(f"{f'masked game, K={k} per pass':<28}{r:>15.1f}{r / plain_rate:>16.2f}")


if __name__ == "__main__":
    main()
