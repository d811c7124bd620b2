"""Train / held-out split of the paired cells: a seeded random fraction or count, or by an obs column."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sctranslator.errors import InputDataError


@dataclass(frozen=True)
class Split:
    """Which paired cells train and which are held out for validation.

    Parameters
    ----------
    train : numpy.ndarray
        int64 positions of the training cells among the paired cells, increasing.
    val : numpy.ndarray
        int64 positions of the held-out cells, increasing.
    description : str
        How they were chosen, for the model card.
    """

    train: np.ndarray  # int64 positions into the paired cells, increasing
    val: np.ndarray
    description: str


def split_cells(obs: pd.DataFrame, *, val_fraction: float = 0.1, val_count: int | None = None,
                split_column: str | None = None, val_values: Sequence[str] | None = None,
                seed: int = 0) -> Split:
    """Choose the held-out cells: by an obs column's values, or a seeded random draw.

    With `split_column`, cells whose ``obs[split_column]`` is one of `val_values` are held out (e.g.
    a donor or batch). Otherwise `val_count` cells (or `val_fraction` of them) are drawn with a
    generator seeded by `seed`, so the same seed always holds out the same cells.

    Parameters
    ----------
    obs : pandas.DataFrame
        One row per paired cell (only `split_column` is read, and the number of rows).
    val_fraction : float
        Fraction of cells held out, when neither `val_count` nor `split_column` is given.
    val_count : int or None
        Number of cells held out; overrides `val_fraction`.
    split_column : str or None
        Obs column to split by.
    val_values : sequence of str or None
        Values of `split_column` held out; needed with it.
    seed : int
        Seed of the random draw.

    Returns
    -------
    Split
        Training and held-out positions, with a description.

    Raises
    ------
    InputDataError
        `split_column` is not in obs, has none of `val_values` or is given without them; more cells
        held out than exist; or no training cell is left.
    """
    n = len(obs)
    if split_column is not None:
        if split_column not in obs.columns:
            raise InputDataError(f"obs has no column {split_column!r} to split by; available: {list(obs.columns)}")
        if not val_values:
            raise InputDataError(f"splitting by {split_column!r} needs the held-out values (val_values)")
        labels = obs[split_column].astype(str).to_numpy()
        wanted = [str(v) for v in val_values]
        unknown = sorted(set(wanted) - set(labels))
        if unknown:
            raise InputDataError(f"obs[{split_column!r}] has no cells with {unknown}; "
                                 f"its values are {sorted(set(labels))[:20]}")
        held = np.isin(labels, wanted)
        description = f"held out by obs[{split_column!r}] in {wanted}"
    else:
        count = int(val_count) if val_count is not None else int(round(val_fraction * n))
        if not 0 <= count < n:
            raise InputDataError(f"cannot hold out {count} of {n} cells")
        held = np.zeros(n, dtype=bool)
        held[np.random.default_rng(seed).choice(n, size=count, replace=False)] = True
        description = f"{count} cells held out at random (seed {seed})"
    train, val = np.flatnonzero(~held), np.flatnonzero(held)
    if train.size == 0:
        raise InputDataError("the split leaves no training cells")
    return Split(train=train.astype(np.int64, copy=False), val=val.astype(np.int64, copy=False),
                 description=description)
