"""Antibody / marker names from CITE-seq, REAP-seq and ECCITE-seq panels -> encoding gene -> token id.

Resolution of one name, first hit wins:
1. assay decorations are stripped ("ADT_", "_TotalSeqB", REAP-seq barcodes, BioLegend "Hu." ...);
2. isotype controls, blanks, unmapped barcodes and hashtags are reported as controls, never guessed;
3. the name, then the two halves of "Alias (Other name)", then the part before a "_clone" tag, then
   the name without a replicate number ("CD4-1") are looked up, each in
   the curated table (`data/curated_proteins.tsv`) > HGNC CD designations > current symbols >
   previous symbols > aliases (HGNC 2024 before 2026 at each level); a T-cell receptor V-region
   antibody ("TCR_Vd2", "TCR Vβ13.1") is looked up under its whole name only, and maps to a V gene
   of its chain or to nothing (never to a constant region such as TRAC);
4. the gene's token is the one `map_genes([symbol])` gives, so RNA and protein sides agree.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np
import pandas as pd

from sctranslator.errors import UnknownProteinError
from sctranslator.vocab.genes import shared_tokens
from sctranslator.vocab.names import ascii_name, ascii_spellings, candidate_spellings, is_control_key, name_key
from sctranslator.vocab.report import MappingReport
from sctranslator.vocab.tables import data_file, gene_table, protein_name_table

MAPPED, AMBIGUOUS, CONTROL, UNMAPPED = "mapped", "ambiguous", "control", "unmapped"
CURATED = "curated"
# Trust order of the lookup sources; between the halves of "B7-H1 (PD-L1)" the better source wins.
_SOURCE_RANK = {name: rank for rank, name in enumerate(
    (CURATED, "hgnc_cd", "hgnc_cd_2026", "hgnc_symbol", "hgnc_symbol_2026", "hgnc_prev", "hgnc_prev_2026",
     "hgnc_alias", "hgnc_alias_2026"))}


@dataclass(frozen=True)
class ProteinMatch:
    """How one panel name was resolved.

    Parameters
    ----------
    status : str
        "mapped", "ambiguous", "control" or "unmapped".
    gene : str or None
        The HGNC symbol of the encoding gene.
    token : int
        Its model token; 0 when none.
    source : str
        The table that matched.
    alternatives : tuple of str
        Other genes the name could mean.
    note : str
        Why it is unmapped, ambiguous or a control.
    matched : str
        The spelling that matched.
    """

    status: str
    gene: str | None = None
    token: int = 0
    source: str = ""
    alternatives: tuple[str, ...] = ()
    note: str = ""
    matched: str = ""  # the spelling that hit


@dataclass(frozen=True)
class ProteinMapping:
    """Per input name: token id (0 for controls/unmapped), HGNC symbol of the gene, and status.

    Parameters
    ----------
    names : list of str
        The panel names as given.
    token_ids : numpy.ndarray
        int64 token of the gene encoding each protein, shape ``(n_proteins,)``; 0 for controls and
        unmapped names.
    genes : list of str or None
        HGNC symbol of each protein's gene (None where unmapped).
    status : list of str
        "mapped", "ambiguous", "control" or "unmapped" per name.
    report : MappingReport
        Counts, unmapped names with reasons, controls and duplicates.
    """

    names: list[str]
    token_ids: np.ndarray  # int64
    genes: list[str | None]
    status: list[str]  # "mapped" | "ambiguous" | "control" | "unmapped"
    report: MappingReport

    @property
    def mapped(self) -> np.ndarray:
        """Boolean mask of the names that got a token."""
        return self.token_ids > 0


def check_protein_list(names: Iterable[str], what: str = "the requested proteins") -> list[str]:
    """The names as text, refusing a protein listed twice.

    Twice means the same name once Unicode look-alikes are spelled in ASCII and surrounding spaces
    dropped ("CD8α" and "CD8a", "CD4" and "CD4 "): both would be one output column under one name.
    Names spelled differently stay distinct ("PD-1 (CD279)" and "PD1 (CD279)" are two anti-PD-1
    clones in ECCITE-seq panels), as do antibodies for one gene (CD45RA, CD45RO).

    Parameters
    ----------
    names : iterable of str
        Protein names.
    what : str
        Names the list in the message.

    Returns
    -------
    list of str
        The names as strings, in order.

    Raises
    ------
    UnknownProteinError
        A protein is listed more than once.
    """
    texts = [str(name) for name in names]
    keys = pd.Series([ascii_name(text).strip() for text in texts], dtype=object)
    repeated = keys[keys.duplicated(keep=False) & (keys != "")]
    if repeated.empty:
        return texts
    # groupby positions count within `repeated`; its index holds the positions in `texts`
    groups = [" = ".join(repr(texts[i]) for i in repeated.index[rows])
              for rows in repeated.groupby(repeated).indices.values()]
    raise UnknownProteinError(f"{what} list one protein more than once ({'; '.join(groups)}); list each "
                              "protein once")


def map_proteins(names: Iterable[str] | pd.Index | pd.Series | np.ndarray, *,
                 strict: bool = False) -> ProteinMapping:
    """Map antibody/marker names onto the tokens of the genes that encode them.

    Parameters
    ----------
    names : iterable of str, pandas.Index, pandas.Series or numpy.ndarray
        Panel names (antibody names, CD names or gene symbols), shape ``(n_proteins,)``.
    strict : bool
        Refuse names (controls aside) that map to no token.

    Returns
    -------
    ProteinMapping
        One token per name, in input order, with the mapping report.

    Raises
    ------
    UnknownProteinError
        With `strict`, when a name other than an isotype control or blank maps to no token.

    Examples
    --------
    >>> from sctranslator.vocab import map_proteins
    >>> map_proteins(["CD4", "CD19", "IgG1 isotype"]).status
    ['mapped', 'mapped', 'control']
    """
    texts = ["" if name is None or (isinstance(name, float) and np.isnan(name)) else str(name)
             for name in (names.tolist() if isinstance(names, pd.Index | pd.Series | np.ndarray) else names)]
    matches = [resolve_protein_name(text) for text in texts]
    tokens = np.array([match.token for match in matches], dtype=np.int64)
    report = _protein_report(texts, matches, tokens)
    if strict and report.unmapped:
        raise UnknownProteinError(
            f"{len(report.unmapped)} protein name(s) map to no model token: {', '.join(report.unmapped[:10])}; "
            "rename them to a gene symbol or CD name, or drop them")
    return ProteinMapping(names=texts, token_ids=tokens, genes=[match.gene for match in matches],
                          status=[match.status for match in matches], report=report)


@lru_cache(maxsize=65536)
def resolve_protein_name(name: str) -> ProteinMatch:
    """Resolve one panel name to the gene that encodes the protein (cached: panels repeat).

    A name written with Greek letters or other Unicode look-alikes ("TCR_Vδ2", "PD‐1" with a Unicode
    hyphen, fullwidth "ＣＤ４") resolves exactly as its ASCII spelling does ("TCR_Vd2", "PD-1", "CD4").
    Where it has two spellings (μ: "m" or "u") that reach different genes, or characters with no ASCII
    equivalent, it is left unmapped with the reason: never matched by a part of it to a third gene.

    Parameters
    ----------
    name : str
        One antibody or marker name.

    Returns
    -------
    ProteinMatch
        The status ("mapped", "ambiguous", "control", "unmapped"), gene, token, the table that
        matched, alternatives and a note.
    """
    if not name.isascii():
        return _resolve_unicode(name)
    groups = candidate_spellings(name)
    looks_like_control = is_control_key(name_key(name)) or any(is_control_key(name_key(text)) for text in groups[0])
    if looks_like_control and not _is_current_symbol_without_control_word(name, groups[0]):
        return ProteinMatch(status=CONTROL, note="isotype control, blank or hashtag: not a protein")
    chain = _v_region_chain(name, groups[0])
    if chain is not None:
        return _resolve_v_region(name, chain, groups[0])
    for group in groups:
        hits = [hit for hit in map(_lookup, group) if hit is not None]
        if hits:
            return _with_token(_best_of(hits))
    return ProteinMatch(status=UNMAPPED, note="no gene known under this name")


def _resolve_unicode(name: str) -> ProteinMatch:
    spellings, left = ascii_spellings(name)
    if left:
        return ProteinMatch(status=UNMAPPED, note=f"characters without an ASCII spelling ({left}); rename it as "
                                                  "an ASCII panel would spell it")
    matches = {spelling: resolve_protein_name(spelling) for spelling in spellings}
    found = {spelling: match for spelling, match in matches.items() if match.status != UNMAPPED}
    genes = {(match.status, match.gene) for match in found.values()}
    if len(genes) > 1:
        readings = ", ".join(f"{spelling!r} -> {match.gene or match.status}" for spelling, match in found.items())
        return ProteinMatch(status=UNMAPPED, alternatives=tuple(str(m.gene) for m in found.values() if m.gene),
                            note=f"ambiguous Unicode spelling ({readings}); write it in ASCII")
    spelling, match = next(iter(found.items())) if found else (spellings[0], matches[spellings[0]])
    note = f"read as {spelling!r}" + (f"; {match.note}" if match.note else "")
    return ProteinMatch(status=match.status, gene=match.gene, token=match.token, source=match.source,
                        alternatives=match.alternatives, note=note, matched=match.matched)


# "TCR_Vd2", "TCR Vβ13.1", "TRB-Vbeta", "TCRVa24-Ja18": an antibody for one T-cell receptor V region.
_V_REGION = re.compile(r"^(?:TCR|TR[ABDG]?)[\s_\-.]*V[\s_\-.]*(ALPHA|BETA|GAMMA|DELTA|[ABDG])(?![A-Z])",
                       re.IGNORECASE)
_CHAINS = {"ALPHA": "A", "BETA": "B", "GAMMA": "G", "DELTA": "D"}


def _v_region_chain(name: str, spellings: list[str]) -> str | None:
    """The chain letter (A, B, G, D) when the name designates a T-cell receptor V region, else None."""
    for text in (name, *spellings):
        found = _V_REGION.match(text.strip())
        if found:
            letter = found.group(1).upper()
            return _CHAINS.get(letter, letter)
    return None


def _resolve_v_region(name: str, chain: str, spellings: list[str]) -> ProteinMatch:
    """A V-region antibody maps to the V gene the tables know under its exact name, or to nothing.

    Never by a part of the name ("TCR" is the alpha/beta constant regions), without its subfamily
    number ("Vb13.1" is not "Vb13"), to a constant region or to a V gene of another chain.
    """
    hits = [hit for hit in map(_lookup, spellings) if hit is not None and
            str(hit.gene).upper().startswith(f"TR{chain}V") and
            all(str(gene).upper().startswith((f"TR{chain}V", f"TR{chain}J")) for gene in hit.alternatives)]
    if hits:
        return _with_token(_best_of(hits))
    word = next(word for word, letter in _CHAINS.items() if letter == chain).lower()
    return ProteinMatch(status=UNMAPPED, note=f"a T-cell receptor V-{word} region antibody that no table knows under "
                                              "this name; not guessed from the constant region or another V gene: "
                                              f"rename it to the V gene's symbol (TR{chain}V...)")


# Words that make a name a control even when the rest of it is a gene symbol ("LMO4" is a LIM-domain
# transcription factor; "Hashtag 4", "HTO_4", "Mouse IgG1 isotype" and "Blank-2" are not proteins).
_EXPLICIT_CONTROL_WORD = re.compile(
    r"ISOTYPE|ISO[\s_\-.]?CTRL|CONTROL|\bCTRL\b.*\S|\S.*\bCTRL\b|BLANK|EMPTY|HASHTAG|\bHTO|\bCMO\d"
    r"|(?:MOUSE|RAT|HAMSTER|GOAT|RABBIT|\bMS|\bRT)[\s_\-.]*IG[GMAE]", re.IGNORECASE)


def _is_current_symbol_without_control_word(name: str, spellings: list[str]) -> bool:
    """True when a control-shaped name is exactly a current HGNC symbol and carries no control word."""
    if _EXPLICIT_CONTROL_WORD.search(name):
        return False
    for spelling in spellings:
        hit = _lookup(spelling)
        if hit is not None and hit.source.startswith("hgnc_symbol") and name_key(spelling) == name_key(hit.gene):
            return True
    return False


def _best_of(hits: list[ProteinMatch]) -> ProteinMatch:
    """The most trusted of equally faithful spellings; disagreement between them is an ambiguity."""
    best = min(hits, key=lambda hit: _SOURCE_RANK.get(hit.source, len(_SOURCE_RANK)))
    others = tuple(dict.fromkeys(hit.gene for hit in hits if hit.gene != best.gene))
    if not others:
        return best
    return ProteinMatch(status=AMBIGUOUS, gene=best.gene, source=best.source,
                        alternatives=tuple(dict.fromkeys(best.alternatives + others)),
                        note=f"parts of the name point to different genes; kept {best.matched!r}",
                        matched=best.matched)


def _lookup(spelling: str) -> ProteinMatch | None:
    key = name_key(spelling)
    curated = curated_proteins().get(key)
    if curated is not None:
        return curated
    table = protein_name_table()
    row = int(table.rows(np.array([key], dtype=object), fold_case=False)[0])
    if row < 0:
        return None
    alternatives = tuple(filter(None, str(table.alternatives[row]).split("|")))
    return ProteinMatch(status=AMBIGUOUS if alternatives else MAPPED, gene=str(table.values[row]),
                        source=str(table.sources[row]), alternatives=alternatives,
                        note="name shared by several genes at the same HGNC level" if alternatives else "",
                        matched=spelling)


def _with_token(match: ProteinMatch) -> ProteinMatch:
    table = gene_table("symbol")
    row = int(table.rows(np.array([match.gene], dtype=object), fold_case=False)[0])
    token = int(table.values[row]) if row >= 0 else 0
    if token == 0:
        return ProteinMatch(status=UNMAPPED, gene=match.gene, source=match.source,
                            alternatives=match.alternatives, matched=match.matched,
                            note=f"gene {match.gene} is not in the model's vocabulary")
    return ProteinMatch(status=match.status, gene=match.gene, token=token, source=match.source,
                        alternatives=match.alternatives, note=match.note, matched=match.matched)


@cache
def curated_proteins() -> dict[str, ProteinMatch]:
    """The hand-curated marker names, keyed by `name_key`."""
    with data_file("curated_proteins.tsv").open("r", encoding="utf-8") as handle:
        frame = pd.read_csv(handle, sep="\t", dtype=str, keep_default_na=False, comment="#")
    out = {}
    for row in frame.itertuples(index=False):
        alternatives = tuple(filter(None, row.alternatives.split("|")))
        out[name_key(row.name)] = ProteinMatch(
            status=AMBIGUOUS if row.ambiguous == "yes" else MAPPED, gene=row.gene, source=CURATED,
            alternatives=alternatives, note=row.note, matched=row.name)
    return out


def _protein_report(names: list[str], matches: list[ProteinMatch], tokens: np.ndarray) -> MappingReport:
    unmapped = [name for name, match in zip(names, matches, strict=True) if match.status == UNMAPPED]
    return MappingReport(
        kind="proteins",
        id_type="protein_name",
        n_inputs=len(names),
        n_mapped=int((tokens > 0).sum()),
        unmapped=unmapped,
        unmapped_reasons={name: match.note for name, match in zip(names, matches, strict=True)
                          if match.status == UNMAPPED},
        ambiguous={name: {"chosen": match.gene, "alternatives": list(match.alternatives), "note": match.note}
                   for name, match in zip(names, matches, strict=True) if match.status == AMBIGUOUS},
        duplicates=shared_tokens(names, tokens),
        genes={name: match.gene for name, match in zip(names, matches, strict=True) if match.token > 0},
        controls=[name for name, match in zip(names, matches, strict=True) if match.status == CONTROL],
        sources=pd.Series([match.source for match in matches if match.token > 0],
                          dtype=object).value_counts().to_dict(),
    )
