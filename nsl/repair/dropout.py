"""Filter dropout: training with random filters switched off, so no few filters carry the whole model.

``FilterDropout`` silences filters exactly where ``FilterPlayers`` masks them (after the BatchNorm), only in
training steps. ``guided_probabilities`` turns a Shapley result into per-filter drop probabilities, and
``finetune_with_dropout`` runs a short repair fine-tuning with them.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torch.utils.hooks import RemovableHandle

from nsl.players import FilterPlayers, PlayerLayer, preserve_mode
from nsl.shapley import ShapleyResult
from nsl.validation import check_bool, check_choice, check_int

GUIDED_MODES = ("spread", "culprits")


def check_probability(p: Any, name: str = "p") -> float | Tensor:
    """A drop probability in [0, 1) or a 1-D float64 CPU tensor of them; ValueError naming the bad value."""
    if isinstance(p, bool):
        raise ValueError(f"{name}={p!r} is a bool; expected a probability in [0, 1) or a 1-D tensor of them.")
    if isinstance(p, numbers.Real):
        if not (math.isfinite(p) and 0.0 <= p < 1.0):
            raise ValueError(f"{name}={p!r} is not a drop probability in [0, 1) (1 would drop every filter).")
        return float(p)
    if isinstance(p, Tensor):
        if p.dtype == torch.bool or p.is_complex():
            raise ValueError(f"{name} has dtype {p.dtype}; expected real probabilities in [0, 1).")
        probs = p.detach().to("cpu", torch.float64)
    elif isinstance(p, Sequence) and not isinstance(p, str):
        try:
            probs = torch.tensor([float(v) for v in p], dtype=torch.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name}={p!r} holds a non-number; expected probabilities in [0, 1).") from None
    else:
        raise ValueError(f"{name}={p!r} is not a probability in [0, 1) nor a 1-D tensor of them.")
    if probs.dim() != 1 or probs.numel() == 0:
        raise ValueError(
            f"{name} has shape {tuple(probs.shape)}; expected a non-empty 1-D tensor (one per filter)."
        )
    bad = ~(torch.isfinite(probs) & (probs >= 0) & (probs < 1))
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(f"{name}[{i}]={probs[i].item()!r} is not a drop probability in [0, 1).")
    return probs


class _DropHook:
    """Forward hook on a ``mask_at`` module: multiply the output by a random 0/1 keep mask per channel."""

    def __init__(self, owner: FilterDropout, layer: PlayerLayer, probs: Tensor) -> None:
        self.owner = owner
        self.layer = layer
        self.probs = probs.to(torch.float32)  # (C,) on CPU
        self.scale = 1.0 / (1.0 - probs.to(torch.float32)) if owner.rescale else None

    def __call__(self, _module: nn.Module, _inputs: tuple, out: Tensor) -> Tensor:
        size = self.layer.size
        rows = out.shape[0] if self.owner.per_sample and out.dim() > 1 else 1
        draw = torch.rand((rows, size), generator=self.owner.generator)  # CPU, the callback's own stream
        keep = draw >= self.probs  # P(drop) = p
        self.owner.dropped += int((~keep).sum())
        self.owner.seen += keep.numel()
        factor = keep.to(torch.float32) if self.scale is None else keep * self.scale
        shape = [1] * out.dim()
        cdim = self.layer.channel_dim % out.dim()
        shape[cdim] = size
        if out.dim() > 1:
            shape[0] = rows
        factor = factor.reshape(shape).to(device=out.device, dtype=out.dtype, non_blocking=True)
        return out * factor


def _analysis_layers(trainer: L.Trainer) -> tuple[str | list[str] | None, str]:
    """The ``layers`` of the NeuronShapley among the trainer's callbacks (None: every Conv2d), and a note saying so.

    Several analyses with different layers are ambiguous: ValueError asking for ``layers`` to be set.
    """
    from nsl.callback.neuron_shapley import NeuronShapley  # the callback package imports this module

    found = [cb.layers for cb in trainer.callbacks if isinstance(cb, NeuronShapley)]
    if not found:
        return None, "every Conv2d: no NeuronShapley among the callbacks"
    distinct = list(dict.fromkeys(str(layers) for layers in found))
    if len(distinct) > 1:
        raise ValueError(
            f"FilterDropout(layers=None) takes the NeuronShapley's layers, but the trainer has {len(found)} "
            f"NeuronShapley callbacks with different layers ({distinct}); set FilterDropout's layers."
        )
    layers = found[0] if found[0] is None or isinstance(found[0], str) else list(found[0])
    return layers, "the NeuronShapley's: every Conv2d" if layers is None else f"the NeuronShapley's layers {layers!r}"


class FilterDropout(Callback):
    """Drop each selected filter with probability ``p`` in every training step (the paper's filter dropout).

    A dropped filter's channel is set to exactly 0 where ``FilterPlayers`` masks it (after the BatchNorm that
    follows a conv), so training sees the same kind of removal the Shapley analysis measures. Hooks exist only
    between ``on_train_batch_start`` and ``on_train_batch_end`` (and are removed on exceptions), so
    validation, test, predict and the sanity check see the full model. Masks are drawn on the CPU from the
    callback's own seeded ``torch.Generator``: the global RNG is never touched, so adding the callback does
    not change data order, dropout layers or any other randomness of the run, and resuming from a
    checkpoint continues the same mask stream. Each fit restarts the stream from ``seed`` (plus the rank
    under DDP), and each forward pass in a training step draws fresh masks.

    Args:
        p: drop probability in [0, 1), or a 1-D tensor with one probability per filter (player order of
            ``FilterPlayers(model, layers)``), e.g. from :func:`guided_probabilities`.
        layers: glob pattern(s) over module names, as in ``FilterPlayers``. ``None``: the layers of the
            :class:`~nsl.NeuronShapley` among the trainer's callbacks, so training drops the filters the analysis
            scores (every ``Conv2d`` when there is none); chosen at ``setup`` and announced.
        per_sample: draw a mask per sample (default) rather than one per batch. Per-sample masks let every
            step average over B coalitions instead of one, which gives lower-variance gradients at the same
            cost, the same reason standard dropout is per sample. Per-batch masks match one
            ``players.mask`` coalition.
        rescale: multiply kept channels by ``1/(1-p)`` as inverted dropout does. Off by default because a
            Shapley removal does not rescale the survivors, and the repaired model is used without dropout.
        seed: seed of the callback's generator.

    Example::

        >>> import lightning as L
        >>> from nsl import FilterDropout
        >>> from nsl.data import DigitsDataModule
        >>> from nsl.models import Classifier, SmallCNN
        >>> dropout = FilterDropout(p=0.1, layers="net.features.*")
        >>> trainer = L.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=0, callbacks=[dropout],
        ...                     logger=False, enable_checkpointing=False, enable_progress_bar=False,
        ...                     enable_model_summary=False)
        >>> trainer.fit(Classifier(SmallCNN(channels=(4, 6, 8))), DigitsDataModule())
        >>> 0.05 < dropout.dropped_fraction < 0.15, dropout.hooked   # hooks only inside training steps
        (True, False)
    """

    def __init__(
        self,
        p: float | Sequence[float] | Tensor = 0.1,
        layers: str | Sequence[str] | None = None,
        per_sample: bool = True,
        rescale: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.p = check_probability(p)
        if layers is not None and not isinstance(layers, str):
            layers = list(layers)
        self.layers = layers
        check_bool("per_sample", per_sample)
        check_bool("rescale", rescale)
        check_int("seed", seed)
        self.per_sample = per_sample
        self.rescale = rescale
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.dropped = 0  # (sample or batch, filter) pairs dropped so far
        self.seen = 0  # and drawn so far
        self.players: FilterPlayers | None = None
        #: The layers dropped from: ``layers``, or when that is None the analysis' layers (set at ``setup``).
        self.resolved_layers: str | list[str] | None = layers
        self._handles: list[RemovableHandle] = []

    @property
    def state_key(self) -> str:
        if isinstance(self.p, Tensor):
            p = "tensor-" + hashlib.sha1(self.p.numpy().tobytes()).hexdigest()[:10]
        else:
            p = self.p
        return self._generate_state_key(
            p=p, layers=self.layers, per_sample=self.per_sample, rescale=self.rescale, seed=self.seed
        )

    @property
    def dropped_fraction(self) -> float:
        """Fraction of drawn (sample, filter) pairs that were dropped so far (0 before any training step)."""
        return self.dropped / self.seen if self.seen else 0.0

    @property
    def hooked(self) -> bool:
        """True while the dropout hooks are on the model (only inside a training step)."""
        return bool(self._handles)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        source = "as configured"
        if self.layers is None:
            self.resolved_layers, source = _analysis_layers(trainer)
        self._build_players(pl_module)
        assert self.players is not None
        p = f"{self.p}" if not isinstance(self.p, Tensor) else f"mean {float(self.p.mean()):.3g}"
        rank_zero_info(
            f"[FilterDropout] p={p} on {len(self.players)} filters of {len(self.players.layers)} layers ({source})."
        )
        # Every fit starts the stream from the seed (a resumed fit then loads the saved state over it);
        # each DDP rank gets its own stream, so ranks do not drop the same filters for their samples.
        self.generator.manual_seed(self.seed + trainer.global_rank)

    def _build_players(self, pl_module: L.LightningModule) -> None:
        self.players = FilterPlayers(pl_module, self.resolved_layers)
        n = len(self.players)
        if isinstance(self.p, Tensor) and len(self.p) != n:
            raise ValueError(
                f"p has {len(self.p)} probabilities but layers={self.resolved_layers!r} select {n} filters; give "
                "one probability per filter, in FilterPlayers order."
            )

    def _install(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._handles:
            return
        if self.players is None or self.players.model is not pl_module:
            self._build_players(pl_module)
        assert self.players is not None
        modules = dict(self.players.model.named_modules())
        for layer in self.players.layers:
            if isinstance(self.p, Tensor):
                probs = self.p[layer.offset : layer.offset + layer.size]
            else:
                probs = torch.full((layer.size,), self.p, dtype=torch.float64)
            self._handles.append(modules[layer.mask_at].register_forward_hook(_DropHook(self, layer, probs)))

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._install(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._remove()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._remove()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._remove()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._remove()

    def state_dict(self) -> dict[str, Any]:
        return {
            "p": self.p.clone() if isinstance(self.p, Tensor) else self.p,
            "seed": self.seed,
            "generator_state": self.generator.get_state(),
            "dropped": self.dropped,
            "seen": self.seen,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.p = check_probability(state_dict["p"])
        self.seed = int(state_dict["seed"])
        self.generator.set_state(state_dict["generator_state"])
        self.dropped = int(state_dict["dropped"])
        self.seen = int(state_dict["seen"])


def guided_probabilities(
    result: ShapleyResult,
    p: float,
    mode: str = "spread",
    k: int | None = None,
    negative: bool = False,
    max_p: float = 0.95,
) -> Tensor:
    """Per-filter drop probabilities from a Shapley result, for a repair fine-tuning with filter dropout.

    ``"spread"``: probabilities proportional to the positive part of each value (of ``-values`` with
    ``negative=True``), scaled so their mean is ``p`` and capped at ``max_p`` (the excess goes to the others):
    the few filters that carry the model are dropped most, so the rest learn to take over.
    ``"culprits"``: the game's ``k`` culprits (``result.culprits(k, negative)``; most negative for
    fairness-type games) get ``p``, all others 0. Returns a float32 tensor of length N.
    """
    if not isinstance(result, ShapleyResult):
        raise TypeError(f"result must be a ShapleyResult, got {type(result).__name__}.")
    p = check_probability(p)
    if isinstance(p, Tensor):
        raise ValueError("p must be a single probability here; the function returns the per-filter tensor.")
    check_choice("mode", mode, GUIDED_MODES)
    values = result.values.detach().to("cpu", torch.float64)
    n = len(values)
    if not bool(torch.isfinite(values).all()):
        raise ValueError("result.values holds NaN or infinite values; cannot derive drop probabilities.")
    if mode == "culprits":
        k = result.k if k is None else k
        check_int("k", k, low=1, high=n)
        probs = torch.zeros(n, dtype=torch.float64)
        probs[result.culprits(int(k), negative=negative)] = p
        return probs.float()
    if not (isinstance(max_p, numbers.Real) and p <= max_p < 1):
        raise ValueError(f"max_p={max_p!r} must be in [p, 1) = [{p}, 1).")
    weight = (-values if negative else values).clamp(min=0)
    return _water_fill(weight, p * n, float(max_p)).float()


def _water_fill(weight: Tensor, mass: float, cap: float) -> Tensor:
    """Split ``mass`` over entries proportionally to ``weight``, no entry above ``cap``; zero-weight entries
    share what the capped ones cannot take."""
    probs = torch.zeros_like(weight)
    free = torch.ones_like(weight, dtype=torch.bool)
    while bool(free.any()):
        remaining = mass - float(probs[~free].sum())
        w = weight[free]
        share = remaining * w / w.sum() if float(w.sum()) > 0 else torch.full_like(w, remaining / len(w))
        over = share > cap
        if not bool(over.any()):
            probs[free] = share
            break
        capped = free.nonzero().flatten()[over]
        probs[capped] = cap
        free[capped] = False
    return probs


def finetune_with_dropout(
    module: L.LightningModule,
    train_dataloader: DataLoader | Iterable,
    probabilities_or_p: float | Tensor,
    *,
    epochs: int = 1,
    layers: str | Sequence[str] | None = None,
    seed: int = 0,
    per_sample: bool = True,
    rescale: bool = False,
    accelerator: str = "cpu",
    val_dataloaders: DataLoader | Iterable | None = None,
    callbacks: Sequence[Callback] = (),
    **trainer_kwargs: Any,
) -> L.Trainer:
    """Fine-tune ``module`` for a few epochs with :class:`FilterDropout` on a new, quiet Trainer.

    The module trains in train mode; afterwards every submodule's train/eval mode and the module's link to
    the Trainer it was attached to (through the public ``LightningModule.trainer`` property) are restored,
    so the module can go back to another Trainer afterwards. Inside a fit, prefer
    :class:`~nsl.callback.ShapleyRepair`, which fine-tunes as part of that fit. Validation runs only when
    ``val_dataloaders`` are given. Extra keyword arguments go to the ``Trainer``. Returns the fine-tuning
    Trainer (its ``callback_metrics``, its callbacks).
    """
    check_int("epochs", epochs, low=1)
    dropout = FilterDropout(
        probabilities_or_p, layers=layers, per_sample=per_sample, rescale=rescale, seed=seed
    )
    options = {
        "max_epochs": int(epochs),
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": accelerator,
        "num_sanity_val_steps": 0,
    }
    if val_dataloaders is None:
        options["limit_val_batches"] = 0
    options.update(trainer_kwargs)
    trainer = L.Trainer(callbacks=[dropout, *callbacks], **options)
    try:
        outer = module.trainer  # the Trainer the module belongs to, if any
    except RuntimeError:  # not attached to one
        outer = None
    with preserve_mode(module), torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings():
        if val_dataloaders is None:  # skipping validation is the point here, not a mistake to warn about
            warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")
        module.train()
        try:
            trainer.fit(module, train_dataloaders=train_dataloader, val_dataloaders=val_dataloaders)
        finally:
            module.trainer = outer
    return trainer
