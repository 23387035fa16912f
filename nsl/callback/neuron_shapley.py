"""The NeuronShapley callback: Neuron Shapley on a schedule during training and when training ends."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from nsl.callback import cost as cost_estimate
from nsl.callback import data as eval_data
from nsl.callback.specs import GameSpec, game_options, parse_games, semivalue_name, variant_name
from nsl.callback.view import AnalysisView
from nsl.games import EvalData, ModelGame
from nsl.games.base import decomposes, model_device
from nsl.interactions import SubGame, pairwise_interactions
from nsl.players import ABLATIONS, FilterPlayers
from nsl.report import (
    RemovalCurve,
    log_result,
    removal_curve,
    removal_plot,
    top_rows,
    value_histogram,
    write_csv,
)
from nsl.shapley import ESTIMATORS, LightningCollective, ShapleyResult, discounted
from nsl.shapley.semivalues import values_suffix
from nsl.shapley.tmab import exact_leave_one_out
from nsl.validation import check_bool, check_choice, check_int, check_number, resolve_top_k

MAX_INTERACTIONS = 12
#: The share of old samples kept by ``accumulate=True``: the previous run's statistics count half, so intervals
#: widen and players resolved on an earlier model are sampled again.
ACCUMULATE_WEIGHT = 0.5
# What the callback hands every estimator; an estimator that does not take one of these simply does not get it
# (``exact`` has no budget or seed). The user's ``estimator_kwargs`` are always passed, and checked up front.
COMMON_ESTIMATOR_ARGS = ("top_k", "tail", "seed", "names", "max_evals", "max_rows", "max_seconds", "resume",
                         "progress", "collective", "semivalue")
#: The share of a game's ``max_seconds`` kept for its removal curve and interactions by default.
CURVE_SHARE = 0.2
#: What an estimator gets when building the game used up its share of the seconds: v(N), v(∅) and no more.
MIN_ESTIMATE_SECONDS = 1e-3
#: The longest one call to a game may take, as a share of the game's ``max_seconds`` (timed by the dry run):
#: budgets are checked between calls, so this bounds how far an analysis runs past its seconds.
BATCH_SHARE = 0.05


def _accepted(fn: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``kwargs`` that ``fn`` takes (all of them when it takes ``**kwargs``)."""
    parameters = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in parameters}


