"""The block runner: read -> check -> prepare for a row range of a source, with one error format.

Every command that feeds expression to the model (translate, finetune, knockout, attention) goes
through `BlockRunner`: it reads rows [start, stop) of a `Source`, checks them with the `scan_block`
kernel and turns them into the (cells, L) model values with `prepare_values`, as the `Plan` says.

Bad cells raise one named error, `BadCellsError` (an `InputDataError`), whose message names the
input, the rows read, and for each kind of problem the first cell (obs name and row number) and,
for bad values, the gene (var name). Empty cells are cells with no counts in any gene the model
reads (columns the plan places at a model position): an all-zero cell and a cell whose counts all
fall in genes the model ignores give the model the same input, a constant cell. They are refused
unless `allow_empty_cells`, and then counted (`CheckedBlock.n_empty`) so callers can report them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sctranslator.engine.sources import Source
from sctranslator.errors import BadCellsError
from sctranslator.kernels import BlockScan, prepare_values, scan_block
from sctranslator.plan import Plan

LISTED_EMPTY_CELLS = 5  # empty cells named in a message


@dataclass(frozen=True)
class CheckedBlock:
    """Rows of the input that passed the checks, as read (CSR matrix or C-ordered ndarray).

    Parameters
    ----------
    start : int
        First input row of the range read.
    stop : int
        Input row after the last.
    data : scipy.sparse.csr_matrix or numpy.ndarray
        The rows, cells x genes.
    rows : numpy.ndarray or None
        The input row of each row of `data` when a subset of ``[start, stop)`` was read; None: row i is
        input row ``start + i``.
    n_empty : int
        Empty cells among them (non-zero only when empty cells are allowed).
    """

    start: int
    stop: int
    data: Any
    rows: np.ndarray | None
    n_empty: int

    @property
    def n_cells(self) -> int:
        """Cells in the block."""
        return int(self.data.shape[0])


class BlockRunner:
    """Reads, checks and prepares blocks of one source for one plan (picklable: shipped to Dask workers).

    Parameters
    ----------
    source : Source
        The input.
    plan : Plan
        The alignment and normalisation of the source's columns onto the model.
    allow_empty_cells : bool
        Accept (and count) cells with no counts in the genes the model reads instead of refusing them.
    """

    def __init__(self, source: Source, plan: Plan, *, allow_empty_cells: bool = False) -> None:
        self.source = source
        self.plan = plan
        self.allow_empty_cells = bool(allow_empty_cells)
        self.used_columns = np.asarray(plan.column_slot) >= 0  # columns that land at a model position
        self.prefetcher: Any = None  # set by engine.prefetch.prefetching for local runs; never pickled

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "prefetcher": None}

    def read(self, start: int, stop: int, rows: np.ndarray | None = None) -> CheckedBlock:
        """Read and check input rows; whole blocks come from the read-ahead thread when one runs.

        Parameters
        ----------
        start : int
            First input row.
        stop : int
            Input row after the last.
        rows : numpy.ndarray or None
            Only these sorted input rows within ``[start, stop)``; None: all of them.

        Returns
        -------
        CheckedBlock
            The checked rows.

        Raises
        ------
        BadCellsError
            NaN / Inf / negative values anywhere in the rows read, or empty cells unless allowed.
        StoreError
            The source's own errors pass through.
        """
        if self.prefetcher is not None and rows is None:
            return self.prefetcher.take(start, stop)
        return self.read_unprefetched(start, stop, rows)

    def read_unprefetched(self, start: int, stop: int, rows: np.ndarray | None = None) -> CheckedBlock:
        """`read`, always from the source in this thread.

        Parameters
        ----------
        start : int
            First input row.
        stop : int
            Input row after the last.
        rows : numpy.ndarray or None
            Only these sorted input rows within ``[start, stop)``; None: all of them.

        Returns
        -------
        CheckedBlock
            The checked rows.

        Raises
        ------
        BadCellsError
            As `read`.
        """
        data = self.source.read_block(start, stop)
        if rows is not None:
            rows = np.asarray(rows, dtype=np.int64)
            data = data[rows - start]
        n_empty = self.check(data, start, stop, rows)
        return CheckedBlock(int(start), int(stop), data, rows, n_empty)

    def check(self, data: Any, start: int, stop: int, rows: np.ndarray | None = None) -> int:
        """Check a block read from rows ``[start, stop)``.

        Parameters
        ----------
        data : scipy.sparse.csr_matrix or numpy.ndarray
            The rows read.
        start : int
            First input row.
        stop : int
            Input row after the last.
        rows : numpy.ndarray or None
            Only these sorted input rows within ``[start, stop)``; None: all of them.

        Returns
        -------
        int
            The empty cells in it (when allowed).

        Raises
        ------
        BadCellsError
            Bad values, or empty cells unless allowed.
        """
        scan = scan_block(data, self.used_columns)
        if scan.n_nan or scan.n_inf or scan.n_negative or (scan.n_empty_rows and not self.allow_empty_cells):
            raise self._error(scan, start, stop, rows)
        return scan.n_empty_rows

    def prepare(self, data: Any, *, out: np.ndarray | None = None, column_slot: np.ndarray | None = None,
                position_real: np.ndarray | None = None) -> np.ndarray:
        """Model values of a checked block's rows, with the plan's normalisation and scaling.

        Parameters
        ----------
        data : scipy.sparse.csr_matrix or numpy.ndarray
            Checked rows, cells x genes.
        out : numpy.ndarray or None
            A C-contiguous float32 ``(n_cells, L)`` array to fill and return.
        column_slot : numpy.ndarray or None
            Replaces the plan's alignment (knockout variants).
        position_real : numpy.ndarray or None
            Replaces the plan's real positions.

        Returns
        -------
        numpy.ndarray
            float32 ``(n_cells, L)``.
        """
        plan = self.plan
        return prepare_values(data, plan.column_slot if column_slot is None else column_slot,
                              plan.position_real if position_real is None else position_real,
                              normalize=plan.normalize, target_sum=plan.target_sum, out=out)

    def read_prepared(self, start: int, stop: int, rows: np.ndarray | None = None,
                      out: np.ndarray | None = None) -> tuple[CheckedBlock, np.ndarray]:
        """`read`, then `prepare`.

        Parameters
        ----------
        start : int
            First input row.
        stop : int
            Input row after the last.
        rows : numpy.ndarray or None
            Only these sorted input rows within ``[start, stop)``; None: all of them.
        out : numpy.ndarray or None
            A float32 ``(n_cells, L)`` array to fill.

        Returns
        -------
        block : CheckedBlock
            The checked rows.
        values : numpy.ndarray
            Their model values.

        Raises
        ------
        BadCellsError
            As `read`.
        """
        block = self.read(start, stop, rows)
        return block, self.prepare(block.data, out=out)

    def lowest_error(self, error: BadCellsError, ranges: Iterable[tuple[int, int]]) -> BadCellsError:
        """The error naming the lowest bad input row: `error`, or one from a range below its first row.

        When blocks run concurrently, the first block to fail need not hold the first bad cell; the ranges
        that end at or before ``error.first_row`` are checked again in order (a failed run pays for reading
        at most those).

        Parameters
        ----------
        error : BadCellsError
            The error raised first.
        ranges : iterable of tuple of int
            Row ranges that may not have been checked yet.

        Returns
        -------
        BadCellsError
            The error of the lowest bad row.
        """
        for start, stop in sorted(ranges):
            if stop > error.first_row:
                break
            try:
                self.read(start, stop)
            except BadCellsError as earlier:
                return earlier
        return error

    # --- the one error format ----------------------------------------------------------------------
    def _error(self, scan: BlockScan, start: int, stop: int, rows: np.ndarray | None) -> BadCellsError:
        obs_names, var_names = self.source.obs_names, self.source.var.index

        def row_of(local: int) -> int:
            return int(rows[local]) if rows is not None else start + int(local)

        def cell(local: int) -> str:
            row = row_of(local)
            return f"cell {str(obs_names[row])!r}, row {row}"

        details, first_rows = [], []
        for count, first, what in ((scan.n_nan, scan.first_nan, "NaN value(s)"),
                                   (scan.n_inf, scan.first_inf, "infinite value(s)"),
                                   (scan.n_negative, scan.first_negative, "negative value(s)")):
            if count and first is not None:
                local, column = first
                details.append(f"{count} {what} (first: {cell(local)}; gene {str(var_names[column])!r})")
                first_rows.append(row_of(local))
        advice = ["expression must be finite and non-negative: fix or filter these cells"] if details else []
        if scan.n_empty_rows and not self.allow_empty_cells:
            listed = "; ".join(cell(int(r)) for r in scan.empty_rows[:LISTED_EMPTY_CELLS])
            more = ", ..." if scan.n_empty_rows > LISTED_EMPTY_CELLS else ""
            details.append(f"{scan.n_empty_rows} empty cell(s) with no counts in any of the "
                           f"{int(self.used_columns.sum())} genes the model reads ({listed}{more})")
            first_rows.append(row_of(int(scan.empty_rows[0])))
            advice.append("filter empty cells out, or pass --allow-empty-cells (allow_empty_cells=True) to "
                          "predict them as constant cells")
        what = f"{self.source.describe()}, rows {start}..{stop - 1}"
        todo = "; ".join(advice)
        message = f"{what}: " + "; ".join(details) + ". " + todo[:1].upper() + todo[1:] + "."
        return BadCellsError(message, min(first_rows))
