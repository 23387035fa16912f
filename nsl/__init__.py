"""nsl: Neuron Shapley for PyTorch Lightning.

Pipeline: players (filters) → games (torchmetrics values) → estimators (tmab, monte_carlo, exact) →
``NeuronShapley`` callback → ``ShapleyRepair`` callback. The extension points are registries by name:
:data:`GAMES`, :data:`ESTIMATORS`, :data:`REPAIRS` and :data:`BASELINES`; a new game, estimator, repair or
baseline score is one file, one registration and (for ``nsl-train``) one YAML. Importing nsl has no side
effect: no plotting backend is chosen, no global state is set.
"""

from nsl import baselines, games, interactions, repair, shapley
from nsl.baselines import BASELINES
from nsl.callback import NeuronShapley, ShapleyRepair
from nsl.games import GAMES, AccuracyGame, AdversarialGame, ClassGame, EvalData, FairnessGame, Game, ModelGame
from nsl.players import FilterPlayers
from nsl.registry import Registry
from nsl.repair import REPAIRS, FilterDropout, PrunedFilters, prune_filters
from nsl.shapley import ESTIMATORS, ShapleyResult, exact, monte_carlo, tmab

__version__ = "0.1.0"

__all__ = [
    "BASELINES",
    "ESTIMATORS",
    "GAMES",
    "REPAIRS",
    "AccuracyGame",
    "AdversarialGame",
    "ClassGame",
    "EvalData",
    "FairnessGame",
    "FilterDropout",
    "FilterPlayers",
    "Game",
    "ModelGame",
    "NeuronShapley",
    "PrunedFilters",
    "Registry",
    "ShapleyRepair",
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