class Results(dict):
    """Results by result name; a game's spec name finds its result too (``results["class"]`` finds
    ``results["class_3"]`` once the class game picked class 3)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.aliases: dict[str, str] = {}

    def _key(self, name: object) -> object:
        return name if dict.__contains__(self, name) else self.aliases.get(name, name)  # type: ignore[call-overload]

    def __getitem__(self, name: str) -> ShapleyResult:
        return super().__getitem__(self._key(name))

    def __contains__(self, name: object) -> bool:
        return super().__contains__(self._key(name))

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(self._key(name), default)


class NeuronShapley(Callback):
    r"""Find the filters responsible for accuracy, one class, fairness or adversarial weakness while training.

    Plays each game (a name from :data:`nsl.games.GAMES`) with an estimator (a name from
    :data:`nsl.shapley.ESTIMATORS`, TMAB-Shapley by default) on a fixed evaluation subset of the trainer's
    validation data, every ``every_n_epochs`` epochs from ``start_epoch`` (at validation end) and once when
    training ends. Analysis never changes training: the model's weights, buffers, hooks and modes are
    restored, the global RNGs are untouched, so a fit with this callback ends with bitwise the same weights as
    one without it. Each game's latest result is in ``callback.results[name]``, its history of top-k filters in
    ``callback.history[name]``; results are logged (histogram, top-k table, removal curve) and saved to
    ``save_dir`` as ``<game>.pt`` (:meth:`ShapleyResult.load`) and ``<game>.csv``. To act on the culprits, add
    a :class:`~nsl.callback.ShapleyRepair` after this callback.

    **Before training** (at fit start, before the first optimizer step) the callback plays a dry run: it draws
    the evaluation set, builds every game and evaluates v(N) and v(∅) once, so bad data or configurations
    (unknown batch keys, NaN inputs, labels out of range, a class without samples, fairness without groups,
    ``top_k`` ≥ N ...) fail then, not after the last epoch. A game whose spec says ``required: false`` is
    skipped instead when the data cannot support it (one info line says why). The dry run leaves weights,
    buffers, hooks, modes and the global RNGs as they were.

    **Class games** without a ``class_index`` pick the class the model gets most wrong at their first analysis
    (not at the dry run: the model is untrained then) and keep it for the rest of the fit and on resume (it is
    in the callback's state). The result then carries the class in its name: ``results["class_3"]`` (also found
    as ``results["class"]``), files ``class_3.pt``/``.csv``, log keys ``shapley/class_3/...`` and the summary.

    Under DDP every rank analyses the same evaluation set (the first ``eval_size`` examples of the whole
    validation data, as rank 0 read them) and samples its own permutations; the estimator statistics are
    merged every round with the strategy's collectives, so every rank ends with the same results while each
    does about ``1/world_size`` of the evaluations. Files and logs are written on global rank zero only.

    Args:
        games: game names or mappings with a ``kind`` and options, e.g. ``{"kind": "class", "class_index": 3}``;
            see :mod:`nsl.callback.specs`.
        layers: glob pattern(s) over module names choosing the layers whose filters are players
            (``None``: every ``Conv2d``).
        ablation: how a removed filter is silenced: ``"zero"``, ``"mean"`` or ``"bn_beta"``.
        estimator: a registered estimator: ``"tmab"`` (top-k bandit), ``"monte_carlo"``, ``"exact"`` (N ≤ 20) ...
        semivalue: which values every game estimates (a game's spec may set its own): ``"shapley"``, ``"banzhaf"`` or
            ``"beta(α,β)"`` (:mod:`nsl.shapley.semivalues`; ``"beta(1,16)"`` weighs coalitions near the full model).
            Other than Shapley it needs an estimator that takes ``semivalue`` (tmab), which is checked here. Results
            carry it (``result.semivalue``; saved in ``<game>.pt``, a ``semivalue`` column in ``<game>.csv``, the
            W&B summary ``shapley/<game>/semivalue``, plot titles and the printed summary name it).
        top_k: how many top filters to separate, log and report (``None``: 10, at most N − 1 for N filters);
            an int must be below N, which the dry run checks before training.
        every_n_epochs: run at the end of every n-th validation epoch (``None``: only when training ends).
        start_epoch: first epoch to run at, an int or a fraction of ``max_epochs`` (e.g. ``0.5``).
        at_fit_end: run once more when training ends.
        eval_size: examples of the validation data in the evaluation set (``None``: all).
        data: evaluation data given directly, ``(inputs, targets)`` or ``(inputs, targets, groups)``,
            instead of the validation data.
        max_evals, max_rows, max_seconds: budget per game and run; the result says whether it converged first.
            ``max_evals`` counts full-set evaluations, ``max_rows`` rows through the model ((coalition, example)
            pairs; whichever of the two runs out first stops; given to estimators that take it). ``max_seconds``
            bounds each game's whole analysis (building the game, the estimate, the removal curve and interactions)
            with an overshoot of at most one batch of evaluations; the dry run prints what the budget buys.
        seed: seeds every estimator and game (run r of game g uses its own derived seed).
        estimator_kwargs: further keywords for the estimator (tmab's ``epsilon_fraction``, ``delta``; ``truncation``,
            ``n_permutations`` ...).
        accumulate: continue sampling from the previous run's statistics instead of starting afresh. A number in
            (0, 1] is the share of the old samples kept: old statistics count as that many samples (means and
            variances kept), so intervals widen again and players resolved on an earlier model are re-sampled;
            ``True`` keeps :data:`ACCUMULATE_WEIGHT` (0.5), ``1.0`` all (for a model that no longer changes).
        removal_curve: log the value as top filters are removed, next to random removal (``False`` to skip).
        curve_steps: the removal curve goes up to this many filters (``None``: ``3 · top_k``).
        curve_share: the share of ``max_seconds`` kept for the removal curve and interactions (the estimate gets
            the rest, and the curve whatever the estimate leaves); a curve that runs out of time stops early and
            says how far it got.
        chunk_size: coalitions per forward pass (``None``: games choose from the evaluation batch size).
        save_dir: folder for result files (``None``: ``<trainer.default_root_dir>/neuron_shapley``).
        interactions: also compute the exact pairwise Shapley interaction index among this many top filters
            (all other filters kept on; 2^n evaluations, n ≤ 12) and log it as a heatmap; 0 to skip.
        verbose: print the selected layers and a summary of each run.
        save_checkpoint: after the fit-end analysis save ``<save_dir>/fit_end.ckpt`` (``trainer.save_checkpoint``),
            which holds that analysis in this callback's state: ``ModelCheckpoint`` files are written before it.
            An analysis that Ctrl-C stopped is saved there too, with its partial result marked interrupted.

    Example::

        >>> import lightning as L
        >>> from nsl import NeuronShapley
        >>> from nsl.data import DigitsDataModule
        >>> from nsl.models import Classifier, SmallCNN
        >>> shapley = NeuronShapley(games=["accuracy", "class"], top_k=3, eval_size=32, max_evals=60,
        ...                         removal_curve=False, verbose=False)
        >>> trainer = L.Trainer(max_epochs=1, limit_train_batches=2, callbacks=[shapley], logger=False,
        ...                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(Classifier(SmallCNN(channels=(4, 6, 8))), DigitsDataModule())
        >>> len(shapley.results["accuracy"].top_k)
        3
        >>> picked = shapley.picked["class"]  # the class game picked the class the model got most wrong
        >>> sorted(shapley.results) == ["accuracy", f"class_{picked}"], shapley.results["class"].k
        (True, 3)
    """

    def __init__(
        self,
        games: str | Mapping[str, Any] | Sequence[str | Mapping[str, Any]] = ("accuracy",),
        layers: str | Sequence[str] | None = None,
        ablation: str = "zero",
        estimator: str = "tmab",
        semivalue: str = "shapley",
        top_k: int | None = None,
        every_n_epochs: int | None = None,
        start_epoch: int | float = 0,
        at_fit_end: bool = True,
        eval_size: int | None = 256,
        data: Sequence[Tensor] | None = None,
        max_evals: int | None = None,
        max_seconds: float | None = None,
        max_rows: int | None = None,
        seed: int = 0,
        estimator_kwargs: Mapping[str, Any] | None = None,
        accumulate: bool | float = False,
        removal_curve: bool = True,
        curve_steps: int | None = None,
        curve_share: float = CURVE_SHARE,
        chunk_size: int | None = None,
        save_dir: str | Path | None = None,
        interactions: int = 0,
        verbose: bool = True,
        save_checkpoint: bool = True,
    ) -> None:
        super().__init__()
        self.specs: list[GameSpec] = parse_games(games)
        self.layers = layers
        self.ablation = ablation
        self.estimator = estimator
        self.semivalue = semivalue_name(semivalue)  # canonical ("beta(1,1)" is "shapley")
        self.top_k = top_k
        self.every_n_epochs = every_n_epochs
        self.start_epoch = start_epoch
        self.at_fit_end = at_fit_end
        self.eval_size = eval_size
        self.max_evals = max_evals
        self.max_seconds = max_seconds
        self.max_rows = max_rows
        self.seed = seed
        self.estimator_kwargs = dict(estimator_kwargs or {})
        self.accumulate = accumulate
        self.removal_curve = removal_curve
        self.curve_steps = curve_steps
        self.curve_share = curve_share
        self.chunk_size = chunk_size
        self.interactions = interactions
        self.verbose = verbose
        self.save_checkpoint = save_checkpoint
        self._validate_init()
        self.data = eval_data.from_tensors(data, eval_size) if data is not None else None
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self.results: Results = Results()
        self.history: dict[str, list[dict[str, Any]]] = {s.name: [] for s in self.specs}
        self.curves: dict[str, dict[str, list]] = {}
        self.interaction_matrices: dict[str, Any] = {}
        self.runs = 0
        self._last_epoch = -1
        self._eval: EvalData | None = None
        self.picked: dict[str, int] = {}  # spec name -> the class a class game picked (frozen for the fit)
        self.dry_run_done = False  # set by dry_run, reset at each fit's setup
        self.skipped: dict[str, str] = {}  # spec name -> why the dry run skipped it (``required: false``)
        #: spec name -> what the dry run measured and what the budget buys (see :mod:`nsl.callback.cost`)
        self.cost_estimates: dict[str, dict[str, Any]] = {}

    def _validate_init(self) -> None:
        """Every constructor argument, checked before any training starts (like ModelCheckpoint's)."""
        check_choice("ablation", self.ablation, ABLATIONS)
        check_choice("estimator", self.estimator, ESTIMATORS)
        resolve_top_k(self.top_k, None)  # against N in the dry run
        check_int("every_n_epochs", self.every_n_epochs, low=1, optional=True)
        if isinstance(self.start_epoch, float):
            check_number("start_epoch", self.start_epoch, low=0, high=1, high_open=True)
        else:
            check_int("start_epoch", self.start_epoch, low=0)
        check_bool("at_fit_end", self.at_fit_end)
        check_bool("verbose", self.verbose)
        check_bool("save_checkpoint", self.save_checkpoint)
        if not isinstance(self.accumulate, bool):  # else the share of old samples kept
            check_number("accumulate", self.accumulate, low=0, high=1, low_open=True)
        for name in ("eval_size", "max_evals", "max_rows", "curve_steps", "chunk_size"):
            check_int(name, getattr(self, name), low=1, optional=True)
        check_number("max_seconds", self.max_seconds, positive=True, optional=True)
        check_number("curve_share", self.curve_share, low=0, high=1, low_open=True, high_open=True)
        check_int("seed", self.seed)
        check_int("interactions", self.interactions, low=0, high=MAX_INTERACTIONS)
        if self.every_n_epochs is None and not self.at_fit_end:
            raise ValueError("every_n_epochs=None and at_fit_end=False: the callback would never run.")
        clash = sorted(set(self.estimator_kwargs) & set(COMMON_ESTIMATOR_ARGS))
        if clash:
            raise ValueError(f"estimator_kwargs sets {clash}; set them as the callback's own arguments instead.")
        fn = ESTIMATORS[self.estimator]
        rows_budgets = [self.max_rows, *(s.max_rows for s in self.specs)]
        takes = _accepted(fn, {"max_rows": None, "max_evals": None})
        if any(r is not None for r in rows_budgets) and "max_rows" not in takes:
            # A rows budget from a shared config (game=all sets one) must not break an estimator without one.
            instead = (
                "it gets the same budget as full-set evaluations (max_rows / evaluation-set size)"
                if "max_evals" in takes else "its work is fixed, so the rows budget is ignored"
            )
            rank_zero_warn(f"NeuronShapley: estimator {self.estimator!r} takes no rows budget; {instead}.")
        for spec in self.specs:  # a semivalue the estimator cannot estimate fails now, naming where it was set
            self.check_semivalue(self.semivalue_of(spec), "semivalue" if spec.semivalue is None else
                                 f"game {spec.name!r}: semivalue")
        unknown = sorted(set(self.estimator_kwargs) - set(_accepted(fn, dict.fromkeys(self.estimator_kwargs))))
        if unknown:
            accepted = sorted(set(inspect.signature(fn).parameters) - {"game", *COMMON_ESTIMATOR_ARGS})
            raise ValueError(
                f"estimator_kwargs {unknown} are not options of estimator {self.estimator!r}; it accepts {accepted}."
            )

    # ----------------------------------------------------------------------------------------- state
    @property
    @override
    def state_key(self) -> str:
        semivalues = [self.semivalue_of(s) for s in self.specs]
        # Only named when not all Shapley, so the key of a Shapley analysis is what it was before semivalues.
        extra = {"semivalues": semivalues} if set(semivalues) != {"shapley"} else {}
        return self._generate_state_key(
            games=[s.name for s in self.specs], layers=self.layers, estimator=self.estimator, **extra
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        """Results (with estimator statistics), histories, picked classes and the schedule: tensors and plain
        Python only."""
        return {
            "results": {name: r.to_dict() for name, r in self.results.items()},
            "history": copy.deepcopy(self.history),
            "runs": self.runs,
            "last_epoch": self._last_epoch,
            "picked": dict(self.picked),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.picked = {}
        self.results = Results()
        for name, index in state_dict.get("picked", {}).items():
            self._pick(name, int(index))
        for name, d in state_dict["results"].items():
            self.results[name] = ShapleyResult.from_dict(d)
        self.history = {s.name: list(state_dict["history"].get(s.name, [])) for s in self.specs}
        self.runs = int(state_dict["runs"])
        self._last_epoch = int(state_dict["last_epoch"])

    def result_name(self, spec: GameSpec, semivalue: str | None = None) -> str:
        """The name a game's results are stored, saved and logged under: the spec's name, with the picked class
        for a class game that picked one (``"class_3"``); with a ``semivalue`` other than the game's own, that
        semivalue's results of the game (``"accuracy_banzhaf"``, see :meth:`run`)."""
        name = self.results.aliases.get(spec.name, spec.name)
        if semivalue is None or semivalue == self.semivalue_of(spec):
            return name
        return variant_name(name, semivalue)

    def semivalue_of(self, spec: GameSpec) -> str:
        """The semivalue game ``spec`` estimates: its spec's, else the callback's (a canonical name)."""
        return spec.semivalue or self.semivalue

    def check_semivalue(self, semivalue: str, where: str) -> None:
        """Fail before any work when this callback's estimator cannot estimate ``semivalue`` (asked for by
        ``where``, e.g. ``"semivalue"`` or ``"ShapleyRepair semivalue"``): only an estimator that takes a
        ``semivalue`` keyword estimates anything but Shapley values."""
        if semivalue in ("shapley", "leave_one_out"):  # leave-one-out is computed exactly, by any estimator's callback
            return
        estimator = ESTIMATORS[self.estimator]
        if not _takes_semivalue(estimator):
            able = [name for name in ESTIMATORS if _takes_semivalue(ESTIMATORS[name])]
            raise ValueError(
                f"{where}={semivalue!r} needs an estimator that takes `semivalue`; estimator {self.estimator!r} "
                f"estimates Shapley values only. Use semivalue='shapley', or one of the estimators "
                f"{able or '(none registered)'}."
            )
        params = inspect.signature(estimator).parameters
        sampler = self.estimator_kwargs.get("sampler", params["sampler"].default if "sampler" in params else None)
        if sampler not in (None, "positions"):  # permutation scans weigh every coalition size alike: Shapley's
            raise ValueError(
                f"{where}={semivalue!r} needs estimator_kwargs sampler='positions' (the default); sampler={sampler!r} "
                "estimates Shapley values only."
            )

    def _picks_class(self, spec: GameSpec) -> bool:
        """A game that chooses its class from the data (a ``class_index`` option left unset)."""
        return "class_index" in (game_options(spec.game_class) or ()) and spec.options.get("class_index") is None

    def _pick(self, name: str, index: int) -> None:
        """Freeze the class game ``name`` on class ``index`` and store its results under a name with the class."""
        self.picked[name] = index
        taken = {s.name for s in self.specs} | set(self.results.aliases.values())
        label = f"{name}_{index}"
        if label in taken:  # another spec already plays that class under this name
            label = f"{name}_picked_{index}"
        self.results.aliases[name] = label

    # ----------------------------------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Fail before training starts on layer patterns that match nothing (and similar bad configs).
        if stage == TrainerFn.FITTING:
            self.dry_run_done = False
            players = self.players(pl_module)
            if self.verbose:
                layers = ", ".join(f"{layer.name} ({layer.size})" for layer in players.layers)
                rank_zero_info(
                    f"[NeuronShapley] players: {len(players)} filters of {len(players.layers)} layers: {layers}"
                )

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After setup, device placement and checkpoint restore (a picked class is known again), before any
        # optimizer step: everything the analyses will need is checked now (unless a ShapleyRepair listed
        # before this callback already asked for it).
        if not self.dry_run_done:
            self.dry_run(trainer, pl_module)

    def dry_run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Draw the evaluation data, build every game and evaluate v(N) and v(∅) once; fail on what a later
        analysis would fail on (naming the bad value and what is accepted), skip the games a ``required: false``
        spec allows to skip. Call it on every rank at once; the model and the global RNGs are left as they were.
        """
        self.skipped = {}
        with eval_data.preserved_rng(), torch.inference_mode(False):
            data = self.evaluation_data(trainer)
            eval_data.check_data(data)
            data = data.to(model_device(pl_module))  # where the model is now (the games evaluate there)
            players = self.players(pl_module)
            share = (lambda obj: trainer.strategy.broadcast(obj, src=0)) if trainer.world_size > 1 else None
            n_outputs = None
            for g, spec in enumerate(self.specs):
                fixed = self._fixed(spec)
                reason = spec.game_class.unsupported(data, {**spec.options, **fixed})
                if reason is not None:
                    if spec.required:
                        raise ValueError(
                            f"game {spec.name!r} cannot be played: {reason}. Set `required: false` in its spec to "
                            "skip it on such data."
                        )
                    self.skipped[spec.name] = reason
                    rank_zero_info(f"[NeuronShapley] skipping game {spec.name!r} (required: false): {reason}.")
                    continue
                self._resolve_top_k(spec, len(players))
                try:
                    start = time.perf_counter()
                    game = self._build(g, spec, pl_module, players, data, share)
                    build_seconds = time.perf_counter() - start
                    game(torch.stack([torch.ones(len(players)), torch.zeros(len(players))]).bool())  # v(N), v(∅)
                    self._estimate_cost(spec, game, players, build_seconds, trainer.world_size)
                except (ValueError, TypeError) as err:
                    raise type(err)(f"game {spec.name!r} failed its dry run before training: {err}") from err
                n_outputs = game.num_classes
        if len(self.skipped) == len(self.specs):
            raise ValueError(f"every game was skipped on this evaluation data ({self.skipped}); nothing to play.")
        if n_outputs is not None:
            self._warn_output_layer(pl_module, players, n_outputs)
        self.dry_run_done = True

    def _estimate_cost(
        self, spec: GameSpec, game: ModelGame, players: FilterPlayers, build_seconds: float, world_size: int
    ) -> None:
        """Time a few evaluations and (coalition, example) rows of ``game`` and work out what the budget buys (see
        :mod:`nsl.callback.cost`): stored in :attr:`cost_estimates`, printed, and a warning when it cannot rank."""
        estimator = ESTIMATORS[self.estimator]
        params = inspect.signature(estimator).parameters
        per_example = self._samples_examples(game, params)
        seconds_per_eval = cost_estimate.time_evals(game, seed=self.seed)
        seconds_per_row = (
            cost_estimate.time_rows(game, seed=self.seed) if per_example else seconds_per_eval / game.rows_per_eval
        )
        max_evals = spec.max_evals or self.max_evals
        if max_evals is None and "max_evals" in params:  # the estimator's own default (tmab: -1)
            default = params["max_evals"].default
            max_evals = default if isinstance(default, int) else None
        estimate = cost_estimate.estimate_cost(
            spec.name, game, players, seconds_per_eval=seconds_per_eval, seconds_per_row=seconds_per_row,
            build_seconds=build_seconds, sampling="examples" if per_example else "coalitions",
            budgeted=any(k in params for k in ("max_evals", "max_rows", "max_seconds")),
            max_rows=spec.max_rows or self.max_rows, max_evals=max_evals,
            max_seconds=spec.max_seconds or self.max_seconds,
            estimate_share=1 - self.curve_share if self._post_analysis else 1.0, world_size=world_size,
        )
        self.cost_estimates[spec.name] = estimate.as_dict()
        if self.verbose:
            rank_zero_info(
                f"[NeuronShapley] cost estimate for game {spec.name!r} (measured in the dry run, before training):\n  "
                + "\n  ".join(estimate.lines())
            )
        warning = estimate.warning()
        if warning is not None:
            rank_zero_warn(warning)

    def _samples_examples(self, game: ModelGame, params: Mapping[str, inspect.Parameter]) -> bool:
        """Whether the estimator will sample (coalition, example) pairs on ``game``: it takes ``per_example``, the
        game decomposes over examples, and neither ``per_example=False`` nor a sampler other than tmab's
        ``"positions"`` (the one that draws pairs) is asked for."""
        if "per_example" not in params or not decomposes(game):
            return False
        if self.estimator_kwargs.get("per_example", params["per_example"].default) is False:
            return False
        default = params["sampler"].default if "sampler" in params else "positions"
        return self.estimator_kwargs.get("sampler", default) == "positions"

    @property
    def _post_analysis(self) -> bool:
        """Whether a run does more after the estimate (removal curve, interactions), which gets ``curve_share``."""
        return bool(self.removal_curve) or self.interactions >= 2

    def _build(
        self, g: int, spec: GameSpec, model: L.LightningModule, players: FilterPlayers, data: EvalData,
        share: Callable[[Any], Any] | None,
    ) -> ModelGame:
        """Game ``g`` of the specs on ``data``, with its seed, the callback's chunk size and what it froze."""
        options = {"chunk_size": self.chunk_size} if self.chunk_size else {}
        return spec.build(model, players, data, seed=self.seed + g, share=share, fixed=self._fixed(spec), **options)

    def _fixed(self, spec: GameSpec) -> dict[str, Any]:
        """Options the callback froze for this game: the class a class game picked."""
        return {"class_index": self.picked[spec.name]} if spec.name in self.picked else {}

    def _resolve_top_k(self, spec: GameSpec, n_players: int) -> int:
        """The game's ``top_k`` (its spec's, else the callback's) resolved against the N filters: the same rule and
        message as every estimator's (:func:`~nsl.validation.resolve_top_k`), plus where more filters come from."""
        own = spec.top_k is not None
        name = f"{spec.name}.top_k" if own else "top_k"
        try:
            return resolve_top_k(spec.top_k if own else self.top_k, n_players, name=name)
        except ValueError as err:
            raise ValueError(f"{err} The players are the filters of layers={self.layers!r}: select more layers "
                             "for a larger top_k.") from None

    def _warn_output_layer(self, model: nn.Module, players: FilterPlayers, n_outputs: int) -> None:
        """Warn when the model's output layer is among the players: its features are the logits themselves."""
        modules = dict(model.named_modules())
        order = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        for layer in players.layers:
            module = modules[layer.name]
            if isinstance(module, nn.Linear) and module.out_features == n_outputs and order[-1] == layer.name:
                rank_zero_warn(
                    f"NeuronShapley: layer {layer.name!r} is the model's output layer (a Linear with "
                    f"{n_outputs} outputs, the number of classes): its {n_outputs} players are the logits "
                    "themselves. Narrow `layers` (e.g. to the convolutions) unless you mean to score them."
                )

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._due(trainer):
            self._last_epoch = trainer.current_epoch
            try:
                self.run(trainer, pl_module, stage="epoch")
            except KeyboardInterrupt:  # Ctrl-C ends the fit here: keep what the analysis did in fit_end.ckpt
                self._save_fit_end(trainer)
                raise

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # At train end, not fit end: the model is still on its device, and every callback's on_fit_end (such as
        # a ShapleyRepair's) sees this final analysis whatever the order of the callbacks.
        if not self.at_fit_end or trainer.fast_dev_run or trainer.interrupted:
            return
        try:
            self.run(trainer, pl_module, stage="fit_end")
        except KeyboardInterrupt:  # Lightning stops the process next: save what the analysis did first
            self._save_fit_end(trainer)
            raise
        self._save_fit_end(trainer)

    def _save_fit_end(self, trainer: L.Trainer) -> None:
        """``<save_dir>/fit_end.ckpt`` with this callback's state (``save_checkpoint``): ModelCheckpoint saved
        before the analysis, so the analysis gets a checkpoint of its own (call it on every rank)."""
        if self.save_checkpoint:
            trainer.save_checkpoint(self.output_dir(trainer) / "fit_end.ckpt", weights_only=False)  # with callbacks

    def _start(self, trainer: L.Trainer) -> int:
        if isinstance(self.start_epoch, float):
            max_epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1
            return math.floor(self.start_epoch * max_epochs)
        return self.start_epoch

    def _due(self, trainer: L.Trainer) -> bool:
        if self.every_n_epochs is None or trainer.sanity_checking or trainer.fast_dev_run:
            return False
        if trainer.state.fn != TrainerFn.FITTING:
            return False
        epoch = trainer.current_epoch
        if epoch == self._last_epoch:  # several validations per epoch: once is enough
            return False
        start = self._start(trainer)
        return epoch >= start and (epoch - start) % self.every_n_epochs == 0

    # ----------------------------------------------------------------------------------------- analysis
    def spec(self, name: str) -> GameSpec:
        """The spec of the game whose results are stored under ``name`` (its spec name or its result name)."""
        for spec in self.specs:
            if name in (spec.name, self.result_name(spec)):
                return spec
        raise ValueError(f"game {name!r} is not one of this callback's games {[s.name for s in self.specs]}.")

    def players(self, model: L.LightningModule) -> FilterPlayers:
        """The filters of ``model`` this callback plays with (its ``layers`` and ``ablation``)."""
        return FilterPlayers(model, self.layers, self.ablation)

    def current_result(
        self, trainer: L.Trainer, pl_module: L.LightningModule, name: str, stage: str = "requested",
        semivalue: str | None = None,
    ) -> ShapleyResult:
        """Game ``name``'s result for the model as it is now: the latest one if no training step came after it,
        else a fresh run of that game alone, recorded with ``stage`` (call it on every rank at once). With a
        ``semivalue`` other than the game's own, the result of that semivalue (see :meth:`run`)."""
        spec = self.spec(name)
        if spec.name in self.skipped:
            raise ValueError(f"game {spec.name!r} was skipped before training: {self.skipped[spec.name]}.")
        if semivalue is not None:
            semivalue = semivalue_name(semivalue)
            self.check_semivalue(semivalue, "semivalue")
        stored = self.result_name(spec, semivalue)
        latest = next((h for h in reversed(self.history.get(spec.name) or []) if h["name"] == stored), None)
        if latest is None or latest["step"] != trainer.global_step or stored not in self.results:
            self.run(trainer, pl_module, stage=stage, games=[spec.name], semivalue=semivalue)
            stored = self.result_name(spec, semivalue)  # a class game may just have picked its class
        return self.results[stored]

    def evaluation_data(self, trainer: L.Trainer) -> EvalData:
        """The fixed evaluation set: ``data`` if given, else the first ``eval_size`` validation examples.

        Under DDP the validation data is read unsharded and rank 0's copy is broadcast, so all ranks play on
        the same examples (every rank must call this at the same time).
        """
        if self._eval is None:
            if self.data is not None:
                data = self.data
            else:
                loaders = trainer.val_dataloaders
                if loaders is None:
                    loaders = _validation_source(trainer)
                if loaders is None:
                    raise ValueError(
                        "NeuronShapley needs evaluation data: give the Trainer validation data (a val_dataloader) "
                        f"or {eval_data.DATA_HINT}."
                    )
                if isinstance(loaders, Mapping):
                    loaders = list(loaders.values())
                loader = eval_data.unsharded(loaders[0] if isinstance(loaders, (list, tuple)) else loaders)
                data = eval_data.collect(loader, self.eval_size, getattr(trainer.datamodule, "val_groups", None))
            if trainer.world_size > 1:
                data = trainer.strategy.broadcast(data, src=0)
            self._eval = data
        return self._eval

    def view(self, trainer: L.Trainer, model: L.LightningModule) -> AnalysisView:
        """A read-only view of this analysis as it stands now (games, latest results, players of ``model``,
        evaluation data once drawn): what a :class:`~nsl.callback.ShapleyRepair` reads."""
        return AnalysisView(
            specs=tuple(self.specs),
            skipped=MappingProxyType(dict(self.skipped)),
            results=MappingProxyType(dict(self.results)),
            result_names=MappingProxyType({s.name: self.result_name(s) for s in self.specs}),
            semivalues=MappingProxyType({s.name: self.semivalue_of(s) for s in self.specs}),
            picked=MappingProxyType(dict(self.picked)),
            seed=self.seed,
            output_dir=self.output_dir(trainer),
            evaluation_data=self._eval,
            dry_run_done=self.dry_run_done,
            model=model,
            layers=self.layers,
            ablation=self.ablation,
        )

    def run(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        stage: str = "manual",
        games: Sequence[str] | None = None,
        semivalue: str | None = None,
    ) -> dict[str, ShapleyResult]:
        """Play every game (or the named ``games``) once now; returns and stores each game's result.

        A ``semivalue`` other than a game's own plays it for that semivalue's values instead, stored, saved and
        logged beside the game's own results as ``<game>_<semivalue>`` (``accuracy_banzhaf``): what a repair that
        acts on another semivalue than the analysis shows asks for. Every rank computes (call it on all ranks at
        once), rank 0 logs and writes the files.
        """
        if semivalue is not None:
            semivalue = semivalue_name(semivalue)
            self.check_semivalue(semivalue, "semivalue")
        wanted = [self.spec(name).name for name in games] if games is not None else None
        interrupted: str | None = None  # the game Ctrl-C stopped
        not_played: list[str] = []
        # The estimators' progress bars show where the Trainer shows its own, on rank zero.
        progress = self.verbose and trainer.is_global_zero and trainer.progress_bar_callback is not None
        with eval_data.preserved_rng():
            data = self.evaluation_data(trainer).to(pl_module.device)
            players = self.players(pl_module)
            step = trainer.global_step
            collective = LightningCollective(trainer.strategy) if trainer.world_size > 1 else None
            share = None if collective is None else (lambda obj: trainer.strategy.broadcast(obj, src=0))
            for g, spec in enumerate(self.specs):
                if (wanted is not None and spec.name not in wanted) or spec.name in self.skipped:
                    continue
                if interrupted is not None:
                    not_played.append(spec.name)
                    continue
                # One clock bounds the game's whole analysis: building it, the estimate, the curve, interactions.
                clock = _Clock(spec.max_seconds or self.max_seconds, self.curve_share if self._post_analysis else 0.0)
                result, curve = None, None
                try:
                    game = self._build(g, spec, pl_module, players, data, share)
                    if self._picks_class(spec) and spec.name not in self.picked:
                        self._pick(spec.name, int(game.class_index))  # type: ignore[attr-defined]
                    seed = self.seed + 1009 * self.runs + 101 * g
                    top_k = self._resolve_top_k(spec, len(players))
                    name = self.result_name(spec, semivalue)
                    values = semivalue or self.semivalue_of(spec)
                    weight = self._accumulate_weight(name, values, len(players))
                    result = self._estimate(
                        spec, game, players, top_k, seed, progress, collective, weight, clock.estimate_seconds(),
                        name=name, semivalue=values,
                    )
                    if result.interrupted:
                        result = _marked_interrupted(result)
                    curve = self._analyse(spec, game, players, result, top_k, seed, name, clock, progress)
                except KeyboardInterrupt:  # outside the estimator's sampling, which keeps its samples itself
                    interrupted = spec.name
                if result is None:  # Ctrl-C while the game was built: nothing of it to keep
                    not_played.append(spec.name)
                    continue
                name = self.result_name(spec, semivalue)
                self.results[name] = result
                self.history[spec.name].append(self._history_entry(trainer, spec, result, stage, step, name, weight))
                if curve is not None:
                    self.curves[name] = curve.to_dict()
                if trainer.is_global_zero:
                    self._report(trainer, spec, result, curve, step, weight, name)
                if result.interrupted or (curve is not None and curve.stopped == "interrupted"):
                    interrupted = spec.name
            self.runs += 1
        if interrupted is not None:  # Ctrl-C: what was done is kept and saved; let Lightning stop
            if trainer.is_global_zero:
                self._say_interrupted(trainer, interrupted, not_played)
            raise KeyboardInterrupt
        return self.results

    def _say_interrupted(self, trainer: L.Trainer, name: str, not_played: list[str]) -> None:
        """One line after Ctrl-C: where the analysis stopped, what it kept and saved, which games it did not play."""
        result = self.results.get(name) if name not in not_played else None
        if result is not None:
            sampled = int((result.counts > 0).sum())
            rows = f"{result.n_rows:,} rows = " if getattr(result, "n_rows", None) else ""
            kept = (
                f"stopped after {rows}{result.n_evals:,} evaluations with {sampled:,} of {result.n_players:,} "
                f"filters sampled; its partial result is saved, marked interrupted, in {self.output_dir(trainer)}"
            )
        else:
            kept = "stopped before its estimate began; nothing of it was kept"
        skipped = f" Not played: {', '.join(repr(n) for n in not_played)}." if not_played else ""
        rank_zero_info(f"[NeuronShapley] Ctrl-C: game {name!r} {kept}.{skipped}")

    def _estimate(
        self,
        spec: GameSpec,
        game: ModelGame,
        players: FilterPlayers,
        top_k: int,
        seed: int,
        progress: bool,
        collective: LightningCollective | None,
        weight: float | None = None,
        max_seconds: float | None = None,
        *,
        name: str,
        semivalue: str,
    ) -> ShapleyResult:
        """One estimator run on ``game`` for ``semivalue``'s values, with the callback's budget (``max_seconds``:
        the estimate's share of the game's seconds), seed and the game's own tail; with a ``weight`` it resumes from
        the previous result stored under ``name``, its statistics discounted to that share of its samples."""
        if semivalue == "leave_one_out":  # exact in N + 1 evaluations, whatever the estimator: nothing to sample
            return exact_leave_one_out(game, top_k, tail=spec.tail, names=players.names)
        previous = self.results.get(name) if weight is not None else None
        if previous is not None and weight is not None and weight < 1:
            previous = discounted(previous, weight)
        common: dict[str, Any] = {
            "top_k": top_k,
            "tail": spec.tail,
            "seed": seed,
            "names": players.names,
            "max_seconds": max_seconds,
            "resume": previous,
            "progress": progress,
            "collective": collective,
            "semivalue": semivalue,  # only to an estimator that takes it: the others estimate Shapley (checked)
        }
        max_evals = spec.max_evals or self.max_evals
        if max_evals is not None:  # else the estimator's own default budget
            common["max_evals"] = max_evals
        max_rows = spec.max_rows or self.max_rows
        estimator = ESTIMATORS[self.estimator]
        if max_rows is not None and "max_rows" in _accepted(estimator, {"max_rows": None}):
            common["max_rows"] = max_rows  # the first budget to run out stops
        elif max_rows is not None:  # as full-set evaluations, for an estimator that counts those (see __init__)
            evals = -(-max_rows // max(1, int(getattr(game, "rows_per_eval", 1))))
            common["max_evals"] = min(evals, common.get("max_evals", evals))
        batch = self._batch_cap(spec, game, "sample")
        if batch is not None and "batch_size" not in self.estimator_kwargs:
            common["batch_size"] = batch
        result = estimator(game, **_accepted(estimator, common), **self.estimator_kwargs)
        if result.semivalue != semivalue:  # e.g. an estimator that swallows **kwargs
            raise RuntimeError(
                f"estimator {self.estimator!r} returned {result.semivalue!r} values of game {name!r} where "
                f"semivalue={semivalue!r} was asked for."
            )
        return result

    def _batch_cap(self, spec: GameSpec, game: ModelGame, what: str) -> int | None:
        """A batch (rows per call when the estimator samples (coalition, example) pairs, else coalitions; ``what=
        "curve"``: coalitions) that one call to the game finishes within :data:`BATCH_SHARE` of the game's
        ``max_seconds``, by the dry run's timing; ``None`` when the default batch already does, or nothing limits
        the seconds."""
        seconds = spec.max_seconds or self.max_seconds
        measured = self.cost_estimates.get(spec.name)
        if seconds is None or measured is None:
            return None
        rows = what == "sample" and measured["sampling"] == "examples"
        per_unit = measured["seconds_per_row"] if rows else measured["seconds_per_eval"]
        default = int(getattr(game, "max_rows", 1024)) if rows else game.chunk_size
        cap = int(BATCH_SHARE * seconds / max(per_unit, 1e-12))
        return None if cap >= default else max(1, cap)

    def _accumulate_weight(self, name: str, semivalue: str, n_players: int) -> float | None:
        """The share of old samples of result ``name`` this run resumes from (``None``: a fresh run, nothing to
        accumulate; also when the old samples were taken for another semivalue, e.g. from an older checkpoint)."""
        if self.accumulate is False:
            return None
        previous = self.results.get(name)
        if previous is None or previous.stats is None or previous.n_players != n_players:
            return None
        if previous.semivalue != semivalue:
            return None
        return ACCUMULATE_WEIGHT if self.accumulate is True else float(self.accumulate)

    def _analyse(
        self, spec: GameSpec, game: ModelGame, players: FilterPlayers, result: ShapleyResult, top_k: int, seed: int,
        name: str, clock: _Clock | None = None, progress: bool = False,
    ) -> RemovalCurve | None:
        """The removal curve (returned) and the interaction heatmap (stored) of a finished run, both inside the
        game's time (``clock``): the curve stops at its deadline and says how far it got, the interactions
        (exact: 2^n evaluations at once) are skipped when they would not fit in the seconds left."""
        if result.interrupted:
            return None
        deadline = None if clock is None else clock.deadline
        curve = None
        if self.removal_curve and result.n_ranked > 0:  # no curve of filters that have no ranking yet
            ranking = result.culprits(len(players), negative=False)
            curve = removal_curve(
                game, ranking, max_removed=self.curve_steps or 3 * top_k, n_random=3, seed=seed, deadline=deadline,
                batch_size=self._batch_cap(spec, game, "curve"), progress=progress, desc=f"{name}: removal curve",
            )
            if curve.stopped == "budget" and self.verbose:
                seconds = spec.max_seconds or self.max_seconds
                rank_zero_info(
                    f"[NeuronShapley] {name}: the removal curve stopped at {curve.reached} of {curve.planned} filters "
                    f"removed: the game's max_seconds={seconds:g} ran out (the curve's share: curve_share="
                    f"{self.curve_share:g}). Raise either, or lower curve_steps, for the whole curve."
                )
        if self.interactions >= 2 and result.n_ranked >= 2:  # among ranked filters only
            top = result.top_k[: self.interactions].tolist()
            needed = 2 ** len(top) * self._seconds_per_eval(spec, result)
            left = None if deadline is None else deadline - time.perf_counter()
            if left is not None and needed > left:
                if self.verbose:
                    rank_zero_info(
                        f"[NeuronShapley] {name}: interactions among the top {len(top)} skipped: their "
                        f"{2 ** len(top):,} evaluations take about {needed:.1f} s and the game's max_seconds leave "
                        f"{max(left, 0.0):.1f} s (lower `interactions` or raise max_seconds)."
                    )
            else:
                sub = SubGame(game, top, others="present", names=[players.names[i] for i in top])
                self.interaction_matrices[name] = pairwise_interactions(sub, method="exact")
        return curve

    def _seconds_per_eval(self, spec: GameSpec, result: ShapleyResult) -> float:
        """Seconds per full-set evaluation of the game: the dry run's measurement, else this run's average."""
        measured = self.cost_estimates.get(spec.name, {}).get("seconds_per_eval")
        if measured is not None:
            return float(measured)
        return result.seconds / max(1, result.n_evals)

    def _history_entry(
        self, trainer: L.Trainer, spec: GameSpec, result: ShapleyResult, stage: str, step: int, name: str,
        weight: float | None,
    ) -> dict[str, Any]:
        return {
            "name": name,
            "class_index": self.picked.get(spec.name, spec.options.get("class_index")),
            "accumulated": weight,  # share of the previous run's samples resumed from (None: a fresh run)
            "epoch": int(trainer.current_epoch),
            "step": int(step),
            "stage": stage,
            "semivalue": result.semivalue,
            "top_k": result.top_k.tolist(),
            "culprits": result.culprits(negative=spec.negative_culprits).tolist(),
            "n_evals": int(result.n_evals),
            "local_evals": int(result.local_evals if result.local_evals is not None else result.n_evals),
            "converged": bool(result.converged),
            "interrupted": bool(result.interrupted),  # Ctrl-C stopped this run: a partial result
            "full_value": result.full_value,
        }

    # ----------------------------------------------------------------------------------------- output
    def output_dir(self, trainer: L.Trainer) -> Path:
        """Where result files go: ``save_dir``, else ``<trainer.default_root_dir>/neuron_shapley``."""
        return self.save_dir or Path(trainer.default_root_dir) / "neuron_shapley"

    def _report(
        self, trainer: L.Trainer, spec: GameSpec, result: ShapleyResult, curve: Any, step: int,
        weight: float | None = None, name: str | None = None,
    ) -> None:
        name = name or self.result_name(spec)
        out = self.output_dir(trainer)
        out.mkdir(parents=True, exist_ok=True)
        result.save(out / f"{name}.pt")
        write_csv(result, out / f"{name}.csv")
        rows = top_rows(result, result.k)
        semivalue = result.semivalue
        figures = {"histogram": value_histogram(result, title=f"{name}: {_values_label(semivalue)}")}
        if curve is not None:
            curve.save(out / f"{name}_curve.pt")  # for nsl-report: the run's removal curve, offline
            figures["removal_curve"] = removal_plot(curve, ylabel=spec.kind, title=f"{name}: removal curve")
        if name in self.interaction_matrices:
            matrix = self.interaction_matrices[name]
            figures["interactions"] = matrix.plot(title=f"{name}: pairwise interactions among the top filters")
        log_result(trainer.loggers, name, result, rows, step, figures=figures)
        for logger in trainer.loggers:  # which values these are, as text where a logger takes text
            if isinstance(logger, WandbLogger):
                logger.experiment.summary[f"shapley/{name}/semivalue"] = semivalue
        if self.verbose:
            top = "top: " + ", ".join(f"{r[1]} ({r[3]:+.4f})" for r in rows[:5])
            if not rows:  # no filter has the samples a ranking needs: say so, and what would rank them
                top = f"{result.rank_note('filters')}; raise max_evals or max_seconds, or select fewer layers"
            elif result.n_ranked < result.n_players:
                top += f" [{result.rank_note('filters')}]"
            picked = (
                f" (class {self.picked[spec.name]}: the class the model got most wrong at its first analysis)"
                if spec.name in self.picked else ""
            )
            accumulated = "" if weight is None else f"; accumulated: resumed from the previous run at weight {weight:g}"
            how = "exact" if semivalue == "leave_one_out" else self.estimator  # computed exactly, not estimated
            rank_zero_info(
                f"[NeuronShapley] {name}{picked} @ epoch {trainer.current_epoch}: {how}{values_suffix(semivalue)} "
                f"converged={result.converged}, {result.n_evals} evaluations, {result.seconds:.1f} s, "
                f"value {_number(result.full_value)}; {top}{accumulated}; saved to {out / (name + '.pt')}"
            )


def _takes_semivalue(estimator: Callable[..., Any]) -> bool:
    """Whether ``estimator`` has a ``semivalue`` parameter (a ``**kwargs`` does not count: it may ignore it)."""
    return "semivalue" in inspect.signature(estimator).parameters


def _values_label(semivalue: str) -> str:
    """``"Shapley values"``, ``"banzhaf values"``, ``"beta(1,16) values"``: what a title calls a result's values."""
    return "Shapley values" if semivalue == "shapley" else f"{semivalue} values"


def _number(value: float | None) -> str:
    """A value for the summary line (``?`` when it was not evaluated)."""
    return "?" if value is None else f"{value:.3f}"


class _Clock:
    """One game's seconds (``None``: no limit), started when its analysis starts: the estimate gets all but
    ``post_share`` of them, minus what building the game took; the curve and interactions run to the deadline."""

    def __init__(self, seconds: float | None, post_share: float) -> None:
        self.seconds = seconds
        self.post_share = post_share
        self.start = time.perf_counter()

    @property
    def deadline(self) -> float | None:
        """The ``time.perf_counter()`` value at which the game's seconds run out."""
        return None if self.seconds is None else self.start + self.seconds

    def estimate_seconds(self) -> float | None:
        """Seconds left for the estimate now (at least :data:`MIN_ESTIMATE_SECONDS`: estimators need a positive
        budget, and with that little they evaluate v(N), v(∅) and stop)."""
        if self.seconds is None:
            return None
        end = self.start + self.seconds * (1 - self.post_share)
        return max(MIN_ESTIMATE_SECONDS, end - time.perf_counter())


def _marked_interrupted(result: ShapleyResult) -> ShapleyResult:
    """``result`` with its note saying that Ctrl-C stopped it (the note travels to its file, the guarantee
    sentence and the summary)."""
    cost = f"{result.n_rows:,} rows" if getattr(result, "n_rows", None) else f"{result.n_evals:,} evaluations"
    note = f"interrupted by Ctrl-C after {cost}: a partial result"
    return dataclasses.replace(result, note=f"{note}; {result.note}" if result.note else note)


def _validation_source(trainer: L.Trainer) -> Any:
    """The validation dataloader(s) where the Trainer has not loaded them yet (at fit start): from the
    datamodule, the LightningModule or the loaders given to ``fit``, as the validation loop will read them."""
    for loop in (trainer.fit_loop.epoch_loop.val_loop, trainer.validate_loop):
        source = getattr(loop, "_data_source", None)
        if source is not None and source.instance is not None and source.is_defined():
            return source.dataloader()
    if trainer.datamodule is not None:
        return trainer.datamodule.val_dataloader()
    return None
