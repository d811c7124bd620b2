"""Gene identifiers (human/mouse symbols, Entrez, Ensembl) -> scTranslator token ids."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sctranslator.vocab.detect import detect_with_evidence
from sctranslator.vocab.identifiers import as_identifier_strings, check_id_type, lookup_keys
from sctranslator.vocab.report import MappingReport
from sctranslator.vocab.tables import gene_table, token_table
from sctranslator.vocab.tokens import token_symbols

UNKNOWN = "unknown identifier"
NOT_IN_VOCABULARY = "known gene, not in the model's vocabulary"
EMPTY = "empty identifier"


@dataclass(frozen=True)
class GeneMapping:
    """Token id per input identifier (0 = unmapped), in input order, with its report."""

    identifiers: np.ndarray  # the inputs as strings
    token_ids: np.ndarray  # int64
    id_type: str
    report: MappingReport

    @property
    def mapped(self) -> np.ndarray:
        """Boolean mask of the inputs that got a token."""
        return self.token_ids > 0

    @property
    def symbols(self) -> np.ndarray:
        """Canonical human symbol of each input's token ('' where unmapped)."""
        return token_symbols(self.token_ids)


def map_genes(identifiers: Iterable[str | int] | pd.Index | pd.Series | np.ndarray,
              id_type: str = "auto") -> GeneMapping:
    """Map gene identifiers onto model tokens.

    id_type: "auto" (detected, see `detect_id_type`) or one of "symbol", "entrez", "ensembl",
    "mouse_symbol", "mouse_ensembl". Symbols are matched exactly first, then ignoring case.
    Two inputs landing on one token are both kept and listed in `report.duplicates`.
    """
    values = as_identifier_strings(identifiers)
    notes: list[str] = []
    if id_type == "auto":
        id_type, evidence = detect_with_evidence(values)
        notes.append(f"identifier type detected automatically ({evidence})")
    check_id_type(id_type)

    if id_type == "entrez":
        tokens, known, sources, alternatives = _map_entrez(values)
    else:
        table = gene_table(id_type)
        rows = table.rows(lookup_keys(values, id_type))
        known = rows >= 0
        tokens = np.where(known, table.values[rows], 0).astype(np.int64)
        sources = np.where(known, table.sources[rows], "")
        alternatives = np.where(known, table.alternatives[rows], "")

    report = _gene_report(values, tokens, known, sources, alternatives, id_type, notes)
    return GeneMapping(identifiers=values, token_ids=tokens, id_type=id_type, report=report)


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
                 alternatives: np.ndarray, id_type: str, notes: list[str]) -> MappingReport:
    mapped = tokens > 0
    unmapped = np.flatnonzero(~mapped)
    reasons = np.where(values[unmapped] == "", EMPTY, np.where(known[unmapped], NOT_IN_VOCABULARY, UNKNOWN))
    return MappingReport(
        kind="genes",
        id_type=id_type,
        n_inputs=len(values),
        n_mapped=int(mapped.sum()),
        unmapped=values[unmapped].tolist(),
        unmapped_reasons=dict(zip(values[unmapped].tolist(), reasons.tolist(), strict=True)),
        ambiguous=_ambiguous(values, tokens, alternatives),
        duplicates=shared_tokens(values, tokens),
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
    """token -> inputs, for every non-zero token that two or more inputs landed on."""
    frame = pd.DataFrame({"token": tokens, "input": np.asarray(inputs, dtype=object)})
    frame = frame[(frame["token"] > 0) & frame["token"].duplicated(keep=False)]
    grouped = frame.groupby("token", sort=False)["input"].agg(list)
    return {int(token): names for token, names in grouped.items()}
