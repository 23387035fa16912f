"""The estimator registry: every Shapley estimator by name, with one call signature.

Each entry is called as ``estimator(game, top_k=None, *, tail="top", seed=0, names=None, ...)`` and returns a
:class:`~nsl.shapley.result.ShapleyResult`; sampling estimators also take ``max_evals``, ``max_seconds``,
``resume``, ``progress`` and ``collective``. The callback, the Hydra configs and the benchmarks select from here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nsl.registry import Registry

ESTIMATORS: Registry[Callable[..., Any]] = Registry("estimator")
