"""report_experiment: the markdown file and the offline W&B run an experiment leaves behind."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest

from conftest import inspect_wandb
from nsl.report import report_experiment


def _png(path):
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    fig.savefig(path)
    plt.close(fig)
    return path


def test_markdown_and_wandb_run_hold_the_same_table(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    png = _png(tmp_path / "curve.png")
    out = report_experiment(
        "demo",
        tmp_path,
        tables={"removal": (["removed", "accuracy"], [[0, 0.99], [5, 0.2125], ["AUC", 0.25]])},
        images={"curve": png},
        summary={"auc": 0.25},
        config={"epochs": 3, "out": tmp_path},
        header="Accuracy after removals.",
    )
    text = out["markdown"].read_text()
    assert text.startswith("Accuracy after removals.")
    assert "| removed | accuracy |" in text and "| 5 | 0.212 |" in text
    records = inspect_wandb(out["wandb_dir"])
    dump = str(records)
    assert "removal" in dump and "curve" in dump and "auc" in dump


def test_bad_input_fails_before_writing(tmp_path):
    with pytest.raises(ValueError, match="tables is empty"):
        report_experiment("x", tmp_path, tables={}, wandb=False)
    with pytest.raises(ValueError, match=r"missing\.png"):
        report_experiment("x", tmp_path, tables={"t": (["a"], [[1]])}, images={"f": tmp_path / "missing.png"})
    with pytest.raises(ValueError, match=r"\['t'\] name both a table and an image"):
        report_experiment("x", tmp_path, tables={"t": (["a"], [[1]])}, images={"t": _png(tmp_path / "t.png")})
    assert not (tmp_path / "x.md").exists()
