"""Turning user identifier lists (lists, arrays, pandas Index/Series of str or int) into clean strings."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from sctranslator.errors import VocabularyError
from sctranslator.options import ID_TYPES as _OPTION_ID_TYPES

ID_TYPES = tuple(kind for kind in _OPTION_ID_TYPES if kind != "auto")  # the concrete kinds

# "ENSG00000141510.17" and GENCODE's "ENSG00000182378.14_PAR_Y" both name ENSG00000182378.
_ENSEMBL_DECORATION = r"(?:\.\d+)?(?:_PAR_Y)?$"


def check_id_type(id_type: str) -> str:
    """Check an identifier type's name.

    Parameters
    ----------
    id_type : str
        "auto", "symbol", "entrez", "ensembl", "mouse_symbol" or "mouse_ensembl".

    Returns
    -------
    str
        `id_type`, unchanged.

    Raises
    ------
    VocabularyError
        Any other name.
    """
    if id_type not in ID_TYPES:
        raise VocabularyError(f"unknown id_type {id_type!r}; use 'auto' or one of {', '.join(ID_TYPES)}")
    return id_type


def as_identifier_strings(identifiers: Iterable[str | int] | pd.Index | pd.Series | np.ndarray) -> np.ndarray:
    """The identifiers as stripped strings, missing values as ''.

    Integer inputs (Entrez IDs) become their decimal text, and integral floats (7157.0, as pandas
    makes of an int column with gaps) lose the '.0'.

    Parameters
    ----------
    identifiers : iterable of str or int, pandas.Index, pandas.Series or numpy.ndarray
        Gene identifiers, ``(n,)``.

    Returns
    -------
    numpy.ndarray
        Object array of strings, ``(n,)``.
    """
    if isinstance(identifiers, str):
        raise VocabularyError("identifiers must be a sequence of names/IDs, not a single string")
    series = pd.Series(identifiers if isinstance(identifiers, pd.Index | pd.Series | np.ndarray)
                       else list(identifiers), dtype=None, copy=False)
    if series.dtype.kind in "iu":
        return series.astype(str).to_numpy(dtype=object)
    if series.dtype.kind == "f":
        values = series.to_numpy(dtype=float)
        integral = np.isfinite(values) & (values == np.round(values))
        out = np.full(len(values), "", dtype=object)
        out[integral] = values[integral].astype(np.int64).astype(str)
        return out
    series = series.astype(object)
    text = series.where(series.notna(), "").astype(str).str.strip()
    return text.str.replace(r"^(\d+)\.0+$", r"\1", regex=True).to_numpy(dtype=object)


def lookup_keys(values: np.ndarray, id_type: str) -> np.ndarray:
    """The table key of each identifier: Ensembl IDs lose their version and PAR suffix.

    Parameters
    ----------
    values : numpy.ndarray
        Identifier strings, ``(n,)``.
    id_type : str
        Their type.

    Returns
    -------
    numpy.ndarray
        Object array of keys, ``(n,)``.
    """
    if id_type in ("ensembl", "mouse_ensembl"):
        return pd.Series(values, dtype=object).str.replace(_ENSEMBL_DECORATION, "", regex=True).to_numpy(
            dtype=object)
    return values
