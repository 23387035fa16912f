"""What a user acts on does not depend on the machine's load: a budget in rows gives the same result, bit for bit."""

from __future__ import annotations

import multiprocessing as mp
import time

import torch

from nsl import AccuracyGame, FilterPlayers
from nsl.shapley import tmab


def _burn(seconds: float) -> None:
    end = time.perf_counter() + seconds
    x = 0.0
    while time.perf_counter() < end:
        x += 1.0


def test_a_rows_budget_gives_the_same_culprits_on_a_loaded_machine(model, digits_val):
    x, y = digits_val
    game = AccuracyGame(model, FilterPlayers(model), x[:128], y[:128])
    idle = tmab(game, 5, tail="both", seed=3, max_rows=60_000)
    # Both cores busy with other work while the same analysis runs again.
    context = mp.get_context("spawn")
    hogs = [context.Process(target=_burn, args=(60.0,)) for _ in range(2)]
    for hog in hogs:
        hog.start()
    try:
        loaded = tmab(game, 5, tail="both", seed=3, max_rows=60_000)
    finally:
        for hog in hogs:
            hog.terminate()
            hog.join()
    assert idle.n_rows == loaded.n_rows and idle.sampling == "examples"
    assert torch.equal(idle.values, loaded.values) and torch.equal(idle.counts, loaded.counts)
    assert idle.culprits(negative=True).tolist() == loaded.culprits(negative=True).tolist()
    assert idle.top_k.tolist() == loaded.top_k.tolist()
