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
    """(codes (n_obs,) int64, names): code 0 = no group, 1.. = the column's categories in order.

    names[0] is "all"; names[i] for i >= 1 are the group labels.
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
    """target[0] += sum over cells; target[g] += sum over the cells of group g (axis 0 of values = cells)."""
    target[0] += values.sum(axis=0)
    for code in np.unique(codes[codes > 0]):
        target[code] += values[codes == code].sum(axis=0)


def layer_key(prefix: str, group: str) -> str:
    """An AnnData layer / column name for a group; '/' would be read as a path inside h5ad and zarr stores."""
    return f"{prefix}:{group.replace('/', '_')}"
