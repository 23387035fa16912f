"""The estimator benchmarks (calibration, sample efficiency): their pieces, and smoke runs read back from W&B."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from conftest import inspect_wandb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.benchmarks import calibration, sample_efficiency


def _history(run_dir: Path) -> dict:
    history: dict = {}
    for record in inspect_wandb(run_dir):
        if record.get("type") == "history":
            history.update(record["history"]["item"])
    return history


def test_clopper_pearson_upper_bound():
    assert calibration.clopper_pearson_upper(0, 200) == pytest.approx(1 - 0.05 ** (1 / 200), rel=1e-6)
    assert calibration.clopper_pearson_upper(5, 5) == 1.0
    assert 0.05 < calibration.clopper_pearson_upper(5, 100) < 0.11  # 5 % observed, upper bound ≈ 10.2 %
    assert calibration.clopper_pearson_upper(0, 0) == 1.0


def test_ninety_percent_budget_is_the_first_rung_where_nine_in_ten_are_right():
    def runs(correct_at: list[int]) -> list[dict]:  # seed s is ε-correct from budget correct_at[s] on
        return [{"ladder": {"m": {b: (b >= c, 1.0, 0.0) for b in (10, 20, 30, 40)}}} for c in correct_at]

    assert sample_efficiency.ninety(runs([10] * 9 + [40]), "m") == (10, None)
    assert sample_efficiency.ninety(runs([10] * 8 + [30, 40]), "m") == (30, 20)
    assert sample_efficiency.ninety(runs([50] * 2 + [10] * 8), "m") == (None, 40)


def test_bad_arguments_fail_before_work(tmp_path):
    with pytest.raises(ValueError, match="--seeds=0"):
        sample_efficiency.main(["--seeds", "0", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="--runs=0"):
        calibration.main(["--runs", "0", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_calibration_quick_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    torch.set_num_threads(1)
    out = calibration.main(["--quick", "--workers", "1", "--out", str(tmp_path)])
    columns, rows = out["tables"]["calibration"]
    assert {r[0] for r in rows} == {"rare", "flat", "interactions", "degenerate", "constant"}
    constant = next(r for r in rows if r[0] == "constant")
    assert constant[4] == 0  # nothing certified on a game whose every marginal is 0
    assert all(r[5] <= r[4] for r in rows)  # wrong ≤ certified
    ablation = out["tables"]["ablation"][1]
    assert next(r[0] for r in ablation) == "defaults" and len(ablation) == len(calibration.ABLATIONS)
    history = _history(out["wandb_dir"])
    assert history["calibration.nrows"] == len(rows) and history["calibration.ncols"] == len(columns)
    assert "against δ = 0.05" in (tmp_path / "calibration.md").read_text()


@pytest.mark.slow
def test_sample_efficiency_quick_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    torch.set_num_threads(1)
    out = sample_efficiency.main(["--quick", "--workers", "1", "--threads", "1", "--out", str(tmp_path)])
    text = (tmp_path / "sample_efficiency.md").read_text()
    for method in sample_efficiency.METHODS:
        assert f"| {method} |" in text
    for title, runs in out["games"].items():
        n = runs[0]["n"]
        for run in runs:
            assert run["tmab"]["evals"] > 0 and run["epsilon_value"] > 0, title
            for method, ladder in run["ladder"].items():
                assert ladder, (title, method)
                assert all(b % n == 0 and 0 <= p <= 1 for b, (_, p, _) in ladder.items()), (title, method)
    assert (tmp_path / "sample_efficiency.png").stat().st_size > 5000
    history = _history(out["wandb_dir"])
    for key, (columns, rows) in out["tables"].items():
        assert history[f"{key}._type"] == "table-file"
        assert history[f"{key}.nrows"] == len(rows) and history[f"{key}.ncols"] == len(columns)
    assert history["figure._type"] == "image-file"


@pytest.mark.slow
def test_digits_tmab_quick_run(tmp_path, monkeypatch):
    from experiments import digits_tmab

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = digits_tmab.main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    assert set(out["results"]) == set(digits_tmab.METRICS)
    for result in out["results"].values():
        assert 0 < result.n_evals <= 600 and result.epsilon_value > 0
    _, rows = out["tables"]["against a long reference"]
    assert len(rows) == 1 and rows[0][3] in (True, False)
    history = _history(out["wandb_dir"])
    assert history["tmab on the digits CNN.nrows"] == len(digits_tmab.METRICS)
