"""Cell names for training, read in row blocks and kept as 64-bit hashes, never held whole.

Pairing RNA with protein cells, the bundle's record of training / held-out cells and the held-out
names all work from the sources' block readers (`Source.obs_names_block`), so a training run holds
no Python string per cell: matching uses the names' 64-bit hashes (`sctranslator.model.cells`),
same-order tables are compared name by name one block at a time.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from sctranslator.engine.sources import Source
from sctranslator.model.cells import name_hashes

NAME_BLOCK = 65_536  # names read (and hashed) at a time


def name_blocks(source: Source, block: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """A source's obs names, a block of rows at a time.

    Parameters
    ----------
    source : Source
        The matrix whose obs names are read.
    block : int or None
        Rows per block; None: NAME_BLOCK.

    Yields
    ------
    tuple of (int, numpy.ndarray)
        The block's first row and its names.
    """
    block = block or NAME_BLOCK
    for start in range(0, int(source.n_obs), block):
        yield start, source.obs_names_block(start, min(start + block, int(source.n_obs)))


def source_hashes(source: Source) -> np.ndarray:
    """A hash of every obs name of a source, in row order (8 bytes a cell).

    Parameters
    ----------
    source : Source
        The matrix whose obs names are read.

    Returns
    -------
    numpy.ndarray
        uint64 ``(n_obs,)``.
    """
    out = np.empty(int(source.n_obs), dtype=np.uint64)
    for start, names in name_blocks(source):
        out[start:start + names.size] = name_hashes(names)
    return out


def same_names(first: Source, second: Source) -> bool:
    """Whether two sources list the same names in the same order, compared block by block.

    Parameters
    ----------
    first : Source
        One matrix.
    second : Source
        The other.

    Returns
    -------
    bool
        True when identical.
    """
    if int(first.n_obs) != int(second.n_obs):
        return False
    return all(np.array_equal(names, second.obs_names_block(start, start + names.size))
               for start, names in name_blocks(first))


def names_at(source: Source, rows: np.ndarray) -> np.ndarray:
    """Obs names of a source at some rows, reading only the blocks that hold them.

    Parameters
    ----------
    source : Source
        The matrix whose obs names are read.
    rows : numpy.ndarray
        int64 rows, increasing.

    Returns
    -------
    numpy.ndarray
        Object array of names.
    """
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty(rows.size, dtype=object)
    lo = 0
    while lo < rows.size:
        first = int(rows[lo])
        hi = int(np.searchsorted(rows, first + NAME_BLOCK))
        out[lo:hi] = source.obs_names_block(first, int(rows[hi - 1]) + 1)[rows[lo:hi] - first]
        lo = hi
    return out


def hashes_at(source: Source, rows: np.ndarray) -> np.ndarray:
    """Name hashes of a source at some rows, hashed block by block.

    Parameters
    ----------
    source : Source
        The matrix whose obs names are read.
    rows : numpy.ndarray
        int64 rows, increasing.

    Returns
    -------
    numpy.ndarray
        uint64 hashes.
    """
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty(rows.size, dtype=np.uint64)
    lo = 0
    while lo < rows.size:
        first = int(rows[lo])
        hi = int(np.searchsorted(rows, first + NAME_BLOCK))
        out[lo:hi] = name_hashes(source.obs_names_block(first, int(rows[hi - 1]) + 1)[rows[lo:hi] - first])
        lo = hi
    return out
