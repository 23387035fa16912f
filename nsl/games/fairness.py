"""Fairness game: a group metric over a sensitive attribute; culprits have the most negative values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torchmetrics.functional.classification import demographic_parity, equal_opportunity, multiclass_accuracy

from nsl.games.base import EvalData, ModelGame, Share
from nsl.games.registry import GAMES
from nsl.players import FilterPlayers, preserve_mode
from nsl.validation import check_choice

FAIRNESS_METRICS = (
    "worst_group_accuracy", "accuracy_gap", "min_group_accuracy", "demographic_parity", "equal_opportunity"
)
#: The metrics that fix groups on the full model at construction (and so decompose over examples).
FIXED_GROUP_METRICS = ("worst_group_accuracy", "accuracy_gap")
#: Why each other metric is not a weighted sum over examples.
NOT_DECOMPOSABLE = {
    "min_group_accuracy": "the minimum over groups switches group between coalitions, so it is not one weighted "
    "sum over examples (worst_group_accuracy fixes the group worst on the full model and decomposes)",
    "demographic_parity": "demographic parity is a ratio of the groups' positive-prediction rates (min / max), "
    "not a weighted sum over examples",
    "equal_opportunity": "equal opportunity is a ratio of the groups' true-positive rates (min / max), not a "
    "weighted sum over examples",
}


@torch.no_grad()
def group_accuracies(model: nn.Module, inputs: Tensor, targets: Tensor, groups: Tensor) -> tuple[Tensor, Tensor]:
    """The group codes present (sorted) and the full model's accuracy on each, both shape (G,), on the CPU."""
    with preserve_mode(model), torch.inference_mode():
        model.eval()
        correct = (model(inputs).argmax(dim=-1) == targets).double().cpu()
    codes, dense = torch.unique(groups.cpu(), return_inverse=True)
    hits = torch.zeros(len(codes), dtype=torch.float64).index_add_(0, dense, correct)
    return codes, hits / torch.bincount(dense, minlength=len(codes)).double()


def extreme_groups(
    codes: Tensor, accuracy: Tensor, worst: int | None = None, best: int | None = None
) -> tuple[int, int]:
    """The codes of the worst and the best group by ``accuracy`` (a code given as ``worst``/``best`` is kept).

    Ties go to the smallest code, and the best is another group than the worst, so a gap always compares two
    groups. Deterministic: every DDP rank that sees the same accuracies picks the same groups.
    """
    codes = codes.cpu()
    if worst is None:
        pool = accuracy.clone().double().cpu()
        if best is not None:
            pool[codes == best] = torch.inf
        worst = int(codes[int(torch.nonzero(pool == pool.min())[0])])  # sorted codes: the first is the smallest
    if best is None:
        pool = accuracy.clone().double().cpu()
        pool[codes == worst] = -torch.inf
        best = int(codes[int(torch.nonzero(pool == pool.max())[0])])
    return worst, best


