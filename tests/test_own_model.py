"""The README's own-model example runs as written: its files in a fresh folder, its command started there."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from nsl.report import RemovalCurve
from nsl.shapley import ShapleyResult

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def own_model_blocks() -> dict[str, str]:
    """The README's code blocks marked ``<!-- own-model: <file or "command"> -->``, by their mark."""
    found = re.findall(r"<!-- own-model: (\S+) -->\n```\w+\n(.*?)```", README.read_text(), flags=re.S)
    return dict(found)


def test_readme_marks_the_module_the_config_and_the_command() -> None:
    blocks = own_model_blocks()
    assert set(blocks) == {"my_module.py", "my_conf/experiment/my_model.yaml", "command"}
    assert "groups=channels" in blocks["my_module.py"] and 'self.log(f"{stage}_acc"' in blocks["my_module.py"]
    assert blocks["command"].strip() == "nsl-train --config-dir my_conf experiment=my_model"


def test_own_model_runs_through_nsl_train_as_the_readme_says(tmp_path: Path) -> None:
    blocks = own_model_blocks()
    for name, text in blocks.items():
        if name != "command":
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(text)
    program, *args = blocks["command"].split()
    assert program == "nsl-train"
    # The console script's sys.path starts at its bin folder, not at the working directory; `python -P -m`
    # starts it the same way (no working directory on sys.path), so my_module is found only if nsl-train
    # puts the launch folder there. PYTHONPATH names this checkout only, never tmp_path.
    speed_free = ["trainer.enable_progress_bar=false"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("NSL_ROOT", None)
    proc = subprocess.run(
        [sys.executable, "-P", "-m", "nsl.train", *args, *speed_free],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    (run,) = (tmp_path / "outputs" / "my_model" / "runs").iterdir()
    # The checkpoint callback chose the metric this module logs, said so, and kept the best epoch by it.
    assert "ModelCheckpoint monitors 'val_acc' (mode=max)" in output
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    (state,) = [v for k, v in last["callbacks"].items() if k.startswith("AutoModelCheckpoint")]
    assert state["monitor"] == "val_acc" and state["mode"] == "max"
    assert Path(state["best_model_path"]).parent == run / "checkpoints"
    assert float(state["best_model_score"]) >= 0.5  # the easy synthetic task is learned in two epochs
    out = run / "neuron_shapley"
    # game=all on data without groups: fairness is skipped before training, saying why; the class game names
    # the class it picked.
    assert "skipping game 'fairness'" in output
    (picked,) = [p.stem for p in out.glob("class_*.pt") if not p.stem.endswith("_curve")]
    for game in ("accuracy", picked, "adversarial"):
        result = ShapleyResult.load(out / f"{game}.pt")
        assert result.n_players == 48 and result.names[0] == "stem.0:0"
        assert any(n.startswith("block.depthwise:") for n in result.names)
        assert (out / f"{game}.csv").read_text().startswith("rank,filter,layer,value,stderr,samples")
        curve = RemovalCurve.load(out / f"{game}_curve.pt")
        assert curve.removed[0] == 0 and len(curve.ranked) == len(curve.removed)
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"val_acc", "test_acc"} <= set(metrics["metrics"])
    # test_acc is measured after the repair, on the same test split as the repair's "after" column.
    (repair,) = metrics["repair"]
    after = {row["metric"]: row["after"] for row in repair["report"]}
    assert abs(metrics["metrics"]["test_acc"] - after["accuracy"]) < 1e-6
