"""Doctest set-up for ``pytest --doctest-modules``: every docstring example runs in a fresh temporary folder.

The callback examples fit a real Trainer, which writes its results under the working directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _doctests_in_a_temporary_folder(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    if isinstance(request.node, pytest.DoctestItem):
        monkeypatch.chdir(tmp_path)
