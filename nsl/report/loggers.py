"""Send a Shapley result to whatever loggers the Trainer has: W&B gets everything, others what they can take.

- W&B: scalar summaries, a ``wandb.Histogram`` of values, a ``wandb.Table`` of the top-k filters and the
  removal-curve plot as an image.
- TensorBoard: scalars, a histogram, the plot as a figure and the table as markdown text.
- Any other logger (CSV, …): scalars through ``log_metrics``.
Nothing is sent without a logger; callers run this on rank zero only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from matplotlib.figure import Figure

from nsl.report.tables import COLUMNS, markdown


def result_scalars(prefix: str, result: Any, extra: dict[str, float] | None = None) -> dict[str, float]:
    """Scalar summaries of a result, keyed ``<prefix>/<what>``. The value summaries cover the ranked players
    only (``ranked``: how many), and are left out while no player has enough samples to rank."""
    values = result.values[result.ranked]
    top = result.top_k
    scalars = {
        "n_evals": float(result.n_evals),
        "converged": float(result.converged),
        "seconds": float(result.seconds),
        "ranked": float(len(values)),
        "mean_samples": float(result.counts.double().mean()),
        "interrupted": float(getattr(result, "interrupted", False)),  # a partial result (Ctrl-C) says so
    }
    if len(values):
        scalars["top1_value"] = float(result.values[top[0]])
        scalars["topk_value_sum"] = float(result.values[top].sum())
        scalars["value_sum"] = float(values.sum())
        scalars["value_min"] = float(values.min())
    if result.full_value is not None:
        scalars["full_value"] = float(result.full_value)
    if result.empty_value is not None:
        scalars["empty_value"] = float(result.empty_value)
    scalars.update(extra or {})
    return {f"{prefix}/{k}": v for k, v in scalars.items()}


def log_scalars(loggers: Sequence[Logger], scalars: dict[str, float], step: int) -> None:
    for logger in loggers:
        logger.log_metrics(scalars, step=step)


def log_table(loggers: Sequence[Logger], key: str, columns: list[str], rows: list[list], step: int) -> None:
    """A table: a ``wandb.Table`` for W&B, markdown text for TensorBoard."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            logger.experiment.log({key: wandb.Table(columns=columns, data=rows), "trainer/global_step": step})
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text(key, markdown(columns, rows), global_step=step)


def log_histogram(loggers: Sequence[Logger], key: str, values: Any, step: int) -> None:
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            logger.experiment.log({key: wandb.Histogram(values.tolist()), "trainer/global_step": step})
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_histogram(key, values, global_step=step)


def log_figure(loggers: Sequence[Logger], key: str, fig: Figure, step: int) -> None:
    """A matplotlib figure as a W&B image or a TensorBoard figure."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            logger.experiment.log({key: wandb.Image(fig), "trainer/global_step": step})
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(key, fig, global_step=step, close=False)


def log_result(
    loggers: Sequence[Logger],
    name: str,
    result: Any,
    rows: list[list],
    step: int,
    *,
    prefix: str = "shapley",
    figures: dict[str, Figure] | None = None,
    extra: dict[str, float] | None = None,
) -> None:
    """Everything about one game's run: scalars, histogram, top-k table, figures. The histogram holds the ranked
    players' values only (none is sent before any player has enough samples); ``rows`` are the table's rows,
    e.g. :func:`~nsl.report.top_rows`, which lists ranked players only."""
    key = f"{prefix}/{name}"
    log_scalars(loggers, result_scalars(key, result, extra), step)
    ranked = result.values[result.ranked].double().cpu()
    if len(ranked):
        log_histogram(loggers, f"{key}/values", ranked.numpy(), step)
    log_table(loggers, f"{key}/top_k", COLUMNS, rows, step)
    for what, fig in (figures or {}).items():
        log_figure(loggers, f"{key}/{what}", fig, step)
