"""Matplotlib figures of a Shapley run: the value histogram and the removal curve."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from nsl.report.curves import RemovalCurve
from nsl.shapley.result import ShapleyResult


def value_histogram(result: ShapleyResult, title: str = "") -> Figure:
    """Histogram of the filters' Shapley values (a few large values on a flat bulk is the paper's finding)."""
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.hist(result.values.numpy(), bins=40, color="tab:blue")
    ax.set_xlabel("Shapley value")
    ax.set_ylabel("filters")
    ax.set_title(title or f"{result.method}: {result.n_players} filters")
    fig.tight_layout()
    return fig


def removal_plot(curve: RemovalCurve, label: str = "Shapley", ylabel: str = "value", title: str = "") -> Figure:
    """Value against filters removed: the ranking's curve next to the mean (± sd) of random removal."""
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.plot(curve.removed, curve.ranked, marker="o", markersize=3, label=f"{label} (top first)")
    lo = [m - s for m, s in zip(curve.random, curve.random_std, strict=True)]
    hi = [m + s for m, s in zip(curve.random, curve.random_std, strict=True)]
    ax.plot(curve.removed, curve.random, color="gray", label="random")
    ax.fill_between(curve.removed, lo, hi, color="gray", alpha=0.25)
    ax.set_xlabel("filters removed")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig
