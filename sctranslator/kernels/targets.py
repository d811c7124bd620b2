"""Per-cell scaling of measured protein counts into training / evaluation targets.

Protein panels are small (tens to a thousand columns), so plain vectorised numpy is enough here.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sctranslator.errors import InputDataError
from sctranslator.options import TARGET_SCALINGS, TargetScaling  # the one list of choices

FLOOR = 1e-8


def _dense(matrix: np.ndarray | sp.spmatrix | sp.sparray) -> np.ndarray:
    array = matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
    if array.ndim != 2:
        raise InputDataError(f"protein matrix must be 2-D (cells x proteins), got shape {array.shape}")
    return array.astype(np.float64, copy=False)


def minmax_rows(x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The original's per-cell min-max: ``1e-8 + (x - min) / (max - min) * (1 - 1e-8)``.

    A constant row gets 1e-8 everywhere (the original would give NaN).

    Parameters
    ----------
    x : numpy.ndarray
        ``(n_cells, n)`` values.
    mask : numpy.ndarray or None
        bool, the shape of `x`: limits min and max to the True entries; other entries come out as 0.

    Returns
    -------
    numpy.ndarray
        float64, the shape of `x`, in [1e-8, 1] per row.
    """
    x = np.asarray(x, dtype=np.float64)
    valid = np.ones_like(x, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    lo = np.where(valid, x, np.inf).min(axis=1, keepdims=True)
    hi = np.where(valid, x, -np.inf).max(axis=1, keepdims=True)
    span = hi - lo
    span = np.where(np.isfinite(span) & (span > 0), span, 1.0)
    lo = np.where(np.isfinite(lo), lo, 0.0)
    scaled = FLOOR + (x - lo) / span * (1 - FLOOR)
    flat = (hi - lo) <= 0
    scaled = np.where(flat, FLOOR, scaled)
    return np.where(valid, scaled, 0.0)


def clr_rows(x: np.ndarray) -> np.ndarray:
    """Seurat's per-cell centred log-ratio: ``log1p(x / exp(mean over proteins of log1p(x)))``.

    Parameters
    ----------
    x : numpy.ndarray
        ``(n_cells, n_proteins)`` raw counts.

    Returns
    -------
    numpy.ndarray
        float64, the shape of `x`.
    """
    x = np.asarray(x, dtype=np.float64)
    geometric = np.exp(np.log1p(x).mean(axis=1, keepdims=True))
    return np.log1p(x / geometric)


def scale_targets(matrix: np.ndarray | sp.spmatrix | sp.sparray, method: TargetScaling = "minmax") -> np.ndarray:
    """Scale a cells x proteins count matrix per cell into training or scoring targets.

    Parameters
    ----------
    matrix : numpy.ndarray or scipy.sparse matrix or array
        ``(n_cells, n_proteins)`` raw protein counts, finite and non-negative.
    method : {'minmax', 'clr', 'log1p'}
        Per-cell min-max (the published models' targets), centred log-ratio, or log1p.

    Returns
    -------
    numpy.ndarray
        float32 ``(n_cells, n_proteins)``.

    Raises
    ------
    InputDataError
        A matrix that is not 2-D, counts that are negative or not finite, or an unknown `method`.
    """
    x = _dense(matrix)
    if not np.isfinite(x).all() or (x < 0).any():
        raise InputDataError("protein counts must be finite and non-negative")
    if method == "minmax":
        scaled = minmax_rows(x)
    elif method == "clr":
        scaled = clr_rows(x)
    elif method == "log1p":
        scaled = np.log1p(x)
    else:
        raise InputDataError(f"unknown target scaling {method!r}; choose one of {TARGET_SCALINGS}")
    return scaled.astype(np.float32)
