"""The estimator benchmarks (calibration, certified networks, sample efficiency): their pieces, and smoke runs read
back from W&B."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest
import torch

from conftest import inspect_wandb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.benchmarks import calibration, certify_network, sample_efficiency
from nsl.shapley import ShapleyResult


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


def test_calibration_bad_arguments_fail_before_work(tmp_path):
    cases = [
        (["--example-sizes", "2"], "n_players=2"),  # the per-example games need 3 players
        (["--sizes", "30"], "at least 40 players"),
        (["--ablation-runs", "-1"], "--ablation-runs=-1"),
        (["--quick", "--top-k", "30"], "--top-k=30"),  # the quick games have 30 players
        (["--full-set-max-rows", "0"], "--full-set-max-rows=0"),
    ]
    for argv, message in cases:
        with pytest.raises(ValueError, match=message):
            calibration.main([*argv, "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="nothing to run"):
        calibration.main(["--example-shapes", "--shapes", "--ablation-runs", "0", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())


def test_calibration_plan_runs_each_job_once():
    args = calibration.parse(["--quick"])
    blocks, unique = calibration.plan_runs(args)
    jobs = {(table, str(label)): jobs for table, label, jobs in blocks}
    # 3 per-example families × 2 runs, again without the floor; 5 full-set families × 1 run; 6 ablation settings
    # × 1 run, whose 'defaults' run is the full-set 'rare' run itself.
    assert len(unique) == 3 * 2 * 2 + 5 + 6 - 1 == len(set(unique))
    for shape in calibration.EXAMPLE_SHAPES:
        on = jobs[("floor", str((shape, 30, "on (default)")))]
        # the default runs, not new ones
        assert on == jobs[("calibration", str(("examples", shape, 30, 20, "shapley")))]
        off = jobs[("floor", str((shape, 30, "off")))]
        assert [j[:5] for j in off] == [j[:5] for j in on] and all(dict(j[5]) == calibration.NO_FLOOR for j in off)
    assert jobs[("ablation", "defaults")] == jobs[("calibration", str(("full-set", "rare", 40, 1, "shapley")))]


@pytest.mark.slow
def test_calibration_quick_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    torch.set_num_threads(1)
    out = calibration.main(["--quick", "--workers", "1", "--out", str(tmp_path)])
    columns, rows = out["tables"]["calibration"]
    c = {name: i for i, name in enumerate(columns)}
    by_family = {r[c["family"]]: r for r in rows}
    per_example = [f"per-example {s}" for s in calibration.EXAMPLE_SHAPES]
    assert set(by_family) == {*per_example, *calibration.NETWORK_SHAPES}
    for r in rows:
        assert 0 <= r[c["wrong"]] <= r[c["certified"]] <= r[c["runs"]]
    for family in per_example:  # sampled per example, certified, and ε-correct against the exact values
        r = by_family[family]
        assert (r[c["sampling"]], r[c["N"]], r[c["M"]], r[c["runs"]]) == ("examples", 30, 20, 2)
        assert r[c["certified"]] >= 1 and r[c["wrong"]] == 0
        rows_needed = int(r[c["median rows to certify"]].replace(",", ""))
        assert abs(rows_needed / 20 - int(r[c["full-set equivalent"]].replace(",", ""))) <= 1
    for family in calibration.NETWORK_SHAPES:
        assert by_family[family][c["sampling"]] == "coalitions" and by_family[family][c["M"]] == 1
    assert by_family["constant"][c["certified"]] == 0  # nothing certified on a game whose every marginal is 0

    floor_columns, floor_rows = out["tables"]["rare-event floor"]
    f = {name: i for i, name in enumerate(floor_columns)}
    assert len(floor_rows) == 2 * len(calibration.EXAMPLE_SHAPES)
    for on, off in zip(floor_rows[::2], floor_rows[1::2], strict=True):
        assert (on[f["rare-event floor"]], off[f["rare-event floor"]]) == ("on (default)", "off")
        assert on[f["family"]] == off[f["family"]] and on[f["runs"]] == off[f["runs"]] == 2
        same = by_family[on[f["family"]]]  # the default row is the calibration table's runs
        assert (on[f["certified"]], on[f["wrong"]]) == (same[c["certified"]], same[c["wrong"]])
        rows_on, rows_off = (int(r[f["median rows to certify"]].replace(",", "")) for r in (on, off))
        assert rows_off < rows_on  # the floor widens intervals: it costs rows
        assert off[f["rows with / without the floor"]] == f"{rows_on / rows_off:.1f}×"

    ablation = out["tables"]["ablation"][1]
    assert [r[0] for r in ablation] == list(calibration.ABLATIONS)
    history = _history(out["wandb_dir"])
    for key, (columns, rows) in out["tables"].items():
        assert history[f"{key}.nrows"] == len(rows) and history[f"{key}.ncols"] == len(columns)
    text = (tmp_path / "calibration.md").read_text()
    assert "against δ = 0.05" in text and "### rare-event floor" in text


def _result(values: list[float], stderr: float, k: int = 2, epsilon_value: float = 0.1) -> ShapleyResult:
    n = len(values)
    return ShapleyResult(values=torch.tensor(values, dtype=torch.float64), stderr=torch.full((n,), stderr),
                         counts=torch.full((n,), 100), n_evals=100, converged=True, k=k, epsilon_value=epsilon_value)


def test_violation_counts_only_what_the_reference_noise_cannot_explain():
    returned = _result([1.0, 0.0, 0.8, 0.1], stderr=0.0)  # returns players 0 and 2
    precise = _result([1.0, 0.9, 0.5, 0.2], stderr=0.01)  # k-th value 0.9: player 2 sits 0.4 below, ε = 0.1
    assert certify_network.violations(returned, precise) == 1
    noisy = _result([1.0, 0.9, 0.5, 0.2], stderr=0.2)  # 0.4 − ε is within 2·√2·0.2 of the k-th: noise
    assert certify_network.violations(returned, noisy) == 0
    left_out = _result([1.0, 0.9, 0.95, 0.2], stderr=0.0)  # 0.95 left out is within ε of the k-th
    assert certify_network.violations(_result([1.0, 0.95, 0.0, 0.2], 0.0), left_out) == 0
    # the reference's k-th is 1.0: returned player 1 (0.3) is far below it, left-out player 2 (1.5) far above
    assert certify_network.violations(_result([1.0, 0.9, 0.0, 0.2], 0.0), _result([1.0, 0.3, 1.5, 0.2], 0.0)) == 2


def test_captum_permutations_for_ninety_percent_follow_the_normal_approximation():
    truth = torch.tensor([1.0, 0.9, 0.0], dtype=torch.float64)
    exact = torch.tensor([[1.0, 0.9, 0.0], [1.0, 0.9, 0.0]], dtype=torch.float64)  # no spread: one is enough
    assert certify_network.permutations_for_target(exact, truth, 1, 0.05, 500) == 1
    # Players 0 and 1 move oppositely by ±1 per permutation (unbiased variance 2 from two permutations), so the
    # estimate of φ0 − φ1 has sd 2√2/√p; player 1 (0.9) is not within ε = 0.05 of the top value 1.0, so a run is
    # ε-correct iff that difference stays above −0.1: 90 % of runs at √p = 1.2816 · 2√2 / 0.1, p ≈ 1,314.
    spread = truth + torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]], dtype=torch.float64)
    p = certify_network.permutations_for_target(spread, truth, 1, 0.05, 4000)
    assert 0.85 * 1314 < p < 1.15 * 1314
    assert certify_network.share_correct(spread, truth, 1, 0.05, p, 4000, seed=1) >= 0.87
    assert certify_network.share_correct(spread, truth, 1, 0.05, p // 4, 4000, seed=1) < 0.8


def test_certify_network_bad_arguments_fail_before_work(tmp_path):
    cases = [
        (["--eval-size", "301"], "--eval-size=301"),
        (["--reference-seeds", "-1"], "--reference-seeds=-1"),
        (["--captum-permutations", "-2"], "--captum-permutations=-2"),
        (["--max-rows", "0"], "--max-rows=0"),
        (["--seeds", "0"], "--seeds=0"),
    ]
    for argv, message in cases:
        with pytest.raises(ValueError, match=message):
            certify_network.main([*argv, "--out", str(tmp_path)])
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


@pytest.mark.slow
def test_certify_network_quick_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = certify_network.main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    runs = out["runs"]
    assert [r["seed"] for r in runs] == [0, 1]
    for r in runs:  # per-example sampling within the quick budget, timed
        assert r["result"].sampling == "examples" and 0 < r["rows"] <= 400_000
        assert r["wall"] > 0 and r["rows_per_s"] == pytest.approx(r["rows"] / r["wall"])
    certified = [r for r in runs if r["result"].converged]
    _, (cost,) = out["tables"]["certification"]
    assert cost[0] == f"{len(certified)}/2" and certified, "the quick network should certify its top-5"
    median_rows = statistics.median(r["rows"] for r in certified)
    assert cost[1] == f"{median_rows:,.0f}"
    _, ref_rows = out["tables"]["against the long reference"]
    assert len(ref_rows) == 2
    for r in certified:  # a certified top-5 is right against the long reference, beyond its noise
        assert r["violations"] == 0 and r["ref_correct"]
    _, captum = out["tables"]["against Captum ShapleyValueSampling"]
    assert [row[0].split(" ")[0] for row in captum] == ["tmab", "Captum", "Captum"]
    captum_rows = int(captum[1][1].replace(",", ""))
    n, m = 18, 60  # the quick network's filters and images
    assert (captum_rows // m - 1) % n == 0  # (1 + p·N)·M rows for p permutations
    assert captum[2][1] == f"{captum_rows / median_rows:.1f}"
    history = _history(out["wandb_dir"])
    for key, (columns, rows) in out["tables"].items():
        assert history[f"{key}.nrows"] == len(rows) and history[f"{key}.ncols"] == len(columns)
    assert out["summary"]["certified"] == len(certified)
    assert "captum/ratio" in str(inspect_wandb(out["wandb_dir"]))  # the summary reached the W&B run too


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
