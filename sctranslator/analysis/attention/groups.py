"""Cell groups from an obs column, for analyses that accumulate over cells (attention, knockout).

Accumulators keep one slot per group plus slot 0 for all cells; a cell with a missing group
label counts towards "all" only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sctranslator.errors import InputDataError

ALL_CELLS = "all"


def group_codes(obs: pd.DataFrame, groupby: str | None) -> tuple[np.ndarray, list[str]]:
    """Each cell's group slot from an obs column.

    Parameters
    ----------
    obs
        The (selected) cells' obs table.
    groupby
        The obs column (None: no groups).

    Returns
    -------
    tuple
        (codes (n_obs,) int64: 0 = no group, 1.. = the column's categories in order; names: "all"
        first, then the group labels).

    Raises
    ------
    InputDataError
        No such column, or a group named "all".
    """
    if groupby is None:
        return np.zeros(len(obs), dtype=np.int64), [ALL_CELLS]
    if groupby not in obs.columns:
        raise InputDataError(f"obs has no column {groupby!r} to group by; available: {list(obs.columns)}")
    labels = obs[groupby]
    categories = labels.cat.categories if isinstance(labels.dtype, pd.CategoricalDtype) else None
    codes, uniques = pd.factorize(labels, sort=categories is None)
    names = [str(u) for u in (categories if categories is not None else uniques)]
    if categories is not None:
        codes = labels.cat.codes.to_numpy()
    if ALL_CELLS in names:
        raise InputDataError(f"obs[{groupby!r}] has a group named {ALL_CELLS!r}, which is reserved for all cells")
    return np.asarray(codes, dtype=np.int64) + 1, [ALL_CELLS, *names]  # -1 (missing) becomes 0


def add_by_group(target: np.ndarray, values: np.ndarray, codes: np.ndarray) -> None:
    """Add per-cell values into per-slot sums: target[0] over all cells, target[g] over group g's cells.

    Parameters
    ----------
    target
        (slots, ...) float64 sums, changed in place.
    values
        (cells, ...) one row per cell.
    codes
        (cells,) group codes (0: no group).
    """
    target[0] += values.sum(axis=0)
    for code in np.unique(codes[codes > 0]):
        target[code] += values[codes == code].sum(axis=0)


def layer_key(prefix: str, group: str) -> str:
    """An AnnData layer / column name for a group; '/' would be read as a path inside h5ad and zarr stores.

    Parameters
    ----------
    prefix
        "mean", "std", "received" ...
    group
        The group label.

    Returns
    -------
    str
        "<prefix>:<group>" with '/' replaced by '_'.
    """
    return f"{prefix}:{group.replace('/', '_')}"
