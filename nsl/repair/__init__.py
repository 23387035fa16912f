"""Repair: switch culprit filters off for good (``prune_filters``) or train with filter dropout.

``prune_filters`` zeroes (or, with ``physical=True``, removes) the filters a Shapley analysis blamed;
``FilterDropout`` drops random filters in training steps, with Shapley-guided probabilities from
``guided_probabilities``; ``finetune_with_dropout`` runs a short fine-tuning with it on a Trainer of its own.
The methods the :class:`~nsl.callback.ShapleyRepair` callback applies are registered by name in
:data:`REPAIRS` ("prune", "guided_dropout"). A physically pruned model is saved with ``save_pruned`` and rebuilt
on a fresh module with ``load_pruned`` / ``load_pruned_checkpoint`` (its pruning plan is replayed first).
"""

from nsl.repair.dropout import FilterDropout, finetune_with_dropout, guided_probabilities
from nsl.repair.methods import REPAIRS, GuidedDropout, PruneCulprits, RepairAction, RepairContext, RepairMethod
from nsl.repair.plan import (
    apply_pruning_plan,
    load_pruned,
    load_pruned_checkpoint,
    plan_path,
    pruning_plan,
    save_pruned,
)
from nsl.repair.prune import PrunedFilters, prune_filters

__all__ = [
    "REPAIRS",
    "FilterDropout",
    "GuidedDropout",
    "PruneCulprits",
    "PrunedFilters",
    "RepairAction",
    "RepairContext",
    "RepairMethod",
    "apply_pruning_plan",
    "finetune_with_dropout",
    "guided_probabilities",
    "load_pruned",
    "load_pruned_checkpoint",
    "plan_path",
    "prune_filters",
    "pruning_plan",
    "save_pruned",
]
