"""Reverse look-ups: model token id -> canonical human symbol and NCBI Entrez ID."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sctranslator.errors import VocabularyError
from sctranslator.vocab.tables import token_table


def vocabulary_size() -> int:
    """Number of real tokens (ids 1..N; 0 is padding).

    Returns
    -------
    int
        N, the largest token id.
    """
    return token_table().size


def _checked_ids(token_ids: Sequence[int] | np.ndarray) -> np.ndarray:
    ids = np.asarray(token_ids)
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise VocabularyError(f"token ids must be integers, got an array of {ids.dtype}")
    ids = ids.astype(np.int64, copy=False)
    size = token_table().size
    if ids.size and (ids.min() < 0 or ids.max() > size):
        bad = ids[(ids < 0) | (ids > size)][:5].tolist()
        raise VocabularyError(f"token ids must lie in 0..{size} (0 = padding); got {bad}")
    return ids


def token_symbols(token_ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """Canonical human symbol of each token ('' for padding 0), same shape as the input.

    The symbol is HGNC's current one (2024 set, else 2026 set), else the first name scTranslator's
    own table gives that Entrez ID, else "ENTREZ_<id>"; labels are unique across tokens.

    Parameters
    ----------
    token_ids : sequence of int or numpy.ndarray
        Integer token ids in 0..N, any shape.

    Returns
    -------
    numpy.ndarray
        Symbols (object dtype), the shape of `token_ids`.

    Raises
    ------
    VocabularyError
        Non-integer ids, or ids outside 0..N.

    Examples
    --------
    >>> from sctranslator.vocab import map_genes, token_symbols
    >>> token_symbols(map_genes(["CD4", "CD8A"], id_type="symbol").token_ids).tolist()
    ['CD4', 'CD8A']
    """
    return token_table().symbols[_checked_ids(token_ids)]


def token_entrez_ids(token_ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """NCBI Entrez Gene ID of each token (0 for padding 0), same shape as the input.

    Parameters
    ----------
    token_ids : sequence of int or numpy.ndarray
        Integer token ids in 0..N, any shape.

    Returns
    -------
    numpy.ndarray
        int64 Entrez IDs, the shape of `token_ids`.

    Raises
    ------
    VocabularyError
        Non-integer ids, or ids outside 0..N.
    """
    return token_table().entrez_ids[_checked_ids(token_ids)]
