"""nsl-report pools a multirun over seeds: groups by overrides, mean ± sd, clear differences, one plot per measure."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from nsl.report import RemovalCurve
from nsl.report.compare import find_runs, gini, half_mass, main
from nsl.report.pool import baseline_group, group_runs, pool
from nsl.shapley import ShapleyResult

VALUES = {  # per group, per seed: the accuracy game's values (all filters sampled 7 times, so all ranked)
    "none": [[0.5, -0.25, 0.125, 0.0625], [0.4, -0.2, 0.1, 0.05], [0.45, -0.3, 0.15, 0.05]],
    "filter_dropout": [[0.3, 0.25, 0.2, 0.1], [0.35, 0.2, 0.2, 0.15], [0.25, 0.25, 0.25, 0.2]],
}
TEST_ACC = {"none": [0.90, 0.91, 0.92], "filter_dropout": [0.95, 0.96, 0.97]}
AFTER_TOP2 = {"none": [0.5, 0.6, 0.7], "filter_dropout": [0.55, 0.65, 0.75]}  # within the spread
AFTER_TOP4 = {"none": [0.2, 0.2, 0.2], "filter_dropout": [0.4, 0.4, 0.4]}  # clearly apart


def write_job(root: Path, job: int, overrides: list[str], test_acc: float, values: list[float],
              after_top2: float, after_top4: float, counts: int = 7) -> None:
    """One job folder as nsl-train writes it: .hydra/overrides.yaml, metrics.json, the result and its curve."""
    run = root / str(job)
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), run / ".hydra" / "overrides.yaml")  # what Hydra writes
    name = ",".join(o for o in overrides if "." not in o.split("=")[0])
    (run / "metrics.json").write_text(json.dumps({"name": name, "metrics": {"test/acc": test_acc, "val/acc": 0.5},
                                                  "repair": []}))
    results = run / "neuron_shapley"
    results.mkdir()
    n = len(values)
    ShapleyResult(values=torch.tensor(values, dtype=torch.float64), stderr=torch.full((n,), 0.01, dtype=torch.float64),
                  counts=torch.full((n,), counts), names=[f"conv:{i}" for i in range(n)], n_evals=100, converged=True,
                  k=2, method="tmab").save(results / "accuracy.pt")
    RemovalCurve([0, 1, 2, 3, 4], [0.9, 0.8, after_top2, 0.3, after_top4], [0.9] * 5, [0.01] * 5).save(
        results / "accuracy_curve.pt"
    )


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """``nsl-train -m repair=none,filter_dropout seed=0,1,2``: six jobs, the seed varying fastest."""
    root = tmp_path / "multirun"
    job = 0
    for repair in ("none", "filter_dropout"):
        for seed in range(3):
            write_job(root, job, [f"repair={repair}", "game=accuracy", "trainer.max_epochs=1", f"seed={seed}"],
                      TEST_ACC[repair][seed], VALUES[repair][seed], AFTER_TOP2[repair][seed], AFTER_TOP4[repair][seed])
            job += 1
    return root


def row(text: str, label: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")][1:]


def cell(xs: list[float], spec: str) -> str:
    return f"{format(statistics.mean(xs), spec)} ± {format(statistics.stdev(xs), spec)}"


def test_seeds_pooled_per_group_with_clear_differences_marked(sweep: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(sweep), "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    assert len(row(out, "name")) == 6  # the per-run side-by-side table is still there
    pooled = out[out.index("## Pooled over seeds"):]
    assert "6 runs in 2 groups" in pooled and "Baseline: repair=none (the group with repair=none)" in pooled
    header = pooled.splitlines()[4]
    assert header == "|  | repair=none (baseline) | repair=filter_dropout |"
    assert row(pooled, "runs") == ["0, 1, 2", "3, 4, 5"]
    # Each cell is mean ± sample sd of what the runs saved; bold when |Δmean| > sd_a + sd_b.
    assert row(pooled, "test/acc") == [cell(TEST_ACC["none"], ".4f"), f"**{cell(TEST_ACC['filter_dropout'], '.4f')}**"]
    assert "val/acc" not in [line.split("|")[1].strip() for line in pooled.splitlines() if line.startswith("|")]
    assert row(pooled, "accuracy: value after removing the top 2") == [
        cell(AFTER_TOP2["none"], ".4f"), cell(AFTER_TOP2["filter_dropout"], ".4f")  # 0.05 apart, sds 0.1: not clear
    ]
    assert row(pooled, "accuracy: value after removing the top 4") == ["0.2000 ± 0.0000", "**0.4000 ± 0.0000**"]
    for label, fn, spec in (("filters holding half of Σ abs(value)", half_mass, ".1f"),
                            ("Gini of abs(value)", gini, ".3f")):
        expected = [cell([float(fn(torch.tensor(v))) for v in VALUES[g]], spec) for g in ("none", "filter_dropout")]
        cells = [c.strip("*") for c in row(pooled, f"accuracy: {label}")]
        assert cells == expected
    verdict = next(line for line in pooled.splitlines() if line.startswith("- repair=filter_dropout:"))
    assert verdict.startswith("- repair=filter_dropout: clearly different from repair=none in ")
    assert "test/acc (0.9600 ± 0.0100 vs 0.9100 ± 0.0100)" in verdict
    assert "value after removing the top 2" not in verdict and "top 4 (0.4000 ± 0.0000 vs 0.2000 ± 0.0000)" in verdict
    assert (sweep / "report.md").read_text() == out.split("Written: ")[0].rstrip("\n") + "\n"
    for name in ("test_acc", "accuracy_top2", "accuracy_top4", "accuracy_half_mass", "accuracy_gini",
                 "accuracy_removal"):
        assert (sweep / f"pooled_{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_baseline_option_and_its_errors(sweep: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(sweep), "--baseline", "repair=filter_dropout", "--no-plots"]) == 0
    pooled = capsys.readouterr().out.split("## Pooled over seeds")[1]
    assert "|  | repair=none | repair=filter_dropout (baseline) |" in pooled
    assert row(pooled, "test/acc") == [f"**{cell(TEST_ACC['none'], '.4f')}**", cell(TEST_ACC["filter_dropout"], ".4f")]
    assert not list(sweep.glob("pooled_*.png"))  # --no-plots
    assert main([str(sweep), "--baseline", "repair=bogus"]) == 2
    err = capsys.readouterr().err
    assert "--baseline='repair=bogus': no group has that override" in err and "repair=filter_dropout" in err


def test_grouping_ignores_every_seed_and_finds_the_dropout_rate_zero_baseline(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    jobs = [
        ["callbacks.filter_dropout.p=0.1", "seed=0", "callbacks.neuron_shapley.seed=0"],
        ["callbacks.filter_dropout.p=0.1", "seed=1", "callbacks.neuron_shapley.seed=1"],
        ["callbacks.filter_dropout.p=0.0", "seed=0", "+data.seed=3"],
        ["callbacks.filter_dropout.p=0.0", "seed=1", "+data.seed=4"],
        ["seed=0"],  # the configured rate
    ]
    for job, overrides in enumerate(jobs):
        write_job(root, job, ["repair=filter_dropout", *overrides], 0.9, [0.5, 0.25, 0.125, 0.0625], 0.5, 0.2)
    groups = group_runs(find_runs(root))
    assert [g.label for g in groups] == ["callbacks.filter_dropout.p=0.1", "callbacks.filter_dropout.p=0.0",
                                         "callbacks.filter_dropout.p=(default)"]
    assert [g.keys for g in groups] == [["0", "1"], ["2", "3"], ["4"]]
    assert baseline_group(groups) == (1, "the group with callbacks.filter_dropout.p=0")
    assert baseline_group(groups, "callbacks.filter_dropout.p=0.1")[0] == 0
    pooled = pool(find_runs(root))
    test_acc = next(m for m in pooled.measures if m.label == "test/acc")
    assert not pooled.clear(2, test_acc)  # one run: no spread, never judged


def test_runs_without_overrides_group_by_name_and_one_run_each_is_not_pooled(tmp_path: Path) -> None:
    root = tmp_path / "old"
    for job, repair in enumerate(("none", "filter_dropout")):
        write_job(root, job, [f"repair={repair}", "seed=0"], 0.9, [0.5, 0.25, 0.125, 0.0625], 0.5, 0.2)
        (root / str(job) / ".hydra" / "overrides.yaml").unlink()  # a run folder copied without Hydra's files
    runs = find_runs(root)
    assert [r.overrides for r in runs] == [None, None]
    assert [g.label for g in group_runs(runs)] == ["repair=none", "repair=filter_dropout"]  # from metrics.json names
    text = (main([str(root), "--no-plots"]), (root / "report.md").read_text())[1]
    assert "## Pooled over seeds" not in text
    assert "Each setting ran once (no seeds to pool): rerun the multirun with seed=0,1,2" in text


def test_unranked_results_give_no_concentration(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "unsampled"
    for job in range(2):
        write_job(root, job, ["repair=none", f"seed={job}"], 0.9 + job / 100, [0.0] * 4, 0.5, 0.2, counts=0)
    assert main([str(root), "--no-plots"]) == 0
    pooled = capsys.readouterr().out.split("## Pooled over seeds")[1]
    assert row(pooled, "test/acc") == ["0.9050 ± 0.0071"]
    # All-zero estimates of never-sampled filters are no concentration: shown as missing, not as 0.
    assert row(pooled, "accuracy: Gini of abs(value)") == ["—"]
    assert row(pooled, "accuracy: filters holding half of Σ abs(value)") == ["—"]
