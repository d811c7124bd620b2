"""Check the engine's column->position plan and derive what the scale+align kernels need.

The plan is two arrays shared by every block of a dataset:

* ``column_slot`` (int64, one per input column): ``>= 0`` the model position the column is
  written to; ``-1`` (`UNMAPPED`) the column is ignored; ``-2`` (`TRUNCATED`) a mapped gene that
  did not fit into the L positions: it takes part in the per-cell min/max but is not written.
* ``position_real`` (bool, one per model position): True where a gene sits (mask True).
  A real position that no column writes to counts as expression 0.

Several columns with one slot ``>= 0`` (one gene under several names) are added up into one
column before anything else (`merge_shared_slots`): their counts add.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

UNMAPPED = -1
TRUNCATED = -2


@dataclass(frozen=True)
class Alignment:
    """Derived, validated form of a plan's (column_slot, position_real), ready for the kernels.

    Parameters
    ----------
    column_slot : numpy.ndarray
        int64 ``(n_columns,)``: the model position each input column writes, -1 (ignored) or -2
        (beyond L: enters the per-cell min/max only).
    real_template : numpy.ndarray
        float32 ``(L,)``: 1.0 at real positions, 0.0 at padding, so a kernel fills a row with "scaled
        value of zero" at real positions and exact zeros at padding in one vectorisable loop.
    n_scaling : int
        Size of the per-cell scaling set (columns with slot >= 0 or -2).
    zero_in_set : bool
        Some real position has no column (a fixed-panel gene missing from the dataset), which puts a
        0 into every cell's min/max.
    scaling_columns : numpy.ndarray
        int64 positions of the columns in the scaling set.
    written_columns : numpy.ndarray
        int64 positions of the columns that write a model position.
    written_slots : numpy.ndarray
        int64 model position of each written column.
    """

    column_slot: np.ndarray  # int64[n_columns]
    real_template: np.ndarray  # float32[L]
    n_scaling: int
    zero_in_set: bool
    scaling_columns: np.ndarray  # int64, columns with slot != -1 (dense kernel)
    written_columns: np.ndarray  # int64, columns with slot >= 0 (dense kernel)
    written_slots: np.ndarray  # int64, their slots

    @property
    def length(self) -> int:
        """The model's L (positions per cell)."""
        return int(self.real_template.shape[0])


def build_alignment(column_slot: np.ndarray, position_real: np.ndarray, n_columns: int) -> Alignment:
    """Validate a plan's alignment against a block with `n_columns` columns; O(n_columns + L).

    Parameters
    ----------
    column_slot : numpy.ndarray
        int64 ``(n_columns,)``: a model position, -1 (ignored) or -2 (scaling only) per column.
    position_real : numpy.ndarray
        bool ``(L,)``: which model positions hold a real gene.
    n_columns : int
        Columns of the blocks the alignment will serve.

    Returns
    -------
    Alignment
        The checked alignment with its derived arrays.

    Raises
    ------
    ValueError
        An inconsistent plan: wrong length, slot codes other than -1/-2 or a valid position, two
        columns writing one position, or a column writing to padding.
    """
    slots = np.asarray(column_slot)
    if slots.ndim != 1 or not np.issubdtype(slots.dtype, np.integer):
        raise ValueError("column_slot must be a 1-D integer array")
    slots = slots.astype(np.int64, copy=False)
    real = np.asarray(position_real)
    if real.ndim != 1 or real.dtype != np.bool_:
        raise ValueError("position_real must be a 1-D bool array")
    if slots.shape[0] != n_columns:
        raise ValueError(f"column_slot has {slots.shape[0]} entries but the block has {n_columns} columns")
    length = real.shape[0]
    if slots.size and (slots.min() < TRUNCATED or slots.max() >= length):
        raise ValueError(f"column_slot values must be -2, -1 or a position in [0, {length})")

    written = np.flatnonzero(slots >= 0)
    written_slots = slots[written]
    hits = np.bincount(written_slots, minlength=length)
    if hits.size and hits.max() > 1:
        raise ValueError(f"position {int(hits.argmax())} is written by more than one column")
    if not real[written_slots].all():
        raise ValueError("column_slot writes a column to a padding position (position_real is False)")

    missing_real = real & (hits == 0)
    return Alignment(
        column_slot=slots,
        real_template=real.astype(np.float32),
        n_scaling=int(np.count_nonzero(slots != UNMAPPED)),
        zero_in_set=bool(missing_real.any()),
        scaling_columns=np.flatnonzero(slots != UNMAPPED).astype(np.int64),
        written_columns=written.astype(np.int64),
        written_slots=written_slots,
    )


def shares_slots(column_slot: np.ndarray) -> bool:
    """Whether two or more columns write one position (they are to be added up).

    Parameters
    ----------
    column_slot : numpy.ndarray
        int64 ``(n_columns,)`` model position per column (negative: none).

    Returns
    -------
    bool
        True when some position >= 0 is written by more than one column.
    """
    written = np.asarray(column_slot)[np.asarray(column_slot) >= 0]
    return bool(written.size) and np.unique(written).size < written.size


def merge_matrix(column_slot: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
    """A sparse matrix that adds up the columns sharing a slot >= 0: ``block @ M``.

    Every column goes to the first column of its slot (or stays itself), so row totals are unchanged.

    Parameters
    ----------
    column_slot : numpy.ndarray
        int64 ``(n_columns,)`` model position per column.

    Returns
    -------
    M : scipy.sparse.csr_matrix
        ``(n_columns, n_kept)`` with one 1 per row.
    slots : numpy.ndarray
        int64 ``(n_kept,)``: the column_slot of the kept columns.
    """
    slots = np.asarray(column_slot, dtype=np.int64)
    target = np.arange(slots.shape[0])
    written = np.flatnonzero(slots >= 0)
    unique, first = np.unique(slots[written], return_index=True)
    target[written] = written[first][np.searchsorted(unique, slots[written])]
    kept = np.flatnonzero(target == np.arange(slots.shape[0]))
    new_index = np.full(slots.shape[0], -1, dtype=np.int64)
    new_index[kept] = np.arange(kept.shape[0])
    matrix = sp.csr_matrix((np.ones(slots.shape[0]), (np.arange(slots.shape[0]), new_index[target])),
                           shape=(slots.shape[0], kept.shape[0]))
    return matrix, slots[kept]
