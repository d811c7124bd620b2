"""Guessing what kind of gene identifiers a list holds."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from sctranslator.errors import VocabularyError
from sctranslator.vocab.identifiers import as_identifier_strings
from sctranslator.vocab.tables import gene_table

# A type wins when at least this share of the non-empty values has its shape.
_SHAPE_MAJORITY = 0.5


def detect_id_type(values: Iterable[str | int] | pd.Index | pd.Series | np.ndarray) -> str:
    """Detect the kind of gene identifier in `values`.

    Entrez and Ensembl IDs are recognised by their shape (digits; ENSG / ENSMUSG). Symbols are told
    apart by how many hit each symbol table exactly (case matters: human "CD4" vs mouse "Cd4"); if
    neither table knows any of them, the case pattern decides (mostly "Xxxx" means mouse).

    Parameters
    ----------
    values : iterable of str or int, pandas.Index, pandas.Series or numpy.ndarray
        Gene identifiers, shape ``(n_genes,)``.

    Returns
    -------
    str
        "symbol", "entrez", "ensembl", "mouse_symbol" or "mouse_ensembl".

    Raises
    ------
    VocabularyError
        No non-empty identifier was given.

    Examples
    --------
    >>> from sctranslator.vocab import detect_id_type
    >>> detect_id_type(["ENSG00000010610", "ENSG00000153563"])
    'ensembl'
    """
    return detect_with_evidence(values)[0]


def detect_with_evidence(values: Iterable[str | int] | pd.Index | pd.Series | np.ndarray) -> tuple[str, str]:
    """`detect_id_type` plus one line saying why, for the mapping report.

    Parameters
    ----------
    values : iterable of str or int, pandas.Index, pandas.Series or numpy.ndarray
        Gene identifiers.

    Returns
    -------
    id_type : str
        The detected type.
    evidence : str
        Why (shares of each shape, or table hits).

    Raises
    ------
    VocabularyError
        No non-empty identifier was given.
    """
    strings = as_identifier_strings(values)
    text = pd.Series(strings[strings != ""], dtype=object)
    if text.empty:
        raise VocabularyError("cannot detect the identifier type: no non-empty identifiers were given")

    shares = {
        "entrez": text.str.fullmatch(r"\d+").mean(),
        "ensembl": text.str.match(r"ENSG\d{6,}", case=False).mean(),
        "mouse_ensembl": text.str.match(r"ENSMUSG\d{6,}", case=False).mean(),
    }
    shape_type = max(shares, key=shares.__getitem__)
    if shares[shape_type] >= _SHAPE_MAJORITY:
        return shape_type, f"{100 * shares[shape_type]:.1f}% of identifiers look like {shape_type} IDs"

    keys = text.to_numpy(dtype=object)
    human = float(np.mean(gene_table("symbol").rows(keys, fold_case=False) >= 0))
    mouse = float(np.mean(gene_table("mouse_symbol").rows(keys, fold_case=False) >= 0))
    evidence = f"exact hits: {100 * human:.1f}% human symbols, {100 * mouse:.1f}% mouse symbols"
    if human == mouse == 0.0:
        mouse_case = text.str.fullmatch(r"[A-Z][a-z0-9][a-z0-9\-.]*").mean()
        id_type = "mouse_symbol" if mouse_case > _SHAPE_MAJORITY else "symbol"
        return id_type, f"{evidence}; chosen by letter case ({100 * mouse_case:.1f}% look like 'Xxxx')"
    return ("mouse_symbol" if mouse > human else "symbol"), evidence
