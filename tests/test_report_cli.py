"""nsl-report: the runs of a folder side by side, numbers as saved, PNGs written, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest
import torch

from conftest import TINY_TRAIN
from nsl.report import RemovalCurve
from nsl.report.compare import find_runs, gini, half_mass, main
from nsl.shapley import ShapleyResult

ROOT = Path(__file__).resolve().parents[1]
NAN = float("nan")


def save_result(folder: Path, game: str, values: list[float], stderr: list[float], **fields) -> ShapleyResult:
    result = ShapleyResult(
        values=torch.tensor(values, dtype=torch.float64),
        stderr=torch.tensor(stderr, dtype=torch.float64),
        counts=torch.full((len(values),), 7),
        names=[f"conv:{i}" for i in range(len(values))],
        **{"n_evals": 123, "converged": True, "k": 2, "method": "tmab", **fields},
    )
    folder.mkdir(parents=True, exist_ok=True)
    result.save(folder / f"{game}.pt")
    return result


def write_run(run: Path, name: str, metrics: dict[str, float], repair: list[dict] | None = None) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.json").write_text(json.dumps({"name": name, "metrics": metrics, "repair": repair or []}))


def table_row(text: str, label: str) -> list[str]:
    """The cells after ``label`` of the first markdown row starting with it, after ``start``."""
    line = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")][1:]


@pytest.fixture
def group(tmp_path: Path) -> Path:
    """Hand-built multirun: job 0 and job 10 (natural order), job 10 without a class game or a curve."""
    root = tmp_path / "multirun"
    rolled_back = {"name": "prune", "outcome": "rolled back", "reason": "fairness did not improve",
                   "report": [{"metric": "fairness", "before": 0.75, "after": 0.5, "change": -0.25}]}
    write_run(root / "0", "repair=none", {"test/acc": 0.9, "val/acc": 0.875}, [rolled_back])
    save_result(root / "0" / "neuron_shapley", "accuracy", [0.5, -0.25, 0.125, 0.0625], [0.01, 0.02, NAN, 0.03])
    save_result(root / "0" / "neuron_shapley", "class", [0.0, -0.5, 0.25], [0.1, 0.2, 0.3], tail="bottom")
    RemovalCurve([0, 1, 2], [0.9, 0.5, 0.25], [0.9, 0.85, 0.8], [0.0, 0.01, 0.02]).save(
        root / "0" / "neuron_shapley" / "accuracy_curve.pt"
    )
    torch.save({"weight": torch.zeros(2)}, root / "0" / "neuron_shapley" / "repaired_model.pt")  # not a result
    write_run(root / "10", "repair=filter_dropout", {"test/acc": 0.8})
    save_result(root / "10" / "neuron_shapley", "accuracy", [0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.5, 0.5],
                converged=False, n_evals=456)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def test_spread_measures() -> None:
    values = torch.tensor([0.5, -0.25, 0.125, 0.0625])
    assert half_mass(values) == 1  # 0.5 of a total |value| of 0.9375 is already more than half
    assert half_mass(torch.tensor([0.25, 0.25, 0.25, 0.25])) == 2
    assert gini(values) == pytest.approx(1.4375 / 3.75)  # Σ(2i−n−1)·x_(i) / (n·Σx), x sorted ascending
    assert gini(torch.tensor([0.0, 0.0, 0.0, 2.0])) == pytest.approx(0.75)
    assert gini(torch.ones(5)) == 0.0 and gini(torch.zeros(3)) == 0.0 and half_mass(torch.zeros(3)) == 0


def test_table_numbers_match_the_saved_files(group: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(group), "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert table_row(out, "name") == ["repair=none", "repair=filter_dropout"]
    assert table_row(out, "test/acc") == ["0.9000", "0.8000"]
    assert table_row(out, "val/acc") == ["0.8750", "—"]
    assert table_row(out, "repair prune: outcome") == ["rolled back", "—"]  # its "after" was discarded
    assert table_row(out, "repair prune: fairness") == ["0.7500 → 0.5000", "—"]
    accuracy = out[out.index("## accuracy"):out.index("## class")]
    assert table_row(accuracy, "")[:2] == ["0", "10"]  # job 10 after job 2..9, not after job 1
    assert table_row(accuracy, "converged") == ["True", "False"]
    assert table_row(accuracy, "evaluations") == ["123", "456"]
    assert table_row(accuracy, "filters holding half of Σ abs(value)") == ["1", "2"]
    assert table_row(accuracy, "Gini of abs(value)") == ["0.383", "0.000"]
    assert table_row(accuracy, "#1 (highest)") == ["conv:0 +0.5 ± 0.01", "conv:0 +0.25 ± 0.5"]
    assert table_row(accuracy, "#2 (highest)") == ["conv:2 +0.125 ± nan", "conv:1 +0.25 ± 0.5"]
    assert table_row(accuracy, "#3 (highest)") == ["conv:3 +0.0625 ± 0.03", "conv:2 +0.25 ± 0.5"]
    assert "#4" not in accuracy
    klass = out[out.index("## class"):]
    # A result that certified its bottom end lists the lowest values; a game a run did not play shows —.
    assert table_row(klass, "#1 (lowest)") == ["conv:1 -0.5 ± 0.2", "—"]
    assert table_row(klass, "#2 (lowest)") == ["conv:0 +0 ± 0.1", "—"]
    assert (group / "report.md").read_text() == out.split("Written: ")[0].rstrip("\n") + "\n"
    for png in ("report_accuracy_values.png", "report_accuracy_removal.png", "report_class_values.png"):
        assert (group / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (group / "report_class_removal.png").exists()  # no run saved a class curve


def test_tail_games_and_out_options(group: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "elsewhere"
    assert main([str(group), "--tail", "top", "--games", "class", "--out", str(out_dir), "--top-k", "1"]) == 0
    out = capsys.readouterr().out
    assert "## accuracy" not in out and table_row(out, "#1 (highest)") == ["conv:2 +0.25 ± 0.3", "—"]
    assert sorted(p.name for p in out_dir.iterdir()) == ["report.md", "report_class_values.png"]
    assert main([str(group), "--games", "fairness"]) == 2
    assert "games ['fairness']: no run has results for them; the runs have ['accuracy', 'class']" in (
        capsys.readouterr().err
    )


def test_a_single_run_folder_is_one_column(group: Path) -> None:
    (run,) = find_runs(group / "10")
    assert (run.key, run.name, sorted(run.results), run.metrics) == ("10", "repair=filter_dropout", ["accuracy"],
                                                                    {"test/acc": 0.8})
    assert run.curves == {}


def test_folders_without_results_fail_naming_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    (empty / "0" / "neuron_shapley").mkdir(parents=True)
    torch.save({"weight": torch.zeros(2)}, empty / "0" / "neuron_shapley" / "model.pt")  # a .pt, but no result
    assert main([str(empty)]) == 2
    err = capsys.readouterr().err
    assert f"no Shapley results under '{empty}'" in err and "<run>/neuron_shapley/<game>.pt" in err
    assert main([str(tmp_path / "nope")]) == 2
    assert f"'{tmp_path / 'nope'}' is not a folder" in capsys.readouterr().err


def test_the_report_leaves_the_plotting_backend_alone(group: Path) -> None:
    previous = matplotlib.get_backend()
    matplotlib.use("svg")  # a user's choice that the report must not switch to Agg
    try:
        assert main([str(group), "--top-k", "1"]) == 0
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(previous)


TINY = ["game=accuracy", "logger=none", *TINY_TRAIN]


@pytest.mark.slow
def test_multirun_dropout_against_baseline_side_by_side_and_pooled_over_seeds(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "NSL_ROOT": str(tmp_path)}
    train = [sys.executable, "-m", "nsl.train", "-m", "repair=none,filter_dropout", "seed=0,1", *TINY]
    proc = subprocess.run(train, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    jobs = ["0", "1", "2", "3"]
    saved = [json.loads((sweep / job / "metrics.json").read_text()) for job in jobs]
    assert [s["name"] for s in saved] == [f"repair={r},seed={s},game=accuracy,logger=none"
                                          for r in ("none", "filter_dropout") for s in (0, 1)]
    for job in jobs:  # the run's log lines are in Hydra's job log, not only on the console
        log = (sweep / job / "train.log").read_text()
        assert "[NeuronShapley] " in log and "nsl-train finished." in log
        assert "[lightning.pytorch.utilities.rank_zero][INFO] - `Trainer.fit` stopped" in log
    assert "[FilterDropout] p=0.1 on 18 filters of 3 layers" in (sweep / "2" / "train.log").read_text()

    proc = subprocess.run([sys.executable, "-P", "-m", "nsl.report", str(sweep), "--top-k", "3"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert table_row(out, "")[:4] == jobs
    assert table_row(out, "name") == [s["name"] for s in saved]
    assert table_row(out, "test/acc")[:4] == [f"{s['metrics']['test/acc']:.4f}" for s in saved]
    for job, column in (("0", 0), ("3", 3)):
        result = ShapleyResult.load(sweep / job / "neuron_shapley" / "accuracy.pt")
        assert table_row(out, "evaluations")[column] == str(result.n_evals)
    # Pooled: the two seeds of each setting, baseline repair=none, cells = mean ± sd of the saved numbers.
    pooled = out[out.index("## Pooled over seeds"):]
    assert "4 runs in 2 groups" in pooled and "Baseline: repair=none (the group with repair=none)" in pooled
    assert table_row(pooled, "runs") == ["0, 1", "2, 3"]
    for group, runs in enumerate((saved[:2], saved[2:])):
        accuracies = torch.tensor([r["metrics"]["test/acc"] for r in runs], dtype=torch.float64)
        expected = f"{accuracies.mean():.4f} ± {accuracies.std():.4f}"
        assert table_row(pooled, "test/acc")[group].strip("*") == expected
    curves = [RemovalCurve.load(sweep / job / "neuron_shapley" / "accuracy_curve.pt") for job in jobs]
    after = torch.tensor([c.ranked[c.removed.index(3)] for c in curves[:2]], dtype=torch.float64)
    assert table_row(pooled, "accuracy: value after removing the top 3")[0] == f"{after.mean():.4f} ± {after.std():.4f}"
    assert any(line.startswith("- repair=filter_dropout: ") for line in pooled.splitlines())
    for png in ("report_accuracy_values.png", "report_accuracy_removal.png", "pooled_test_acc.png",
                "pooled_accuracy_removal.png", "pooled_accuracy_top3.png"):
        assert (sweep / png).stat().st_size > 1000
