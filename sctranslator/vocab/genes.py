"""Gene identifiers (human/mouse symbols, Entrez, Ensembl) -> scTranslator token ids.

Two mappings (`GENE_MAPPINGS`):

* ``original``: exactly the published scTranslator pipeline (its `data_preprocessing_ID_convert.py`:
  ``EntrezID_to_myID[hgs_to_EntrezID[symbol]]``, plain dictionary look-ups). A human symbol gets the
  token that scTranslator's own symbol table (155,349 symbols, aliases and previous symbols included)
  gives it, matched exactly (case-sensitive, as a Python dict); a symbol that table does not know
  gets no token, even when HGNC knows it. Every other identifier is first resolved to the human
  symbol it stands for and then looked up in that same table, so one gene gets one token whatever
  identifier names it: Entrez ID -> HGNC's current symbol (2024 set, else 2026; for an Entrez ID HGNC
  does not know, a symbol scTranslator's table gives that Entrez ID); human Ensembl ID (version and
  ``_PAR_Y`` ignored) -> HGNC's current symbol; mouse symbol / mouse Ensembl ID -> the human symbol of
  scTranslator's own mouse maps (as the original's ``mouse_name_to_myID`` / ``mouse_id_to_myID``).
  Consequences kept on purpose: ``MT-CO2`` (and its Entrez/Ensembl IDs) gets the token scTranslator's
  table gives the symbol (a pseudogene's), not Entrez 4513's; a renamed gene whose current symbol is
  not in that table gets no token.
* ``extended``: wider coverage, for models trained here: scTranslator's table first, then HGNC
  current / previous symbols / aliases (case-insensitive retry), mouse identifiers through MGI
  homology as well; an Entrez / Ensembl ID gets what its gene's current symbol gets (so MT-CO2 is
  one token here too), else the token of its own Entrez ID. Maps more genes than the published checkpoints saw, so
  it shifts their input positions: never the default for a published checkpoint.
"""

from __future__ import annotations

import copy
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from sctranslator.errors import VocabularyError
from sctranslator.vocab.detect import detect_with_evidence
from sctranslator.vocab.identifiers import as_identifier_strings, check_id_type, lookup_keys
from sctranslator.vocab.names import name_key
from sctranslator.vocab.report import MappingReport
from sctranslator.vocab.tables import gene_table, protein_name_table, symbol_table, token_table
from sctranslator.vocab.tokens import token_symbols

UNKNOWN = "unknown identifier"
NOT_IN_VOCABULARY = "known gene, not in the model's vocabulary"
EMPTY = "empty identifier"
NOT_IN_ORIGINAL_TABLE = "not in scTranslator's own symbol table (only the extended mapping knows it)"
SYMBOL_NOT_IN_ORIGINAL_TABLE = "its gene's symbol is not in scTranslator's own symbol table"
COPY = "a make_unique copy of another input (name + '-N' or '.N')"
NOT_MERGED = "ambiguous name sharing a gene with another input: not added up"

GENE_MAPPINGS = ("original", "extended")
_ID_TO_SYMBOL = {"entrez": "entrez_symbol", "ensembl": "ensembl_symbol", "mouse_symbol": "mouse_symbol_human",
                 "mouse_ensembl": "mouse_ensembl_human"}
# anndata's var_names_make_unique appends "-1", "-2", ...; R's make.unique (Seurat) ".1", ".2", ...
_COPY_SUFFIX = r"^(?P<base>.+)[-.](?P<number>\d+)$"


def check_gene_mapping(mapping: str) -> str:
    """Check a gene mapping's name.

    Parameters
    ----------
    mapping : str
        "original" or "extended".

    Returns
    -------
    str
        `mapping`, unchanged.

    Raises
    ------
    VocabularyError
        Any other name (the message lists them).
    """
    if mapping not in GENE_MAPPINGS:
        raise VocabularyError(f"unknown gene mapping {mapping!r}; use one of {', '.join(GENE_MAPPINGS)}")
    return mapping


