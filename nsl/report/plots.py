"""Matplotlib figures of a Shapley run: the value histogram and the removal curve.

Figures are made without pyplot, on their own Agg canvas: drawing one inside a callback or a test never
touches pyplot's global state or the user's plotting backend.
"""

from __future__ import annotations

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nsl.report.curves import RemovalCurve
from nsl.shapley.result import ShapleyResult


def new_figure(figsize: tuple[float, float], dpi: int = 100) -> Figure:
    """An empty figure on its own Agg canvas (pyplot-free, so ``savefig`` works and nothing needs closing)."""
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def value_histogram(result: ShapleyResult, title: str = "") -> Figure:
    """Histogram of the filters' Shapley values (a few large values on a flat bulk is the paper's finding)."""
    fig = new_figure((5, 3.2))
    ax = fig.subplots()
    ax.hist(result.values.numpy(), bins=40, color="tab:blue")
    ax.set_xlabel("Shapley value")
    ax.set_ylabel("filters")
    ax.set_title(title or f"{result.method}: {result.n_players} filters")
    fig.tight_layout()
    return fig


def removal_plot(curve: RemovalCurve, label: str = "Shapley", ylabel: str = "value", title: str = "") -> Figure:
    """Value against filters removed: the ranking's curve next to the mean (± sd) of random removal."""
    fig = new_figure((5, 3.2))
    ax = fig.subplots()
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
