"""What anndata reads back from a Zarr store for a `uns` value it wrote, computed without the store.

`translate` returns its output store opened lazily; the provenance in ``uns['sctranslator']`` (a few
hundred small values) was written by this process moments before. Reading it back costs one zarr
array per value (about a quarter of a second per store), so the writer keeps the dict it wrote and
`as_stored` turns it into what the read would give: dicts stay dicts (in the store's key order),
scalars become Python scalars (anndata reads them with ``.item()``), lists and arrays become numpy
arrays as ``np.array`` makes them (string arrays with the dtype zarr reads them back with, found once
per process by a probe). A value outside these types raises `NotStorable` and the caller
reads the store instead, so the result is always what a fresh read gives.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import anndata as ad
import numpy as np
import zarr

try:  # anndata >= 0.11
    from anndata.io import read_elem, write_elem
except ImportError:  # pragma: no cover - anndata 0.10
    from anndata.experimental import read_elem, write_elem

__all__ = ["NotStorable", "as_stored"]


class NotStorable(Exception):
    """A value whose stored form is not derived here (the caller reads the store instead)."""


# dtype kinds anndata writes as numeric arrays (read back with the same dtype) and as string arrays
_NUMERIC_KINDS = frozenset("biuf")
_STRING_KINDS = frozenset("UT")


def as_stored(value: Any) -> Any:
    """`value` as anndata's ``read_elem`` returns it after ``write_elem`` into a Zarr group.

    Parameters
    ----------
    value : object
        A uns value: a dict of str keys, None, a bool, int, float or str (Python or numpy), a list,
        or a numeric or string numpy array.

    Returns
    -------
    object
        A new object; `value` is not changed.

    Raises
    ------
    NotStorable
        A type (or a key) whose stored form is not derived here.
    """
    if isinstance(value, dict):
        if not all(isinstance(key, str) and key and "/" not in key for key in value):
            raise NotStorable("a key that is not a plain string")
        # zarr lists a group's members in key order
        return {key: as_stored(value[key]) for key in sorted(value)}
    if value is None:
        return None
    if isinstance(value, bool | np.bool_ | int | np.integer | float | np.floating):
        return np.asarray(value).item()  # a numeric scalar, read back with .item()
    if isinstance(value, str):  # np.str_ included
        return str(value)
    if isinstance(value, list):
        return _array(np.array(value))
    if isinstance(value, np.ndarray):
        return _array(value)
    raise NotStorable(f"a value of type {type(value).__name__}")


def _array(array: np.ndarray) -> Any:
    if array.ndim == 0:  # anndata writes a 0-d array as a scalar
        return as_stored(array.item() if array.dtype.kind != "U" else str(array))
    if array.dtype.kind in _NUMERIC_KINDS:
        return np.array(array, copy=True)
    if array.dtype.kind in _STRING_KINDS:
        return array.astype(str).astype(_string_array_dtype())
    raise NotStorable(f"an array of dtype {array.dtype}")


@functools.cache
def _string_array_dtype() -> np.dtype:
    """The dtype a string array reads back with (numpy 2 with zarr 3: StringDType; else object), found
    once per process by writing one and reading it back."""
    group = zarr.open_group(zarr.storage.MemoryStore(), mode="w", zarr_format=ad.settings.zarr_write_format)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_elem(group, "probe", np.array(["a", "bc"]))
        return np.asarray(read_elem(group["probe"])).dtype
