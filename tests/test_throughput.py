"""Throughput benchmark (experiments/benchmarks/throughput.py): a tiny real run of every mode it measures."""

from __future__ import annotations

import pytest
import torch

from experiments.benchmarks import throughput


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests check values and modes, not speed: one thread keeps them quick when other work shares the cores
    (two threads contending with other processes stall for seconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_run_measures_every_mode() -> None:
    rows = throughput.main(["--batch", "20", "--ks", "1", "3", "--seconds", "0.01", "--chunks", "2"])
    modes = [row["mode"] for row in rows]
    assert modes == ["plain"] + [f"masked, K={k}, {kind} coalitions" for k in (1, 3) for kind in ("scan", "random")]
    assert all(row["shared"] > 0 and row["tiled"] > 0 for row in rows)


def test_scan_chunks_are_consecutive_coalitions_of_one_order() -> None:
    (chunk,) = throughput.scan_chunks(10, 4, 1, torch.Generator().manual_seed(0))
    assert chunk.shape == (4, 10)
    # each next coalition removes exactly one more player than the one before
    assert (chunk.sum(dim=1).diff() == -1).all() and (chunk[1:] <= chunk[:-1]).all()


def test_unknown_model_is_refused() -> None:
    with pytest.raises(SystemExit):
        throughput.main(["--model", "vgg"])


def test_per_row_mode_prints_plain_per_row_and_ratio(capsys) -> None:
    rows = throughput.main(["--per-row", "--batch", "24", "--seconds", "0.01"])
    assert [row["mode"] for row in rows] == ["plain model(x), 24 rows", "per-row masked (no prefix to cache)"]
    assert rows[0]["ratio"] == 1.0 and all(row["rows_per_s"] > 0 and row["ratio"] > 0 for row in rows)
    assert "target >= 0.9" in capsys.readouterr().out


def test_per_row_on_resnet_layer4_uses_the_block_cache_and_measures_the_floor() -> None:
    import torchvision

    from nsl import FilterPlayers

    # torchvision's ImageNet stem keeps this cheap; the benchmark runs the same code on the 32x32-stem ResNet-18
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        y = net(x).argmax(1)
        torch.testing.assert_close(throughput.resnet_tail(net, x)(), net(x))  # the floor is the model's own tail
    rows = throughput.per_row(net, FilterPlayers(net, layers="layer4.*"), x, y, 0.001, lambda: None)
    assert [row["mode"] for row in rows] == [
        "plain model(x), 4 rows",
        "per-row masked, prefix cache at layer4.0",
        "per-row masked, prefix cache off",
        "layer4 + head on cached layer3 output",
    ]
    assert all(row["prefix_module"] == "layer4.0" and row["rows_per_s"] > 0 for row in rows)
    assert throughput.resnet_tail(torch.nn.Linear(2, 2), x) is None


def test_random_coalitions_remove_a_random_number_of_players() -> None:
    present = throughput.random_coalitions(400, 12, torch.Generator().manual_seed(0))
    removed = (~present).sum(dim=1)
    assert present.shape == (400, 12) and removed.min() == 0 and removed.max() == 12
    assert len(torch.unique(removed)) == 13  # every scan position 0..N is drawn
