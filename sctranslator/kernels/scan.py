"""One-pass validation scan of a block: NaN, +/-Inf, negative values and empty cells, with where.

The scan only reports; the engine's block runner (`sctranslator.engine.block_runner`) decides what is
fatal and raises the named error. Row numbers are local to the block (add the block's offset for
dataset-wide positions).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from numba import njit, prange

from sctranslator.kernels.coerce import as_csr_arrays, as_dense_array, is_sparse

# Per-row result columns.
_NAN, _INF, _NEG = 0, 1, 2


@njit(nogil=True, cache=True, inline="always")
def _classify(x, i, column, counts, first_column) -> None:
    # Negative means finite and < 0, so -Inf is counted once, as an Inf.
    if np.isnan(x):
        kind = _NAN
    elif np.isinf(x):
        kind = _INF
    elif x < 0:
        kind = _NEG
    else:
        return
    counts[i, kind] += 1
    if first_column[i, kind] < 0 or column < first_column[i, kind]:
        first_column[i, kind] = column


@njit(nogil=True, cache=True, parallel=True)
def _scan_csr_kernel(data, indices, indptr, used, counts, first_column, empty):
    n_rows = indptr.shape[0] - 1
    for i in prange(n_rows):
        total = 0.0
        for k in range(indptr[i], indptr[i + 1]):
            x = data[k]
            total += x * used[indices[k]]  # used: 1.0 / 0.0 weights, no branch
            _classify(x, i, indices[k], counts, first_column)  # min column: indices may be unsorted
        empty[i] = total == 0.0


@njit(nogil=True, cache=True, parallel=True)
def _scan_dense_kernel(x, used, counts, first_column, empty):
    n_rows, n_cols = x.shape
    for i in prange(n_rows):
        total = 0.0
        for j in range(n_cols):
            value = x[i, j]
            total += value * used[j]
            _classify(value, i, j, counts, first_column)
        empty[i] = total == 0.0


@dataclass(frozen=True)
class BlockScan:
    """What a scan of one block found.

    An empty row is one whose total over the scanned columns (all, or the `used_columns` given to
    `scan_block`) is exactly 0 (a NaN total is not).

    Parameters
    ----------
    n_rows : int
        Cells in the block.
    n_columns : int
        Genes in the block.
    n_nan : int
        NaN values found.
    n_inf : int
        +Inf and -Inf values found.
    n_negative : int
        Finite negative values found (-Inf counts in `n_inf` only).
    n_empty_rows : int
        Empty rows found.
    first_nan : tuple of int or None
        (row, column) within the block of the first NaN, or None.
    first_inf : tuple of int or None
        (row, column) of the first Inf, or None.
    first_negative : tuple of int or None
        (row, column) of the first negative value, or None.
    first_empty_row : int or None
        The first empty row, or None.
    empty_rows : numpy.ndarray
        int64 positions of every empty row, ascending.
    """

    n_rows: int
    n_columns: int
    n_nan: int
    n_inf: int
    n_negative: int
    n_empty_rows: int
    first_nan: tuple[int, int] | None
    first_inf: tuple[int, int] | None
    first_negative: tuple[int, int] | None
    first_empty_row: int | None
    empty_rows: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64), compare=False)

    @property
    def is_clean(self) -> bool:
        """True when nothing at all was found (empty rows included)."""
        return not (self.n_nan or self.n_inf or self.n_negative or self.n_empty_rows)

    def problems(self, *, allow_negative: bool = False, allow_empty_rows: bool = False) -> list[str]:
        """One human-readable sentence per kind of problem found, naming the first position.

        Parameters
        ----------
        allow_negative : bool
            Do not report negative values.
        allow_empty_rows : bool
            Do not report empty rows.

        Returns
        -------
        list of str
            Empty when the block is clean.
        """
        found = []
        if self.n_nan:
            found.append(f"{self.n_nan} NaN value(s), first at {_where(self.first_nan)}")
        if self.n_inf:
            found.append(f"{self.n_inf} infinite value(s), first at {_where(self.first_inf)}")
        if self.n_negative and not allow_negative:
            found.append(f"{self.n_negative} negative value(s), first at {_where(self.first_negative)}")
        if self.n_empty_rows and not allow_empty_rows:
            found.append(
                f"{self.n_empty_rows} cell(s) whose expression sums to 0, first at row {self.first_empty_row}"
            )
        return found


def _where(position: tuple[int, int] | None) -> str:
    return f"(row {position[0]}, column {position[1]})" if position else "(unknown)"


def _first(counts: np.ndarray, first_column: np.ndarray, kind: int) -> tuple[int, int] | None:
    rows = np.flatnonzero(counts[:, kind])
    if rows.size == 0:
        return None
    row = int(rows[0])
    return row, int(first_column[row, kind])


def scan_block(block: np.ndarray | sp.spmatrix | sp.sparray, used_columns: np.ndarray | None = None) -> BlockScan:
    """Scan a CSR or dense block for NaN, Inf, negative values and empty rows in one parallel pass.

    For CSR only stored entries can be NaN/Inf/negative, so implicit zeros cost nothing; other
    sparse formats are converted to CSR (one O(nnz) copy). The engine passes as `used_columns` the
    columns the model reads, so a cell whose counts all fall in genes the model does not use is as
    empty as an all-zero cell.

    Parameters
    ----------
    block : numpy.ndarray or scipy.sparse matrix or array
        Cells x genes.
    used_columns : numpy.ndarray or None
        bool ``(n_genes,)``: the columns whose total decides whether a row is empty; None: all.

    Returns
    -------
    BlockScan
        Counts and first positions of each problem.

    Raises
    ------
    InputDataError
        A block that is not 2-D, or values of a non-numeric dtype.
    """
    if is_sparse(block):
        arrays = as_csr_arrays(block, canonical=False)
        n_rows, n_cols = arrays.shape
    else:
        dense = as_dense_array(block)
        n_rows, n_cols = dense.shape
    if used_columns is None:
        used = np.ones(n_cols, np.float64)
    else:
        used = np.asarray(used_columns, dtype=np.bool_).astype(np.float64)
        if used.shape != (n_cols,):
            raise ValueError(f"used_columns has shape {used.shape}; the block has {n_cols} columns")
    counts = np.zeros((n_rows, 3), np.int64)
    first_column = np.full((n_rows, 3), -1, np.int64)
    empty = np.zeros(n_rows, np.bool_)
    if n_rows:
        if is_sparse(block):
            _scan_csr_kernel(arrays.data, arrays.indices, arrays.indptr, used, counts, first_column, empty)
        else:
            _scan_dense_kernel(dense, used, counts, first_column, empty)

    empty_rows = np.flatnonzero(empty)
    totals = counts.sum(axis=0)
    return BlockScan(
        n_rows=n_rows,
        n_columns=n_cols,
        n_nan=int(totals[_NAN]),
        n_inf=int(totals[_INF]),
        n_negative=int(totals[_NEG]),
        n_empty_rows=int(empty_rows.size),
        first_nan=_first(counts, first_column, _NAN),
        first_inf=_first(counts, first_column, _INF),
        first_negative=_first(counts, first_column, _NEG),
        first_empty_row=int(empty_rows[0]) if empty_rows.size else None,
        empty_rows=empty_rows.astype(np.int64, copy=False),
    )
