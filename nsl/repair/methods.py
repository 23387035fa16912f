"""Repair methods by name: what :class:`~nsl.callback.ShapleyRepair` does with a game's Shapley values.

Each method is a small class registered in :data:`REPAIRS`; its constructor takes (and checks) that method's
own options, so a YAML with an option the method does not know fails before training. Adding one is a
subclass of :class:`RepairMethod` plus ``@REPAIRS.register("name")``.

    >>> from nsl.repair import REPAIRS
    >>> REPAIRS.names()
    ('prune', 'guided_dropout')
    >>> REPAIRS["prune"](k=3)
    PruneCulprits(k=3, negative=None, only_signed=True, z=2.0, physical=False)
    >>> REPAIRS["prune"](p=0.1)
    Traceback (most recent call last):
    ...
    TypeError: PruneCulprits.__init__() got an unexpected keyword argument 'p'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from nsl.players import FilterPlayers
from nsl.registry import Registry
from nsl.repair.dropout import GUIDED_MODES, guided_probabilities
from nsl.repair.prune import PrunedFilters, prune_filters
from nsl.shapley import ShapleyResult
from nsl.validation import check_bool, check_choice, check_int, check_number, check_probability


@dataclass(frozen=True)
class RepairMethod:
    """Base of the repair methods: options as dataclass fields, checked in ``__post_init__``."""

    #: True: by default the repair acts on a game that measures a defect (fairness, adversarial weakness);
    #: False: on a performance game (accuracy). Games declare which they are (``ModelGame.measures_defect``).
    targets_defects: ClassVar[bool] = True

    @property
    def finetune_epochs(self) -> int:
        """Training epochs at the end of the fit that this repair fine-tunes (0: it acts once, at fit end)."""
        return 0


@dataclass(frozen=True)
class PruneCulprits(RepairMethod):
    """Switch the game's ``k`` culprits off for good (:func:`~nsl.repair.prune_filters`), at fit end.

    Args:
        k: culprits to prune.
        negative: ``None``: the game's own side (most negative values for accuracy and fairness, highest for
            attack success); True/False to force.
        only_signed: prune only culprits whose value has the harmful sign by more than ``z`` standard errors
            (the ``k`` most harmful of those): a filter whose estimate is within noise of 0 is not blamed. With
            few samples (a short budget) this may leave nothing to prune, which the repair reports.
        z: standard errors the harmful sign must clear under ``only_signed`` (0: the sign of the estimate alone).
        physical: cut the filters out of the tensors (Torch-Pruning), so the model gets smaller and faster,
            instead of zeroing them; layers coupled through a residual add, the output layer and removing a
            whole layer are refused. The repaired weights then have the pruned shapes.
    """

    k: int = 5
    negative: bool | None = None
    only_signed: bool = True
    z: float = 2.0
    physical: bool = False

    def __post_init__(self) -> None:
        check_int("k", self.k, low=1)
        if self.negative is not None:
            check_bool("negative", self.negative)
        check_bool("only_signed", self.only_signed)
        check_number("z", self.z, low=0)
        check_bool("physical", self.physical)

    def culprits(self, result: ShapleyResult, negative: bool) -> Tensor:
        """The filters to prune, worst first (possibly none with ``only_signed``)."""
        if not self.only_signed:
            return result.culprits(self.k, negative=negative)
        ranked = result.culprits(result.n_players, negative=negative)
        harm = -result.values[ranked] if negative else result.values[ranked]
        margin = self.z * result.stderr[ranked] if self.z > 0 else torch.zeros_like(harm)
        clear = harm - margin > 0  # with z > 0 a NaN standard error (under 2 samples) never clears
        return ranked[clear][: self.k]

    def apply(
        self, model: nn.Module, players: FilterPlayers, culprits: Tensor, example_inputs: Tensor | None = None
    ) -> PrunedFilters:
        """Prune ``culprits`` of ``players`` in ``model``; ``example_inputs`` (a small batch) for ``physical``."""
        return prune_filters(model, players, culprits, physical=self.physical, example_inputs=example_inputs)


@dataclass(frozen=True)
class GuidedDropout(RepairMethod):
    """Fine-tune the last ``epochs`` epochs of the fit with filter dropout guided by the game's values.

    Args:
        p: mean drop probability.
        mode: ``"spread"`` (high-value filters dropped more, so the rest learn to take over) or ``"culprits"``
            (only the ``k`` culprits are dropped, with probability ``p``).
        k: culprits dropped in ``"culprits"`` mode.
        epochs: fine-tuning epochs, taken from the end of the fit (``trainer.max_epochs`` must exceed it).
        negative: which end of the ranking holds the culprits; ``None``: the game's own side.
    """

    targets_defects: ClassVar[bool] = False

    p: float = 0.1
    mode: str = "spread"
    k: int = 5
    epochs: int = 2
    negative: bool | None = None

    def __post_init__(self) -> None:
        check_probability("p", self.p)
        check_choice("mode", self.mode, GUIDED_MODES)
        check_int("k", self.k, low=1)
        check_int("epochs", self.epochs, low=1)
        if self.negative is not None:
            check_bool("negative", self.negative)

    @property
    def finetune_epochs(self) -> int:
        return self.epochs

    def probabilities(self, result: ShapleyResult, negative: bool) -> Tensor:
        """Per-filter drop probabilities (:func:`~nsl.repair.guided_probabilities`)."""
        k = min(self.k, result.n_players)
        return guided_probabilities(result, self.p, mode=self.mode, k=k, negative=negative)


REPAIRS: Registry[type[RepairMethod]] = Registry("repair method")
REPAIRS.register("prune", PruneCulprits)
REPAIRS.register("guided_dropout", GuidedDropout)
