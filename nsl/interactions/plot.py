"""Heatmap of a pairwise interaction matrix, drawn on a pyplot-free Agg figure (safe in callbacks and CI)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from matplotlib.figure import Figure
from torch import Tensor

from nsl.report.plots import new_figure


def plot_interactions(
    matrix: Tensor,
    names: Sequence[str] | None = None,
    *,
    title: str = "Pairwise Shapley interaction index",
    show_diagonal: bool = False,
    annotate: bool | None = None,
    stderr: Tensor | None = None,
    cmap: str = "RdBu_r",
) -> Figure:
    """A square heatmap of ``matrix`` (k, k) with ``names`` as tick labels; returns the Figure.

    The colour scale is symmetric about 0 (red: synergy, blue: redundancy). The diagonal (Shapley values by
    convention) is left blank unless ``show_diagonal``, so it does not swamp the scale. Cells are annotated
    with their values when k ≤ 12 (or when ``annotate`` says so), with ± stderr when given.
    """
    m = torch.as_tensor(matrix).detach().double().cpu()
    if m.dim() != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"matrix must be square (k, k) with k >= 1, got shape {tuple(m.shape)}.")
    k = m.shape[0]
    labels = [str(i) for i in range(k)] if names is None else [str(x) for x in names]
    if len(labels) != k:
        raise ValueError(f"names has {len(labels)} entries for a {k}x{k} matrix.")
    shown = m.clone()
    if not show_diagonal:
        shown.fill_diagonal_(float("nan"))
    finite = shown[torch.isfinite(shown)]
    limit = float(finite.abs().max()) if finite.numel() else 1.0
    limit = limit if limit > 0 else 1.0

    size = min(4.0 + 0.55 * k, 16.0)
    fig = new_figure((size + 1.2, size))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(shown.numpy(), cmap=cmap, vmin=-limit, vmax=limit)
    ax.set_xticks(range(k), labels, rotation=60, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_yticks(range(k), labels, fontsize=8)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="interaction index")
    if annotate if annotate is not None else k <= 12:
        se = None if stderr is None else torch.as_tensor(stderr).double().cpu()
        for a in range(k):
            for b in range(k):
                if a == b and not show_diagonal:
                    continue
                value = float(m[a, b])
                text = f"{value:.3g}" if se is None else f"{value:.3g}\n±{float(se[a, b]):.2g}"
                dark = abs(value) > 0.6 * limit
                ax.text(b, a, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
    fig.tight_layout()
    return fig
