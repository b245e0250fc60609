"""A heatmap of the accuracy matrix ``R`` (matplotlib, Agg canvas: no display, no global backend change)."""

from __future__ import annotations

import os

import numpy as np

from metajax.continual.metrics import check_accuracy_matrix


def plot_accuracy_matrix(
    R, path: str | os.PathLike | None = None, *, title: str | None = None, metric: str = "accuracy"
):
    """Draw ``R [T + 1, T]`` as a heatmap, rows "init", "after 1", ..., columns "task 1", ...

    Args:
        R: the accuracy matrix; NaN cells (rows an i.i.d. learner does not fill) are left blank.
        path: where to save the figure (PNG, PDF, ... by extension); ``None`` to only return it.
        title: figure title.
        metric: colour-bar label.

    Returns:
        The ``matplotlib.figure.Figure``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    R = np.asarray(R, np.float64)
    check_accuracy_matrix(np.nan_to_num(R))
    T = R.shape[1]
    fig = Figure(figsize=(1.0 + 0.6 * T, 1.0 + 0.5 * (T + 1)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(R), cmap="viridis", vmin=0.0, vmax=1.0 if metric == "accuracy" else None)
    ax.set_xticks(range(T), [f"task {j + 1}" for j in range(T)], rotation=45, ha="right")
    ax.set_yticks(range(T + 1), ["init"] + [f"after {i}" for i in range(1, T + 1)])
    if T <= 12:
        for i in range(T + 1):
            for j in range(T):
                if np.isfinite(R[i, j]):
                    ax.text(j, i, f"{R[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
    fig.colorbar(image, ax=ax, label=metric)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
