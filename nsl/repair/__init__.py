"""Repair: switch culprit filters off for good (``prune_filters``) or train with filter dropout.

``prune_filters`` zeroes (or, with ``physical=True``, removes) the filters a Shapley analysis blamed;
``FilterDropout`` drops random filters in training steps, with Shapley-guided probabilities from
``guided_probabilities``; ``finetune_with_dropout`` runs a short repair fine-tuning with it.
"""

from nsl.repair.dropout import FilterDropout, finetune_with_dropout, guided_probabilities
from nsl.repair.prune import PrunedFilters, prune_filters

__all__ = ["FilterDropout", "PrunedFilters", "finetune_with_dropout", "guided_probabilities", "prune_filters"]
