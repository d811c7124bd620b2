"""anndata's own element readers, imported once for every anndata this package supports (0.10.9+).

anndata >= 0.11 exports them from `anndata.io`; 0.10 from `anndata.experimental`. Old (pre-0.7)
dataframes stored as structured arrays are read with anndata's backwards-compatible readers, so
names and values come out exactly as `anndata.read_h5ad` / `read_zarr` give them.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

try:  # anndata >= 0.11
    from anndata.io import read_elem, sparse_dataset
except ImportError:  # pragma: no cover - anndata 0.10
    from anndata.experimental import read_elem, sparse_dataset

__all__ = ["read_dataframe", "read_elem", "sparse_dataset"]


def read_dataframe(node: Any, *, is_array: bool) -> pd.DataFrame:
    """An obs / var table as anndata reads it, current (group) or pre-0.7 (structured array) layout.

    Parameters
    ----------
    node : h5py or zarr group or array
        The stored table.
    is_array : bool
        The pre-0.7 layout (a structured array).

    Returns
    -------
    pandas.DataFrame
        The table.
    """
    if not is_array:
        frame = read_elem(node)
        return frame if isinstance(frame, pd.DataFrame) else pd.DataFrame(frame)
    import h5py

    if isinstance(node, h5py.Dataset):
        from anndata._io.h5ad import read_dataframe as legacy  # anndata's own backwards-compat reader
    else:
        from anndata._io.zarr import read_dataframe as legacy
    return legacy(node)
