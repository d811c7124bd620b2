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
    """(first row, names) of `source`'s obs names, `block` (default NAME_BLOCK) rows at a time."""
    block = block or NAME_BLOCK
    for start in range(0, int(source.n_obs), block):
        yield start, source.obs_names_block(start, min(start + block, int(source.n_obs)))


def source_hashes(source: Source) -> np.ndarray:
    """uint64 hash of every obs name of `source`, in row order (8 bytes a cell)."""
    out = np.empty(int(source.n_obs), dtype=np.uint64)
    for start, names in name_blocks(source):
        out[start:start + names.size] = name_hashes(names)
    return out


def same_names(first: Source, second: Source) -> bool:
    """True when both sources list the same names in the same order, compared block by block."""
    if int(first.n_obs) != int(second.n_obs):
        return False
    return all(np.array_equal(names, second.obs_names_block(start, start + names.size))
               for start, names in name_blocks(first))


def names_at(source: Source, rows: np.ndarray) -> np.ndarray:
    """Obs names (object array) of `source` at `rows` (increasing), reading only the blocks that hold them."""
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
    """uint64 name hashes of `source` at `rows` (increasing), hashed block by block."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty(rows.size, dtype=np.uint64)
    lo = 0
    while lo < rows.size:
        first = int(rows[lo])
        hi = int(np.searchsorted(rows, first + NAME_BLOCK))
        out[lo:hi] = name_hashes(source.obs_names_block(first, int(rows[hi - 1]) + 1)[rows[lo:hi] - first])
        lo = hi
    return out
