"""The Hydra app: the real config composes and instantiates, bad values fail early, a real multirun runs."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

import nsl
from conftest import TINY_TRAIN, compose_train, inspect_wandb
from nsl.report import RemovalCurve
from nsl.train import train

ROOT = Path(__file__).resolve().parents[1]
TINY = TINY_TRAIN




def test_default_config_composes_the_documented_run(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, [])
    assert cfg.data._target_ == "nsl.data.FairDigitsDataModule"
    assert cfg.model.net._target_ == "nsl.models.SmallCNN"
    assert [g.kind for g in cfg.callbacks.neuron_shapley.games] == ["accuracy", "class", "fairness", "adversarial"]
    assert cfg.callbacks.shapley_repair.method == "prune"
    assert cfg.logger.wandb.offline is True
    callback = instantiate(cfg.callbacks.neuron_shapley)
    assert isinstance(callback, nsl.NeuronShapley) and [s.name for s in callback.specs] == [
        "accuracy", "class", "fairness", "adversarial"
    ]


@pytest.mark.parametrize("repair", ["none", "prune", "filter_dropout", "guided_dropout"])
@pytest.mark.parametrize("game", ["all", "accuracy", "fairness", "adversarial"])
def test_every_group_option_instantiates(tmp_path: Path, repair: str, game: str) -> None:
    cfg = compose_train(tmp_path, [f"repair={repair}", f"game={game}"])
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if "_target_" in c]
    names = {type(c).__name__ for c in callbacks}
    assert ("FilterDropout" in names) == (repair == "filter_dropout")
    assert any(isinstance(c, nsl.NeuronShapley) for c in callbacks)
    repairs = [c for c in callbacks if isinstance(c, nsl.ShapleyRepair)]
    assert [r.name for r in repairs] == ([repair] if repair in ("prune", "guided_dropout") else [])


def test_bad_config_values_fail_with_clear_errors(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, ["callbacks.neuron_shapley.games=[accuracy,bogus]"])
    with pytest.raises(InstantiationException, match="unknown game kind 'bogus'"):
        instantiate(cfg.callbacks.neuron_shapley)
    cfg = compose_train(tmp_path, ["repair=filter_dropout", "callbacks.filter_dropout.p=1.0"])
    with pytest.raises(InstantiationException, match=r"p=1\.0"):
        instantiate(cfg.callbacks.filter_dropout)
    cfg = compose_train(tmp_path, [*TINY, "logger=none", "callbacks.neuron_shapley.layers=net.nope*"])
    with pytest.raises(ValueError, match=r"net\.nope\*"):
        train(cfg)


def test_train_runs_end_to_end_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_train(tmp_path, [*TINY, "logger=csv", "repair=prune", "callbacks.shapley_repair.k=2"])
    with caplog.at_level(logging.INFO):
        metrics = train(cfg)
    assert 0 <= metrics["test/acc"] <= 1
    out = tmp_path / "neuron_shapley"
    # The class game picks the class the model gets most wrong and names its files after it (class_<c>).
    (picked,) = [p.stem for p in out.glob("class_*.pt") if not p.stem.endswith("_curve")]
    for game in ("accuracy", picked, "fairness", "adversarial"):
        assert (out / f"{game}.pt").exists() and (out / f"{game}.csv").exists()
    report = (out / "repair.md").read_text()
    assert "| metric | before | after | change |" in report
    # The repair of the fairness game checked itself: kept (weights written), rolled back (none) or unchanged (no
    # filter to prune: nothing to roll back), and said so.
    outcomes = ("[ShapleyRepair] kept", "[ShapleyRepair] rolled back", "[ShapleyRepair] unchanged")
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith(outcomes)]
    outcome = next(o for o in ("kept", "rolled back", "unchanged") if line.startswith(f"[ShapleyRepair] {o}: "))
    assert outcome != "kept" or line.startswith("[ShapleyRepair] kept: fairness improved")
    assert outcome != "unchanged" or line.startswith("[ShapleyRepair] unchanged: nothing to repair: ")
    assert f"Outcome: {outcome}: " in report
    assert (out / "repaired_model.pt").exists() == (outcome == "kept")
    assert (str(out / "repaired_model.pt") in line) == (outcome == "kept")
    (csv_file,) = tmp_path.rglob("metrics.csv")
    with open(csv_file) as f:
        kept = [float(r["repair/kept"]) for r in csv.DictReader(f) if r.get("repair/kept")]
    assert kept == [float(outcome == "kept")]
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    saved = json.loads((tmp_path / "metrics.json").read_text())  # what nsl-report reads back
    assert saved["metrics"] == metrics and [(r["name"], r["outcome"]) for r in saved["repair"]] == [("prune", outcome)]
    assert RemovalCurve.load(out / "accuracy_curve.pt").removed == [0, 1, 2, 3]  # curve_steps=3
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    (checkpoint,) = [v for k, v in last["callbacks"].items() if k.startswith("AutoModelCheckpoint")]
    assert checkpoint["monitor"] == "val/acc" and checkpoint["mode"] == "max"  # what Classifier logs


def _wandb_run(run_dir: Path) -> dict:
    return next(r["run"] for r in inspect_wandb(run_dir) if r.get("type") == "run")


@pytest.mark.slow
def test_multirun_baseline_vs_filter_dropout_share_a_wandb_group(tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "NSL_ROOT": str(tmp_path)}
    cmd = [sys.executable, "-m", "nsl.train", "-m", "repair=none,filter_dropout", "game=accuracy", *TINY]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweeps = list((tmp_path / "outputs" / "train" / "multiruns").glob("*/*"))
    assert sorted(p.name for p in sweeps if p.is_dir() and p.name.isdigit()) == ["0", "1"]
    runs = sorted(tmp_path.glob("outputs/train/multiruns/*/*/wandb/offline-run-*"))
    assert len(runs) == 2, runs
    infos = [_wandb_run(r) for r in runs]
    assert infos[0]["run_group"] == infos[1]["run_group"]
    assert {i["display_name"] for i in infos} == {"repair=none,game=accuracy", "repair=filter_dropout,game=accuracy"}
    assert infos[0]["run_id"] != infos[1]["run_id"]


@pytest.mark.slow
def test_configs_ship_in_the_wheel(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("nsl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for config in sorted((ROOT / "nsl" / "conf").rglob("*.yaml")):
        assert f"nsl/conf/{config.relative_to(ROOT / 'nsl' / 'conf')}" in names
