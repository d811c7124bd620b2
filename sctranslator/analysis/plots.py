"""PNG figures of an evaluation: predicted vs measured per protein, and per-protein correlation bars.

Uses matplotlib's object API (`Figure` + Agg canvas), not pyplot, so no GUI backend or global
figure state is touched; import this module only when plots are wanted (matplotlib is slow to load).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

MAX_POINTS = 5000  # per panel; more cells are drawn as hexbin density anyway
HEXBIN_ABOVE = 2000
PANEL_INCHES = 2.6


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _panel(axes, pred: np.ndarray, truth: np.ndarray, title: str, seed: int) -> None:
    keep = np.isfinite(pred) & np.isfinite(truth)
    x, y = truth[keep], pred[keep]
    if x.size > HEXBIN_ABOVE:
        axes.hexbin(x, y, gridsize=40, bins="log", mincnt=1, cmap="viridis")
    else:
        if x.size > MAX_POINTS:
            chosen = np.random.default_rng(seed).choice(x.size, MAX_POINTS, replace=False)
            x, y = x[chosen], y[chosen]
        axes.scatter(x, y, s=4, alpha=0.35, linewidths=0, color="tab:blue")
    axes.set_title(title, fontsize=8)
    axes.tick_params(labelsize=6)


def scatter_grid(path: Path, truth: np.ndarray, panels: Sequence[tuple[str, np.ndarray, Sequence[float | None]]],
                 proteins: Sequence[str], columns: int = 4, scaling: str = "minmax") -> Path:
    """One panel per (protein, predictor): measured on x, predicted on y; a predictor's panels sit side by side.

    `panels`: (label, predictions cells x proteins, per-protein Pearson) per predictor. `scaling`
    names the per-cell scaling of the measured values in the axis labels.
    """
    n_panels = len(proteins) * len(panels)
    per_row = max(len(panels), columns - columns % len(panels))
    rows = max(1, math.ceil(n_panels / per_row))
    figure = Figure(figsize=(PANEL_INCHES * per_row, PANEL_INCHES * rows))
    grid = figure.subplots(rows, per_row, squeeze=False)
    slot = 0
    for j, protein in enumerate(proteins):
        for label, pred, pearson in panels:
            axes = grid.flat[slot]
            r = pearson[j]
            title = f"{protein} ({label})\nr = {r:.3f}" if r is not None else f"{protein} ({label})\nr undefined"
            _panel(axes, pred[:, j], truth[:, j], title, seed=j)
            slot += 1
    for axes in list(grid.flat)[slot:]:
        axes.set_axis_off()
    figure.supxlabel(f"measured ({scaling}-scaled per cell)", fontsize=9)
    figure.supylabel(f"predicted (model output; compared on the {scaling} scale)", fontsize=9)
    figure.tight_layout()
    return _save(figure, path)


def correlation_bars(path: Path, proteins: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]],
                     metric: str = "Pearson r", scaling: str | None = None) -> Path:
    """Per-protein correlation bars, sorted by the first series (best first); series side by side."""
    first = np.array([np.nan if v is None else v for v in series[0][1]], dtype=float)
    order = np.argsort(-np.nan_to_num(first, nan=-np.inf), kind="stable")
    width = 0.8 / len(series)
    figure = Figure(figsize=(max(4.0, 0.35 * len(proteins) * len(series) + 1.5), 3.6))
    axes = figure.subplots()
    positions = np.arange(len(proteins))
    for k, (label, values) in enumerate(series):
        heights = np.array([np.nan if v is None else v for v in values], dtype=float)[order]
        axes.bar(positions + (k - (len(series) - 1) / 2) * width, np.nan_to_num(heights), width, label=label)
    axes.set_xticks(positions, [proteins[i] for i in order], rotation=90, fontsize=7)
    axes.set_ylabel(metric)
    if scaling:
        axes.set_title(f"{metric} per protein (measured: {scaling}-scaled per cell)", fontsize=8)
    axes.axhline(0, color="black", linewidth=0.6)
    axes.set_ylim(min(0.0, float(np.nanmin([np.nan_to_num(np.array(v, dtype=float)) for _, v in series])) - 0.05), 1.0)
    if len(series) > 1:
        axes.legend(fontsize=7)
    figure.tight_layout()
    return _save(figure, path)
