"""Performance games: the model's accuracy overall and on one class (class-specific Neuron Shapley)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.functional.classification import multiclass_accuracy

from nsl.games.base import EvalData, ModelGame, Share
from nsl.games.registry import GAMES
from nsl.players import FilterPlayers, preserve_mode
from nsl.validation import check_choice

METRICS = ("accuracy", "macro_accuracy", "true_class_probability", "neg_cross_entropy")
Metric = str | Callable[[Tensor, Tensor], Tensor]


def coalition_metric(logits: Tensor, targets: Tensor, metric: Metric, num_classes: int) -> Tensor:
    """Score K coalitions at once: logits (K, B, C) and targets (B,) to values (K,).

    ``metric`` is a name from ``METRICS`` or a callable with the same signature as this function's first
    two arguments.
    """
    if callable(metric):
        return metric(logits, targets)
    k = logits.shape[0]
    if metric == "neg_cross_entropy":
        per_row = F.cross_entropy(logits.flatten(0, 1).float(), targets.repeat(k), reduction="none")
        return -per_row.reshape(k, -1).mean(dim=1)
    if metric == "true_class_probability":
        probabilities = logits.float().softmax(dim=-1)  # (K, B, C)
        return probabilities.gather(-1, targets.expand(k, -1).unsqueeze(-1)).squeeze(-1).mean(dim=1)
    preds = logits.argmax(dim=-1)  # (K, B)
    average = "micro" if metric == "accuracy" else "macro"
    return multiclass_accuracy(
        preds, targets.expand(k, -1), num_classes=num_classes, average=average, multidim_average="samplewise"
    )


def _check_metric(metric: Metric) -> None:
    if not callable(metric):
        check_choice("metric", metric, METRICS)


@torch.no_grad()
def worst_class(model: nn.Module, inputs: Tensor, targets: Tensor) -> int:
    """The class the model gets most wrong on this data (the class game's default)."""
    with preserve_mode(model), torch.inference_mode():
        model.eval()
        preds = model(inputs).argmax(dim=-1)
    classes = torch.unique(targets)
    recall = torch.stack([(preds[targets == c] == c).float().mean() for c in classes])
    return int(classes[int(recall.argmin())])


@GAMES.register("accuracy")
class AccuracyGame(ModelGame):
    """Value of a coalition = the model's accuracy (or another metric) on the evaluation data.

    Args:
        model: the trained classifier.
        players: its filters.
        inputs: evaluation inputs (B, ...).
        targets: class labels (B,).
        metric: ``"accuracy"`` (torchmetrics ``MulticlassAccuracy``, micro), ``"macro_accuracy"``,
            ``"true_class_probability"`` (mean softmax probability of the true class: smooth and bounded),
            ``"neg_cross_entropy"`` (smooth, unbounded) or a callable
            ``(logits (K, B, C), targets (B,)) -> (K,)``.
        **kwargs: ``chunk_size``, ``max_rows``, ``device`` (see :class:`~nsl.games.base.ModelGame`).
    """

    def __init__(
        self, model: nn.Module, players: FilterPlayers, inputs: Tensor, targets: Tensor,
        *,
        metric: Metric = "accuracy",
        **kwargs,
    ) -> None:
        _check_metric(metric)
        self.metric = metric
        super().__init__(model, players, inputs, targets, **kwargs)

    def score(self, logits: Tensor) -> Tensor:
        return coalition_metric(logits, self.targets, self.metric, self.num_classes)

    @property
    def example_weights(self) -> Tensor | None:
        """1/B per example for the plain accuracy (the other metrics: see their own decomposition)."""
        if self.metric != "accuracy":
            return None
        return torch.full((len(self.targets),), 1.0 / len(self.targets), dtype=torch.float64)

    def example_score(self, logits: Tensor, examples: Tensor) -> Tensor:
        return (logits.argmax(dim=-1) == self.targets[examples]).double()


@GAMES.register("class")
class ClassGame(AccuracyGame):
    """Value of a coalition = accuracy on the evaluation images of one class (its recall).

    Only the images whose label is ``class_index`` are kept, so each evaluation costs a forward pass of
    that class's images alone. Played from data without a ``class_index``, it picks the class the model gets
    most wrong (rank 0's choice under DDP).
    """

    @classmethod
    def default_name(cls, kind: str, options: dict[str, Any]) -> str:
        index = options.get("class_index")
        return kind if index is None else f"{kind}_{index}"

    @classmethod
    def data_options(
        cls, model: nn.Module, data: EvalData, options: dict[str, Any], *, seed: int, share: Share | None
    ) -> dict[str, Any]:
        if options.get("class_index") is None:
            index = worst_class(model, data.inputs, data.targets)
            options["class_index"] = int(share(index) if share is not None else index)
        return options

    @classmethod
    def unsupported(cls, data: EvalData, options: Mapping[str, Any]) -> str | None:
        """A ``class_index`` without a single example in the evaluation data."""
        index = options.get("class_index")
        if isinstance(index, int) and not isinstance(index, bool) and not bool((data.targets == index).any()):
            present = sorted(torch.unique(data.targets).tolist())
            shown = present if len(present) <= 20 else [*present[:20], "..."]
            return f"class_index={index} has no sample in the evaluation data (labels present: {shown})"
        return None

    def __init__(
        self, model: nn.Module, players: FilterPlayers, inputs: Tensor, targets: Tensor,
        class_index: int,
        *,
        metric: Metric = "accuracy",
        **kwargs,
    ) -> None:
        if isinstance(class_index, bool) or not isinstance(class_index, int):
            raise TypeError(f"class_index must be an int, got {class_index!r}.")
        if not isinstance(targets, Tensor):
            raise ValueError(f"targets must be a tensor, got {type(targets).__name__}.")
        keep = targets == class_index
        if not bool(keep.any()):
            present = sorted(torch.unique(targets).tolist())[:10]
            raise ValueError(
                f"class_index={class_index} has no sample in the evaluation data (labels present: {present})."
            )
        self.class_index = class_index
        super().__init__(model, players, inputs[keep], targets[keep], metric=metric, **kwargs)
        if class_index >= self.num_classes:
            raise ValueError(f"class_index={class_index} is out of range for {self.num_classes} classes.")
