"""obs tables made writable by anndata without losing what they say.

Two things anndata accepts in memory but cannot store faithfully:

* missing values (None / NaN) in object columns that are not all strings (all missing, numbers
  with None, mixed kinds): anndata's Zarr writer stores `str(value)`, so None becomes the string
  'None', and its HDF5 writer refuses them. Such columns become a nullable dtype (numbers,
  booleans) or a categorical (anything else), where the missing values stay missing.
* pandas' nullable `string` columns, which anndata refuses to write unless
  `allow_write_nullable_strings` is set (files older anndata cannot read): they are stored as
  categoricals, what anndata does with string columns, and missing values stay missing.
* column names containing '/': a key separator in HDF5 and Zarr, refused by both writers. The
  column is stored under the name with '/' written as '%2F' ('%' as '%25'), and the renaming is
  recorded (uns['sctranslator']['obs_columns_renamed']) so that our readers restore the name.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from pandas.api.types import infer_dtype

log = logging.getLogger(__name__)

# uns['sctranslator'][RENAMED_KEY]: {stored name: name in the input}, for the columns escaped below.
RENAMED_KEY = "obs_columns_renamed"


def escape_name(name: str) -> str:
    """`name` with '%' and '/' percent-encoded ('/' is the one character HDF5 and Zarr keys cannot hold).

    Parameters
    ----------
    name : str
        A column name.

    Returns
    -------
    str
        The stored name.
    """
    return name.replace("%", "%25").replace("/", "%2F")


def _with_missing_kept(column: pd.Series) -> pd.Series:
    """An object column holding missing values, as a dtype anndata stores with its missing values."""
    kind = infer_dtype(column, skipna=True)
    if kind == "string":  # what anndata's own writers do with string columns; NaN stays missing
        return pd.Series(pd.Categorical(column), index=column.index)
    if kind == "boolean":
        return column.astype("boolean")
    if kind == "integer":
        return column.astype("Int64")
    if kind in ("floating", "mixed-integer-float", "decimal"):
        return pd.to_numeric(column).astype(np.float64)
    present = column.notna()
    # Anything else (all missing, mixed kinds): the text of each present value, missing stays missing.
    text = column.where(~present, column[present].astype(str)) if present.any() else column
    return pd.Series(pd.Categorical(text), index=column.index)


def _is_nullable_string(column: pd.Series) -> bool:
    return isinstance(column.dtype, pd.StringDtype)


def writable_var(table: pd.DataFrame) -> pd.DataFrame:
    """A table (obs or var) whose columns anndata can write with their missing values kept.

    Columns of missing-value objects and nullable strings get dtypes anndata writes; names are
    untouched.

    Parameters
    ----------
    table : pandas.DataFrame
        obs or var.

    Returns
    -------
    pandas.DataFrame
        A copy when anything changed, else `table`.
    """
    changed = table
    for name in table.columns:
        column = table[name]
        nullable_string = _is_nullable_string(column)
        if nullable_string or (column.dtype == object and column.isna().any()):
            if changed is table:
                changed = table.copy()
            changed[name] = (pd.Series(pd.Categorical(column.astype(object).where(column.notna(), np.nan)),
                                       index=column.index)
                             if nullable_string else _with_missing_kept(column))
    return changed


def writable_obs(obs: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """`obs` as anndata can write it to HDF5 and Zarr with every value and name kept.

    Every table anndata holds in memory has a writable form, so nothing is refused.

    Parameters
    ----------
    obs : pandas.DataFrame
        The cells' obs.

    Returns
    -------
    table : pandas.DataFrame
        A copy when anything changed.
    renamed : dict of str to str
        Stored column name -> original name, for the columns renamed because their names hold '/'.
    """
    changed = writable_var(obs)
    taken = {str(n) for n in obs.columns}
    renamed: dict[str, str] = {}
    for name in obs.columns:
        if isinstance(name, str) and "/" in name:
            stored = escape_name(name)
            while stored in taken:  # a column already called that: keep the two apart
                stored += "_"
            taken.add(stored)
            renamed[stored] = name
    if renamed:
        changed = changed.rename(columns={original: stored for stored, original in renamed.items()})
        log.info("obs columns %s are stored as %s ('/' cannot be part of an HDF5/Zarr key); sctranslator's "
                 "readers restore the names", sorted(renamed.values()), sorted(renamed))
    return changed, renamed


def restore_names(obs: pd.DataFrame, renamed: dict[str, str] | None) -> pd.DataFrame:
    """Undo `writable_obs`'s renaming, given the mapping it returned (as recorded in the store).

    Parameters
    ----------
    obs : pandas.DataFrame
        The stored obs.
    renamed : dict of str to str or None
        Stored name -> original name.

    Returns
    -------
    pandas.DataFrame
        obs with the original column names.
    """
    if not renamed:
        return obs
    return obs.rename(columns={stored: original for stored, original in dict(renamed).items()
                               if stored in obs.columns})
