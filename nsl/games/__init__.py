"""Games played by a network's filters: any object with ``n_players`` and ``__call__(present) -> values``.

The games the callback plays by name are in the registry :data:`GAMES` ("accuracy", "class", "fairness",
"adversarial"); register a :class:`ModelGame` subclass there to add one.
"""

from nsl.games.accuracy import METRICS, AccuracyGame, ClassGame, coalition_metric
from nsl.games.adversarial import AdversarialGame
from nsl.games.attacks import linf_attack
from nsl.games.base import EvalData, ExampleGame, Game, ModelGame, check_game, decomposes
from nsl.games.counting import CountingGame
from nsl.games.fairness import FAIRNESS_METRICS, FairnessGame
from nsl.games.registry import GAMES
from nsl.games.synthetic import HarsanyiGame, additive_game, pairwise_game

__all__ = [
    "FAIRNESS_METRICS",
    "GAMES",
    "METRICS",
    "AccuracyGame",
    "AdversarialGame",
    "ClassGame",
    "CountingGame",
    "EvalData",
    "ExampleGame",
    "FairnessGame",
    "Game",
    "HarsanyiGame",
    "ModelGame",
    "additive_game",
    "check_game",
    "coalition_metric",
    "decomposes",
    "linf_attack",
    "pairwise_game",
]
