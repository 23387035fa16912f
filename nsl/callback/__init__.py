"""The NeuronShapley Lightning callback: which games, when, on which data, and what to log and repair."""

from nsl.callback.neuron_shapley import ESTIMATORS, NeuronShapley
from nsl.callback.specs import GAME_KINDS, EvalData, GameSpec, parse_games

__all__ = ["ESTIMATORS", "GAME_KINDS", "EvalData", "GameSpec", "NeuronShapley", "parse_games"]
