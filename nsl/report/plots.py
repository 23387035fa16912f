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
    """Histogram of the filters' Shapley values (a few large values on a flat bulk is the paper's finding).

    Only ranked filters are drawn (:attr:`~nsl.shapley.ShapleyResult.ranked`): an unsampled filter's 0 is no
    value. The title says how many were left out.
    """
    fig = new_figure((5, 3.2))
    ax = fig.subplots()
    values = result.values[result.ranked].double().cpu().numpy()
    if len(values):
        ax.hist(values, bins=40, color="tab:blue")
    else:
        ax.text(0.5, 0.5, "no filter has enough samples to rank", ha="center", va="center", transform=ax.transAxes)
    semivalue = result.semivalue
    ax.set_xlabel("Shapley value" if semivalue == "shapley" else f"{semivalue} value")
    ax.set_ylabel("filters")
    note = excluded_note(result)
    ax.set_title((title or f"{result.method}: {result.n_players} filters") + note, fontsize=9 if note else None)
    fig.tight_layout()
    return fig


def excluded_note(result: ShapleyResult) -> str:
    """``"\\n(12 of 2,048 filters ranked; 2,036 with < 2 samples not shown)"`` for a plot title; ``""`` when every
    filter is ranked."""
    left = result.n_players - result.n_ranked
    if left == 0:
        return ""
    return (
        f"\n({result.n_ranked:,} of {result.n_players:,} filters ranked; {left:,} with < {result.min_rank_samples} "
        "samples not shown)"
    )


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
