"""Which cells a bundle was trained and validated on, kept as hashes of their obs names.

A bundle made by `finetune` carries `cells.npz`: the sorted 64-bit hashes of the obs names of its
training cells and of its held-out (validation) cells, and config.json carries a summary (counts
and a digest of each split's sorted name hashes). `evaluate` hashes the cells it scores the same way, so it
can say how many of them the model saw in training without the bundle storing the names
themselves. Hashes are pandas' fixed-key SipHash of the name as text (vectorised, stable across
runs and machines); a collision between two different names is negligible at 64 bits.

A bundle fine-tuned from another (`finetune --init BUNDLE`, `--init demo`) also keeps its ancestors'
cells: `ancestor_train` and `ancestor_val` are the unions of the init bundle's own splits and of
what it inherited in turn, so a cell that trained any model in the lineage counts as training.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sctranslator.errors import CheckpointError
from sctranslator.util.atomic import atomic_write_path

CELLS_FILE = "cells.npz"
SPLITS = ("train", "val")
ANCESTOR = "ancestor_"  # prefix of the inherited splits in cells.npz


def name_hashes(names: Sequence[str] | pd.Index | np.ndarray) -> np.ndarray:
    """A 64-bit hash of each obs name (as text), in input order.

    Parameters
    ----------
    names : sequence of str, pandas.Index or numpy.ndarray
        Obs names.

    Returns
    -------
    numpy.ndarray
        uint64 ``(n,)``.
    """
    values = pd.Index(names).astype(str).to_numpy(dtype=object)
    return pd.util.hash_array(values, categorize=False).astype(np.uint64)


def split_summary(names: Sequence[str] | pd.Index | np.ndarray) -> dict[str, Any]:
    """The fingerprint of a split: its size and a digest of its sorted name hashes.

    Parameters
    ----------
    names : sequence of str, pandas.Index or numpy.ndarray
        Obs names.

    Returns
    -------
    dict
        ``{'cells': count, 'sha256': digest}``.
    """
    return hash_summary(name_hashes(names))


def hash_summary(hashes: np.ndarray) -> dict[str, Any]:
    """`split_summary` from the names' hashes (`name_hashes`), so that no name list is needed.

    Parameters
    ----------
    hashes : numpy.ndarray
        uint64 name hashes.

    Returns
    -------
    dict
        ``{'cells': count, 'sha256': digest}``.
    """
    ordered = np.sort(np.asarray(hashes, dtype="<u8"))
    return {"cells": int(ordered.size), "sha256": hashlib.sha256(memoryview(ordered)).hexdigest()}


def write_cells(directory: str | Path, splits: dict[str, Sequence[str] | pd.Index],
                ancestors: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Write ``cells.npz`` (sorted name hashes per split) into a bundle.

    Parameters
    ----------
    directory : str or pathlib.Path
        The bundle directory.
    splits : dict
        Split name ("train", "val") -> obs names.
    ancestors : dict or None
        The inherited hashes `ancestor_cells` gives for the init bundle (kept as they are).

    Returns
    -------
    dict
        config.json's summary of the splits.
    """
    return write_cell_hashes(directory, {split: name_hashes(names) for split, names in splits.items()}, ancestors)


def write_cell_hashes(directory: str | Path, splits: dict[str, np.ndarray],
                      ancestors: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """`write_cells` from the names' hashes: what finetune uses, since it keeps no names of its cells.

    Parameters
    ----------
    directory : str or pathlib.Path
        The bundle directory.
    splits : dict of str to numpy.ndarray
        Split name -> uint64 hashes (sorted in place).
    ancestors : dict or None
        The inherited hashes.

    Returns
    -------
    dict
        config.json's summary of the splits.
    """
    summary, arrays = {}, {}
    for split, hashes in splits.items():
        ordered = np.asarray(hashes, dtype="<u8")
        ordered.sort()  # in place (the caller's uint64 array): no copy of a million-cell split
        summary[split] = {"cells": int(ordered.size), "sha256": hashlib.sha256(memoryview(ordered)).hexdigest()}
        repeated = ordered[1:] == ordered[:-1]
        arrays[split] = ordered[np.concatenate([[True], ~repeated])] if repeated.any() else ordered
        del ordered, repeated
    inherited = {name: np.unique(hashes.astype(np.uint64)) for name, hashes in (ancestors or {}).items()}
    arrays |= inherited

    def write(tmp: Path) -> None:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        tmp.write_bytes(buffer.getvalue())

    atomic_write_path(Path(directory) / CELLS_FILE, write)
    summary |= {"file": CELLS_FILE, "hash": "pandas-siphash64"}
    if inherited:
        summary["ancestors"] = {name.removeprefix(ANCESTOR): {"cells": int(hashes.size)}
                                for name, hashes in inherited.items()}
    return summary


def ancestor_cells(source: str | Path | None) -> dict[str, np.ndarray] | None:
    """What a bundle fine-tuned from the bundle at `source` inherits.

    Parameters
    ----------
    source : str, pathlib.Path or None
        The init bundle.

    Returns
    -------
    dict or None
        ``{'ancestor_train', 'ancestor_val'}``, each the union of that bundle's own split and of its
        own ancestors'; None when it records none.
    """
    if source is None or not Path(source).is_dir():
        return None
    splits = read_cells(source)
    if splits is None:
        return None
    empty = np.zeros(0, dtype=np.uint64)
    return {ANCESTOR + split: np.union1d(splits.get(split, empty), splits.get(ANCESTOR + split, empty))
            .astype(np.uint64) for split in SPLITS}


def read_cells(directory: str | Path) -> dict[str, np.ndarray] | None:
    """The sorted name hashes per split of a bundle.

    Parameters
    ----------
    directory : str or pathlib.Path
        The bundle directory.

    Returns
    -------
    dict of str to numpy.ndarray or None
        None when it records none (older bundles, published checkpoints, the demo model).
    """
    path = Path(directory) / CELLS_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {split: archive[split].astype(np.uint64) for split in archive.files}
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path} is unreadable ({error}); the bundle is corrupted") from error


def seen_in(names: Sequence[str] | pd.Index | np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """Which of `names` hash to one of the sorted `hashes`.

    Parameters
    ----------
    names : sequence of str, pandas.Index or numpy.ndarray
        Obs names.
    hashes : numpy.ndarray
        Sorted uint64 hashes.

    Returns
    -------
    numpy.ndarray
        bool ``(n,)``.
    """
    mine = name_hashes(names)
    if hashes.size == 0:
        return np.zeros(len(mine), dtype=bool)
    where = np.minimum(np.searchsorted(hashes, mine), hashes.size - 1)
    return hashes[where] == mine
