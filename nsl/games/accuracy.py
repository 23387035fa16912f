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
ExampleMetric = Callable[[Tensor, Tensor], Tensor]  # (logits (R, C), targets (R,)) -> (R,)


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


def _correct(logits: Tensor, targets: Tensor) -> Tensor:
    return (logits.argmax(dim=-1) == targets).double()


def _true_class_probability(logits: Tensor, targets: Tensor) -> Tensor:
    return logits.float().softmax(dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1).double()


def _neg_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    return -F.cross_entropy(logits.float(), targets, reduction="none").double()


#: The per-example value u_e of each named metric, from the logits (R, C) of R rows and their targets (R,). The
#: macro average weighs the same correctness by 1/(C·n_class) instead of 1/B.
EXAMPLE_METRICS: dict[str, ExampleMetric] = {
    "accuracy": _correct,
    "macro_accuracy": _correct,
    "true_class_probability": _true_class_probability,
    "neg_cross_entropy": _neg_cross_entropy,
}


def _check_metric(metric: Metric | None, example_metric: ExampleMetric | None) -> None:
    if example_metric is not None and not callable(example_metric):
        raise TypeError(f"example_metric must be a callable (logits (R, C), targets (R,)) -> (R,), got "
                        f"{type(example_metric).__name__}.")
    if metric is None:
        if example_metric is None:
            raise ValueError("metric=None means the mean of example_metric over the examples; give example_metric.")
        return
    if example_metric is not None and not callable(metric):
        raise ValueError(
            f"example_metric declares the per-example form of a callable metric; metric={metric!r} is a named "
            "metric with its own per-example form. Pass metric=<callable> or metric=None with it."
        )
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

    Every named metric is a weighted mean over the examples, so the game declares its per-example value (see
    :class:`~nsl.games.ExampleGame`) and an estimator may sample (coalition, example) pairs: correctness with
    weight 1/B for ``"accuracy"``, the true class's probability or minus the cross-entropy with weight 1/B, and
    correctness with weight 1/(C·n_class) for ``"macro_accuracy"`` when every class has an example (torchmetrics
    counts a class without examples only in coalitions that predict it, so then the macro average does not
    decompose). A callable metric decomposes when ``example_metric`` gives its per-example form.

    Args:
        model: the trained classifier.
        players: its filters.
        inputs: evaluation inputs (B, ...).
        targets: class labels (B,).
        metric: ``"accuracy"`` (torchmetrics ``MulticlassAccuracy``, micro), ``"macro_accuracy"``,
            ``"true_class_probability"`` (mean softmax probability of the true class: smooth and bounded),
            ``"neg_cross_entropy"`` (smooth, unbounded), a callable ``(logits (K, B, C), targets (B,)) -> (K,)``,
            or ``None``: the mean of ``example_metric`` over the examples.
        example_metric: with a callable or ``None`` metric, the per-example form ``(logits (R, C), targets (R,))
            -> (R,)`` whose mean over the examples is the metric (checked on the full model at construction).
        **kwargs: ``chunk_size``, ``max_rows``, ``device`` (see :class:`~nsl.games.base.ModelGame`).
    """

    #: The filters accuracy rests on (the paper's finding); its negative end is a flat crowd of filters near 0 that
    #: costs most of a certificate to order and that no default repair acts on.
    default_tail = "top"


    def __init__(
        self, model: nn.Module, players: FilterPlayers, inputs: Tensor, targets: Tensor,
        *,
        metric: Metric | None = "accuracy",
        example_metric: ExampleMetric | None = None,
        **kwargs,
    ) -> None:
        _check_metric(metric, example_metric)
        self.metric = metric
        self.example_metric = example_metric
        super().__init__(model, players, inputs, targets, **kwargs)
        self._weights, self._why_not = self._decomposition()

    def score(self, logits: Tensor) -> Tensor:
        if self.metric is None:
            assert self.example_metric is not None
            k, b = logits.shape[:2]
            rows = self.example_metric(logits.flatten(0, 1), self.targets.repeat(k))
            return rows.reshape(k, b).double().mean(dim=1)
        return coalition_metric(logits, self.targets, self.metric, self.num_classes)

    def _decomposition(self) -> tuple[Tensor | None, str]:
        """The example weights and, where there are none, why (fixed at construction: the targets never change)."""
        b = len(self.targets)
        uniform = torch.full((b,), 1.0 / b, dtype=torch.float64)
        if callable(self.metric) or self.metric is None:
            if self.example_metric is None:
                return None, (
                    "a callable metric is an arbitrary function of a coalition's logits; give its per-example "
                    "form as example_metric= to let it decompose over examples"
                )
            self._check_example_metric()
            return uniform, ""
        if self.metric != "macro_accuracy":
            return uniform, ""
        counts = torch.bincount(self.targets.cpu(), minlength=self.num_classes).double()
        absent = torch.nonzero(counts == 0).squeeze(1).tolist()
        if absent:
            shown = absent if len(absent) <= 10 else [*absent[:10], "..."]
            return None, (
                f"macro accuracy averages over the classes that have an example or are predicted; classes {shown} "
                "have no example here, so whether they count (as 0) changes with what a coalition predicts and "
                "the value is not a fixed weighted sum over examples (use metric='accuracy' or evaluation data "
                "with every class)"
            )
        return 1.0 / (self.num_classes * counts[self.targets.cpu()]), ""

    def _check_example_metric(self) -> None:
        """The mean of ``example_metric`` must be the metric (on the full model), or the decomposition is wrong."""
        assert self.example_metric is not None
        logits = self._forward(self.inputs)
        rows = torch.as_tensor(self.example_metric(logits, self.targets))
        if rows.shape != self.targets.shape:
            raise ValueError(
                f"example_metric returned shape {tuple(rows.shape)} for {len(self.targets)} rows; it must return "
                "one value per row, shape (R,)."
            )
        if self.metric is None:
            return
        mean = float(rows.double().mean())
        value = float(torch.as_tensor(self.metric(logits.unsqueeze(0), self.targets)).reshape(-1)[0])
        if abs(mean - value) > 1e-5 * max(1.0, abs(value)):
            raise ValueError(
                f"the mean of example_metric over the examples ({mean:.6g}) is not the metric ({value:.6g}) on the "
                "full model: example_metric must be the metric's per-example form (weights 1/B)."
            )

    @property
    def example_weights(self) -> Tensor | None:
        """1/B per example (``macro_accuracy``: 1/(C·n_class)); ``None`` where the metric does not decompose."""
        return None if self._weights is None else self._weights.clone()

    @property
    def why_not_decomposable(self) -> str:
        return self._why_not

    def example_score(self, logits: Tensor, examples: Tensor) -> Tensor:
        if self._weights is None:
            raise NotImplementedError(f"{type(self).__name__} does not decompose over examples: {self._why_not}.")
        per_example = self.example_metric if self.example_metric is not None else EXAMPLE_METRICS[self.metric]
        return torch.as_tensor(per_example(logits, self.targets[examples])).double()


@GAMES.register("class")
class ClassGame(AccuracyGame):
    """Value of a coalition = accuracy on the evaluation images of one class (its recall).

    Only the images whose label is ``class_index`` are kept, so each evaluation costs a forward pass of
    that class's images alone. Played from data without a ``class_index``, it picks the class the model gets
    most wrong (rank 0's choice under DDP). It decomposes over its examples as :class:`AccuracyGame` does
    (weight 1 / the class's examples); its macro accuracy does not (the other classes have no example).
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
        metric: Metric | None = "accuracy",
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
