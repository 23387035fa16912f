"""Repair: switch culprit filters off for good (``prune_filters``) or train with filter dropout.

``prune_filters`` zeroes (or, with ``physical=True``, removes) the filters a Shapley analysis blamed;
``FilterDropout`` drops random filters in training steps, with Shapley-guided probabilities from
``guided_probabilities``; ``finetune_with_dropout`` runs a short fine-tuning with it on a Trainer of its own.
The methods the :class:`~nsl.callback.ShapleyRepair` callback applies are registered by name in
:data:`REPAIRS` ("prune", "guided_dropout").
"""

from nsl.repair.dropout import FilterDropout, finetune_with_dropout, guided_probabilities
from nsl.repair.methods import REPAIRS, GuidedDropout, PruneCulprits, RepairMethod
from nsl.repair.prune import PrunedFilters, prune_filters

__all__ = [
    "REPAIRS",
    "FilterDropout",
    "GuidedDropout",
    "PruneCulprits",
    "PrunedFilters",
    "RepairMethod",
    "finetune_with_dropout",
    "guided_probabilities",
    "prune_filters",
]
