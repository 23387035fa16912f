"""How good an estimate is, against exact (or reference) Shapley values: the measures the benchmarks report."""

from __future__ import annotations

import torch
from torch import Tensor

from nsl.validation import check_number, resolve_top_k


def eps_correct(values: Tensor, exact: Tensor, top_k: int, epsilon_value: float, tail: str = "top") -> bool:
    """Whether the top-k of ``values`` (ties by index) is ε-correct for the ``exact`` values, ε = ``epsilon_value``
    in value units (a result's ``epsilon_value``, not the estimator's ``epsilon_fraction``).

    It is iff every returned player's exact value is ≥ the exact k-th value − ε and every player left out is
    ≤ it + ε. ``tail="bottom"`` asks the same of the k lowest (on negated values), ``"both"`` of both tails.
    """
    values, exact = torch.as_tensor(values).double().reshape(-1), torch.as_tensor(exact).double().reshape(-1)
    if values.shape != exact.shape:
        raise ValueError(f"values {tuple(values.shape)} and exact {tuple(exact.shape)} differ in shape.")
    top_k = resolve_top_k(top_k, len(exact))
    check_number("epsilon_value", epsilon_value, low=0)
    if tail == "both":
        return all(eps_correct(values, exact, top_k, epsilon_value, side) for side in ("top", "bottom"))
    if tail not in ("top", "bottom"):
        raise ValueError(f"tail={tail!r} must be 'top', 'bottom' or 'both'.")
    if tail == "bottom":
        values, exact = -values, -exact
    chosen = torch.zeros(len(exact), dtype=torch.bool)
    chosen[torch.sort(-values, stable=True).indices[:top_k]] = True  # k highest, ties to the lower index
    kth = exact.sort(descending=True).values[top_k - 1]
    return bool((exact[chosen] >= kth - epsilon_value).all() and (exact[~chosen] <= kth + epsilon_value).all())


def eps_precision(values: Tensor, exact: Tensor, top_k: int, epsilon_value: float) -> float:
    """Share of the top-k of ``values`` whose exact value is ≥ the exact k-th value − ε (1 when ε-correct), ε =
    ``epsilon_value`` in value units."""
    values, exact = torch.as_tensor(values).double().reshape(-1), torch.as_tensor(exact).double().reshape(-1)
    top_k = resolve_top_k(top_k, len(exact))
    check_number("epsilon_value", epsilon_value, low=0)
    chosen = torch.sort(-values, stable=True).indices[:top_k]
    kth = exact.sort(descending=True).values[top_k - 1]
    return float((exact[chosen] >= kth - epsilon_value).double().mean())


def normalized_squared_error(values: Tensor, exact: Tensor) -> float:
    """``||values − exact||² / ||exact||²``: the error relative to the size of the exact values."""
    values, exact = torch.as_tensor(values).double().reshape(-1), torch.as_tensor(exact).double().reshape(-1)
    if values.shape != exact.shape:
        raise ValueError(f"values {tuple(values.shape)} and exact {tuple(exact.shape)} differ in shape.")
    scale = float(exact.square().sum())
    if scale == 0.0:
        raise ValueError("the exact values are all 0: the normalized squared error is undefined.")
    return float((values - exact).square().sum()) / scale
