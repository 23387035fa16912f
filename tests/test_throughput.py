"""Throughput benchmark (experiments/benchmarks/throughput.py): a tiny real run of every mode it measures."""

from __future__ import annotations

import pytest

from experiments.benchmarks import throughput


def test_tiny_run_measures_every_mode() -> None:
    rows = throughput.main(["--batch", "20", "--ks", "1", "3", "--seconds", "0.01", "--chunks", "2"])
    modes = [row["mode"] for row in rows]
    assert modes == ["plain"] + [f"masked, K={k}, {kind} coalitions" for k in (1, 3) for kind in ("scan", "random")]
    assert all(row["shared"] > 0 and row["tiled"] > 0 for row in rows)


def test_scan_chunks_are_consecutive_coalitions_of_one_order() -> None:
    import torch

    (chunk,) = throughput.scan_chunks(10, 4, 1, torch.Generator().manual_seed(0))
    assert chunk.shape == (4, 10)
    # each next coalition removes exactly one more player than the one before
    assert (chunk.sum(dim=1).diff() == -1).all() and (chunk[1:] <= chunk[:-1]).all()


def test_unknown_model_is_refused() -> None:
    with pytest.raises(SystemExit):
        throughput.main(["--model", "vgg"])
