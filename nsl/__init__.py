"""nsl: Neuron Shapley for PyTorch Lightning.

Pipeline: players (filters) → games (torchmetrics values) → estimators (tmab, monte_carlo, exact) →
callback → repair.
"""

from nsl import baselines, games, interactions, repair, shapley
from nsl.callback import NeuronShapley
from nsl.games import AccuracyGame, AdversarialGame, ClassGame, FairnessGame
from nsl.players import FilterPlayers
from nsl.repair import FilterDropout, PrunedFilters, prune_filters
from nsl.shapley import ShapleyResult, exact, monte_carlo, tmab

__version__ = "0.1.0"

__all__ = [
    "AccuracyGame",
    "AdversarialGame",
    "ClassGame",
    "FairnessGame",
    "FilterDropout",
    "FilterPlayers",
    "NeuronShapley",
    "PrunedFilters",
    "ShapleyResult",
    "baselines",
    "exact",
    "games",
    "interactions",
    "monte_carlo",
    "prune_filters",
    "repair",
    "shapley",
    "tmab",
]
