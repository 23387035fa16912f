"""``nsl-train``: train with Lightning, run Neuron Shapley games on the model, repair it, log to W&B.

Everything is composed by Hydra from ``nsl/conf`` (``train.yaml`` and its groups), so runs are changed and
swept from the command line::

    nsl-train                                   # digits, small CNN, 4 games, prune culprits, W&B offline
    nsl-train game=accuracy repair=none trainer.max_epochs=5
    nsl-train -m repair=none,filter_dropout     # two runs in one W&B group

A game, estimator or repair of your own is a module that registers it (``nsl.GAMES``, ``nsl.ESTIMATORS``,
``nsl.REPAIRS``) and a YAML that chooses it; ``imports: [your_module]`` in the config imports the module
before anything is built, e.g. ``nsl-train --config-dir my_conf experiment=my_study``. Modules in the folder
``nsl-train`` is started from are importable, so ``model._target_=my_module.MyModule`` runs your own
LightningModule; the checkpoint callback monitors whichever validation metric it logs. Each run writes
``metrics.json`` next to its results; ``nsl-report <run or multirun folder>`` compares runs from those files.
The run's log lines (Lightning's and nsl's, warnings, the closing summary) go to the console and to Hydra's job
log, ``train.log`` in the run folder.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from nsl.callback import NeuronShapley, ShapleyRepair
from nsl.report.compare import saved_results

log = logging.getLogger("nsl.train")
#: Loggers that Lightning detaches from the root logger when it is imported before logging is configured.
LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")

# Trainer settings of a run whose results are measured afterwards rather than logged or checkpointed.
QUIET = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}


@contextmanager
def job_log() -> Iterator[None]:
    """While the run lasts, send Lightning's log lines and Python warnings into the job log file (``train.log``).

    Hydra writes the job log through the root logger, but Lightning's loggers stop propagating to it when
    Lightning is imported before logging is configured (as ``nsl`` imports it before Hydra starts the job), so
    every rank-zero line, nsl's ``[NeuronShapley]`` and ``[ShapleyRepair]`` lines among them, reached the console
    only. The root logger's file handlers are added to those loggers until the block ends, and warnings are
    written to the file as well as shown as usual; without a log file (no Hydra job) nothing changes.
    """
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    if not files:
        yield
        return
    detached = [logging.getLogger(n) for n in LIGHTNING_LOGGERS if not logging.getLogger(n).propagate]
    warned = logging.getLogger("py.warnings")
    to_file = [(logger, h) for logger in [*detached, warned] for h in files]
    propagate, show = warned.propagate, warnings.showwarning
    warned.propagate = False  # warnings reach the console through `show` already, the file through its handlers

    def show_and_log(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                     file: Any = None, line: str | None = None) -> None:
        show(message, category, filename, lineno, file, line)
        warned.warning(warnings.formatwarning(message, category, filename, lineno, line).rstrip())

    for logger, handler in to_file:
        logger.addHandler(handler)
    warnings.showwarning = show_and_log
    try:
        yield
    finally:
        warnings.showwarning = show
        warned.propagate = propagate
        for logger, handler in to_file:
            logger.removeHandler(handler)


def _instantiate_all(cfg: DictConfig | None) -> list[Any]:
    """Every ``_target_`` entry of a config group (a mapping of name -> component)."""
    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if isinstance(c, DictConfig) and "_target_" in c]


def _run_name() -> str:
    """The config-group choices on the command line (``repair=filter_dropout``) name a run; else ``default``."""
    try:
        overrides = HydraConfig.get().overrides.task
    except ValueError:  # composed without @hydra.main (tests)
        return "default"
    choices = [o for o in overrides if "=" in o and "." not in o.split("=")[0] and o[0] not in "+~"]
    return ",".join(choices) or "default"


def _run_group(task_name: str) -> str:
    """One W&B group per invocation: every job of a multirun shares its sweep folder's timestamp."""
    try:
        hc = HydraConfig.get()
    except ValueError:
        return task_name
    output = Path(hc.runtime.output_dir)
    multirun = str(hc.mode) == "RunMode.MULTIRUN"
    return f"{task_name}-{(output.parent if multirun else output).name}"


def _hyperparameters(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config without Hydra's own node (which composes-for-tests carry unresolvable)."""
    plain = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    return OmegaConf.to_container(plain, resolve=True)


def _launch_dir() -> str:
    """The folder ``nsl-train`` was started from (Hydra's original working directory; else the current one)."""
    try:
        return HydraConfig.get().runtime.cwd
    except ValueError:  # composed without @hydra.main (tests, scripts)
        return os.getcwd()


def _importable_from_launch_dir() -> None:
    """Put the launch folder on ``sys.path``, as ``python -m`` does, so ``model._target_=my_module.MyModule`` and
    ``imports: [my_module]`` find a module next to where ``nsl-train`` was run (the console script's own
    ``sys.path`` starts at its bin folder instead)."""
    launch = os.path.abspath(_launch_dir())
    if launch not in (os.path.abspath(p or os.curdir) for p in sys.path):
        sys.path.insert(0, launch)


def _data_and_model(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule]:
    """Import ``cfg.imports`` (so what they register can be chosen by name), seed, build data and model.

    Modules in the folder ``nsl-train`` was started from are importable (it is put on ``sys.path`` first).
    """
    _importable_from_launch_dir()
    for module in cfg.get("imports") or []:
        importlib.import_module(module)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    return instantiate(cfg.data), instantiate(cfg.model)


def compose_config(overrides: Sequence[str] = (), output_dir: str | Path = "outputs") -> DictConfig:
    """The ``nsl-train`` config composed with ``overrides`` outside a Hydra run (scripts, notebooks).

    ``output_dir`` stands in for the run folder Hydra would make, e.g.
    ``compose_config(["experiment=digits_cnn", "trainer.max_epochs=3"])``.
    """
    with initialize_config_module("nsl.conf", version_base="1.3"):
        return compose("train", overrides=[*overrides, f"paths.output_dir={output_dir}"])


def fit_model(cfg: DictConfig) -> tuple[L.LightningModule, L.LightningDataModule]:
    """Fit the data and model of ``cfg`` with its trainer settings, quietly: no callbacks, loggers, checkpoints
    or progress bar (for scripts that measure the model afterwards). Returns the model in eval mode and the data.

    Seeded and built exactly as ``nsl-train`` builds them, so a script's model is the app's model.
    """
    datamodule, model = _data_and_model(cfg)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=[], **QUIET)
    trainer.fit(model, datamodule=datamodule)
    return model.eval(), datamodule


