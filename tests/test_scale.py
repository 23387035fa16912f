"""Scale benchmark (experiments/benchmarks/scale.py): its forward clock with the library's meter, and a smoke
run of the script on Inception-v3."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from conftest import inspect_wandb
from experiments.benchmarks import scale as scale_module
from nsl import AccuracyGame, FilterPlayers
from nsl.games import CountingGame
from nsl.models import SmallCNN
from nsl.shapley import monte_carlo


@pytest.fixture(scope="module")
def scale():
    """The benchmark script as a module."""
    return scale_module


def test_meter_and_clock_count_and_time_what_they_wrap(scale, digits_val) -> None:
    """The meter sees every coalition the estimator asks for; ForwardClock every forward, and leaves no hook."""
    x, y = digits_val
    torch.manual_seed(0)
    model = SmallCNN(channels=(4, 6, 8)).eval()  # untrained: only counts and times matter here
    players = FilterPlayers(model)
    timed = CountingGame(AccuracyGame(model, players, x[:20], y[:20], chunk_size=4), record=True)
    clock = scale.ForwardClock()
    hooks_before = (len(model._forward_hooks), len(model._forward_pre_hooks))
    with clock.attach(model):
        result = monte_carlo(timed, 2, seed=0)
    assert (len(model._forward_hooks), len(model._forward_pre_hooks)) == hooks_before
    assert timed.n_evals == result.n_evals == 2 + 2 * (len(players) - 1)
    assert timed.calls == sum(math.ceil(k / 4) for k in [2] + [len(players) - 1] * 2)
    assert clock.calls >= timed.calls  # every call runs the model at least once (more to verify a shared prefix)
    assert 0 < clock.seconds < timed.seconds
    assert timed.recorded_values() and all(0 <= v <= 1 for v in timed.recorded_values())


def test_bad_arguments_are_refused_before_work(scale, capsys) -> None:
    with pytest.raises(SystemExit):
        scale.main(["--size", "50"])
    assert "--size=50" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        scale.main(["--ns", "5", "1000"])
    assert "--ns=[5, 1000]" in capsys.readouterr().err


def test_quick_run_measures_inception_v3(scale, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    threads = torch.get_num_threads()
    out = scale.main(["--quick", "--out", str(tmp_path)])
    assert torch.get_num_threads() == threads  # restored after the run

    # Players: every conv filter of an independently built Inception-v3, each masked after its BatchNorm.
    ref = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    convs = [m for m in ref.modules() if isinstance(m, nn.Conv2d)]
    basic = [m for m in ref.modules() if isinstance(getattr(m, "bn", None), nn.BatchNorm2d)]
    assert out["n_players"] == sum(c.out_channels for c in convs)
    assert out["conv_layers"] == len(convs) and out["with_batchnorm"] == len(basic) == len(convs)
    assert out["trace_path"] == "torch.fx graph"

    # The random model's game is constant, so each scan stops after `patience` evaluations (rounded up to
    # whole chunks); both estimators count every coalition the game saw, and the time splits add up.
    assert len(out["values_seen"]) == 1
    patience, chunk, scans = 2, 2, 2  # the --quick setting
    for run in out["runs"]:
        assert run["scans"] == scans
        assert run["evals"] == run["counted_evals"] == 2 + scans * math.ceil(patience / chunk) * chunk
        assert run["forwards"] >= run["calls"]
        assert run["forward_s"] > 0 and run["game_overhead_s"] > 0 and run["estimator_overhead_s"] > 0
        assert run["forward_s"] + run["game_overhead_s"] + run["estimator_overhead_s"] == pytest.approx(
            run["total_s"]
        )
    # One unbudgeted scan of the linear game evaluates v(N), v(empty) and the N - 1 coalitions between.
    assert out["long_rows"][0][2] == out["n_players"] + 1
    assert [row["n"] for row in out["scaling"]] == [1000, 4000]
    assert all(v > 0 for row in out["scaling"] for v in row.values())

    text = out["markdown"].read_text()
    for needle in ("### setup", "### throughput", "tmab", "monte_carlo", str(out["n_players"]), "peak RSS"):
        assert needle in text
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary: dict = {}
    for record in inspect_wandb(out["wandb_dir"]):
        if record.get("type") == "summary":
            summary.update(record["summary"].get("update", {}))
    assert summary["n_players"] == out["n_players"]
    assert summary["budget_evals_done"] == out["budget_evals"]
