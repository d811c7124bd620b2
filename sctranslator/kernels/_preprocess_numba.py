"""Numba kernels for per-cell preprocessing: library-size normalisation and scale+align.

All kernels work row by row (one row = one cell), run rows in parallel with `prange`, compute
in float64 whatever the input dtype, and never allocate per row. The normalisation helpers live
in this same file as their callers on purpose: numba's on-disk cache only notices edits to the
file that defines the cached function, so splitting them would allow stale cached machine code.

Values of the input must be finite (the engine runs `scan_block` first); with NaN or Inf the
min/max below are not meaningful.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# Reference formula: v = EPS + (x - min) / (max - min) * (1 - EPS).
EPS = 1e-8
_UNMAPPED = -1


@njit(nogil=True, cache=True, inline="always")
def _row_factor(total: float, do_total: bool, target_sum: float) -> float:
    # Like scanpy normalize_total: a zero-total row is divided by 1, i.e. left as it is.
    if do_total and total != 0.0:
        return target_sum / total
    return 1.0


@njit(nogil=True, cache=True, inline="always")
def _transform(x, factor: float, do_log: bool) -> float:
    y = np.float64(x) * factor
    if do_log:
        y = np.log1p(y)
    return y


@njit(nogil=True, cache=True, inline="always")
def _scale_coefficients(lo: float, hi: float) -> tuple[float, float]:
    """(lo, scale) such that v(x) = EPS + (x - lo) * scale.

    A constant cell (hi == lo, all-zero included) gets scale 0, so every real position is EPS
    instead of the reference's 0/0 = NaN. An empty scaling set (lo = +inf) behaves the same.
    """
    if not hi > lo:
        if not lo <= hi:  # empty set: lo = +inf, hi = -inf
            lo = 0.0
        return lo, 0.0
    return lo, (1.0 - EPS) / (hi - lo)


@njit(nogil=True, cache=True, parallel=True)
def normalize_csr_kernel(data, indptr, do_total, do_log, target_sum, out_data):
    """Write the normalised value of every stored entry into `out_data` (may alias `data`)."""
    n_rows = indptr.shape[0] - 1
    for i in prange(n_rows):
        start, end = indptr[i], indptr[i + 1]
        total = 0.0
        if do_total:
            for k in range(start, end):
                total += data[k]
        factor = _row_factor(total, do_total, target_sum)
        for k in range(start, end):
            out_data[k] = _transform(data[k], factor, do_log)


@njit(nogil=True, cache=True, parallel=True)
def normalize_dense_kernel(x, do_total, do_log, target_sum, out):
    """Dense counterpart of `normalize_csr_kernel`; `out` may alias `x`."""
    n_rows, n_cols = x.shape
    for i in prange(n_rows):
        total = 0.0
        if do_total:
            for j in range(n_cols):
                total += x[i, j]
        factor = _row_factor(total, do_total, target_sum)
        for j in range(n_cols):
            out[i, j] = _transform(x[i, j], factor, do_log)


@njit(nogil=True, cache=True, parallel=True)
def scale_align_csr_kernel(
    data, indices, indptr, column_slot, real_template, n_scaling, zero_in_set, do_total, do_log,
    target_sum, out,
):
    """Fill `out` (n_rows, L) float32 with min-max scaled values placed at their model positions.

    Pass 1 over a row's stored entries finds min/max over the scaling set (slot != -1); a 0 joins
    the set when the row stores fewer scaling entries than the set holds (implicit zeros) or a
    real position has no column. The row is then filled with the scaled value of 0 at real
    positions and 0.0 at padding, and pass 2 scatters the stored entries with slot >= 0.
    """
    n_rows = indptr.shape[0] - 1
    length = out.shape[1]
    for i in prange(n_rows):
        start, end = indptr[i], indptr[i + 1]
        total = 0.0
        if do_total:
            for k in range(start, end):
                total += data[k]
        factor = _row_factor(total, do_total, target_sum)

        lo = np.inf
        hi = -np.inf
        n_seen = 0
        for k in range(start, end):
            if column_slot[indices[k]] != _UNMAPPED:
                y = _transform(data[k], factor, do_log)
                lo = min(lo, y)
                hi = max(hi, y)
                n_seen += 1
        if zero_in_set or n_seen < n_scaling:
            lo = min(lo, 0.0)
            hi = max(hi, 0.0)
        lo, scale = _scale_coefficients(lo, hi)

        zero_value = np.float32(EPS - lo * scale)
        for j in range(length):
            out[i, j] = real_template[j] * zero_value
        for k in range(start, end):
            slot = column_slot[indices[k]]
            if slot >= 0:
                out[i, slot] = EPS + (_transform(data[k], factor, do_log) - lo) * scale


@njit(nogil=True, cache=True, parallel=True)
def scale_align_dense_kernel(
    x, scaling_columns, written_columns, written_slots, real_template, zero_in_set, do_total, do_log,
    target_sum, out,
):
    """Dense counterpart of `scale_align_csr_kernel` (explicit zeros are ordinary values)."""
    n_rows, n_cols = x.shape
    length = out.shape[1]
    for i in prange(n_rows):
        total = 0.0
        if do_total:
            for j in range(n_cols):
                total += x[i, j]
        factor = _row_factor(total, do_total, target_sum)

        lo = np.inf
        hi = -np.inf
        for c in scaling_columns:
            y = _transform(x[i, c], factor, do_log)
            lo = min(lo, y)
            hi = max(hi, y)
        if zero_in_set:
            lo = min(lo, 0.0)
            hi = max(hi, 0.0)
        lo, scale = _scale_coefficients(lo, hi)

        zero_value = np.float32(EPS - lo * scale)
        for j in range(length):
            out[i, j] = real_template[j] * zero_value
        for w in range(written_columns.shape[0]):
            y = _transform(x[i, written_columns[w]], factor, do_log)
            out[i, written_slots[w]] = EPS + (y - lo) * scale