def train(cfg: DictConfig) -> dict[str, Any]:
    """Instantiate data, model, callbacks, loggers and trainer from ``cfg``; fit, test; return the metrics.

    Every component is built before training starts, so a bad config value fails at once. The modules named
    in ``cfg.imports`` are imported first, so what they register can be chosen by name. Under Hydra the run's
    log lines also go to its job log (:func:`job_log`).
    """
    with job_log():
        return _train(cfg)


def _train(cfg: DictConfig) -> dict[str, Any]:
    datamodule, model = _data_and_model(cfg)
    callbacks = _instantiate_all(cfg.get("callbacks"))
    logger_cfg = cfg.get("logger")
    if logger_cfg:
        for c in logger_cfg.values():
            if c.get("_target_", "").endswith("WandbLogger"):
                if c.get("name") is None:
                    c.name = _run_name()
                if c.get("group") is None:
                    c.group = _run_group(cfg.task_name)
    loggers: list[Logger] = _instantiate_all(logger_cfg)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    try:
        if loggers:
            hyperparameters = _hyperparameters(cfg)
            for logger in loggers:
                logger.log_hyperparams(hyperparameters)
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if cfg.get("test"):
            trainer.test(model, datamodule=datamodule, verbose=False)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        if trainer.is_global_zero:
            _write_metrics(Path(cfg.paths.output_dir), metrics, callbacks)
            _print_summary(trainer, callbacks, loggers, metrics)
        return metrics
    finally:
        # Each job of a multirun must close its W&B run, or the runs merge into one.
        for logger in loggers:
            if isinstance(logger, WandbLogger) and logger._experiment is not None:
                logger.experiment.finish()


def _write_metrics(folder: Path, metrics: dict[str, float], callbacks: list[Any]) -> Path:
    """``metrics.json`` in the run folder: the final metrics, the run's name and any repair's before/after report,
    so ``nsl-report`` can compare runs offline."""
    repairs = [
        {"name": cb.name, "description": cb.description, "outcome": cb.outcome, "reason": cb.reason,
         "report": cb.report}
        for cb in callbacks
        if isinstance(cb, ShapleyRepair) and cb.report
    ]
    content = {"name": _run_name(), "metrics": metrics, "repair": repairs}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "metrics.json"
    path.write_text(json.dumps(content, indent=2, default=float) + "\n")
    return path


def _print_summary(trainer: L.Trainer, callbacks: list[Any], loggers: list[Logger], metrics: dict) -> None:
    lines = ["", "nsl-train finished."]
    for key in ("val/acc", "test/acc"):
        if key in metrics:
            lines.append(f"  {key}: {metrics[key]:.4f}")
    for cb in callbacks:
        if isinstance(cb, NeuronShapley):
            results = dict(cb.results)
            if not results and cb.output_dir(trainer).is_dir():  # ddp_spawn: the workers held the results
                results = saved_results(cb.output_dir(trainer))  # by result name, e.g. class_3
            for name, result in results.items():
                top = ", ".join(result.names[i] for i in result.top_k[:3].tolist()) if result.names else ""
                lines.append(
                    f"  {name}: {result.method} converged={result.converged}, {result.n_evals} evaluations; "
                    f"top filters {top}"
                )
            lines.append(f"  Shapley results: {cb.output_dir(trainer)}")
            if cb.skipped:
                lines.append(f"  skipped before training: {cb.skipped}")
        if isinstance(cb, ShapleyRepair) and cb.outcome is not None:
            weights = f"; repaired weights: {cb.model_path}" if cb.model_path else "; no repaired weights written"
            lines.append(f"  repair {cb.name}: {cb.outcome} ({cb.reason}){weights}")
    lines.append(f"  run folder: {Path(trainer.default_root_dir).resolve()} (metrics.json: the metrics above)")
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            run_dir = logger.experiment.dir.removesuffix("/files")
            lines.append(f"  W&B run: {run_dir} (group {logger.experiment.group})")
    text = "\n".join(lines)
    if logging.getLogger().handlers:  # Hydra's job logging (or the caller's): the console and train.log
        log.info(text)
    else:
        print(text)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Console entry point ``nsl-train``; returns test accuracy (for Hydra sweepers)."""
    metrics = train(cfg)
    return metrics.get("test/acc")


if __name__ == "__main__":
    main()