@GAMES.register("fairness")
class FairnessGame(ModelGame):
    """Value of a coalition = how fair the model is across the groups of a sensitive attribute.

    Every metric is oriented so that higher is fairer, hence the filters with the most negative Shapley
    values are the culprits of unfairness (and what a repair removes by default).

    The default metric fixes its group once, on the full model, as the class game fixes its class: the group
    the full model serves worst. Its value is that group's accuracy for every coalition, a mean over the
    group's examples, so the game decomposes over examples (weight 1/n on the group's rows, 0 elsewhere) and an
    estimator may sample (coalition, example) pairs; the culprits are still the filters that hurt the worst-off
    group. The minimum over groups (``"min_group_accuracy"``) switches group between coalitions and does not
    decompose. Played from data under DDP, the groups are rank 0's choice.

    Args:
        model, players, inputs, targets: as in :class:`~nsl.games.AccuracyGame`.
        groups: the sensitive attribute of each evaluation sample, integer codes of shape (B,).
        metric: ``"worst_group_accuracy"`` (default: accuracy of the group worst on the full model),
            ``"accuracy_gap"`` (1 − (accuracy of the group best on the full model − that of the worst); both
            groups fixed on the full model, so it can exceed 1 where a coalition reverses them),
            ``"min_group_accuracy"`` (accuracy of whichever group is worst in each coalition),
            ``"demographic_parity"`` / ``"equal_opportunity"`` (torchmetrics' min/max ratio of
            positive-prediction rates / true-positive rates across groups; 1 is parity), which treat
            ``positive_class`` as the positive outcome.
        positive_class: the favourable class for the parity metrics.
        worst_group, best_group: the group codes the fixed-group metrics use; ``None`` (default) picks the
            group with the lowest / highest accuracy of the full model on this data (ties: the smallest code;
            the best is never the worst).
        **kwargs: ``chunk_size``, ``max_rows``, ``device``.
    """

    required_data: ClassVar[Mapping[str, str]] = {"groups": "a sensitive attribute per example"}
    measures_defect = True
    default_tail = "bottom"  # the culprits of unfairness, what a repair removes

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

    @classmethod
    def data_options(
        cls, model: nn.Module, data: EvalData, options: dict[str, Any], *, seed: int, share: Share | None
    ) -> dict[str, Any]:
        """Fix the worst and best groups of the full model once, from rank 0's choice under DDP."""
        if options.get("worst_group") is None or options.get("best_group") is None:
            assert data.groups is not None
            codes, accuracy = group_accuracies(model, data.inputs, data.targets, data.groups)
            if len(codes) >= 2:  # fewer: the constructor says what is wrong
                chosen = extreme_groups(codes, accuracy, options.get("worst_group"), options.get("best_group"))
                worst, best = share(chosen) if share is not None else chosen
                options = {**options, "worst_group": worst, "best_group": best}
        return options

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """A repair is checked on the minimum over groups: pruning for the group that was worst may leave another
        group worse off, which the fixed-group form (what the analysis decomposes) would not see."""
        options = dict(options)
        if options.get("metric", "worst_group_accuracy") == "worst_group_accuracy":
            options["metric"] = "min_group_accuracy"
        options.pop("worst_group", None)
        options.pop("best_group", None)
        return options

    def __init__(
        self, model: nn.Module, players: FilterPlayers, inputs: Tensor, targets: Tensor,
        groups: Tensor,
        *,
        metric: str = "worst_group_accuracy",
        positive_class: int = 1,
        worst_group: int | None = None,
        best_group: int | None = None,
        **kwargs,
    ) -> None:
        check_choice("metric", metric, FAIRNESS_METRICS)
        if not isinstance(groups, Tensor) or groups.shape != (len(inputs),):
            shape = tuple(groups.shape) if isinstance(groups, Tensor) else type(groups).__name__
            raise ValueError(f"groups must be a tensor of shape ({len(inputs)},), got {shape}.")
        if groups.dtype.is_floating_point:
            raise TypeError(f"groups must hold integer group codes, got dtype {groups.dtype}.")
        codes = torch.unique(groups).cpu()
        if len(codes) < 2:
            raise ValueError(f"groups holds a single group ({codes.tolist()}); fairness needs at least 2.")
        for name, code in (("worst_group", worst_group), ("best_group", best_group)):
            if code is not None and (isinstance(code, bool) or not isinstance(code, int) or code not in codes):
                raise ValueError(f"{name}={code!r} is not a group of this data; the groups are {codes.tolist()}.")
        if worst_group is not None and worst_group == best_group:
            raise ValueError(f"worst_group and best_group are both {worst_group}; the gap compares two groups.")
        self.metric = metric
        self.positive_class = positive_class
        super().__init__(model, players, inputs, targets, **kwargs)
        if metric in ("demographic_parity", "equal_opportunity") and not 0 <= positive_class < self.num_classes:
            raise ValueError(f"positive_class={positive_class} is out of range for {self.num_classes} classes.")
        # Dense codes 0..G-1 and one index per group, held on the evaluation device.
        self.group_codes = codes
        self.groups = torch.searchsorted(codes.to(self.device), groups.to(self.device).contiguous())
        self.group_rows = [torch.nonzero(self.groups == g).squeeze(1) for g in range(len(codes))]
        #: Accuracy of each group (dense order) with every filter on: what the fixed groups were chosen from.
        self.full_group_accuracy = self.group_accuracy(self._forward(self.inputs).unsqueeze(0))[0].double().cpu()
        self.worst_group_code, self.best_group_code = extreme_groups(
            codes, self.full_group_accuracy, worst_group, best_group
        )
        #: Dense indices (0..G-1) of the fixed worst and best groups.
        self.worst_group = int(torch.nonzero(codes == self.worst_group_code)[0])
        self.best_group = int(torch.nonzero(codes == self.best_group_code)[0])
        self.example_offset = 1.0 if metric == "accuracy_gap" else 0.0  # v = 1 − best + worst

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
            return self.group_accuracy(logits)[:, self.worst_group]
        if self.metric == "accuracy_gap":
            acc = self.group_accuracy(logits)
            return 1 - (acc[:, self.best_group] - acc[:, self.worst_group])
        if self.metric == "min_group_accuracy":
            return self.group_accuracy(logits).min(dim=1).values
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

    # ----------------------------------------------------------------------------- per-example decomposition
    @property
    def example_weights(self) -> Tensor | None:
        """+1/n_worst on the worst group's rows; for the gap also −1/n_best on the best group's; 0 elsewhere."""
        if self.metric not in FIXED_GROUP_METRICS:
            return None
        groups = self.groups.cpu()
        weights = torch.zeros(len(groups), dtype=torch.float64)
        worst = groups == self.worst_group
        weights[worst] = 1.0 / int(worst.sum())
        if self.metric == "accuracy_gap":
            best = groups == self.best_group
            weights[best] = -1.0 / int(best.sum())
        return weights

    @property
    def why_not_decomposable(self) -> str:
        return NOT_DECOMPOSABLE.get(self.metric, "")

    def example_score(self, logits: Tensor, examples: Tensor) -> Tensor:
        if self.metric not in FIXED_GROUP_METRICS:
            raise NotImplementedError(f"the fairness metric {self.metric!r} does not decompose over examples: "
                                      f"{self.why_not_decomposable}.")
        return (logits.argmax(dim=-1) == self.targets[examples]).double()
