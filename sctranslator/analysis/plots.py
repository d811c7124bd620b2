"""PNG figures: predicted vs measured per protein, per-protein correlation bars, labelled heatmaps.

Uses matplotlib's object API (`Figure` + Agg canvas), not pyplot, so no GUI backend or global
figure state is touched; import this module only when plots are wanted (matplotlib is slow to load).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

MAX_POINTS = 5000  # per panel; more cells are drawn as hexbin density anyway
HEXBIN_ABOVE = 2000
PANEL_INCHES = 2.6


def _save(figure: Figure, path: Path, dpi: int = 110) -> Path:
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.1)
    return path


def texts_outside(figure: Figure) -> list[str]:
    """What a PNG of `figure` would clip.

    Uses the same extent matplotlib computes for ``bbox_inches="tight"``, so ticks outside the view
    and invisible artists do not count.

    Parameters
    ----------
    figure : matplotlib.figure.Figure
        The figure.

    Returns
    -------
    list of str
        [] when every drawn artist (texts included) lies on the canvas; otherwise one line per side
        that overflows, with the texts found there.
    """
    canvas = FigureCanvasAgg(figure)
    renderer = canvas.get_renderer()
    figure.draw(renderer)  # runs the layout engine, so positions are final
    inches = figure.get_tightbbox(renderer)
    width, height = figure.get_size_inches()
    tolerance = 0.01
    sides = {"left": -inches.x0, "bottom": -inches.y0, "right": inches.x1 - width, "top": inches.y1 - height}
    over = {side: amount for side, amount in sides.items() if amount > tolerance}
    if not over:
        return []
    dpi = figure.dpi
    texts = []
    for text in figure.findobj(lambda artist: hasattr(artist, "get_text") and hasattr(artist, "get_window_extent")):
        if text.get_visible() and text.get_text().strip():
            box = text.get_window_extent(renderer)
            if box.x0 < 0 or box.y0 < 0 or box.x1 > width * dpi or box.y1 > height * dpi:
                texts.append(text.get_text())
    return [f"{side}: {amount:.2f} in beyond the canvas" for side, amount in over.items()] + texts[:5]


def fit_to_text(figure: Figure, attempts: int = 6) -> Figure:
    """Grow `figure` until nothing reaches outside its canvas (the layout engine reflows each time).

    Parameters
    ----------
    figure : matplotlib.figure.Figure
        The figure, changed in place.
    attempts : int
        Most enlargements.

    Returns
    -------
    matplotlib.figure.Figure
        `figure`.
    """
    canvas = FigureCanvasAgg(figure)
    for _ in range(attempts):
        renderer = canvas.get_renderer()
        figure.draw(renderer)
        inches = figure.get_tightbbox(renderer)
        width, height = figure.get_size_inches()
        grow_x = max(0.0, -inches.x0) + max(0.0, inches.x1 - width)
        grow_y = max(0.0, -inches.y0) + max(0.0, inches.y1 - height)
        if grow_x <= 0.01 and grow_y <= 0.01:
            break
        figure.set_size_inches(width + 2 * grow_x + 0.1 * (grow_x > 0), height + 2 * grow_y + 0.1 * (grow_y > 0))
    return figure


def _wrap(text: str, inches: float, fontsize: float) -> str:
    """`text` wrapped to about `inches` at `fontsize` points (average glyph ~0.55 em wide)."""
    chars = max(12, int(inches * 72 / (0.55 * fontsize)))
    return "\n".join(textwrap.wrap(text, chars)) if len(text) > chars else text


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
    """Measured against predicted, one panel per (protein, predictor); a predictor's panels sit side by side.

    Parameters
    ----------
    path : pathlib.Path
        The PNG to write.
    truth : numpy.ndarray
        Measured values, ``(n_cells, n_proteins)``.
    panels : sequence of tuple
        Per predictor: (label, predictions ``(n_cells, n_proteins)``, per-protein Pearson r).
    proteins : sequence of str
        The protein names.
    columns : int
        Panels per row.
    scaling : str
        The per-cell scaling of the measured values, for the axis labels.

    Returns
    -------
    pathlib.Path
        `path`.
    """
    n_panels = len(proteins) * len(panels)
    per_row = max(len(panels), columns - columns % len(panels))
    rows = max(1, math.ceil(n_panels / per_row))
    figure = Figure(figsize=(PANEL_INCHES * per_row, PANEL_INCHES * rows), layout="constrained")
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
    figure.supylabel(_wrap(f"predicted (compared on the {scaling} scale)", PANEL_INCHES * rows - 0.3, 9), fontsize=9)
    return _save(fit_to_text(figure), path)


def correlation_bars(path: Path, proteins: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]],
                     metric: str = "Pearson r", scaling: str | None = None) -> Path:
    """Per-protein correlation bars, sorted by the first series (best first); series side by side.

    Parameters
    ----------
    path : pathlib.Path
        The PNG to write.
    proteins : sequence of str
        The protein names.
    series : sequence of tuple
        Per predictor: (label, per-protein values; None where undefined).
    metric : str
        The axis label.
    scaling : str or None
        The per-cell scaling, for the title.

    Returns
    -------
    pathlib.Path
        `path`.
    """
    first = np.array([np.nan if v is None else v for v in series[0][1]], dtype=float)
    order = np.argsort(-np.nan_to_num(first, nan=-np.inf), kind="stable")
    width = 0.8 / len(series)
    figure = Figure(figsize=(max(4.0, 0.35 * len(proteins) * len(series) + 1.5), 3.6), layout="constrained")
    axes = figure.subplots()
    positions = np.arange(len(proteins))
    for k, (label, values) in enumerate(series):
        heights = np.array([np.nan if v is None else v for v in values], dtype=float)[order]
        axes.bar(positions + (k - (len(series) - 1) / 2) * width, np.nan_to_num(heights), width, label=label)
    axes.set_xticks(positions, [proteins[i] for i in order], rotation=90, fontsize=7)
    axes.set_ylabel(metric)
    if scaling:
        width = figure.get_size_inches()[0]
        axes.set_title(_wrap(f"{metric} per protein (measured: {scaling}-scaled per cell)", width - 1.0, 8), fontsize=8)
    axes.axhline(0, color="black", linewidth=0.6)
    axes.set_ylim(min(0.0, float(np.nanmin([np.nan_to_num(np.array(v, dtype=float)) for _, v in series])) - 0.05), 1.0)
    if len(series) > 1:
        axes.legend(fontsize=7)
    return _save(fit_to_text(figure), path)


def heatmap_figure(matrix: pd.DataFrame, *, title: str, colorbar: str, diverging: bool = False) -> Figure:
    """A rows x columns heatmap with every label inside the canvas.

    Parameters
    ----------
    matrix : pandas.DataFrame
        The values, labelled.
    title : str
        The title.
    colorbar : str
        The colour bar's label.
    diverging : bool
        Centre a red-blue scale on 0.

    Returns
    -------
    matplotlib.figure.Figure
        The figure.
    """
    values = matrix.to_numpy(dtype=np.float64)
    n_rows, n_cols = values.shape
    longest_row = max((len(str(r)) for r in matrix.index), default=1)
    longest_col = max((len(str(c)) for c in matrix.columns), default=1)
    # Room for the tick labels (7 pt, ~0.055 in per character) around a cell grid of fixed pitch.
    width = min(30.0, max(5.0, 1.6 + 0.055 * longest_row + 0.28 * n_cols + 1.4))
    height = min(30.0, max(3.5, 1.2 + 0.055 * longest_col + 0.25 * n_rows + 0.6))
    figure = Figure(figsize=(width, height), layout="constrained")
    axes = figure.subplots()
    if diverging:
        limit = float(np.nanmax(np.abs(values))) if values.size else 1.0
        image = axes.imshow(values, cmap="RdBu_r", vmin=-limit or -1, vmax=limit or 1, aspect="auto")
    else:
        image = axes.imshow(values, cmap="viridis", aspect="auto")
    axes.set_xticks(range(n_cols), [str(c) for c in matrix.columns], rotation=90, fontsize=7)
    axes.set_yticks(range(n_rows), [str(r) for r in matrix.index], fontsize=7)
    figure.suptitle(_wrap(title, width - 0.4, 10), fontsize=10)
    bar = figure.colorbar(image, ax=axes, shrink=0.8)
    bar.set_label(_wrap(colorbar, max(1.5, 0.6 * height - 0.055 * longest_col), 8), fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return fit_to_text(figure)


def save_heatmap(matrix: pd.DataFrame, path: str | Path, *, title: str, colorbar: str,
                 diverging: bool = False) -> Path:
    """Write `heatmap_figure` as a PNG.

    Parameters
    ----------
    matrix : pandas.DataFrame
        The values, labelled.
    path : str or pathlib.Path
        The PNG.
    title : str
        The title.
    colorbar : str
        The colour bar's label.
    diverging : bool
        Centre a red-blue scale on 0.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    return _save(heatmap_figure(matrix, title=title, colorbar=colorbar, diverging=diverging), Path(path), dpi=120)