@dataclass(frozen=True)
class GeneMapping:
    """Token id per input identifier (0 = unmapped), in input order, with its report.

    Parameters
    ----------
    identifiers : numpy.ndarray
        The input identifiers as strings, shape ``(n_genes,)``.
    token_ids : numpy.ndarray
        int64 model token of each identifier, shape ``(n_genes,)``; 0 where unmapped.
    id_type : str
        The identifier type used (detected when "auto" was asked).
    report : MappingReport
        Counts, unmapped identifiers, duplicates and copies.
    mapping : {'original', 'extended'}
        Which gene mapping made the tokens.
    copy_of : numpy.ndarray or None
        int64, shape ``(n_genes,)``: the input position an unmapped make_unique copy (``CD4-1``)
        repeats, -1 for none.
    """

    identifiers: np.ndarray  # the inputs as strings
    token_ids: np.ndarray  # int64
    id_type: str
    report: MappingReport
    mapping: str = "extended"
    copy_of: np.ndarray | None = None  # int64: the input a make_unique copy repeats (-1: none)

    @property
    def mapped(self) -> np.ndarray:
        """Boolean mask of the inputs that got a token."""
        return self.token_ids > 0

    @property
    def symbols(self) -> np.ndarray:
        """Canonical human symbol of each input's token ('' where unmapped)."""
        return token_symbols(self.token_ids)


def map_genes(identifiers: Iterable[str | int] | pd.Index | pd.Series | np.ndarray,
              id_type: str = "auto", mapping: str = "extended") -> GeneMapping:
    """Map gene identifiers onto model tokens.

    Two inputs landing on one token both get that token and are listed in ``report.duplicates``;
    an unmapped input named like a make_unique copy of another input (``CD4-1`` or ``CD4.1`` next
    to ``CD4``) is listed in ``report.copies`` and ``copy_of`` (what happens to either is the
    plan's choice).

    Parameters
    ----------
    identifiers : iterable of str or int, pandas.Index, pandas.Series or numpy.ndarray
        Gene identifiers, e.g. an AnnData's ``var_names``, shape ``(n_genes,)``.
    id_type : {'auto', 'symbol', 'entrez', 'ensembl', 'mouse_symbol', 'mouse_ensembl'}
        Kind of identifier; "auto" detects it (see `detect_id_type`).
    mapping : {'extended', 'original'}
        "original": the tables published checkpoints were trained with; "extended": symbols
        matched exactly first, then ignoring case, through HGNC and MGI as well.

    Returns
    -------
    GeneMapping
        One token per identifier, in input order, with the mapping report.

    Raises
    ------
    VocabularyError
        An unknown `id_type` or `mapping`, or no non-empty identifier to detect the type from.

    Examples
    --------
    >>> from sctranslator.vocab import map_genes
    >>> genes = map_genes(["CD4", "CD8A", "not-a-gene"], id_type="symbol")
    >>> genes.mapped.tolist()
    [True, True, False]
    """
    check_gene_mapping(mapping)
    values = as_identifier_strings(identifiers)
    key = (_digest(values), id_type, mapping)
    with _RECENT_LOCK:
        known = _RECENT.get(key)
        if known is not None:
            _RECENT.move_to_end(key)
    if known is not None:  # the same identifiers again (a collection's files with one gene layout)
        return copy.deepcopy(known)
    genes = _map_genes(values, id_type, mapping)
    with _RECENT_LOCK:
        _RECENT[key] = copy.deepcopy(genes)  # callers get copies: nothing they change reaches the cache
        while len(_RECENT) > _RECENT_LIMIT:
            _RECENT.popitem(last=False)
    return genes


# The last few mappings, by (identifiers, id_type, mapping): a pure function of these and the packaged
# tables. A collection's inputs often share one gene layout; the mapping is most of a plan's cost.
_RECENT: OrderedDict[tuple[str, str, str], GeneMapping] = OrderedDict()
_RECENT_LIMIT = 4
_RECENT_LOCK = threading.Lock()  # inputs of a collection are prepared in a helper thread


