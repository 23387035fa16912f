"""Fairness game: a group metric over a sensitive attribute; culprits have the most negative values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torchmetrics.functional.classification import demographic_parity, equal_opportunity, multiclass_accuracy

from nsl.games.base import EvalData, ModelGame
from nsl.games.registry import GAMES
from nsl.players import FilterPlayers
from nsl.validation import check_choice

FAIRNESS_METRICS = ("worst_group_accuracy", "accuracy_gap", "demographic_parity", "equal_opportunity")


@GAMES.register("fairness")
class FairnessGame(ModelGame):
    """Value of a coalition = how fair the model is across the groups of a sensitive attribute.

    Every metric is oriented so that higher is fairer, hence the filters with the most negative Shapley
    values are the culprits of unfairness (and what a repair removes by default).

    Args:
        model, players, inputs, targets: as in :class:`~nsl.games.AccuracyGame`.
        groups: the sensitive attribute of each evaluation sample, integer codes of shape (B,).
        metric: ``"worst_group_accuracy"`` (default: accuracy of the worst-off group),
            ``"accuracy_gap"`` (1 − (best − worst group accuracy)),
            ``"demographic_parity"`` / ``"equal_opportunity"`` (torchmetrics' min/max ratio of
            positive-prediction rates / true-positive rates across groups; 1 is parity), which treat
            ``positive_class`` as the positive outcome.
        positive_class: the favourable class for the parity metrics.
        **kwargs: ``chunk_size``, ``max_rows``, ``device``.
    """

    required_data: ClassVar[Mapping[str, str]] = {"groups": "a sensitive attribute per example"}
    measures_defect = True

    @classmethod
    def unsupported(cls, data: EvalData, options: Mapping[str, Any]) -> str | None:
        """No groups, or fewer than two groups present in the evaluation data."""
        reason = super().unsupported(data, options)
        if reason is None and isinstance(data.groups, Tensor) and len(torch.unique(data.groups)) < 2:
            codes = torch.unique(data.groups).tolist()
            reason = (
                f"the evaluation data holds a single group {codes} of the sensitive attribute; fairness compares "
                "at least 2 groups (give evaluation data where both appear, e.g. a larger eval_size)"
            )
        return reason

    def __init__(
        self, model: nn.Module, players: FilterPlayers, inputs: Tensor, targets: Tensor,
        groups: Tensor,
        *,
        metric: str = "worst_group_accuracy",
        positive_class: int = 1,
        **kwargs,
    ) -> None:
        check_choice("metric", metric, FAIRNESS_METRICS)
        if not isinstance(groups, Tensor) or groups.shape != (len(inputs),):
            shape = tuple(groups.shape) if isinstance(groups, Tensor) else type(groups).__name__
            raise ValueError(f"groups must be a tensor of shape ({len(inputs)},), got {shape}.")
        if groups.dtype.is_floating_point:
            raise TypeError(f"groups must hold integer group codes, got dtype {groups.dtype}.")
        codes = torch.unique(groups)
        if len(codes) < 2:
            raise ValueError(f"groups holds a single group ({codes.tolist()}); fairness needs at least 2.")
        self.metric = metric
        self.positive_class = positive_class
        super().__init__(model, players, inputs, targets, **kwargs)
        # Dense codes 0..G-1 and one index per group, held on the evaluation device.
        self.groups = torch.searchsorted(codes, groups.contiguous()).to(self.device)
        self.group_rows = [torch.nonzero(self.groups == g).squeeze(1) for g in range(len(codes))]
        if metric in ("demographic_parity", "equal_opportunity") and not 0 <= positive_class < self.num_classes:
            raise ValueError(f"positive_class={positive_class} is out of range for {self.num_classes} classes.")

    def group_accuracy(self, logits: Tensor) -> Tensor:
        """Accuracy of every group for every coalition, (K, B, C) -> (K, G)."""
        preds = logits.argmax(dim=-1)
        k = preds.shape[0]
        cols = []
        for rows in self.group_rows:
            cols.append(
                multiclass_accuracy(
                    preds[:, rows],
                    self.targets[rows].expand(k, -1),
                    num_classes=self.num_classes,
                    average="micro",
                    multidim_average="samplewise",
                )
            )
        return torch.stack(cols, dim=1)

    def score(self, logits: Tensor) -> Tensor:
        if self.metric == "worst_group_accuracy":
            return self.group_accuracy(logits).min(dim=1).values
        if self.metric == "accuracy_gap":
            acc = self.group_accuracy(logits)
            return 1 - (acc.max(dim=1).values - acc.min(dim=1).values)
        positive = (logits.argmax(dim=-1) == self.positive_class).long()  # (K, B)
        target = (self.targets == self.positive_class).long()
        values = []
        for row in positive:
            if self.metric == "demographic_parity":
                ratio = demographic_parity(row, self.groups)
            else:
                ratio = equal_opportunity(row, target, self.groups)
            value = next(iter(ratio.values()))
            values.append(torch.nan_to_num(value, nan=1.0))
        return torch.stack(values)
