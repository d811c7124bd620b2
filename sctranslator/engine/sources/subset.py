"""A subset of a source's cells (`--max-cells`, `--cells`, `--obs-query`), read without copying the input.

Rows keep the input's order. A block of the subset is read as the runs of consecutive input rows
it covers, so a contiguous selection (the first N cells) costs one read per block.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sctranslator.engine.sources.base import Block, Source, require_unique_cell_names
from sctranslator.errors import InputDataError

# Input rows this close together are read in one slice (and the gap dropped) rather than two reads.
_MERGE_GAP = 32


class RowSubset(Source):
    """The rows `rows` (sorted, unique) of `base`, served as rows 0..len(rows)-1.

    Parameters
    ----------
    base : Source
        The whole input.
    rows : numpy.ndarray
        int64 rows of `base`, sorted and unique.
    description : str
        How the selection was made (for messages and provenance).
    """

    def __init__(self, base: Source, rows: np.ndarray, description: str) -> None:
        super().__init__()
        self.base = base
        self.rows = np.asarray(rows, dtype=np.int64)
        self.selection = description
        self.kind = base.kind
        self.path = base.path
        self.n_obs = int(self.rows.size)
        self.n_vars = base.n_vars
        self.matrix_format = base.matrix_format
        self.chunk_rows = None
        self.dtype = base.dtype
        self.nnz = None
        self.modality = getattr(base, "modality", None)

    @property
    def var(self) -> pd.DataFrame:
        """The genes: the var table whose index (or gene column) names them."""
        return self.base.var

    @property
    def obs_names(self) -> pd.Index:
        """The cells' names, in row order (read once and kept)."""
        return self.base.obs_names[self.rows]

    def read_obs(self) -> pd.DataFrame:
        """The full obs table, for copying into the output.

        Returns
        -------
        pandas.DataFrame
            One row per cell.
        """
        return self.base.read_obs().iloc[self.rows]

    def obs_table(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """obs with only `columns`, for the output's obs (``--obs-columns``).

        Parameters
        ----------
        columns : sequence of str or None
            The columns; None: all.

        Returns
        -------
        pandas.DataFrame
            One row per cell.

        Raises
        ------
        InputDataError
            Unknown columns (named).
        """
        return self.base.obs_table(columns).iloc[self.rows]

    def obsm_arrays(self) -> dict[str, Any]:
        """The input's numeric, dense obsm arrays with one row per cell (``spatial``, ``X_pca``, ...).

        Sparse matrices and tables are left out.

        Returns
        -------
        dict
            Key -> row-sliceable array-like (numpy, h5py, zarr) read on demand.
        """
        return {key: _SelectedRows(array, self.rows) for key, array in self.base.obsm_arrays().items()}

    def describe(self) -> str:
        """How to name this input in a message.

        Returns
        -------
        str
            A short description (the path, or the object's kind).
        """
        return f"{self.base.describe()} ({self.selection})"

    def _element_name(self) -> str:
        return self.base._element_name()

    def fingerprint(self) -> dict[str, Any]:
        """A JSON-able identity, used to refuse resuming a job against different input data.

        Returns
        -------
        dict
            Kind, location, shape and a hash of the names.
        """
        if self._fingerprint is None:
            identity = self.base.fingerprint()
            identity.update({"n_obs": self.n_obs, "nnz": None, "selection": self.selection,
                             "obs_names_sha256": _hash_rows(self.rows)})
            self._fingerprint = identity
        return dict(self._fingerprint)

    def _read_rows(self, start: int, stop: int) -> Block:
        wanted = self.rows[start:stop]
        if wanted.size == 0:
            return self.base.read_block(0, 0)
        pieces = []
        for first, last, run in _read_runs(wanted):
            block = self.base.read_block(first, last)
            pieces.append(block if run.size == last - first else block[run - first])
        if len(pieces) == 1:
            return pieces[0]
        if sp.issparse(pieces[0]):
            return sp.vstack(pieces, format="csr")
        return np.ascontiguousarray(np.concatenate(pieces, axis=0))

    def close(self) -> None:
        """Release open file handles; the source reopens them if it is read again."""
        self.base.close()


class _SelectedRows:
    """Rows `rows` (sorted) of a row-sliceable array, itself sliceable by row ranges."""

    def __init__(self, array: Any, rows: np.ndarray) -> None:
        self.array, self.rows = array, rows
        self.shape = (int(rows.size), *(int(n) for n in array.shape[1:]))
        self.dtype = np.dtype(array.dtype)

    def __getitem__(self, key: slice) -> np.ndarray:
        wanted = self.rows[key]
        if not wanted.size:
            return np.empty((0, *self.shape[1:]), self.dtype)
        # As RowSubset reads X: runs separated by small gaps are one slice read, then picked from.
        return np.concatenate([np.asarray(self.array[first:last])[run - first]
                               for first, last, run in _read_runs(wanted)])


def _read_runs(wanted: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """(first, stop, rows) of each slice to read for the sorted rows `wanted`: rows closer than
    _MERGE_GAP share one read (reading a few unwanted rows beats one read per row)."""
    breaks = np.flatnonzero(np.diff(wanted) > _MERGE_GAP) + 1
    return [(int(run[0]), int(run[-1]) + 1, run) for run in np.split(wanted, breaks)]


def _hash_rows(rows: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(rows, dtype="<i8").tobytes()).hexdigest()


def select_cells(source: Source, *, cells: Sequence[str] | None = None, obs_query: str | None = None,
                 max_cells: int | None = None) -> Source:
    """`source` restricted to named cells, then to the obs rows where a query holds, then to the first N.

    A source with a ``filtered(obs_query)`` method (SomaSource) applies `obs_query` itself, as a
    pushed-down value filter in its own syntax, before `cells` and `max_cells`.

    Parameters
    ----------
    source : Source
        The input.
    cells : sequence of str or None
        Obs names (any order; the input's order is kept).
    obs_query : str or None
        A pandas ``DataFrame.query`` expression over the obs columns, e.g.
        ``"cell_type == 'B cell' and n_genes > 500"``.
    max_cells : int or None
        Keep the first N of what is left.

    Returns
    -------
    Source
        A RowSubset, or `source` itself when nothing is asked.

    Raises
    ------
    InputDataError
        Unknown cell names, a query that fails or selects nothing, or `max_cells` below 1.
    """
    if obs_query is not None and hasattr(source, "filtered"):
        # Sources with a query engine of their own (SOMA: TileDB value filters) evaluate it where the data is.
        if cells is not None:
            select_cells(source, cells=cells)  # names unknown to the whole input are an error, as for files
        filtered = source.filtered(obs_query)
        if cells is not None:  # named cells outside the query are left out, as for files
            kept = [str(name) for name in cells if str(name) in set(filtered.obs_names.astype(str))]
            if not kept:
                raise InputDataError(f"none of the {len(cells)} named cells is selected by the obs query "
                                     f"{obs_query!r} of {source.describe()}")
            cells = kept
        source, pushed, obs_query = filtered, obs_query, None
    else:
        pushed = None
    if cells is None and obs_query is None and max_cells is None:
        return source
    rows = np.arange(source.n_obs, dtype=np.int64)
    parts = [] if pushed is None else [f"obs query {pushed!r} (evaluated by the source)"]
    if cells is not None:
        require_unique_cell_names(source.obs_names, source.describe(), "--cells / cells= picks cells by name")
        names = pd.Index([str(name) for name in cells])
        found = source.obs_names.get_indexer(names)
        missing = names[found < 0]
        if len(missing):
            raise InputDataError(f"{len(missing)} of the {len(names)} cells asked for are not in "
                                 f"{source.describe()}: {', '.join(missing[:5].tolist())}"
                                 f"{' ...' if len(missing) > 5 else ''}; check the names against its obs_names")
        rows = np.unique(found)
        parts.append(f"{rows.size} named cells")
    if obs_query is not None:
        obs = source.read_obs().iloc[rows]
        try:
            keep = obs.eval(obs_query)
        except Exception as error:  # pandas raises many types for a bad expression
            raise InputDataError(f"--obs-query {obs_query!r} cannot be evaluated on the obs table "
                                 f"(columns: {', '.join(map(str, obs.columns[:12]))}): {error}") from error
        keep = np.asarray(keep)
        if keep.dtype != bool or keep.shape != (len(obs),):
            raise InputDataError(f"--obs-query {obs_query!r} must give one True/False per cell")
        rows = rows[keep]
        parts.append(f"obs query {obs_query!r}")
    if max_cells is not None:
        if max_cells < 1:
            raise InputDataError(f"--max-cells must be >= 1, got {max_cells}")
        rows = rows[:max_cells]
        parts.append(f"first {max_cells} cells")
    if rows.size == 0:
        raise InputDataError(f"the cell selection ({'; '.join(parts)}) leaves no cell of {source.describe()}")
    return RowSubset(source, rows, f"{rows.size} of {source.n_obs} cells: {'; '.join(parts)}")