def _digest(values: np.ndarray) -> str:
    """sha256 of the identifiers, unambiguous (each one's length, then their text)."""
    digest = hashlib.sha256(np.fromiter(map(len, values), dtype=np.int64, count=len(values)).tobytes())
    digest.update("".join(values).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def _map_genes(values: np.ndarray, id_type: str, mapping: str) -> GeneMapping:
    """`map_genes` of identifiers already made strings (`as_identifier_strings`)."""
    notes: list[str] = []
    if id_type == "auto":
        id_type, evidence = detect_with_evidence(values)
        notes.append(f"identifier type detected automatically ({evidence})")
    check_id_type(id_type)

    if mapping == "original":
        tokens, known, sources, reasons = _map_original(values, id_type)
        notes.append("original mapping: scTranslator's own symbol table only, exact match (as the published "
                     "pipeline)" + ("" if id_type == "symbol" else ", through each identifier's current symbol"))
        notes.append("what translate does here: inputs sharing a token keep a position each (as the original "
                     "does); identical names are refused (--gene-mapping extended adds them up); make_unique "
                     "copies are dropped")
        copy_of = _copies(values, tokens)
        report = _gene_report(values, tokens, known, sources, np.full(len(values), "", dtype=object), id_type,
                              notes, reasons, copy_of)
        return GeneMapping(identifiers=values, token_ids=tokens, id_type=id_type, report=report,
                           mapping=mapping, copy_of=copy_of)

    if id_type == "entrez":
        tokens, known, sources, alternatives = _map_entrez(values)
    else:
        table = gene_table(id_type)
        rows = table.rows(lookup_keys(values, id_type))
        known = rows >= 0
        tokens = np.where(known, table.values[rows], 0).astype(np.int64)
        sources = np.where(known, table.sources[rows], "")
        alternatives = np.where(known, table.alternatives[rows], "")
    if id_type in ("entrez", "ensembl"):
        tokens = _as_current_symbol(values, id_type, tokens, alternatives)

    not_merged: dict[str, dict[str, Any]] = {}
    if id_type == "symbol":
        tokens, not_merged = _unmerge_ambiguous(values, tokens, alternatives)
    copy_of = _copies(values, tokens)
    notes.append("what translate does here: inputs sharing a token (identical names, an old and a current "
                 "symbol) and make_unique copies ('X-1' beside 'X') are added up into one column; a name that "
                 "does not resolve unambiguously to that gene is not added in (see 'not merged')")
    report = _gene_report(values, tokens, known, sources, alternatives, id_type, notes, None, copy_of)
    report.not_merged = not_merged
    for name in not_merged:
        report.unmapped_reasons[name] = NOT_MERGED
    return GeneMapping(identifiers=values, token_ids=tokens, id_type=id_type, report=report, mapping=mapping,
                       copy_of=copy_of)


def _as_current_symbol(values: np.ndarray, id_type: str, tokens: np.ndarray, alternatives: np.ndarray) -> np.ndarray:
    """Extended mapping of human Entrez / Ensembl IDs: the token the gene's current symbol gets, so that
    an ID and its gene's symbol agree also where scTranslator's table sends that symbol elsewhere
    (MT-CO2, HBD); the ID's own token where the symbol gets none or the ID names several genes."""
    table = symbol_table(_ID_TO_SYMBOL[id_type])
    rows = table.rows(lookup_keys(values, id_type).astype(object))
    symbols = np.where(rows >= 0, table.values[np.maximum(rows, 0)], "").astype(object)
    symbol_rows = gene_table("symbol").rows(symbols)
    by_symbol = np.where(symbol_rows >= 0, gene_table("symbol").values[np.maximum(symbol_rows, 0)], 0)
    use = (rows >= 0) & (by_symbol > 0) & (alternatives == "")
    return np.where(use, by_symbol, tokens).astype(np.int64)


def _hgnc_readings(names: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HGNC's reading of each symbol: (gene symbol or '', its level, the other genes at that level)."""
    table = protein_name_table()  # HGNC symbols, CD names, previous symbols, aliases; best level first
    keys = np.array([name_key(str(name)) for name in names], dtype=object)
    rows = table.rows(keys, fold_case=False)
    found = rows >= 0
    safe = np.maximum(rows, 0)
    return (np.where(found, table.values[safe], "").astype(object),
            np.where(found, table.sources[safe], "").astype(object),
            np.where(found, table.alternatives[safe], "").astype(object))


def _unmerge_ambiguous(values: np.ndarray, tokens: np.ndarray, alternatives: np.ndarray
                       ) -> tuple[np.ndarray, dict[str, dict[str, Any]]]:
    """Unmap the inputs that would be added into another input's gene without resolving to it surely.

    Only inputs that share a token with a differently named input are looked at. Such an input
    resolves unambiguously when it is that token's symbol, or when the symbol tables give it one
    gene only (no alternatives) and HGNC, if it knows the name, reads it as a gene with that same
    token (no other gene at its level). A previous symbol or alias that HGNC gives to another gene
    (SARS: scTranslator's table -> SARS2, HGNC -> SARS1; GARS -> GART vs GARS1), that is another
    gene's current symbol, or that several genes share is left unmapped, never added up.
    """
    frame = pd.DataFrame({"token": tokens, "name": pd.Series(values, dtype=object).str.upper()})
    mapped = frame[frame["token"] > 0]
    distinct = mapped.groupby("token")["name"].nunique()
    shared = np.flatnonzero(frame["token"].isin(distinct.index[distinct > 1]).to_numpy())
    if shared.size == 0:
        return tokens, {}
    symbols = token_symbols(tokens[shared])
    hgnc, level, others = _hgnc_readings(values[shared])
    symbol_table_rows = gene_table("symbol").rows(hgnc.astype(object), fold_case=False)
    hgnc_tokens = np.where((hgnc != "") & (symbol_table_rows >= 0),
                           gene_table("symbol").values[np.maximum(symbol_table_rows, 0)], 0)
    is_symbol = frame["name"].to_numpy()[shared] == pd.Series(symbols, dtype=object).str.upper().to_numpy()
    hgnc_agrees = (hgnc == "") | ((others == "") & (hgnc_tokens == tokens[shared]))
    sure = is_symbol | ((alternatives[shared] == "") & hgnc_agrees)
    if sure.all():
        return tokens, {}
    before, tokens = tokens, tokens.copy()
    not_merged: dict[str, dict[str, Any]] = {}
    for k in np.flatnonzero(~sure).tolist():
        position = int(shared[k])
        token = int(before[position])
        name = str(values[position])
        partners = [str(v) for v in values[shared][(before[shared] == token)] if str(v).upper() != name.upper()]
        readings = [str(hgnc[k])] + [o for o in str(others[k]).split("|") if o] if hgnc[k] else []
        if str(alternatives[position]):
            readings += token_symbols(np.array(str(alternatives[position]).split("|"), dtype=np.int64)).tolist()
        why = (f"symbol tables: {symbols[k]}; HGNC ({level[k] or 'unknown'}): {', '.join(readings) or '-'}")
        not_merged[name] = {"token_symbol": str(symbols[k]), "hgnc": readings, "hgnc_level": str(level[k]),
                            "shares_token_with": partners, "why": why}
        tokens[position] = 0
    return tokens, not_merged


def original_symbol_tokens(symbols: np.ndarray) -> np.ndarray:
    """Token of each human symbol in scTranslator's own symbol table, exact match.

    Parameters
    ----------
    symbols : numpy.ndarray
        Gene symbols (strings), ``(n,)``.

    Returns
    -------
    numpy.ndarray
        int64 ``(n,)``; 0 where the table lacks the symbol.
    """
    table = gene_table("symbol")
    rows = table.rows(symbols.astype(object), fold_case=False)
    # The first rows of the symbol table are scTranslator's own (rank 0, see scripts/build_vocab.py).
    own = (rows >= 0) & (table.sources[np.maximum(rows, 0)] == "sctranslator")
    return np.where(own, table.values[np.maximum(rows, 0)], 0).astype(np.int64)


def _map_original(values: np.ndarray, id_type: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, known, sources, reasons for no token) of the original mapping."""
    if id_type == "symbol":
        symbols = values
        sources = np.full(len(values), "sctranslator", dtype=object)
        known = np.ones(len(values), dtype=bool)
    else:
        table = symbol_table(_ID_TO_SYMBOL[id_type])
        keys = lookup_keys(values, id_type)
        if id_type == "entrez":  # "7157" only: as for the extended mapping, no other spelling is an Entrez ID
            keys = np.where(pd.Series(keys, dtype=object).str.fullmatch(r"\d+").to_numpy(), keys, "")
        rows = table.rows(keys.astype(object), fold_case=id_type != "mouse_symbol")
        known = rows >= 0
        symbols = np.where(known, table.values[np.maximum(rows, 0)], "").astype(object)
        sources = np.where(known, table.sources[np.maximum(rows, 0)], "").astype(object)
    tokens = np.where(known, original_symbol_tokens(symbols), 0).astype(np.int64)
    if id_type == "symbol":
        # Why a symbol has no token: unknown anywhere, or known only to the extended mapping's HGNC tables.
        wider = gene_table("symbol").rows(values.astype(object)) >= 0
        known = wider | (tokens > 0)
        reasons = np.where(wider, NOT_IN_ORIGINAL_TABLE, UNKNOWN)
    else:
        reasons = np.where(known, SYMBOL_NOT_IN_ORIGINAL_TABLE, UNKNOWN)
    sources = np.where(tokens > 0, sources, "")
    return tokens, known, sources, reasons.astype(object)


def _copies(values: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Index of the input that each unmapped ``NAME-N`` input copies (``NAME`` present), else -1."""
    parts = pd.Series(values, dtype=object).str.extract(_COPY_SUFFIX)
    first = pd.Series(np.arange(len(values)), index=values).groupby(level=0).first()
    base = first.reindex(parts["base"].fillna("").to_numpy()).fillna(-1).to_numpy(dtype=np.int64)
    return np.where((tokens == 0) & parts["base"].notna().to_numpy(), base, -1)


def _map_entrez(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    numbers = pd.to_numeric(pd.Series(values, dtype=object).where(lambda s: s.str.fullmatch(r"\d+")),
                            errors="coerce")
    valid = numbers.notna().to_numpy()
    positions = np.full(len(values), -1, dtype=np.int64)
    positions[valid] = token_table().token_of_entrez.get_indexer(numbers[valid].astype(np.int64).to_numpy())
    tokens = np.where(positions >= 0, positions + 1, 0).astype(np.int64)
    sources = np.where(tokens > 0, "sctranslator", "")
    # Any well-formed Entrez ID names a gene; one without a token is simply outside the vocabulary.
    return tokens, valid, sources, np.full(len(values), "", dtype=object)


def _gene_report(values: np.ndarray, tokens: np.ndarray, known: np.ndarray, sources: np.ndarray,
                 alternatives: np.ndarray, id_type: str, notes: list[str], why: np.ndarray | None,
                 copy_of: np.ndarray) -> MappingReport:
    mapped = tokens > 0
    unmapped = np.flatnonzero(~mapped)
    why = np.where(known, NOT_IN_VOCABULARY, UNKNOWN) if why is None else why
    reasons = np.where(values[unmapped] == "", EMPTY, np.where(copy_of[unmapped] >= 0, COPY, why[unmapped]))
    copies = np.flatnonzero(copy_of >= 0)
    return MappingReport(
        kind="genes",
        id_type=id_type,
        n_inputs=len(values),
        n_mapped=int(mapped.sum()),
        unmapped=values[unmapped].tolist(),
        unmapped_reasons=dict(zip(values[unmapped].tolist(), reasons.tolist(), strict=True)),
        ambiguous=_ambiguous(values, tokens, alternatives),
        duplicates=shared_tokens(values, tokens),
        copies=dict(zip(values[copies].tolist(), values[copy_of[copies]].tolist(), strict=True)),
        sources=pd.Series(sources[mapped]).value_counts().to_dict(),
        notes=notes,
    )


def _ambiguous(values: np.ndarray, tokens: np.ndarray, alternatives: np.ndarray) -> dict[str, dict]:
    """Inputs whose key names several genes at the same priority (e.g. an alias shared by two)."""
    which = np.flatnonzero((tokens > 0) & (alternatives != ""))
    chosen = token_symbols(tokens[which])
    out = {}
    for position, symbol in zip(which.tolist(), chosen.tolist(), strict=True):
        others = np.array(str(alternatives[position]).split("|"), dtype=np.int64)
        out[str(values[position])] = {"chosen": symbol, "alternatives": token_symbols(others).tolist()}
    return out


def shared_tokens(inputs: np.ndarray | list[str], tokens: np.ndarray) -> dict[int, list[str]]:
    """Every non-zero token that two or more inputs landed on, with those inputs.

    Parameters
    ----------
    inputs : numpy.ndarray or list of str
        The identifiers, ``(n,)``.
    tokens : numpy.ndarray
        int64 token of each identifier, ``(n,)``.

    Returns
    -------
    dict of int to list of str
        Token -> the inputs sharing it.
    """
    frame = pd.DataFrame({"token": tokens, "input": np.asarray(inputs, dtype=object)})
    frame = frame[(frame["token"] > 0) & frame["token"].duplicated(keep=False)]
    grouped = frame.groupby("token", sort=False)["input"].agg(list)
    return {int(token): names for token, names in grouped.items()}
