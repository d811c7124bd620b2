"""A labelled heatmap PNG (matplotlib, Agg backend), used by the attention and knockout analyses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def save_heatmap(matrix: pd.DataFrame, path: str | Path, *, title: str, colorbar: str,
                 diverging: bool = False) -> Path:
    """Rows x columns heatmap; `diverging` centres a red-blue scale on 0 (for signed effects)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = matrix.to_numpy(dtype=np.float64)
    n_rows, n_cols = values.shape
    fig, ax = plt.subplots(figsize=(min(24, 2 + 0.28 * n_cols), min(24, 1.5 + 0.25 * n_rows)))
    if diverging:
        limit = float(np.nanmax(np.abs(values))) if values.size else 1.0
        image = ax.imshow(values, cmap="RdBu_r", vmin=-limit or -1, vmax=limit or 1, aspect="auto")
    else:
        image = ax.imshow(values, cmap="viridis", aspect="auto")
    ax.set_xticks(range(n_cols), [str(c) for c in matrix.columns], rotation=90, fontsize=7)
    ax.set_yticks(range(n_rows), [str(r) for r in matrix.index], fontsize=7)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=colorbar, shrink=0.8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
