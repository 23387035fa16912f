"""The ShapleyRepair callback: act on the culprits a NeuronShapley found (prune them, or fine-tune with dropout).

Every metric of the report is measured on held-out data (the datamodule's test split when it has one) before
and after the repair, so the report does not reuse the analysis data. The repair checks itself on those
numbers: it is kept only when its target game improved and accuracy did not fall by more than a tolerance;
otherwise the model is rolled back to its pre-repair weights. It never acts on a filter the analysis has not
sampled enough to rank, and a repair that finds nothing to do says why (outcome "unchanged").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from typing_extensions import override

from nsl.callback import data as eval_data
from nsl.callback.neuron_shapley import NeuronShapley
from nsl.callback.specs import GameSpec, semivalue_name
from nsl.callback.view import AnalysisView
from nsl.games import AccuracyGame, EvalData, ModelGame
from nsl.players import FilterPlayers, preserve_mode
from nsl.repair import REPAIRS, FilterDropout, RepairMethod
from nsl.repair.methods import RepairAction, RepairContext
from nsl.repair.plan import PLAN_KEY, plan_path, pruning_plan, save_pruned
from nsl.report import log_scalars, log_table, markdown
from nsl.shapley import ShapleyResult
from nsl.shapley.result import MIN_RANK_SAMPLES
from nsl.validation import check_bool, check_int, check_number

REPORT_COLUMNS = ["metric", "before", "after", "change"]
OUTCOME_COLUMNS = ["outcome", "reason", "weights"]
OUTCOMES = ("kept", "rolled back", "reported only", "unchanged")
MODEL_FILE = "repaired_model.pt"
REPORT_SEED = 7919  # offset of the report games' seeds from the analysis seed: other attack targets and starts


class ShapleyRepair(Callback):
    """Repair the model with the Shapley values of a :class:`NeuronShapley` listed among the same callbacks.

    Like Lightning's ``ModelPruning``, it only repairs: the analysis is the ``NeuronShapley``'s job, this
    callback reads its results. The method is a name from :data:`nsl.repair.REPAIRS` with that method's own
    options as keywords:

    - ``"prune"`` (:class:`~nsl.repair.PruneCulprits`): when training ends, switch the game's ``k`` culprits
      off for good, using the analysis made at the end of training;
    - ``"guided_dropout"`` (:class:`~nsl.repair.GuidedDropout`): the last ``epochs`` epochs of the fit train
      with filter dropout whose probabilities come from the game's values, taken from an analysis of the
      model as it is when the fine-tuning starts (the ``NeuronShapley`` is asked to play that one game then,
      unless it just did). The fine-tuning is ordinary training of the same fit: same optimizer, loggers,
      checkpoints and DDP strategy.

    A method of your own is a :class:`~nsl.repair.RepairMethod` with a ``repair(context)`` hook, registered in
    :data:`nsl.repair.REPAIRS`: this callback calls the hook at fit end (or when its ``finetune_epochs`` start)
    and checks, reports and undoes the :class:`~nsl.repair.RepairAction` it returns. It reads the analysis
    through :meth:`NeuronShapley.view <nsl.callback.NeuronShapley.view>`, a read-only
    :class:`~nsl.callback.view.AnalysisView`.

    **Only ranked filters are acted on**, whatever the method's options (``only_signed=False`` too): a filter
    needs ``min_samples`` marginal samples (and the result's own ``min_rank_samples``; exact values always
    count). When the analysis ranks no filter, or the method finds none to act on (no culprit clears ``z``
    standard errors), the outcome is **unchanged** and the reason says why ("nothing to repair: ...").

    Before and after are measured on held-out data, every game of the ``NeuronShapley`` plus overall
    accuracy; the table is printed, logged (``repair/report``) and written to ``repair.md`` next to the
    Shapley results.

    **The repair checks itself** before it commits. Its target is the game it repairs with; the game class
    says which way is better (``negative_culprits``: True for a value that is good, such as accuracy or
    worst-group accuracy, False for harm, such as attack success). The repair is **kept** when the target
    improved by more than ``min_improvement`` and accuracy fell by at most ``max_accuracy_drop``; otherwise it
    is **rolled back**: the model gets its pre-repair weights back (bit for bit; for ``guided_dropout`` the
    weights from before the fine-tuning) and the reason names the numbers. With ``apply=False`` the outcome
    is **reported only** (measured, then rolled back, with what the check would have decided). The outcome
    is in :attr:`outcome` and :attr:`reason`, printed, logged (``repair/kept`` scalar; W&B summary
    ``repair/outcome``, ``repair/reason``, ``repair/weights``; a ``repair/decision`` table for W&B and
    TensorBoard) and written into ``repair.md``.

    The decision and the report use the same held-out examples (the test split, or the analysis data when
    there is none), so the "after" numbers of a kept repair were selected on those examples: an honest check
    that the repair did not hurt, not an unbiased estimate of how much it helped. Judge that on data the run
    never saw.

    The repaired weights (``state_dict``) go to :attr:`model_path`, ``repaired_model.pt`` next to
    ``repair.md``, only when the repair is kept: after a roll-back no such file is written (a stale one from
    an earlier run in that folder is removed), so the file always holds a repaired model that passed the
    check. With ``physical=True`` its tensors have the pruned shapes and the pruning plan is written beside it
    (``repaired_model.plan.pt``); every Lightning checkpoint saved afterwards holds the plan too, so
    :func:`~nsl.repair.load_pruned` (or :func:`~nsl.repair.load_pruned_checkpoint`) rebuilds the pruned model from
    a freshly constructed module. :meth:`undo` restores the model as it was before the repair.

    Args:
        method: a registered repair method name, or a :class:`~nsl.repair.RepairMethod` instance.
        game: whose values to use; ``None``: the first game that measures a defect (fairness, adversarial)
            for ``prune``, the first performance game (accuracy) for ``guided_dropout``, else the first game.
        semivalue: which values of that game to act on: ``None``, the method's default (``prune``: the exact
            ``"leave_one_out"`` values, which repaired best over seeds; ``guided_dropout``: the semivalue the analysis
            estimates); ``"shapley"``, ``"banzhaf"``, ``"beta(α,β)"`` or ``"leave_one_out"`` otherwise. A semivalue
            other than the analysis' own is played once more for the repair (``prune``: when training ends;
            ``guided_dropout``: when its epochs start), with the analysis' budget (leave-one-out: exactly, in N + 1
            evaluations), and saved and logged beside it as ``<game>_<semivalue>``.
        apply: keep the repair if it passes the check (False: report it, then restore the weights from before).
        min_improvement: the target must improve by more than this (in the game's units, toward better);
            0.0: strictly better. ``None``: do not check the target.
        max_accuracy_drop: the largest fall of held-out accuracy (a fraction, 0.01 = one point) a kept repair
            may cost. The default 0.01 is the usual "within one point of the baseline" budget of pruning work
            and about one standard error of accuracy on the default 1,000 held-out examples, so smaller
            changes are mostly noise while larger ones are real costs. ``None``: do not check accuracy.
        heldout_size: held-out examples for the before/after report and the check.
        shapley: the analysis to read; ``None``: the one ``NeuronShapley`` among the trainer's callbacks.
        min_samples: the fewest marginal samples behind a filter's value for the repair to act on that filter
            (at least 2, what a standard error needs; the result's ``min_rank_samples`` if that is higher).
        **options: the method's options, e.g. ``k=3, physical=True`` for ``prune``, ``p=0.1, epochs=2`` for
            ``guided_dropout``.

    Example::

        >>> import lightning as L
        >>> from nsl import NeuronShapley, ShapleyRepair
        >>> from nsl.data import DigitsDataModule
        >>> from nsl.models import Classifier, SmallCNN
        >>> shapley = NeuronShapley("accuracy", top_k=3, eval_size=32, max_evals=40, removal_curve=False,
        ...                         verbose=False)
        >>> repair = ShapleyRepair("prune", k=2, only_signed=False, heldout_size=64)
        >>> trainer = L.Trainer(max_epochs=1, limit_train_batches=2, callbacks=[shapley, repair], logger=False,
        ...                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(Classifier(SmallCNN(channels=(4, 6, 8))), DigitsDataModule())  # logs the report table
        >>> repair.description  # doctest: +ELLIPSIS
        "pruned 2 culprits of accuracy (leave_one_out values): ['net.features...', 'net.features...']"
        >>> [row["metric"] for row in repair.report]
        ['accuracy']
        >>> repair.outcome in ("kept", "rolled back"), repair.reason != ""
        (True, True)
    """

    def __init__(
        self,
        method: str | RepairMethod = "prune",
        game: str | None = None,
        semivalue: str | None = None,
        apply: bool = True,
        min_improvement: float | None = 0.0,
        max_accuracy_drop: float | None = 0.01,
        heldout_size: int = 1000,
        shapley: NeuronShapley | None = None,
        min_samples: int = MIN_RANK_SAMPLES,
        **options: Any,
    ) -> None:
        super().__init__()
        if isinstance(method, RepairMethod):
            if options:
                raise ValueError(f"options {sorted(options)} go with a method name, not a {type(method).__name__}.")
            self.method = method
        else:
            try:
                self.method = REPAIRS[method](**options)
            except TypeError as err:  # an option the method does not have
                fields = sorted(f.name for f in dataclasses.fields(REPAIRS[method]))
                raise ValueError(f"repair {method!r}: {err}; its options are {fields}.") from None
        if game is not None and (not isinstance(game, str) or not game):
            raise ValueError(f"game={game!r} is not accepted; use a game name of the NeuronShapley, or None.")
        # None: the method's default (prune: exact leave-one-out; guided dropout: the analysis' own values).
        chosen = semivalue if semivalue is not None else self.method.default_semivalue
        self.semivalue = None if chosen is None else semivalue_name(chosen, "ShapleyRepair")
        check_bool("apply", apply)
        check_number("min_improvement", min_improvement, optional=True)
        check_number("max_accuracy_drop", max_accuracy_drop, low=0, high=1, optional=True)
        check_int("heldout_size", heldout_size, low=1)
        check_int("min_samples", min_samples, low=MIN_RANK_SAMPLES)  # below 2 there is no standard error
        if shapley is not None and not isinstance(shapley, NeuronShapley):
            raise ValueError(f"shapley={shapley!r} is not accepted; use a NeuronShapley or None.")
        self.game = game
        self.apply = apply
        self.min_improvement = min_improvement
        self.max_accuracy_drop = max_accuracy_drop
        self.heldout_size = heldout_size
        self.min_samples = min_samples
        self.shapley = shapley
        self.report: list[dict[str, Any]] | None = None
        self.description = ""
        #: "kept", "rolled back", "reported only" or "unchanged" once the repair ran (None before).
        self.outcome: str | None = None
        #: Why, with the numbers the check compared.
        self.reason = ""
        #: Where the repaired weights were written (only when kept; None otherwise).
        self.model_path: Path | None = None
        #: True once :meth:`undo` restored the pre-repair model.
        self.undone = False
        self._spec: GameSpec | None = None
        self._games: dict[str, ModelGame] | None = None  # held-out games, built before the repair
        self._before: dict[str, float] | None = None
        self._source = ""
        self._restore: dict[str, Tensor] | None = None  # weights from before a fine-tuning, for a roll-back
        self._revert: Callable[[], None] | None = None  # undoes a kept repair
        self._action: RepairAction | None = None  # what the method did (a fine-tuning: once it started)
        self._resume_state: dict[str, Any] | None = None  # a checkpointed state, to continue a fine-tuning from

    @property
    def dropout(self) -> FilterDropout | None:
        """The filter dropout of a fine-tuning repair once it started (its ``dropped_fraction``, ``hooked``)."""
        callback = self._action.callback if self._action is not None else None
        return callback if isinstance(callback, FilterDropout) else None

    @property
    def name(self) -> str:
        return next((n for n in REPAIRS if isinstance(self.method, REPAIRS[n])), type(self.method).__name__)

    @property
    @override
    def state_key(self) -> str:
        # The semivalue only when set, so that the key of a repair without one is what it was before semivalues.
        extra = {"semivalue": self.semivalue} if self.semivalue is not None else {}
        return self._generate_state_key(method=repr(self.method), game=self.game, **extra)

    # ----------------------------------------------------------------------------------------- set-up
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != TrainerFn.FITTING:
            return
        self.outcome, self.reason, self.model_path, self.undone, self._revert = None, "", None, False, None
        self._action, self._before, self._restore, self._games = None, None, None, None
        if self.shapley is None:
            found = [cb for cb in trainer.callbacks if isinstance(cb, NeuronShapley)]
            if len(found) != 1:
                raise MisconfigurationException(
                    f"ShapleyRepair reads the results of a NeuronShapley: the trainer has {len(found)}; pass "
                    "shapley= to choose one."
                )
            self.shapley = found[0]
        if self.semivalue is not None:  # an estimator that cannot estimate it fails now, not after training
            self.shapley.check_semivalue(self.semivalue, "ShapleyRepair semivalue")
        view = self.shapley.view(trainer, pl_module)
        self._spec = self._choose_game(view)
        epochs = self.method.finetune_epochs
        if epochs:
            max_epochs = trainer.max_epochs
            if max_epochs is None or max_epochs <= epochs:
                raise MisconfigurationException(
                    f"repair {self.name!r} fine-tunes the last epochs={epochs} epochs of the fit, so "
                    f"trainer.max_epochs={max_epochs} must be larger."
                )
            view.players  # noqa: B018  # bad layer patterns fail now, not at fine-tuning

    def _choose_game(self, view: AnalysisView) -> GameSpec:
        """The game named by ``game``, else the first played game of the kind the method targets (a game the
        analysis skipped before training, such as fairness on data without groups, is never chosen)."""
        if self.game is not None:
            if self.game in view.skipped:
                raise MisconfigurationException(
                    f"ShapleyRepair game={self.game!r} was skipped by the analysis before training "
                    f"({view.skipped[self.game]}); choose one of the played games {[s.name for s in view.played]}."
                )
            return view.spec(self.game)
        played = view.played
        wanted = self.method.targets_defects
        return next((s for s in played if s.game_class.measures_defect == wanted), played[0])

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert self.shapley is not None
        if not self.shapley.view(trainer, pl_module).dry_run_done:  # this callback came first: check games now
            self.shapley.dry_run(trainer, pl_module)
        view = self.shapley.view(trainer, pl_module)
        self._spec = self._choose_game(view)  # again, now that skipped games are known
        state, self._resume_state = self._resume_state, None
        if state is None or self._action is not None or not self.method.finetune_epochs:
            return
        if state.get("refused"):  # the fine-tuning was refused before the checkpoint: still nothing to do
            self._action = RepairAction.unchanged(state["refused"])
            return
        method_state = {k: v for k, v in state.items() if k not in _OWN_STATE}
        if all(v is None for v in method_state.values()):  # checkpointed before the fine-tuning started
            return
        self._action = self.method.resume(self._context(trainer, pl_module, view, None), method_state)
        # The held-out games are rebuilt from the model as it is now; "before" comes from the checkpoint.
        with eval_data.preserved_rng():
            data, _ = self._heldout_data(trainer, view)
            self._games = report_games(list(view.specs), pl_module, data.to(pl_module.device),
                                       view.seed + REPORT_SEED, view.picked)

    # ----------------------------------------------------------------------------------------- acting
    def _context(
        self, trainer: L.Trainer, pl_module: L.LightningModule, view: AnalysisView, result: ShapleyResult | None
    ) -> RepairContext:
        assert self._spec is not None
        example = next(iter(self._games.values())).inputs[:2] if self._games else None
        return RepairContext(
            model=pl_module, players=view.players, result=result, game=self._spec.name, negative=self._negative(),
            seed=view.seed, trainer=trainer, example_inputs=example,
            semivalue=self.semivalue or view.semivalue(self._spec.name),
        )

    def _other_semivalue(self, view: AnalysisView) -> str | None:
        """The semivalue to ask the analysis for when it is not the one the analysis estimates for the repair's
        game (``None``: the repair acts on the analysis' own values)."""
        assert self._spec is not None
        if self.semivalue is None or self.semivalue == view.semivalue(self._spec.name):
            return None
        return self.semivalue

    def _act(
        self, trainer: L.Trainer, pl_module: L.LightningModule, view: AnalysisView, result: ShapleyResult
    ) -> RepairAction:
        """Measure "before", then let the method act: never on a filter with fewer than ``min_samples`` samples.

        An analysis that ranks no filter yet is refused before the method is asked (nothing is measured); an
        action on a filter without enough samples is undone and refused, whatever the method's options.
        """
        assert self._spec is not None
        if self.min_samples > result.min_rank_samples:
            result = dataclasses.replace(result, min_rank_samples=self.min_samples)
        if result.n_ranked == 0:
            return RepairAction.unchanged(
                f"the analysis of {self._spec.name!r} cannot rank its filters yet: {result.rank_note('filters')}. "
                "Give it a larger budget (max_evals, max_seconds) or fewer layers"
            )
        self._measure_before(trainer, pl_module, view)
        action = self.method.repair(self._context(trainer, pl_module, view, result))
        ranked = result.ranked.cpu()
        unranked = [i for i in action.filters.cpu().tolist() if not ranked[i]] if action.changed else []
        if unranked:
            if action.revert is not None:
                action.revert()
            if action.callback is not None:
                action.callback.teardown(trainer, pl_module, TrainerFn.FITTING)
            names = [view.players.names[i] for i in unranked[:3]]
            return RepairAction.unchanged(
                f"{self.name} chose {len(unranked)} filters with fewer than {result.min_rank_samples} samples "
                f"({names}{' ...' if len(unranked) > 3 else ''}), and a filter without enough samples is never "
                "acted on; its change was undone", warn=True,
            )
        return action

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epochs = self.method.finetune_epochs
        if not epochs or self._action is not None or trainer.current_epoch < trainer.max_epochs - epochs:
            return
        assert self.shapley is not None and self._spec is not None
        other = self._other_semivalue(self.shapley.view(trainer, pl_module))
        result = self.shapley.current_result(trainer, pl_module, self._spec.name, stage="repair", semivalue=other)
        self._action = self._act(trainer, pl_module, self.shapley.view(trainer, pl_module), result)
        self.description = self._action.description
        if not self._action.changed:
            _say(self._action, f"[ShapleyRepair] {self.name}: no fine-tuning: {self._action.description}.")

    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._action is not None and self._action.callback is not None:
            self._action.callback.on_train_batch_start(trainer, pl_module, batch, batch_idx)

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._action is not None and self._action.callback is not None:
            self._action.callback.on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self._action is not None and self._action.callback is not None:
            self._action.callback.on_exception(trainer, pl_module, exception)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._action is not None and self._action.callback is not None:
            self._action.callback.teardown(trainer, pl_module, stage)

    # ----------------------------------------------------------------------------------------- fit end
    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A fit-end repair on another semivalue than the analysis': play the game for it now, on the final model,
        # while the model is still on its device (as the analysis' own fit-end run does).
        if self.method.finetune_epochs or trainer.fast_dev_run or trainer.interrupted:
            return
        assert self.shapley is not None and self._spec is not None
        view = self.shapley.view(trainer, pl_module)
        other = self._other_semivalue(view)
        if other is not None and self._spec.name not in view.skipped:
            self.shapley.current_result(trainer, pl_module, self._spec.name, stage="repair", semivalue=other)

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.fast_dev_run or trainer.interrupted:
            return
        assert self.shapley is not None and self._spec is not None
        view = self.shapley.view(trainer, pl_module)
        if not self.method.finetune_epochs:
            result = view.result(self._spec.name, self._other_semivalue(view))
            if result is None:
                rank_zero_warn(f"ShapleyRepair: no analysis of {self._spec.name!r} to repair with; nothing done.")
                return
            self._action = self._act(trainer, pl_module, view, result)
            self.description = self._action.description
        elif self._action is None:  # a fine-tuning repair that never started (the fit ended early)
            return
        action = self._action
        if not action.changed:
            self._unchanged(trainer, pl_module, view, action)
            return
        revert = action.revert
        if self.method.finetune_epochs:
            restore = self._restore
            if restore is None:
                raise RuntimeError(
                    "ShapleyRepair: the weights from before the fine-tuning are missing (a checkpoint of an older "
                    "version?), so the repair can neither be rolled back nor undone; restart the fine-tuning."
                )

            def revert() -> None:  # the weights from before the fine-tuning
                pl_module.load_state_dict(restore)
        after = {label: model_value(game) for label, game in (self._games or {}).items()}
        keep, why = self._check(after)
        if trainer.world_size > 1:  # every rank keeps or rolls back alike (rank 0 decides)
            keep, why = trainer.strategy.broadcast((keep, why), src=0)
        if not self.apply:
            self.outcome = "reported only"
            self.reason = f"apply=False, so the repair was measured and undone; the check would have {why}"
        elif keep:
            self.outcome, self.reason = "kept", why
        else:
            self.outcome, self.reason = "rolled back", why
        if self.outcome == "kept":
            self._revert = revert
        elif revert is not None:
            revert()
        self._write_report(trainer, pl_module, view, after)

    def _unchanged(
        self, trainer: L.Trainer, pl_module: L.LightningModule, view: AnalysisView, action: RepairAction
    ) -> None:
        """Outcome "unchanged": the repair did nothing, and the reason says why (not a roll-back)."""
        if self._before is None or self.method.finetune_epochs:  # measure the model as it is now
            self._measure_before(trainer, pl_module, view)
        assert self._before is not None and self._spec is not None
        self.outcome = "unchanged"
        self.reason = f"nothing to repair: {action.description}"
        self.description = f"nothing done ({self.name} on {self._spec.name})"
        _say(action, f"ShapleyRepair: {action.description}")
        self._write_report(trainer, pl_module, view, dict(self._before))

    def _check(self, after: dict[str, float]) -> tuple[bool, str]:
        """Keep the repair? With the reason, naming the numbers compared (held-out, before -> after)."""
        assert self._spec is not None
        before = self._before or {}
        label = report_label(self._spec)
        higher = self._spec.game_class.negative_culprits  # a good value (culprits negative): higher is better
        reasons: list[str] = []
        keep = True
        if self.min_improvement is not None:
            if label not in after:
                keep = False
                reasons.append(f"{label} could not be measured on the held-out data ({self._source})")
            else:
                b, a = before[label], after[label]
                gain = (a - b) if higher else (b - a)
                way = "higher" if higher else "lower"
                if gain > self.min_improvement:
                    reasons.append(f"{label} improved {b:.4f} -> {a:.4f} ({way} is better)")
                else:
                    keep = False
                    reasons.append(
                        f"{label} did not improve by more than min_improvement={self.min_improvement}: "
                        f"{b:.4f} -> {a:.4f} ({way} is better)"
                    )
        if self.max_accuracy_drop is not None and "accuracy" in after:
            b, a = before["accuracy"], after["accuracy"]
            if b - a > self.max_accuracy_drop:
                keep = False
                reasons.append(
                    f"accuracy fell by {b - a:.4f} ({b:.4f} -> {a:.4f}), more than max_accuracy_drop="
                    f"{self.max_accuracy_drop}"
                )
            elif label != "accuracy" or self.min_improvement is None:
                reasons.append(f"accuracy {b:.4f} -> {a:.4f} (within max_accuracy_drop={self.max_accuracy_drop})")
        if not reasons:
            reasons.append("no check was asked for (min_improvement=None, max_accuracy_drop=None)")
        verdict = "kept it" if keep else "rolled it back"
        text = "; ".join(reasons)
        return keep, (text if self.apply else f"{verdict}: {text}")

    def undo(self) -> None:
        """Restore the model as it was before the repair, after a ``"kept"`` outcome.

        Zero-pruning writes the pruned rows back bit for bit; physical pruning and fine-tuning restore the
        saved pre-repair tensors (shapes and layer sizes too) into the same module objects. After
        ``"rolled back"``, ``"reported only"`` or ``"unchanged"`` the model already is the pre-repair one, so this
        does nothing; a second call does nothing either. ``repaired_model.pt`` stays where it is.
        """
        if self.outcome is None:
            raise RuntimeError("ShapleyRepair.undo(): nothing to undo, the repair has not run yet (outcome=None).")
        if self._revert is None:
            return
        self._revert()
        self._revert = None
        self.undone = True
        rank_zero_info(f"[ShapleyRepair] undone: the model is back to its weights before the repair ({self.name}).")

    def _negative(self) -> bool:
        """The end of the ranking that holds the culprits: the method's ``negative`` option, else the game's."""
        assert self._spec is not None
        negative = getattr(self.method, "negative", None)
        return self._spec.negative_culprits if negative is None else negative

    def _measure_before(self, trainer: L.Trainer, pl_module: L.LightningModule, view: AnalysisView) -> None:
        """Build the held-out games (adversarial examples made against the unrepaired model) and measure."""
        with eval_data.preserved_rng():
            data, self._source = self._heldout_data(trainer, view)
            self._games = report_games(list(view.specs), pl_module, data.to(pl_module.device),
                                       view.seed + REPORT_SEED, view.picked)
        self._before = {label: model_value(game) for label, game in self._games.items()}
        if self.method.finetune_epochs:  # the weights a roll-back (or undo) of the fine-tuning returns to
            self._restore = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def _heldout_data(self, trainer: L.Trainer, view: AnalysisView) -> tuple[EvalData, str]:
        """The datamodule's test split (with ``test_groups`` if it has them), else the analysis data."""
        dm = trainer.datamodule
        if dm is not None:
            try:
                loader = dm.test_dataloader()
            except (NotImplementedError, AttributeError, TypeError, ValueError):
                loader = None
            if loader is not None:
                groups = getattr(dm, "test_groups", None)
                return eval_data.collect(loader, self.heldout_size, groups, option=None), "test split"
        rank_zero_warn("ShapleyRepair: no test split, so before/after is measured on the analysis data.")
        assert self.shapley is not None
        data = view.evaluation_data if view.evaluation_data is not None else self.shapley.evaluation_data(trainer)
        return data, "analysis data (no test split)"

    def _write_report(
        self, trainer: L.Trainer, pl_module: L.LightningModule, view: AnalysisView, after: dict[str, float]
    ) -> None:
        before = self._before or {}
        self.report = [
            {"metric": m, "before": before[m], "after": after[m], "change": after[m] - before[m]} for m in before
        ]
        assert self.outcome is not None
        out = view.output_dir
        self.model_path = out / MODEL_FILE if self.outcome == "kept" else None
        if not trainer.is_global_zero:
            return
        table = [[r["metric"], r["before"], r["after"], r["change"]] for r in self.report]
        log_table(trainer.loggers, "repair/report", REPORT_COLUMNS, table, trainer.global_step)
        scalars = {}
        for r in self.report:
            key = r["metric"].split(" ")[0]
            scalars[f"repair/{key}_before"] = r["before"]
            scalars[f"repair/{key}_after"] = r["after"]
        scalars["repair/kept"] = float(self.outcome == "kept")
        log_scalars(trainer.loggers, scalars, trainer.global_step)
        out.mkdir(parents=True, exist_ok=True)
        if self.model_path is not None:
            written = save_pruned(pl_module, self.model_path)  # with its pruning plan beside it, if physical
            weights = f"repaired weights (state_dict) in {self.model_path}"
            if len(written) > 1:
                weights += f", pruning plan in {written[1]} (reload with nsl.repair.load_pruned)"
        else:
            for stale in (out / MODEL_FILE, plan_path(out / MODEL_FILE)):  # an earlier run's would contradict this
                stale.unlink(missing_ok=True)
            kept = "the repair did not change the model" if self.outcome == "unchanged" else \
                "the model keeps its weights from before the repair"
            weights = f"no {MODEL_FILE} written: {kept}"
        _log_outcome(trainer.loggers, self.outcome, self.reason, weights, trainer.global_step)
        for logger in trainer.loggers:  # they were finalized before on_fit_end: write what came since
            logger.save()
        n = len(next(iter(self._games.values())).targets) if self._games else 0
        discarded = " The 'after' column is the repaired model, measured, then discarded."
        after_note = discarded if self.outcome in ("rolled back", "reported only") else ""
        text = (
            f"Repair: {self.description}\n"
            f"Outcome: {self.outcome}: {self.reason}.\n"
            f"Weights: {weights}.\n"
            f"Measured on the {self._source} ({n} examples); the keep/roll-back decision used these same examples, "
            f"so a kept repair's 'after' numbers are not an independent estimate.{after_note}\n\n"
        )
        (out / "repair.md").write_text(text + markdown(REPORT_COLUMNS, table) + "\n")
        rank_zero_info("\n" + text + markdown(REPORT_COLUMNS, table))
        rank_zero_info(f"[ShapleyRepair] {self.outcome}: {self.reason}. {weights[0].upper()}{weights[1:]}.")

    # ----------------------------------------------------------------------------------------- state
    @override
    def state_dict(self) -> dict[str, Any]:
        """Where a fine-tuning stands (the method's state, such as its drop probabilities and dropout stream;
        the before-values): plain data only."""
        action = self._action
        state: dict[str, Any] = {
            "before": self._before,
            "source": self._source,
            "description": self.description,
            "restore": self._restore,
            "refused": action.description if action is not None and not action.changed else None,
        }
        if action is not None and action.changed and action.state is not None:
            extra = action.state()
            clash = sorted(set(extra) & set(state))
            if clash:
                raise ValueError(f"repair {self.name!r}: its state keys {clash} clash with ShapleyRepair's own.")
            state.update(extra)
        return state

    @override
    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """A checkpoint of a physically pruned model carries its pruning plan (``nsl.repair.load_pruned`` reads it)."""
        plan = pruning_plan(pl_module)
        if plan is not None:
            checkpoint[PLAN_KEY] = plan

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._before = state_dict.get("before")
        self._source = state_dict.get("source", "")
        self.description = state_dict.get("description", "")
        self._restore = state_dict.get("restore")
        self._resume_state = dict(state_dict)  # resumed inside the fine-tuning: continue it at fit start


_OWN_STATE = ("before", "source", "description", "restore", "refused")


def _say(action: RepairAction, text: str) -> None:
    """A warning when the action asks for one (something asked for could not be done), else an info line."""
    if action.warn:
        rank_zero_warn(text)
    else:
        rank_zero_info(text)


def report_label(spec: GameSpec) -> str:
    """A game's row label in the report: its name, with its kind when the two differ."""
    return spec.name if spec.name == spec.kind else f"{spec.name} ({spec.kind})"


def model_value(game: ModelGame) -> float:
    """The game's value of the model as it is, without masking hooks (so also after physical pruning).

    Equal to ``game.full_value()`` on an unpruned model: with every filter on, masking multiplies by 1.
    """
    with preserve_mode(game.model), torch.inference_mode():
        game.model.eval()
        logits = game.model(game.inputs)
    return float(game.score(logits.unsqueeze(0))[0])


def _log_outcome(loggers: list[Logger], outcome: str, reason: str, weights: str, step: int) -> None:
    """The outcome as text where a logger takes text: W&B summary and table, TensorBoard text."""
    row = [[outcome, reason, weights]]
    log_table(loggers, "repair/decision", OUTCOME_COLUMNS, row, step)
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            summary = logger.experiment.summary
            summary["repair/outcome"] = outcome
            summary["repair/reason"] = reason
            summary["repair/weights"] = weights


def report_games(
    specs: list[GameSpec],
    model: L.LightningModule,
    data: EvalData,
    seed: int,
    picked: Mapping[str, int] | None = None,
) -> dict[str, ModelGame]:
    """Overall accuracy and every game that ``data`` can play, keyed by report label.

    Built once, before the repair: the adversarial examples are made against the unrepaired model and the
    same examples are attacked again after it (the paper's Fig. 3c). ``picked`` (a ``NeuronShapley``'s
    ``picked``) holds the class each class game without a ``class_index`` analysed, so the report measures it.
    """
    players = FilterPlayers(model)
    labels = {report_label(spec): g for g, spec in enumerate(specs)}
    games: dict[str, ModelGame] = {}
    if "accuracy" not in labels:  # overall accuracy is always reported, first
        games["accuracy"] = AccuracyGame(model, players, data.inputs, data.targets)
    for label, g in labels.items():
        if data.has(specs[g].game_class.required_data):
            fixed = specs[g].game_class.check_options(specs[g].options)  # e.g. fairness: the minimum over groups
            if picked and specs[g].name in picked:
                fixed["class_index"] = picked[specs[g].name]
            games[label] = specs[g].build(model, players, data, seed=seed + g, fixed=fixed)
    return games


__all__ = ["MODEL_FILE", "OUTCOMES", "REPORT_COLUMNS", "ShapleyRepair", "model_value", "report_games", "report_label"]
