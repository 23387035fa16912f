"""A ``ModelCheckpoint`` whose monitored metric adapts to what the LightningModule logs.

``nsl-train`` runs any LightningModule; one logs ``val/acc``, another ``val_acc`` or only ``val_loss``. A fixed
``monitor`` crashes after the first epoch when the key is missing, so ``monitor="auto"`` picks the first of
:data:`MONITOR_CANDIDATES` that the module logged, as soon as validation has run once: at the end of the sanity
check (before the first training step) or, with ``num_sanity_val_steps=0``, at the end of the first validation.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from typing_extensions import override

# Metrics tried in this order by monitor="auto", with the mode that makes a checkpoint better.
MONITOR_CANDIDATES: tuple[tuple[str, str], ...] = (
    ("val/acc", "max"),
    ("val_acc", "max"),
    ("val/accuracy", "max"),
    ("val_accuracy", "max"),
    ("val/loss", "min"),
    ("val_loss", "min"),
)
MODES = ("auto", "min", "max")


def _guess_mode(monitor: str) -> str:
    """``min`` for a loss or an error, ``max`` for anything else (accuracy, F1, AUROC ...)."""
    name = monitor.lower()
    return "min" if any(word in name for word in ("loss", "err", "mse", "mae")) else "max"


class AutoModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` with ``monitor="auto"`` and ``mode="auto"``; every other argument is Lightning's.

    Args:
        monitor: ``"auto"``: the first of ``candidates`` that the module logs (with its mode); a metric name:
            that metric, checked as soon as validation has run once (a missing key fails before training when
            sanity checking is on, naming the keys the module did log); ``None``: keep only the last checkpoint.
        mode: ``"min"`` or ``"max"``; ``"auto"``: the candidate's mode, or for a named metric ``min`` when its
            name contains loss/err/mse/mae and ``max`` otherwise.
        candidates: ``(metric, mode)`` pairs that ``monitor="auto"`` tries, in order
            (default :data:`MONITOR_CANDIDATES`).

    The chosen metric is announced once on rank zero and kept in the checkpoint, so a resumed fit monitors the
    same metric. With ``num_sanity_val_steps=0`` the choice (or the error) comes at the end of the first
    validation, after the first training epoch but before any checkpoint is compared.
    """

    def __init__(
        self,
        *args: Any,
        monitor: str | None = "auto",
        mode: str = "auto",
        candidates: list[tuple[str, str]] | tuple[tuple[str, str], ...] | None = None,
        **kwargs: Any,
    ) -> None:
        if mode not in MODES:
            raise MisconfigurationException(f"AutoModelCheckpoint(mode={mode!r}): accepted are {', '.join(MODES)}.")
        if monitor is not None and (not isinstance(monitor, str) or not monitor):
            raise MisconfigurationException(
                f"AutoModelCheckpoint(monitor={monitor!r}): accepted are 'auto', a logged metric's name, or None."
            )
        self.candidates = [(str(k), str(m)) for k, m in (candidates or MONITOR_CANDIDATES)]
        for key, candidate_mode in self.candidates:
            if candidate_mode not in ("min", "max"):
                raise MisconfigurationException(
                    f"AutoModelCheckpoint candidate ({key!r}, {candidate_mode!r}): the mode must be 'min' or 'max'."
                )
        self.requested_monitor = monitor
        self.requested_mode = mode
        # Until the metric is resolved Lightning's own logic sees a placeholder mode; nothing is compared before.
        initial_mode = mode if mode != "auto" else (_guess_mode(monitor) if monitor not in (None, "auto") else "max")
        super().__init__(*args, monitor=monitor, mode=initial_mode, **kwargs)
        self.resolved = monitor is None

    @property
    @override
    def state_key(self) -> str:
        # The configured (not the resolved) monitor names the state, so a fresh callback finds it on resume.
        return self._generate_state_key(
            monitor=self.requested_monitor,
            mode=self.requested_mode,
            every_n_train_steps=self._every_n_train_steps,
            every_n_epochs=self._every_n_epochs,
            train_time_interval=self._train_time_interval,
        )

    def resolve(self, metrics: dict[str, Any]) -> str | None:
        """Choose the monitored metric from the logged ``metrics`` (idempotent); returns it.

        Raises ``MisconfigurationException`` listing the logged keys when the wanted metric is not among them.
        """
        if self.resolved:
            return self.monitor
        logged = sorted(k for k in metrics if k not in ("epoch", "step"))
        hint = (
            "Set callbacks.model_checkpoint.monitor=<a logged metric> (and mode=min|max), or "
            "callbacks.model_checkpoint.monitor=null to keep only the last checkpoint"
        )
        if self.requested_monitor == "auto":
            found = next(((k, m) for k, m in self.candidates if k in metrics), None)
            if found is None:
                raise MisconfigurationException(
                    f"ModelCheckpoint(monitor='auto'): the module logged none of {[k for k, _ in self.candidates]}; "
                    f"it logged {logged}. {hint}."
                )
            monitor, mode = found
            if self.requested_mode != "auto":
                mode = self.requested_mode
            reason = "the first metric of the candidates that the module logs"
        else:
            monitor = str(self.requested_monitor)
            if monitor not in metrics:
                raise MisconfigurationException(
                    f"ModelCheckpoint(monitor={monitor!r}): the module does not log {monitor!r}; it logged {logged}. "
                    f"{hint}."
                )
            mode = self.requested_mode if self.requested_mode != "auto" else _guess_mode(monitor)
            reason = "as configured"
        self._set_monitor(monitor, mode)
        rank_zero_info(f"ModelCheckpoint monitors {monitor!r} (mode={mode}), {reason}.")
        return monitor

    def _set_monitor(self, monitor: str, mode: str) -> None:
        self.monitor = monitor
        self.mode = mode
        self.kth_value = torch.tensor(torch.inf if mode == "min" else -torch.inf)
        self.resolved = True

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Also at the end of the sanity check: the validation metrics are in callback_metrics then.
        if trainer.state.fn == "fit":
            self.resolve(trainer.callback_metrics)
        super().on_validation_end(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Without validation (or before it), Lightning saves here: the monitored metric is needed now.
        if not self._should_skip_saving_checkpoint(trainer) and self._should_save_on_train_epoch_end(trainer):
            self.resolve(trainer.callback_metrics)
        super().on_train_epoch_end(trainer, pl_module)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "mode": self.mode, "resolved": self.resolved}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("resolved") and state_dict.get("monitor") is not None and not self.resolved:
            self._set_monitor(state_dict["monitor"], state_dict.get("mode", self.mode))
        super().load_state_dict(state_dict)


__all__ = ["MONITOR_CANDIDATES", "AutoModelCheckpoint"]
