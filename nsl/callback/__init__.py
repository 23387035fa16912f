"""The Lightning callbacks: ``NeuronShapley`` analyses and logs, ``ShapleyRepair`` acts on what it found."""

from nsl.callback.neuron_shapley import NeuronShapley
from nsl.callback.repair import ShapleyRepair
from nsl.callback.specs import EvalData, GameSpec, parse_games

__all__ = ["EvalData", "GameSpec", "NeuronShapley", "ShapleyRepair", "parse_games"]
