"""nsl: Neuron Shapley for PyTorch Lightning.

Pipeline: players (filters) → games (torchmetrics values) → estimators (tmab, monte_carlo, exact) →
callback → repair.
"""

from nsl import games, shapley
from nsl.games import AccuracyGame, AdversarialGame, ClassGame, FairnessGame
from nsl.players import FilterPlayers
from nsl.shapley import ShapleyResult, exact, monte_carlo, tmab

__version__ = "0.1.0"

__all__ = [
    "AccuracyGame",
    "AdversarialGame",
    "ClassGame",
    "FairnessGame",
    "FilterPlayers",
    "ShapleyResult",
    "exact",
    "games",
    "monte_carlo",
    "shapley",
    "tmab",
]
