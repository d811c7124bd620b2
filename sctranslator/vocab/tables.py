"""Lazy, cached access to the identifier tables shipped in `sctranslator/vocab/data/`.

The tables are made by `scripts/build_vocab.py`; each has one row per key, already resolved by the
priority rules, so a look-up here is a single vectorised `Index.get_indexer` call.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable

import numpy as np
import pandas as pd

from sctranslator.errors import VocabularyError

TABLES_FILE = "vocab_tables.npz"
# Guards the first load of each table when several engine threads map at once.
_LOAD_LOCK = threading.Lock()


def data_file(name: str) -> Traversable:
    """A file of the package data; works from a wheel as well as a checkout.

    Parameters
    ----------
    name : str
        The file's name in sctranslator/vocab/data.

    Returns
    -------
    importlib.resources.abc.Traversable
        The file.
    """
    return resources.files("sctranslator.vocab").joinpath("data", name)


def read_table(name: str) -> pd.DataFrame:
    """One table of the bundled vocabulary tables (members "<table>__<column>", text ones "...__utf8").

    Parameters
    ----------
    name : str
        The table.

    Returns
    -------
    pandas.DataFrame
        Its columns.

    Raises
    ------
    VocabularyError
        The tables file is missing or has no such table (rebuild it with scripts/build_vocab.py).
    """
    path = data_file(TABLES_FILE)
    if not path.is_file():
        raise VocabularyError(
            f"{TABLES_FILE} is missing from the installed package; reinstall sctranslator "
            "or rebuild the tables with scripts/build_vocab.py"
        )
    columns: dict[str, np.ndarray] = {}
    with path.open("rb") as handle, np.load(handle, allow_pickle=False) as archive:
        for member in archive.files:
            table, _, column = member.partition("__")
            if table != name:
                continue
            column, _, encoding = column.partition("__")
            data = archive[member]
            # Text columns are one newline-joined UTF-8 buffer (see scripts/build_vocab.py).
            columns[column] = (np.array(data.tobytes().decode("utf-8").split("\n"), dtype=object)
                               if encoding == "utf8" else data)
    if not columns:
        raise VocabularyError(f"{TABLES_FILE} has no table {name!r}; rebuild it with scripts/build_vocab.py")
    return pd.DataFrame(columns)


@dataclass(frozen=True)
class KeyTable:
    """One resolved lookup table: key -> value (token id or gene symbol), source, alternatives.

    Parameters
    ----------
    keys : pandas.Index
        The lookup keys.
    values : numpy.ndarray
        The value of each key.
    sources : numpy.ndarray
        Which source table each key came from.
    alternatives : numpy.ndarray
        Other values a key could mean ('' when none).
    folded_keys : pandas.Index
        Case-folded keys, best-ranked row first, for a case-insensitive retry.
    folded_rows : numpy.ndarray
        The row of each folded key.
    """

    keys: pd.Index
    values: np.ndarray
    sources: np.ndarray
    alternatives: np.ndarray
    folded_keys: pd.Index  # case-folded keys, best-ranked row first, for a case-insensitive retry
    folded_rows: np.ndarray

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, values: np.ndarray) -> KeyTable:
        """Build a table from a frame of keys, sources and alternatives, best source first.

        Parameters
        ----------
        frame : pandas.DataFrame
            Columns key, source and alternatives, one row per key, best-ranked first.
        values : numpy.ndarray
            The value of each row.

        Returns
        -------
        KeyTable
            The table with its case-folded index.
        """
        # Rows are stored best source first, so keeping the first of each folded key keeps priority.
        folded = frame["key"].str.upper()
        unique_rows = np.flatnonzero(~folded.duplicated(keep="first").to_numpy())
        return cls(
            keys=pd.Index(frame["key"].to_numpy(dtype=object)),
            values=values,
            sources=frame["source"].to_numpy(dtype=object),
            alternatives=frame["alternatives"].to_numpy(dtype=object),
            folded_keys=pd.Index(folded.to_numpy(dtype=object)[unique_rows]),
            folded_rows=unique_rows,
        )

    def rows(self, keys: np.ndarray, *, fold_case: bool = True) -> np.ndarray:
        """The row of each key: an exact match first, then, if asked, ignoring case.

        Parameters
        ----------
        keys : numpy.ndarray
            Keys to look up, ``(n,)``.
        fold_case : bool
            Retry the keys without an exact match ignoring case.

        Returns
        -------
        numpy.ndarray
            int64 ``(n,)``; -1 where absent.
        """
        rows = self.keys.get_indexer(keys)
        missing = np.flatnonzero(rows < 0)
        if fold_case and missing.size:
            folded = pd.Index(keys[missing].astype(object)).str.upper()
            found = self.folded_keys.get_indexer(folded)
            rows[missing[found >= 0]] = self.folded_rows[found[found >= 0]]
        return rows


@cache
def _gene_table(name: str) -> KeyTable:
    with _LOAD_LOCK:
        frame = read_table(name)
        return KeyTable.from_frame(frame, frame["value"].to_numpy(dtype=np.int64))


def gene_table(id_type: str) -> KeyTable:
    """The key -> token table of one identifier type.

    Parameters
    ----------
    id_type : str
        "symbol", "entrez", "ensembl", "mouse_symbol" or "mouse_ensembl".

    Returns
    -------
    KeyTable
        Loaded on first use and cached.
    """
    names = {"symbol": "human_symbol", "ensembl": "human_ensembl", "mouse_symbol": "mouse_symbol",
             "mouse_ensembl": "mouse_ensembl"}
    return _gene_table(names[id_type])


@cache
def symbol_table(name: str) -> KeyTable:
    """An identifier -> human symbol table of the `original` mapping: "entrez_symbol",
    "ensembl_symbol", "mouse_symbol_human" or "mouse_ensembl_human" (see scripts/build_vocab.py)."""
    with _LOAD_LOCK:
        frame = read_table(name)
        return KeyTable.from_frame(frame, frame["value"].to_numpy(dtype=object))


@cache
def protein_name_table() -> KeyTable:
    """Marker-name key -> HGNC symbol, from HGNC (CD designations, symbols, previous, aliases)."""
    with _LOAD_LOCK:
        frame = read_table("protein_name")
        return KeyTable.from_frame(frame, frame["value"].to_numpy(dtype=object))


@dataclass(frozen=True)
class TokenTable:
    """Token id -> Entrez ID and display symbol; position i describes token i (0 = padding).

    Parameters
    ----------
    entrez_ids : numpy.ndarray
        int64 Entrez ID per token.
    symbols : numpy.ndarray
        Display symbol per token.
    token_of_entrez : pandas.Index
        Entrez IDs in token order: position + 1 is the token of that ID.
    """

    entrez_ids: np.ndarray
    symbols: np.ndarray
    token_of_entrez: pd.Index  # position + 1 is the token of that Entrez ID

    @property
    def size(self) -> int:
        """Number of real tokens (the padding token 0 aside)."""
        return len(self.entrez_ids) - 1


@cache
def token_table() -> TokenTable:
    with _LOAD_LOCK:
        frame = read_table("tokens")
    entrez = frame["entrez_id"].to_numpy(dtype=np.int64)
    return TokenTable(
        entrez_ids=np.concatenate([[0], entrez]),
        symbols=np.concatenate([[""], frame["symbol"].to_numpy(dtype=object)]).astype(str),
        token_of_entrez=pd.Index(entrez),
    )
