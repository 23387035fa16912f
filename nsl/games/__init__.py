"""Games played by a network's filters: any object with ``n_players`` and ``__call__(present) -> values``.

The games the callback plays by name are in the registry :data:`GAMES` ("accuracy", "class", "fairness",
"adversarial"); register a :class:`ModelGame` subclass there to add one. A game whose value is a weighted sum
over examples declares it (:class:`ExampleGame`, :func:`decomposes`), so estimators can sample
(coalition, example) pairs; :func:`network_examples_game` builds such games with exact Shapley values.
"""

from nsl.games.accuracy import EXAMPLE_METRICS, METRICS, AccuracyGame, ClassGame, coalition_metric
from nsl.games.adversarial import AdversarialGame
from nsl.games.attacks import linf_attack
from nsl.games.base import EvalData, ExampleGame, Game, ModelGame, check_game, decomposes
from nsl.games.counting import CountingGame
from nsl.games.fairness import FAIRNESS_METRICS, FIXED_GROUP_METRICS, FairnessGame
from nsl.games.registry import GAMES
from nsl.games.synthetic import (
    EXAMPLE_SHAPES,
    CountTerm,
    CountTermGames,
    ExampleMixture,
    HarsanyiGame,
    additive_game,
    network_examples_game,
    pairwise_game,
)

__all__ = [
    "EXAMPLE_METRICS",
    "EXAMPLE_SHAPES",
    "FAIRNESS_METRICS",
    "FIXED_GROUP_METRICS",
    "GAMES",
    "METRICS",
    "AccuracyGame",
    "AdversarialGame",
    "ClassGame",
    "CountTerm",
    "CountTermGames",
    "CountingGame",
    "EvalData",
    "ExampleGame",
    "ExampleMixture",
    "FairnessGame",
    "Game",
    "HarsanyiGame",
    "ModelGame",
    "additive_game",
    "check_game",
    "coalition_metric",
    "decomposes",
    "linf_attack",
    "network_examples_game",
    "pairwise_game",
]
