"""Pearson correlation between predicted and measured matrices, per column or per row.

Both work on dense (n, p) float32/float64 matrices, in float64, two passes (means, then
centred sums) for accuracy. A column (or row) that is constant in either matrix has no defined
correlation: the result there is NaN, on purpose, so that averages must choose how to skip it
(``np.nanmean``). Fewer than 2 observations also give NaN. NaN inputs propagate to NaN.
Results are clipped to [-1, 1] against rounding, as scipy does.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_COLUMN_CHUNK = 64  # columns per parallel task: keeps per-task accumulators in L1 cache


@njit(nogil=True, cache=True, inline="always")
def _finish(sxy: float, sxx: float, syy: float, constant: bool) -> float:
    if constant:
        return np.nan
    r = sxy / np.sqrt(sxx * syy)
    if r != r:  # NaN in the data stays NaN (min/max would turn it into -1)
        return np.nan
    return min(1.0, max(-1.0, r))


@njit(nogil=True, cache=True, parallel=True)
def _pearson_rows_kernel(a, b, out):
    n_rows, n_cols = a.shape
    for i in prange(n_rows):
        mean_a = 0.0
        mean_b = 0.0
        # Exact constancy test (compare with the first value): the centred sum of squares of a
        # constant row can be a rounding-sized nonzero instead of 0.
        varies_a = False
        varies_b = False
        for j in range(n_cols):
            mean_a += a[i, j]
            mean_b += b[i, j]
            varies_a |= a[i, j] != a[i, 0]
            varies_b |= b[i, j] != b[i, 0]
        mean_a /= max(n_cols, 1)
        mean_b /= max(n_cols, 1)
        sxy = 0.0
        sxx = 0.0
        syy = 0.0
        for j in range(n_cols):
            da = a[i, j] - mean_a
            db = b[i, j] - mean_b
            sxy += da * db
            sxx += da * da
            syy += db * db
        out[i] = _finish(sxy, sxx, syy, not (varies_a and varies_b))


@njit(nogil=True, cache=True, parallel=True)
def _pearson_columns_kernel(a, b, out):
    # Walk rows in order (C layout) and keep per-column accumulators for a chunk of columns.
    n_rows, n_cols = a.shape
    n_chunks = (n_cols + _COLUMN_CHUNK - 1) // _COLUMN_CHUNK
    for chunk in prange(n_chunks):
        lo = chunk * _COLUMN_CHUNK
        hi = min(lo + _COLUMN_CHUNK, n_cols)
        width = hi - lo
        mean_a = np.zeros(width)
        mean_b = np.zeros(width)
        varies_a = np.zeros(width, np.bool_)
        varies_b = np.zeros(width, np.bool_)
        for i in range(n_rows):
            for w in range(width):
                x = a[i, lo + w]
                y = b[i, lo + w]
                mean_a[w] += x
                mean_b[w] += y
                varies_a[w] |= x != a[0, lo + w]
                varies_b[w] |= y != b[0, lo + w]
        mean_a /= max(n_rows, 1)
        mean_b /= max(n_rows, 1)
        sxy = np.zeros(width)
        sxx = np.zeros(width)
        syy = np.zeros(width)
        for i in range(n_rows):
            for w in range(width):
                da = a[i, lo + w] - mean_a[w]
                db = b[i, lo + w] - mean_b[w]
                sxy[w] += da * db
                sxx[w] += da * da
                syy[w] += db * db
        for w in range(width):
            out[lo + w] = _finish(sxy[w], sxx[w], syy[w], not (varies_a[w] and varies_b[w]))


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"expected two 2-D matrices of the same shape; got {a.shape} and {b.shape}")
    dtype = np.float32 if a.dtype == b.dtype == np.float32 else np.float64
    return np.ascontiguousarray(a, dtype=dtype), np.ascontiguousarray(b, dtype=dtype)


def pearson_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of each column of `a` with the same column of `b`.

    Parameters
    ----------
    a : numpy.ndarray
        ``(n, p)`` values.
    b : numpy.ndarray
        ``(n, p)`` values.

    Returns
    -------
    numpy.ndarray
        float64 ``(p,)``; NaN where either column is constant or there are fewer than 2 rows.
    """
    a, b = _pair(a, b)
    out = np.full(a.shape[1], np.nan)
    if a.shape[0] >= 2 and a.shape[1]:
        _pearson_columns_kernel(a, b, out)
    return out


def pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of each row of `a` with the same row of `b`.

    Parameters
    ----------
    a : numpy.ndarray
        ``(n, p)`` values.
    b : numpy.ndarray
        ``(n, p)`` values.

    Returns
    -------
    numpy.ndarray
        float64 ``(n,)``; NaN where either row is constant or there are fewer than 2 columns.
    """
    a, b = _pair(a, b)
    out = np.full(a.shape[0], np.nan)
    if a.shape[1] >= 2 and a.shape[0]:
        _pearson_rows_kernel(a, b, out)
    return out
