"""The README's code runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_readme_callback_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "NeuronShapley(" in b and "trainer.fit" in b)
    monkeypatch.chdir(tmp_path)  # the Trainer writes its results under the working directory
    scope: dict = {}
    exec(compile(example, str(README), "exec"), scope)
    shapley = scope["shapley"]
    assert set(shapley.results) == {"accuracy", "class_3"}
    assert [h["epoch"] for h in shapley.history["accuracy"]] == [0, 2, 4]
    assert (tmp_path / "neuron_shapley" / "accuracy.csv").exists()
