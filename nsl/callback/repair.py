"""The ShapleyRepair callback: act on the culprits a NeuronShapley found (prune them, or fine-tune with dropout).

Every metric of the report is measured on held-out data (the datamodule's test split when it has one) before
and after the repair, so the report does not reuse the analysis data.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from typing_extensions import override

from nsl.callback import data as eval_data
from nsl.callback.neuron_shapley import NeuronShapley
from nsl.callback.specs import GameSpec
from nsl.games import AccuracyGame, EvalData, ModelGame
from nsl.players import FilterPlayers
from nsl.repair import REPAIRS, FilterDropout, GuidedDropout, PruneCulprits, RepairMethod
from nsl.report import log_scalars, log_table, markdown
from nsl.validation import check_bool, check_int

REPORT_COLUMNS = ["metric", "before", "after", "change"]
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

    Before and after are measured on held-out data, every game of the ``NeuronShapley`` plus overall
    accuracy; the table is printed, logged (``repair/report``) and written to ``repair.md`` next to the
    Shapley results, with the repaired weights in ``repaired_model.pt``.

    Args:
        method: a registered repair method name, or a :class:`~nsl.repair.RepairMethod` instance.
        game: whose values to use; ``None``: the first game that measures a defect (fairness, adversarial)
            for ``prune``, the first performance game (accuracy) for ``guided_dropout``, else the first game.
        apply: keep the repair (False: report it, then restore the weights from before it).
        heldout_size: held-out examples for the before/after report.
        shapley: the analysis to read; ``None``: the one ``NeuronShapley`` among the trainer's callbacks.
        **options: the method's options, e.g. ``k=5`` for ``prune``, ``p=0.1, epochs=2`` for ``guided_dropout``.

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
        "pruned 2 culprits of accuracy: ['net.features...', 'net.features...']"
        >>> [row["metric"] for row in repair.report]
        ['accuracy']
    """

    def __init__(
        self,
        method: str | RepairMethod = "prune",
        game: str | None = None,
        apply: bool = True,
        heldout_size: int = 1000,
        shapley: NeuronShapley | None = None,
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
        check_bool("apply", apply)
        check_int("heldout_size", heldout_size, low=1)
        if shapley is not None and not isinstance(shapley, NeuronShapley):
            raise ValueError(f"shapley={shapley!r} is not accepted; use a NeuronShapley or None.")
        self.game = game
        self.apply = apply
        self.heldout_size = heldout_size
        self.shapley = shapley
        self.report: list[dict[str, Any]] | None = None
        self.description = ""
        self._spec: GameSpec | None = None
        self._games: dict[str, ModelGame] | None = None  # held-out games, built before the repair
        self._before: dict[str, float] | None = None
        self._source = ""
        self._restore: dict[str, Tensor] | None = None  # weights from before the repair (apply=False)
        self._probabilities: Tensor | None = None
        self._dropout: FilterDropout | None = None
        self._resume_dropout: dict[str, Any] | None = None  # a checkpointed dropout stream, to continue

    @property
    def dropout(self) -> FilterDropout | None:
        """The filter dropout of a fine-tuning repair once it started (its ``dropped_fraction``, ``hooked``)."""
        return self._dropout

    @property
    def name(self) -> str:
        return next((n for n in REPAIRS if isinstance(self.method, REPAIRS[n])), type(self.method).__name__)

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(method=repr(self.method), game=self.game)

    # ----------------------------------------------------------------------------------------- set-up
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != TrainerFn.FITTING:
            return
        if self.shapley is None:
            found = [cb for cb in trainer.callbacks if isinstance(cb, NeuronShapley)]
            if len(found) != 1:
                raise MisconfigurationException(
                    f"ShapleyRepair reads the results of a NeuronShapley: the trainer has {len(found)}; pass "
                    "shapley= to choose one."
                )
            self.shapley = found[0]
        self._spec = self._choose_game(self.shapley)
        epochs = self.method.finetune_epochs
        if epochs:
            max_epochs = trainer.max_epochs
            if max_epochs is None or max_epochs <= epochs:
                raise MisconfigurationException(
                    f"repair {self.name!r} fine-tunes the last epochs={epochs} epochs of the fit, so "
                    f"trainer.max_epochs={max_epochs} must be larger."
                )
            self.shapley.players(pl_module)  # bad layer patterns fail now, not at fine-tuning

    def _choose_game(self, shapley: NeuronShapley) -> GameSpec:
        if self.game is not None:
            return shapley.spec(self.game)
        wanted = self.method.targets_defects
        return next((s for s in shapley.specs if s.game_class.measures_defect == wanted), shapley.specs[0])

    # ----------------------------------------------------------------------------------------- fine-tuning
    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(self.method, GuidedDropout) or self._dropout is not None:
            return
        if trainer.current_epoch < trainer.max_epochs - self.method.epochs:
            return
        assert self.shapley is not None and self._spec is not None
        result = self.shapley.current_result(trainer, pl_module, self._spec.name, stage="repair")
        self._measure_before(trainer, pl_module)
        self._probabilities = self.method.probabilities(result, self._negative()).double()
        self._start_dropout(trainer, pl_module)
        self.description = (
            f"fine-tuned the last {self.method.epochs} epochs with {self.method.mode} filter dropout guided by "
            f"{self._spec.name} (mean p={self.method.p})"
        )

    def _start_dropout(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert self.shapley is not None and self._probabilities is not None
        layers = [layer.name for layer in self.shapley.players(pl_module).layers]
        self._dropout = FilterDropout(self._probabilities, layers=layers, seed=self.shapley.seed)
        self._dropout.setup(trainer, pl_module, TrainerFn.FITTING)

    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._dropout is not None:
            self._dropout.on_train_batch_start(trainer, pl_module, batch, batch_idx)

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._dropout is not None:
            self._dropout.on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self._dropout is not None:
            self._dropout.on_exception(trainer, pl_module, exception)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._dropout is not None:
            self._dropout.teardown(trainer, pl_module, stage)

    # ----------------------------------------------------------------------------------------- fit end
    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.fast_dev_run or trainer.interrupted:
            return
        assert self.shapley is not None and self._spec is not None
        handle = None
        if isinstance(self.method, PruneCulprits):
            result = self.shapley.results.get(self._spec.name)
            if result is None:
                rank_zero_warn(f"ShapleyRepair: no analysis of {self._spec.name!r} to repair with; nothing done.")
                return
            self._measure_before(trainer, pl_module)
            players = self.shapley.players(pl_module)
            culprits = self.method.culprits(result, self._negative())
            if len(culprits) == 0:
                rank_zero_info(f"[ShapleyRepair] no filter of {self._spec.name!r} has a harmful value.")
                self.description = f"pruned 0 filters ({self._spec.name})"
            else:
                handle = self.method.apply(pl_module, players, culprits)
                names = [players.names[i] for i in culprits.tolist()]
                self.description = f"pruned {len(culprits)} culprits of {self._spec.name}: {names}"
        elif self._before is None:  # a fine-tuning repair that never started (the fit ended early)
            return
        with eval_data.preserved_rng():
            after = {label: game.full_value() for label, game in (self._games or {}).items()}
        if not self.apply:
            if handle is not None:
                handle.undo()
            elif self._restore is not None:
                pl_module.load_state_dict(self._restore)
        self._write_report(trainer, pl_module, after)

    def _negative(self) -> bool:
        assert self._spec is not None
        negative = self.method.negative
        return self._spec.negative_culprits if negative is None else negative

    def _measure_before(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Build the held-out games (adversarial examples made against the unrepaired model) and measure."""
        assert self.shapley is not None
        with eval_data.preserved_rng():
            data, self._source = self._heldout_data(trainer)
            self._games = report_games(self.shapley.specs, pl_module, data.to(pl_module.device),
                                       self.shapley.seed + REPORT_SEED)
            self._before = {label: game.full_value() for label, game in self._games.items()}
        if not self.apply:
            self._restore = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def _heldout_data(self, trainer: L.Trainer) -> tuple[EvalData, str]:
        """The datamodule's test split (with ``test_groups`` if it has them), else the analysis data."""
        dm = trainer.datamodule
        if dm is not None:
            try:
                loader = dm.test_dataloader()
            except (NotImplementedError, AttributeError, TypeError, ValueError):
                loader = None
            if loader is not None:
                groups = getattr(dm, "test_groups", None)
                return eval_data.collect(loader, self.heldout_size, groups), "test split"
        rank_zero_warn("ShapleyRepair: no test split, so before/after is measured on the analysis data.")
        assert self.shapley is not None
        return self.shapley.evaluation_data(trainer), "analysis data (no test split)"

    def _write_report(self, trainer: L.Trainer, pl_module: L.LightningModule, after: dict[str, float]) -> None:
        before = self._before or {}
        self.report = [
            {"metric": m, "before": before[m], "after": after[m], "change": after[m] - before[m]} for m in before
        ]
        if not trainer.is_global_zero:
            return
        assert self.shapley is not None
        table = [[r["metric"], r["before"], r["after"], r["change"]] for r in self.report]
        log_table(trainer.loggers, "repair/report", REPORT_COLUMNS, table, trainer.global_step)
        scalars = {}
        for r in self.report:
            key = r["metric"].split(" ")[0]
            scalars[f"repair/{key}_before"] = r["before"]
            scalars[f"repair/{key}_after"] = r["after"]
        log_scalars(trainer.loggers, scalars, trainer.global_step)
        out = self.shapley.output_dir(trainer)
        out.mkdir(parents=True, exist_ok=True)
        n = len(next(iter(self._games.values())).targets) if self._games else 0
        text = f"Repair: {self.description}\nMeasured on the {self._source} ({n} examples).\n\n"
        (out / "repair.md").write_text(text + markdown(REPORT_COLUMNS, table) + "\n")
        if self.apply:
            torch.save(pl_module.state_dict(), out / "repaired_model.pt")
        rank_zero_info("\n" + text + markdown(REPORT_COLUMNS, table))

    # ----------------------------------------------------------------------------------------- state
    @override
    def state_dict(self) -> dict[str, Any]:
        """Where a fine-tuning stands (its drop probabilities, dropout stream, before-values): plain data only."""
        return {
            "probabilities": self._probabilities,
            "dropout": self._dropout.state_dict() if self._dropout is not None else None,
            "before": self._before,
            "source": self._source,
            "description": self.description,
            "restore": self._restore,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._probabilities = state_dict["probabilities"]
        self._before = state_dict["before"]
        self._source = state_dict["source"]
        self.description = state_dict["description"]
        self._restore = state_dict["restore"]
        self._resume_dropout = state_dict["dropout"]  # resumed inside the fine-tuning: continue its dropout

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        resumed = self._resume_dropout
        if resumed is not None and self._dropout is None:
            self._start_dropout(trainer, pl_module)
            assert self._dropout is not None
            self._dropout.load_state_dict(resumed)
            self._resume_dropout = None
            # The held-out games are rebuilt at fit end from the model as it is then.
            with eval_data.preserved_rng():
                data, _ = self._heldout_data(trainer)
                assert self.shapley is not None
                self._games = report_games(self.shapley.specs, pl_module, data.to(pl_module.device),
                                           self.shapley.seed + REPORT_SEED)


def report_games(specs: list[GameSpec], model: L.LightningModule, data: EvalData, seed: int) -> dict[str, ModelGame]:
    """Overall accuracy and every game that ``data`` can play, keyed by report label.

    Built once, before the repair: the adversarial examples are made against the unrepaired model and the
    same examples are attacked again after it (the paper's Fig. 3c).
    """
    players = FilterPlayers(model)
    labels = {spec.name if spec.name == spec.kind else f"{spec.name} ({spec.kind})": g for g, spec in enumerate(specs)}
    games: dict[str, ModelGame] = {}
    if "accuracy" not in labels:  # overall accuracy is always reported, first
        games["accuracy"] = AccuracyGame(model, players, data.inputs, data.targets)
    for label, g in labels.items():
        if data.has(specs[g].game_class.required_data):
            games[label] = specs[g].build(model, players, data, seed=seed + g)
    return games


__all__ = ["REPORT_COLUMNS", "ShapleyRepair", "report_games"]
