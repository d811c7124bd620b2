"""`prepare_values`: one block of cells -> the (n_cells, L) float32 values the model reads."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sctranslator.kernels._preprocess_numba import scale_align_csr_kernel, scale_align_dense_kernel
from sctranslator.kernels.alignment import build_alignment, merge_matrix, shares_slots
from sctranslator.kernels.coerce import as_csr_arrays, as_dense_array, is_sparse, kernel_float_dtype
from sctranslator.kernels.normalize import NormalizeMode, normalize_flags


def _check_out(out: np.ndarray, n_rows: int, length: int) -> np.ndarray:
    if not isinstance(out, np.ndarray) or out.dtype != np.float32:
        raise ValueError("out must be a float32 numpy array")
    if out.shape != (n_rows, length):
        raise ValueError(f"out has shape {out.shape}; expected {(n_rows, length)}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be C-contiguous and writeable")
    return out


def prepare_values(
    block: np.ndarray | sp.spmatrix | sp.sparray,
    column_slot: np.ndarray,
    position_real: np.ndarray,
    *,
    normalize: NormalizeMode = "none",
    target_sum: float = 1e4,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Normalise (optionally), min-max scale per cell and place genes at their model positions.

    Per cell, over the scaling set S (columns with ``column_slot >= 0`` or ``-2``, plus a 0 when some
    real position has no column, plus a 0 for implicit zeros of a sparse row):
    ``v = 1e-8 + (x - min_S) / (max_S - min_S) * (1 - 1e-8)``, computed in float64, stored as float32.
    Column c with ``column_slot[c] = p >= 0`` lands at position p; a real position no column writes
    to gets the scaled value of 0; padding is exactly 0. A constant cell (an all-zero cell included)
    gets 1e-8 at every real position, never NaN (the original divides 0 by 0 here). Columns that
    share a slot are added up first. Dense and CSR blocks give the same result; caller arrays are
    never modified.

    Parameters
    ----------
    block : numpy.ndarray or scipy.sparse matrix or array
        ``(n_cells, n_columns)`` expression values, finite (check with `scan_block`).
    column_slot : numpy.ndarray
        int64 ``(n_columns,)``: model position per column, -1 (ignored) or -2 (scaling only).
    position_real : numpy.ndarray
        bool ``(L,)``: which model positions hold a real gene.
    normalize : {'none', 'log1p', 'total', 'total_log1p'}
        Applied before scaling (see `normalize_block`).
    target_sum : float
        Counts per cell for the "total" modes.
    out : numpy.ndarray or None
        A C-contiguous float32 ``(n_cells, L)`` array to overwrite and return (saves allocating a
        new output per block).

    Returns
    -------
    numpy.ndarray
        float32 ``(n_cells, L)`` model values in [1e-8, 1] at real positions, 0 at padding.

    Raises
    ------
    ValueError
        An inconsistent alignment (see `build_alignment`), a bad `out`, or a bad normalisation.
    InputDataError
        A block that is not 2-D, or values of a non-numeric dtype.
    """
    do_total, do_log = normalize_flags(normalize, target_sum)
    target = float(target_sum)
    if shares_slots(column_slot):
        block, column_slot = _merged(block, column_slot)
    if is_sparse(block):
        arrays = as_csr_arrays(block, canonical=True)
        n_rows, n_cols = arrays.shape
    else:
        dense = as_dense_array(block)
        n_rows, n_cols = dense.shape
    plan = build_alignment(column_slot, position_real, n_cols)
    if out is None:
        values = np.empty((n_rows, plan.length), np.float32)
    else:
        values = _check_out(out, n_rows, plan.length)
    if n_rows == 0:
        return values

    if is_sparse(block):
        scale_align_csr_kernel(
            arrays.data, arrays.indices, arrays.indptr, plan.column_slot, plan.real_template,
            plan.n_scaling, plan.zero_in_set, do_total, do_log, target, values,
        )
    else:
        scale_align_dense_kernel(
            dense, plan.scaling_columns, plan.written_columns, plan.written_slots, plan.real_template,
            plan.zero_in_set, do_total, do_log, target, values,
        )
    return values


def _merged(block: np.ndarray | sp.spmatrix | sp.sparray,
            column_slot: np.ndarray) -> tuple[np.ndarray | sp.csr_matrix, np.ndarray]:
    """The block with the columns of each shared slot added up, and the kept columns' slots."""
    matrix, slots = merge_matrix(column_slot)
    if block.shape[1] != matrix.shape[0]:
        raise ValueError(f"column_slot has {matrix.shape[0]} entries but the block has {block.shape[1]} columns")
    # the kernels' dtype (float16 -> float32: scipy.sparse cannot hold float16; integers -> float64)
    matrix = matrix.astype(kernel_float_dtype(np.dtype(block.dtype)))
    if is_sparse(block):
        return sp.csr_matrix(sp.csr_matrix(block) @ matrix), slots
    return np.asarray((matrix.T @ np.asarray(block).T).T), slots
