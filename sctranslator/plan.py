"""The plan: computed once per (dataset, model), read by everything downstream.

It says which input column feeds which model position, which token sits at each position,
how the requested proteins are grouped into windows of P, and how well the data covers the
model's vocabulary or gene panel.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from sctranslator import options
from sctranslator.errors import CoverageError, InputDataError, UnknownProteinError
from sctranslator.model import TranslatorModel
from sctranslator.vocab import map_genes, map_proteins, token_symbols
from sctranslator.vocab.genes import GeneMapping, check_gene_mapping
from sctranslator.vocab.proteins import check_protein_list

log = logging.getLogger(__name__)

UNMAPPED_SLOT = -1  # column ignored
TRUNCATED_SLOT = -2  # mapped gene beyond L: enters the per-cell min/max only
DEFAULT_MIN_COVERAGE = options.DEFAULT_MIN_COVERAGE
COLLISION_EXAMPLES = 20  # examples of input columns sharing a token kept in the provenance


@dataclass
class Plan:
    """How one dataset is aligned to one model: which input column goes where, and which proteins.

    Made once per job by `build_plan`; its fingerprint is recorded so a resumed job can tell it is
    computing the same numbers.

    Parameters
    ----------
    mode : {'reference', 'panel'}
        "reference" for published checkpoints (mapped genes in the dataset's order), "panel" for
        bundles with a fixed gene panel.
    column_slot : numpy.ndarray
        int64 ``(n_vars,)``: the model position of each input column, -1 (ignored) or -2 (beyond L:
        scaling only).
    position_real : numpy.ndarray
        bool ``(L,)``: which model positions hold a real gene.
    gene_ids : numpy.ndarray
        int64 ``(L,)``: the gene token at each position (0 = padding).
    protein_windows : numpy.ndarray
        int64 ``(W, P)``: the requested protein tokens, in windows of the model's P.
    protein_window_mask : numpy.ndarray
        bool ``(W, P)``: which window positions are real.
    output_index : numpy.ndarray
        int64 ``(n_out,)``: flat index of each output protein into the ``(W * P)`` window predictions.
    proteins : pandas.DataFrame
        One row per output protein: name, gene, token_id, window, position.
    normalize : str
        The normalisation applied before scaling.
    target_sum : float
        Counts per cell for the "total" normalisations.
    coverage : dict
        How many of the dataset's and the model's genes map (the coverage report).
    gene_mapping : {'original', 'extended'}
        How identifiers became tokens.
    column_tokens : numpy.ndarray or None
        int64 ``(n_vars,)``: the token each input column was given.
    collisions : dict
        Input columns sharing a token, and the rule applied to them.
    untrained_proteins : list of str
        Proteins asked of a panel-trained model that are not in its panel (the decoder answers anyway).
    """
    mode: str  # "reference" (published checkpoint) or "panel" (bundle with a fixed gene panel)
    column_slot: np.ndarray  # int64 (n_vars,)
    position_real: np.ndarray  # bool (L,)
    gene_ids: np.ndarray  # int64 (L,)
    protein_windows: np.ndarray  # int64 (W, P)
    protein_window_mask: np.ndarray  # bool (W, P)
    output_index: np.ndarray  # int64 (n_out,): flat index into the (W * P) window predictions
    proteins: pd.DataFrame  # one row per output protein: name, gene, token_id, window, position
    normalize: str = "none"
    target_sum: float = 1e4
    coverage: dict[str, Any] = field(default_factory=dict)
    gene_mapping: str = "original"  # "original" | "extended", see sctranslator.vocab.genes
    column_tokens: np.ndarray | None = None  # int64 (n_vars,): the token each input column was given
    collisions: dict[str, Any] = field(default_factory=dict)  # input columns sharing a token, and the rule
    # Proteins asked of a panel-trained model that are not in its panel (answered by the decoder anyway).
    untrained_proteins: list[str] = field(default_factory=list)

    @property
    def max_genes(self) -> int:
        """The model's L: positions per cell."""
        return int(self.position_real.shape[0])

    @property
    def n_windows(self) -> int:
        """W: the number of protein windows."""
        return int(self.protein_windows.shape[0])

    def fingerprint(self) -> str:
        """Identity of everything that decides the numbers written (not how fast they are made).

        Returns
        -------
        str
            A hex SHA-256 digest.
        """
        digest = hashlib.sha256()
        for array in (self.column_slot, self.position_real, self.gene_ids, self.protein_windows,
                      self.protein_window_mask, self.output_index):
            digest.update(np.ascontiguousarray(array).tobytes())
            digest.update(str(array.shape).encode())
        digest.update(json.dumps([self.mode, self.normalize, float(self.target_sum),
                                  list(self.proteins["name"]), self.gene_mapping]).encode())
        return digest.hexdigest()

    def summary(self) -> dict[str, Any]:
        """JSON-able record of the plan for the output's provenance.

        Returns
        -------
        dict
            Mode, mapping, normalisation, sizes, windows, coverage, collisions and the fingerprint.
        """
        return {
            "mode": self.mode,
            "gene_mapping": self.gene_mapping,
            "normalize": self.normalize,
            "target_sum": float(self.target_sum),
            "max_genes": self.max_genes,
            "n_positions_used": int(self.position_real.sum()),
            "n_windows": self.n_windows,
            "window_size": int(self.protein_windows.shape[1]),
            "protein_windows": self.protein_windows.tolist(),
            "coverage": self.coverage,
            "collisions": self.collisions,
            "untrained_proteins": list(self.untrained_proteins),
            "fingerprint": self.fingerprint(),
        }


def gene_identifiers(var: pd.DataFrame, column: str | None) -> pd.Index:
    """The gene identifiers of a var table as strings.

    Parameters
    ----------
    var : pandas.DataFrame
        The input's var table.
    column : str or None
        The column holding the identifiers; None: the index.

    Returns
    -------
    pandas.Index
        One string per gene.

    Raises
    ------
    InputDataError
        `column` is not in var, or some identifiers are missing (NaN, None or empty).
    """
    if column is None:
        _check_present(var.index, "var_names", var.index)
        return pd.Index(var.index.astype(str))
    if column not in var.columns:
        raise InputDataError(f"var has no column {column!r}; available: {list(var.columns)}")
    _check_present(var[column], f"var[{column!r}]", var.index)
    return pd.Index(var[column].astype(str))


def _check_present(values: pd.Index | pd.Series, what: str, labels: pd.Index) -> None:
    """Refuse missing identifiers before they are turned into the string 'nan' (and then duplicates)."""
    array = pd.Series(np.asarray(values, dtype=object))
    missing = array.isna().to_numpy() | (array.astype(str).str.strip() == "").to_numpy()
    if not missing.any():
        return
    rows = np.flatnonzero(missing)
    shown = ", ".join(f"{int(r)} ({labels[r]})" if what != "var_names" else str(int(r)) for r in rows[:10])
    more = f" and {len(rows) - 10} more" if len(rows) > 10 else ""
    raise InputDataError(
        f"{len(rows)} of {len(array)} genes have no identifier in {what} (NaN or empty): var rows {shown}{more}. "
        "A gene without a name cannot be mapped to the model's vocabulary. Fill them in, drop those genes "
        f"(e.g. adata = adata[:, ~mask] with the mask of missing names), or choose another var column "
        "with --gene-column."
    )


def _check_unique(identifiers: pd.Index) -> None:
    duplicated = identifiers[identifiers.duplicated()].unique()
    if len(duplicated):
        raise InputDataError(
            f"{len(duplicated)} gene identifiers occur more than once in var (e.g. {list(duplicated[:5])}); "
            "the original pipeline cannot take them (its gene mapping fails on repeated names). Choose another "
            "var column with --gene-column, or --gene-mapping extended, which adds up the columns of one gene. "
            "(adata.var_names_make_unique() would rename the copies to NAME-1, ..., which the original mapping "
            "then drops.)"
        )


def default_gene_mapping(model: TranslatorModel) -> str:
    """The gene mapping a model was trained with.

    A bundle's gene panel records it (bundles made before it was recorded used the extended mapping);
    a model without a gene panel is a published checkpoint (original).

    Parameters
    ----------
    model : TranslatorModel
        The model.

    Returns
    -------
    str
        "original" or "extended".
    """
    genes = (model.panel or {}).get("genes")
    if genes:
        return str(genes.get("mapping", "extended"))
    return "original"


def resolve_gene_mapping(model: TranslatorModel, requested: str | None) -> str:
    """The gene mapping to use: `requested` if given (with a warning when it differs from the model's).

    Parameters
    ----------
    model : TranslatorModel
        The model.
    requested : str or None
        "original", "extended", or None for the model's own.

    Returns
    -------
    str
        "original" or "extended".

    Raises
    ------
    VocabularyError
        An unknown mapping name.
    """
    recorded = default_gene_mapping(model)
    if requested is None:
        return recorded
    check_gene_mapping(requested)
    if requested != recorded:
        log.warning("the model was trained with the %s gene mapping but %s was asked: input positions differ "
                    "from training", recorded, requested)
    return requested


def column_tokens(genes: GeneMapping, merge_copies: bool) -> np.ndarray:
    """The token of each input column.

    Parameters
    ----------
    genes : GeneMapping
        The mapping of the input's identifiers.
    merge_copies : bool
        A make_unique copy ("CD4-1") takes its original's token.

    Returns
    -------
    numpy.ndarray
        int64 ``(n_vars,)``; 0 where unmapped.
    """
    tokens = np.asarray(genes.token_ids, dtype=np.int64).copy()
    if merge_copies and genes.copy_of is not None:
        copies = np.flatnonzero(genes.copy_of >= 0)
        tokens[copies] = tokens[genes.copy_of[copies]]
    return tokens


def collision_report(identifiers: pd.Index, genes: GeneMapping, tokens: np.ndarray, rule: str) -> dict[str, Any]:
    """Input columns that share one token, and make_unique copies: counts, the rule applied, examples.

    Parameters
    ----------
    identifiers : pandas.Index
        The input's gene identifiers.
    genes : GeneMapping
        Their mapping.
    tokens : numpy.ndarray
        int64 ``(n_vars,)`` token per column (see `column_tokens`).
    rule : str
        What the plan does with them (kept apart, added up, dropped), for the record.

    Returns
    -------
    dict
        JSON-able counts and up to COLLISION_EXAMPLES examples.
    """
    frame = pd.DataFrame({"token": tokens, "input": np.asarray(identifiers, dtype=object)})
    shared = frame[(frame["token"] > 0) & frame["token"].duplicated(keep=False)]
    groups = shared.groupby("token", sort=False)["input"].agg(list)
    labels = token_symbols(groups.index.to_numpy(dtype=np.int64)) if len(groups) else []
    copies = genes.report.copies
    return {
        "rule": rule,
        "tokens_shared": int(len(groups)),
        "columns_sharing": int(len(shared)),
        "examples": {str(symbol): names for symbol, names in
                     zip(labels[:COLLISION_EXAMPLES], groups.tolist()[:COLLISION_EXAMPLES], strict=False)},
        "make_unique_copies": int(len(copies)),
        "copy_examples": dict(list(copies.items())[:COLLISION_EXAMPLES]),
        "not_merged": int(len(genes.report.not_merged)),
        "not_merged_examples": {name: info["why"] for name, info in
                                list(genes.report.not_merged.items())[:COLLISION_EXAMPLES]},
    }


def _log_collisions(collisions: dict[str, Any]) -> None:
    parts = []
    if collisions["tokens_shared"]:
        examples = ", ".join("+".join(map(str, names)) for names in list(collisions["examples"].values())[:3])
        parts.append(f"{collisions['columns_sharing']} input columns share {collisions['tokens_shared']} gene "
                     f"tokens (e.g. {examples})")
    if collisions["make_unique_copies"]:
        parts.append(f"{collisions['make_unique_copies']} look like make_unique copies "
                     f"(e.g. {', '.join(map(str, list(collisions['copy_examples'])[:3]))})")
    if parts:
        log.warning("%s: %s", "; ".join(parts), collisions["rule"])
    if collisions.get("not_merged"):
        examples = "; ".join(f"{name} ({why})" for name, why in list(collisions["not_merged_examples"].items())[:3])
        log.warning("%d input columns were left unmapped instead of being added into another column's gene: each "
                    "is an old symbol or alias that does not surely name that gene (e.g. %s); `sctranslator vocab` "
                    "lists them", collisions["not_merged"], examples)


def _coverage_table(coverage: dict[str, Any]) -> str:
    return "\n".join(f"  {key:28s} {value}" for key, value in coverage.items())


def _enforce_coverage(coverage: dict[str, Any], min_coverage: float, allow_low: bool) -> None:
    fraction = coverage["fraction"]
    if fraction < min_coverage and not allow_low:
        what = ("of the model's gene panel is present in the data" if coverage["basis"] == "the model's gene panel"
                else "of the dataset's genes map onto the model's vocabulary")
        raise CoverageError(
            f"only {fraction:.1%} {what} (minimum {min_coverage:.0%}):\n"
            f"{_coverage_table(coverage)}\n"
            "Check the identifier type (--id-type / --gene-column), or pass --allow-low-coverage to go on."
        )
    if fraction < min_coverage:
        log.warning("low gene coverage (%.1f%%), continuing as asked", 100 * fraction)


def reference_alignment(tokens: np.ndarray, max_genes: int,
                        merge: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Published checkpoints: mapped genes in the dataset's order, unmapped dropped, the first L kept.

    Without `merge` (the original pipeline) every mapped column is one position, also when several
    columns share a token. With `merge` the columns of one token share the position of its first
    column (the kernels add them up); a token beyond the first L gives all its columns TRUNCATED_SLOT.

    Parameters
    ----------
    tokens : numpy.ndarray
        int64 ``(n_vars,)`` token per input column (0: unmapped).
    max_genes : int
        The model's L.
    merge : bool
        Give the columns of one token one position.

    Returns
    -------
    column_slot : numpy.ndarray
        int64 ``(n_vars,)`` position per column.
    position_real : numpy.ndarray
        bool ``(L,)``.
    gene_ids : numpy.ndarray
        int64 ``(L,)`` token per position.
    """
    mapped_columns = np.flatnonzero(tokens > 0)
    column_slot = np.full(tokens.shape[0], UNMAPPED_SLOT, dtype=np.int64)
    if merge:
        unique, first_column = np.unique(tokens[mapped_columns], return_index=True)
        order = np.argsort(first_column, kind="stable")  # tokens in order of their first column
        rank = np.empty(unique.shape[0], dtype=np.int64)
        rank[order] = np.arange(unique.shape[0])
        slot = rank[np.searchsorted(unique, tokens[mapped_columns])]
        column_slot[mapped_columns] = np.where(slot < max_genes, slot, TRUNCATED_SLOT)
        kept_tokens = unique[order][:max_genes]
    else:
        kept = mapped_columns[:max_genes]
        column_slot[mapped_columns[max_genes:]] = TRUNCATED_SLOT
        column_slot[kept] = np.arange(kept.shape[0])
        kept_tokens = tokens[kept]
    gene_ids = np.zeros(max_genes, dtype=np.int64)
    gene_ids[: kept_tokens.shape[0]] = kept_tokens
    position_real = np.zeros(max_genes, dtype=bool)
    position_real[: kept_tokens.shape[0]] = True
    return column_slot, position_real, gene_ids


def panel_alignment(tokens: np.ndarray, panel_tokens: np.ndarray,
                     max_genes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed-panel bundles: each input column goes to its gene's panel position.

    Several input columns on one panel gene all get its position: the kernels add them up.

    Parameters
    ----------
    tokens : numpy.ndarray
        int64 ``(n_vars,)`` token per input column.
    panel_tokens : numpy.ndarray
        int64 tokens of the model's gene panel, in panel order.
    max_genes : int
        The model's L.

    Returns
    -------
    column_slot : numpy.ndarray
        int64 ``(n_vars,)`` position per column (-1: not in the panel).
    position_real : numpy.ndarray
        bool ``(L,)``.
    gene_ids : numpy.ndarray
        int64 ``(L,)`` token per position.
    """
    lookup = pd.Series(np.arange(panel_tokens.shape[0]), index=panel_tokens)
    lookup = lookup[~lookup.index.duplicated()]
    column_slot = lookup.reindex(tokens).fillna(UNMAPPED_SLOT).to_numpy(dtype=np.int64)
    column_slot[tokens == 0] = UNMAPPED_SLOT
    gene_ids = np.zeros(max_genes, dtype=np.int64)
    gene_ids[: panel_tokens.shape[0]] = panel_tokens
    position_real = np.zeros(max_genes, dtype=bool)
    position_real[: panel_tokens.shape[0]] = True
    return column_slot, position_real, gene_ids


CONTROL_REASON = "an isotype control / blank, not a protein"


def _protein_request(proteins: Sequence[str]) -> tuple[list[str], np.ndarray, list[str | None]]:
    names = [str(p) for p in proteins]
    if not names:
        raise UnknownProteinError("no proteins requested: pass antibody or gene names (--proteins CD3,CD19 or @file)")
    check_protein_list(names)
    mapping = map_proteins(names)
    problems = [(n, s) for n, s in zip(names, mapping.status, strict=True) if s in ("control", "unmapped")]
    if problems:
        reasons = mapping.report.unmapped_reasons
        details = ", ".join(f"{n!r} ({CONTROL_REASON if s == 'control' else reasons.get(n) or 'no gene'})"
                            for n, s in problems)
        raise UnknownProteinError(
            f"{len(problems)} requested protein(s) cannot be predicted: {details}. Remove them, or name the gene "
            "that encodes the protein (e.g. PTPRC for CD45)."
        )
    return names, np.asarray(mapping.token_ids, dtype=np.int64), list(mapping.genes)


def _windows(tokens: np.ndarray, window_size: int) -> tuple[np.ndarray, np.ndarray]:
    n_windows = max(1, -(-tokens.shape[0] // window_size))
    windows = np.zeros(n_windows * window_size, dtype=np.int64)
    windows[: tokens.shape[0]] = tokens
    mask = np.zeros(n_windows * window_size, dtype=bool)
    mask[: tokens.shape[0]] = True
    return windows.reshape(n_windows, window_size), mask.reshape(n_windows, window_size)


def _reference_proteins(proteins: Sequence[str] | None, window_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                                  pd.DataFrame]:
    if proteins is None:
        raise UnknownProteinError("this model has no protein panel: name the proteins to predict (--proteins)")
    names, tokens, genes = _protein_request(proteins)
    windows, mask = _windows(tokens, window_size)
    order = np.arange(len(names))
    table = pd.DataFrame({"name": names, "gene": [g or "" for g in genes], "token_id": tokens,
                          "window": order // window_size, "position": order % window_size})
    return windows, mask, order.astype(np.int64), table


def _panel_proteins(proteins: Sequence[str] | None, panel: dict[str, Any],
                    window_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.DataFrame, list[str]]:
    """Models trained on a protein panel run the whole panel in trained order in window 0; requests select.

    Requested proteins outside the panel are answered as the original answers any protein: the
    decoder takes their tokens, in windows of their own after the panel's (so the panel's own
    predictions do not change). Their names come back as the last element, for the warning and
    the provenance.
    """
    panel_names = [str(n) for n in panel["names"]]
    panel_tokens = np.asarray(panel["token_ids"], dtype=np.int64)
    panel_genes = list(panel.get("genes") or token_symbols(panel_tokens))
    if len(panel_names) > window_size:
        raise UnknownProteinError(f"the model's protein panel has {len(panel_names)} proteins but P={window_size}")
    windows, mask = _windows(panel_tokens, window_size)
    if proteins is None:
        selected: list[int] = list(range(len(panel_names)))
        outside: list[str] = []
    else:
        by_name = {n: i for i, n in enumerate(panel_names)}
        by_token = {int(t): i for i, t in reversed(list(enumerate(panel_tokens)))}
        requested = check_protein_list(proteins)
        mapped = map_proteins(requested)
        selected, outside = [], []
        for name, token in zip(requested, mapped.token_ids, strict=True):
            index = by_name.get(name, by_token.get(int(token)) if token else None)
            if index is None:
                outside.append(name)
            else:
                selected.append(index)
        # one output column per panel protein: a repeat (the same name, or two names for one protein)
        # is refused as the published path refuses it, not written as two columns of one name
        picked = [n for n in requested if n not in outside]
        repeats = {panel_names[i]: [n for n, j in zip(picked, selected, strict=True) if j == i]
                   for i in sorted(set(selected)) if selected.count(i) > 1}
        if repeats:
            raise UnknownProteinError("proteins requested more than once: " + "; ".join(
                f"{', '.join(map(repr, names))} -> panel protein {name!r}" for name, names in repeats.items())
                + "; list each protein once")
    chosen = np.asarray(selected, dtype=np.int64)
    table = pd.DataFrame({
        "name": [panel_names[i] for i in chosen], "gene": [panel_genes[i] or "" for i in chosen],
        "token_id": panel_tokens[chosen], "window": np.zeros(len(chosen), dtype=np.int64), "position": chosen,
    })
    if not outside:
        return windows, mask, chosen, table, []
    # Outside the panel: the reference path's request checks (unmapped names, controls), own windows.
    extra_windows, extra_mask, extra_order, extra = _reference_proteins(outside, window_size)
    extra["window"] += windows.shape[0]
    ordered = pd.concat([table, extra], ignore_index=True)
    # Keep the request's order in the output columns. The table names the panel's (or the reference
    # path's) spelling of each protein, which may differ from the name asked for (NCAM1 -> CD56), so
    # the rows are ordered by where each was asked: panel rows in request order, then the rest.
    outside_set = set(outside)
    asked_at = [i for i, name in enumerate(requested) if name not in outside_set]
    asked_at += [i for i, name in enumerate(requested) if name in outside_set]
    index = np.r_[chosen, windows.size + extra_order]
    rank = np.argsort(asked_at, kind="stable")
    return (np.concatenate([windows, extra_windows]), np.concatenate([mask, extra_mask]), index[rank],
            ordered.iloc[rank].reset_index(drop=True), list(outside))


def build_plan(var: pd.DataFrame, model: TranslatorModel, proteins: Sequence[str] | None = None, *,
               gene_column: str | None = None, id_type: str = "auto", normalize: str | None = None,
               target_sum: float | None = None, min_coverage: float = DEFAULT_MIN_COVERAGE,
               allow_low_coverage: bool = False, gene_mapping: str | None = None) -> Plan:
    """Align a dataset's genes and a protein request to `model`.

    Input columns that share a token: with the original mapping on a published checkpoint each stays
    its own position (as the original pipeline), make_unique copies ("CD4-1") are dropped (the
    original's table does not know them) and identical identifiers are refused; otherwise (extended
    mapping, or a model with a gene panel) the columns of one gene, copies included, are added up.
    Either way they are counted in ``Plan.collisions`` and logged.

    Parameters
    ----------
    var : pandas.DataFrame
        The input's var table (genes).
    model : TranslatorModel
        The model.
    proteins : sequence of str or None
        Antibody or gene names to predict; None: the model's panel.
    gene_column : str or None
        The var column holding the gene identifiers; None: the index.
    id_type : str
        Kind of identifier, or "auto".
    normalize : str or None
        The normalisation; None: the model's recorded one ("none" for published checkpoints).
    target_sum : float or None
        Counts per cell for the "total" modes; None: the model's, else 10,000.
    min_coverage : float
        Least fraction of genes that must map (0.5 = 50%).
    allow_low_coverage : bool
        Go on, with a warning, below `min_coverage`.
    gene_mapping : str or None
        "original" or "extended"; None: the model's own.

    Returns
    -------
    Plan
        The alignment, protein windows and coverage.

    Raises
    ------
    InputDataError
        Missing or repeated identifiers, or an unknown gene column.
    CoverageError
        Fewer than `min_coverage` of the genes map, unless `allow_low_coverage`.
    UnknownProteinError
        No proteins, a protein that maps to no token, one listed twice, or none named for a model
        without a panel.
    VocabularyError
        An unknown identifier type or mapping.
    """
    config = model.config
    panel = model.panel or {}
    gene_panel = panel.get("genes")
    mapping = resolve_gene_mapping(model, gene_mapping)
    faithful = mapping == "original" and not gene_panel
    identifiers = gene_identifiers(var, gene_column)
    if faithful:
        _check_unique(identifiers)
    genes = map_genes(identifiers, id_type=id_type, mapping=mapping)
    tokens = column_tokens(genes, merge_copies=not faithful)
    rule = ("each column its own position, as the original pipeline; make_unique copies dropped, as the original"
            if faithful else "the columns of one gene are added up (make_unique copies included)")
    collisions = collision_report(identifiers, genes, tokens, rule)
    _log_collisions(collisions)
    if gene_panel:
        panel_tokens = np.asarray(gene_panel["token_ids"], dtype=np.int64)
        column_slot, position_real, gene_ids = panel_alignment(tokens, panel_tokens, config.max_genes)
        present = int(np.unique(column_slot[column_slot >= 0]).shape[0])
        coverage = {"basis": "the model's gene panel", "panel_genes": int(panel_tokens.shape[0]),
                    "panel_genes_in_data": present, "fraction": present / max(1, panel_tokens.shape[0]),
                    "input_genes": int(tokens.shape[0]), "input_genes_mapped": int((tokens > 0).sum()),
                    "id_type": genes.id_type, "gene_mapping": mapping}
        mode = "panel"
    else:
        column_slot, position_real, gene_ids = reference_alignment(tokens, config.max_genes, merge=not faithful)
        mapped = int((tokens > 0).sum())
        coverage = {"basis": "the dataset's genes", "input_genes": int(tokens.shape[0]), "mapped": mapped,
                    "fraction": mapped / max(1, tokens.shape[0]), "used_positions": int(position_real.sum()),
                    "truncated": int((column_slot == TRUNCATED_SLOT).sum()), "max_genes": config.max_genes,
                    "id_type": genes.id_type, "gene_mapping": mapping}
        mode = "reference"
    _enforce_coverage(coverage, min_coverage, allow_low_coverage)
    if panel.get("proteins"):
        windows, window_mask, output_index, table, untrained = _panel_proteins(proteins, panel["proteins"],
                                                                               config.max_proteins)
        if untrained:
            log.warning("%d protein(s) not in this model's trained panel, predicted by its decoder as the original "
                        "does (untrained, less accurate): %s", len(untrained), ", ".join(untrained))
    else:
        windows, window_mask, output_index, table = _reference_proteins(proteins, config.max_proteins)
        untrained = []
    recorded = getattr(model, "preprocessing", None) or {}
    chosen_normalize = normalize or recorded.get("normalize") or "none"
    if normalize and recorded.get("normalize") and normalize != recorded["normalize"]:
        log.warning("model was trained with normalize=%s but %s was asked", recorded["normalize"], normalize)
    return Plan(mode=mode, column_slot=column_slot, position_real=position_real, gene_ids=gene_ids,
                protein_windows=windows, protein_window_mask=window_mask, output_index=output_index,
                proteins=table, normalize=chosen_normalize,
                target_sum=float(target_sum or recorded.get("target_sum") or 1e4), coverage=coverage,
                gene_mapping=mapping, column_tokens=tokens, collisions=collisions, untrained_proteins=untrained)
