"""Shapley value estimators; each takes any game and returns a :class:`ShapleyResult`."""

from nsl.shapley import metrics
from nsl.shapley.distributed import Collective, LightningCollective, LocalCollective, TorchCollective
from nsl.shapley.exact import coalitions, exact, shapley_from_values
from nsl.shapley.monte_carlo import monte_carlo
from nsl.shapley.registry import ESTIMATORS
from nsl.shapley.result import RunningStats, ShapleyResult
from nsl.shapley.sampler import discounted
from nsl.shapley.semivalues import BANZHAF, SHAPLEY, Semivalue, parse_semivalue
from nsl.shapley.tmab import ORIGINAL_TMAB, confidence_radius, tmab

__all__ = [
    "BANZHAF",
    "ESTIMATORS",
    "ORIGINAL_TMAB",
    "SHAPLEY",
    "Collective",
    "LightningCollective",
    "LocalCollective",
    "RunningStats",
    "Semivalue",
    "ShapleyResult",
    "TorchCollective",
    "coalitions",
    "confidence_radius",
    "discounted",
    "exact",
    "metrics",
    "monte_carlo",
    "parse_semivalue",
    "shapley_from_values",
    "tmab",
]
