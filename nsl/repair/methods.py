"""Repair methods by name: what :class:`~nsl.callback.ShapleyRepair` does with a game's Shapley values.

Each method is a small class registered in :data:`REPAIRS`; its constructor takes (and checks) that method's
own options, so a YAML with an option the method does not know fails before training. Adding one is a
subclass of :class:`RepairMethod` with a :meth:`~RepairMethod.repair` hook plus ``@REPAIRS.register("name")``:
the callback calls the hook at fit end (or when the last ``finetune_epochs`` epochs start) with a
:class:`RepairContext`, and checks, reports and undoes the :class:`RepairAction` it returns.

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

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn

from nsl.players import FilterPlayers
from nsl.registry import Registry
from nsl.repair.dropout import GUIDED_MODES, FilterDropout, guided_probabilities
from nsl.repair.prune import PrunedFilters, prune_filters
from nsl.repair.snapshot import ModuleSnapshot
from nsl.shapley import ShapleyResult
from nsl.shapley.semivalues import values_suffix
from nsl.validation import check_bool, check_choice, check_int, check_number, check_probability


@dataclass(frozen=True)
class RepairContext:
    """What a repair method works with at its hook, read-only.

    Attributes:
        model: the LightningModule to repair.
        players: its filters as the analysis played them (the analysis' layers and ablation).
        result: the game's Shapley result; its rankings (``culprits``, ``top_k``) hold only the filters with
            enough samples (:attr:`~nsl.shapley.ShapleyResult.ranked`). ``None`` when a fine-tuning resumes
            from a checkpoint (:meth:`RepairMethod.resume`).
        game: the game's result name (``"accuracy"``, ``"class_3"`` ...).
        negative: which end of the ranking holds the culprits (True: the most negative values).
        seed: the analysis' seed, for any randomness of the repair.
        trainer: the Lightning Trainer of the fit (a fine-tuning sets its callback up with it).
        example_inputs: a few held-out inputs on the model's device (e.g. to trace the model).
        semivalue: which values ``result`` holds (``"shapley"``, ``"banzhaf"``, ``"beta(1,16)"`` ...).
    """

    model: nn.Module
    players: FilterPlayers
    result: ShapleyResult | None
    game: str
    negative: bool
    seed: int = 0
    trainer: Any = None
    example_inputs: Tensor | None = None
    semivalue: str = "shapley"

    @property
    def values_of(self) -> str:
        """The game, and which values of it when not Shapley's, for descriptions: ``"accuracy (banzhaf values)"``."""
        return f"{self.game}{values_suffix(self.semivalue)}"


@dataclass
class RepairAction:
    """What a repair method did to the model, for the :class:`~nsl.callback.ShapleyRepair` to check and report.

    Attributes:
        description: one line for the report ("pruned 3 culprits of accuracy: [...]"); when nothing changed,
            why not.
        filters: the players it acted on; the repair refuses an action on a filter without enough samples.
        changed: False when the method found nothing to do (the outcome is then "unchanged").
        revert: restores the model as it was before the action (a fine-tuning needs none: the repair keeps the
            weights from before it).
        callback: a Lightning callback that acts in the fine-tuning epochs (set up by the method); the repair
            forwards its training-batch, exception and teardown hooks.
        state: returns what a checkpoint keeps to resume the fine-tuning (plain data; given back to
            :meth:`RepairMethod.resume`). Its keys sit beside the repair's own in the callback state.
        warn: say ``description`` as a warning (something the user asked for could not be done).
    """

    description: str
    filters: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    changed: bool = True
    revert: Callable[[], None] | None = None
    callback: Callback | None = None
    state: Callable[[], dict[str, Any]] | None = None
    warn: bool = False

    @classmethod
    def unchanged(cls, why: str, warn: bool = False) -> RepairAction:
        """An action that left the model as it was, and why."""
        return cls(why, changed=False, warn=warn)


@dataclass(frozen=True)
class RepairMethod:
    """Base of the repair methods: options as dataclass fields, checked in ``__post_init__``; a :meth:`repair`
    hook that acts on the model (and :meth:`resume` for a fine-tuning that can continue from a checkpoint).

    A method with a ``negative`` option (``None``: the game's own side) chooses the end of the ranking that
    holds its culprits; the context passes the side it resolved to.
    """

    #: True: by default the repair acts on a game that measures a defect (fairness, adversarial weakness);
    #: False: on a performance game (accuracy). Games declare which they are (``ModelGame.measures_defect``).
    targets_defects: ClassVar[bool] = True
    #: The semivalue whose values the repair acts on when :class:`~nsl.ShapleyRepair` names none (None: the
    #: analysis' own, whatever it estimates).
    default_semivalue: ClassVar[str | None] = None

    @property
    def finetune_epochs(self) -> int:
        """Training epochs at the end of the fit that this repair fine-tunes (0: it acts once, at fit end)."""
        return 0

    def repair(self, context: RepairContext) -> RepairAction:
        """Act on ``context.model``: at fit end, or when the last ``finetune_epochs`` epochs start (the action's
        ``callback`` then acts in their training steps). Return what was done, and how to undo it."""
        raise NotImplementedError(f"{type(self).__name__} must implement repair(context) -> RepairAction.")

    def resume(self, context: RepairContext, state: Mapping[str, Any]) -> RepairAction:
        """The action of a fine-tuning resumed from a checkpoint, from what its ``state`` returned."""
        raise NotImplementedError(f"{type(self).__name__} cannot resume a fine-tuning from a checkpoint.")


def _names(players: FilterPlayers, indices: Tensor) -> list[str]:
    return [players.names[i] for i in indices.tolist()]


@dataclass(frozen=True)
class PruneCulprits(RepairMethod):
    """Switch the game's ``k`` culprits off for good (:func:`~nsl.repair.prune_filters`), at fit end.

    Only filters with enough samples to be ranked can be culprits (see
    :attr:`~nsl.shapley.ShapleyResult.ranked`), whatever the options: an unsampled filter is never pruned.

    By default it acts on the game's exact leave-one-out values (``default_semivalue``) and prunes one culprit, the
    repair that worked best over seeds; name another ``semivalue`` on :class:`~nsl.ShapleyRepair` (e.g. ``"shapley"``,
    the analysis' own) and a larger ``k`` to change that.

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

    #: By default the exact leave-one-out values pick the culprits and one is pruned: over 3 training × 3 estimator
    #: seeds of the fair-digits CNN this repaired best (worst-group accuracy +0.067 ± 0.017 at no overall cost), ahead
    #: of every certified semivalue (Beta(1,16): +0.045 ± 0.022; Shapley: +0.001 ± 0.019; docs/semivalues.md).
    default_semivalue: ClassVar[str | None] = "leave_one_out"

    k: int = 1
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
        """The filters to prune, worst first (possibly none with ``only_signed``); ranked filters only."""
        if not self.only_signed:
            return result.culprits(self.k, negative=negative)
        ranked = result.culprits(result.n_players, negative=negative)
        harm = -result.values[ranked] if negative else result.values[ranked]
        margin = self.z * result.stderr[ranked] if self.z > 0 else torch.zeros_like(harm)
        clear = harm - margin > 0  # with z > 0 a NaN standard error (under 2 samples) never clears
        return ranked[clear][: self.k]

    def why_none(self, result: ShapleyResult, negative: bool, game: str) -> str:
        """Why :meth:`culprits` found nothing to prune, with the numbers."""
        ranked = result.culprits(result.n_players, negative=negative)
        side = "negative" if negative else "positive"
        left = result.n_players - result.n_ranked
        unranked = f"; {left:,} filters with fewer than {result.min_rank_samples} samples were not considered" \
            if left else ""
        if len(ranked) == 0:
            return f"no filter of {game!r} can be ranked{unranked}"
        worst = int(ranked[0])
        harm = float(-result.values[worst] if negative else result.values[worst])
        name = result.names[worst] if result.names else str(worst)
        estimate = f"{name} {float(result.values[worst]):+.4g} ± {float(result.stderr[worst]):.2g}"
        if harm <= 0:
            return f"none of the {len(ranked):,} ranked filters of {game!r} has a harmful ({side}) value{unranked}"
        return (
            f"no filter of {game!r} is harmful beyond noise: none of the {len(ranked):,} ranked filters has a "
            f"{side} value clearing z={self.z:g} standard errors (the most harmful, {estimate}, does not); lower z, "
            f"or give the analysis a larger budget{unranked}"
        )

    def repair(self, context: RepairContext) -> RepairAction:
        """Prune the culprits of ``context.result`` at fit end; the action's ``revert`` restores the model (also
        the shapes, after a physical removal)."""
        assert context.result is not None
        culprits = self.culprits(context.result, context.negative)
        if len(culprits) == 0:
            return RepairAction.unchanged(self.why_none(context.result, context.negative, context.values_of))
        names = _names(context.players, culprits)
        if self.physical:
            snapshot = ModuleSnapshot(context.model)
            try:
                handle = self.apply(context.model, context.players, culprits, example_inputs=context.example_inputs)
            except ValueError as err:  # a removal Torch-Pruning cannot do; the model is untouched
                return RepairAction.unchanged(
                    f"physical removal of {len(culprits)} culprits of {context.values_of} refused: {err}", warn=True
                )
            return RepairAction(
                f"physically removed {len(culprits)} culprits of {context.values_of}: {names} "
                f"(parameters {handle.params_before} -> {handle.params_after})",
                culprits, revert=snapshot.restore,
            )
        handle = self.apply(context.model, context.players, culprits)
        return RepairAction(f"pruned {len(culprits)} culprits of {context.values_of}: {names}", culprits,
                            revert=handle.undo)

    def apply(
        self, model: nn.Module, players: FilterPlayers, culprits: Tensor, example_inputs: Tensor | None = None
    ) -> PrunedFilters:
        """Prune ``culprits`` of ``players`` in ``model``; ``example_inputs`` (a small batch) for ``physical``."""
        return prune_filters(model, players, culprits, physical=self.physical, example_inputs=example_inputs)


@dataclass(frozen=True)
class GuidedDropout(RepairMethod):
    """Fine-tune the last ``epochs`` epochs of the fit with filter dropout guided by the game's values.

    Only filters with enough samples to be ranked are dropped; the others keep probability 0.

    Args:
        p: mean drop probability (over the ranked filters).
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
        """Per-filter drop probabilities (:func:`~nsl.repair.guided_probabilities`) over the ranked filters;
        0 for a filter without enough samples."""
        ranked = result.ranked.cpu()
        probs = torch.zeros(result.n_players, dtype=torch.float32)
        if not bool(ranked.any()):
            return probs
        names = [n for n, r in zip(result.names, ranked.tolist(), strict=True) if r] if result.names else None
        sub = dataclasses.replace(
            result, values=result.values[ranked], stderr=result.stderr[ranked], counts=result.counts[ranked],
            names=names, stats=None, k=min(result.k, int(ranked.sum())),
        )
        k = min(self.k, sub.n_players)
        probs[ranked] = guided_probabilities(sub, self.p, mode=self.mode, k=k, negative=negative)
        return probs

    def repair(self, context: RepairContext) -> RepairAction:
        """Start the fine-tuning: a :class:`~nsl.repair.FilterDropout` over the analysis' layers with these
        probabilities, for the repair to drive through the remaining epochs."""
        assert context.result is not None
        probabilities = self.probabilities(context.result, context.negative).double()
        action = self._start(context, probabilities)
        left = context.result.n_players - context.result.n_ranked
        if left:
            action.description += (
                f"; {left:,} filters with fewer than {context.result.min_rank_samples} samples were not dropped"
            )
        return action

    def resume(self, context: RepairContext, state: Mapping[str, Any]) -> RepairAction:
        """The same dropout again, its mask stream continued from the checkpoint."""
        action = self._start(context, state["probabilities"])
        assert isinstance(action.callback, FilterDropout)
        action.callback.load_state_dict(state["dropout"])
        return action

    def _start(self, context: RepairContext, probabilities: Tensor) -> RepairAction:
        layers = [layer.name for layer in context.players.layers]
        dropout = FilterDropout(probabilities, layers=layers, seed=context.seed)
        dropout.setup(context.trainer, context.model, TrainerFn.FITTING)
        return RepairAction(
            f"fine-tuned the last {self.epochs} epochs with {self.mode} filter dropout guided by {context.values_of} "
            f"(mean p={self.p})",
            filters=probabilities.nonzero().squeeze(1),
            callback=dropout,
            state=lambda: {"probabilities": probabilities, "dropout": dropout.state_dict()},
        )


REPAIRS: Registry[type[RepairMethod]] = Registry("repair method")
REPAIRS.register("prune", PruneCulprits)
REPAIRS.register("guided_dropout", GuidedDropout)
