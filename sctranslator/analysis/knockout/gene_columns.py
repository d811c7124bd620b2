"""Which input column each knocked-out gene is, and the model inputs' alignment without it.

Two semantics:
- "drop" (the original pseudo_knockout_gene.py): the column is removed from the data, so the
  gene leaves the per-cell min/max and, for published checkpoints, every later gene moves up one
  position (and the first truncated gene, if any, moves in at the end). The alignment is rebuilt
  by plan.py's own alignment functions with that column unmapped.
- "zero": the gene's expression is set to 0 in place; the alignment is the plan's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sctranslator.errors import InputDataError, VocabularyError
from sctranslator.model import TranslatorModel
from sctranslator.options import KNOCKOUT_SEMANTICS
from sctranslator.plan import (
    UNMAPPED_SLOT,
    Plan,
    gene_identifiers,
    panel_alignment,
    reference_alignment,
)

SEMANTICS = KNOCKOUT_SEMANTICS


@dataclass(frozen=True)
class KnockoutVariant:
    """One knocked-out gene: its input column and the alignment its perturbed cells are prepared with.

    Parameters
    ----------
    gene : str
        The gene as asked.
    column : int
        Its input column.
    column_slot : numpy.ndarray
        int64 ``(n_vars,)`` alignment of the perturbed cells.
    position_real : numpy.ndarray
        bool ``(L,)`` real positions of the perturbed cells.
    gene_ids : numpy.ndarray
        int64 ``(L,)`` tokens of the perturbed cells.
    zero_column : bool
        Zero the column (zero semantics) instead of dropping it.
    """

    gene: str
    column: int
    column_slot: np.ndarray
    position_real: np.ndarray
    gene_ids: np.ndarray
    zero_column: bool  # "zero": the column's values are set to 0 before preparing


def default_semantics(plan: Plan) -> str:
    """The default semantics for a plan: published checkpoints the original's drop, fixed-panel models zero.

    Parameters
    ----------
    plan
        The plan of (input, model).

    Returns
    -------
    str
        "drop" (a reference-mode plan) or "zero" (a panel: a dropped panel gene reads 0 anyway).
    """
    return "drop" if plan.mode == "reference" else "zero"


def resolve_columns(var: pd.DataFrame, genes: Sequence[str], plan: Plan, gene_column: str | None) -> list[int]:
    """The input column of each gene (matched on the identifier column, then on var_names).

    Parameters
    ----------
    var
        The input's var table.
    genes
        The genes to knock out, each once.
    plan
        The plan (which columns the model reads).
    gene_column
        The var column of gene identifiers (None: var_names).

    Returns
    -------
    list of int
        One input column per gene, in order.

    Raises
    ------
    InputDataError
        No genes, a gene listed twice, or a gene not in the data.
    VocabularyError
        A gene in the data that the model never reads.
    """
    if not genes:
        raise InputDataError("no genes to knock out: pass gene names (--genes TP53,CD4 or @file)")
    duplicated = sorted({g for g in genes if list(genes).count(g) > 1})
    if duplicated:
        raise InputDataError(f"genes listed more than once: {duplicated}")
    identifiers = pd.Index(gene_identifiers(var, gene_column).astype(str))
    names = pd.Index(var.index.astype(str))
    columns, missing = [], []
    for gene in genes:
        where = identifiers.get_indexer([str(gene)])[0]
        if where < 0:
            where = names.get_indexer([str(gene)])[0]
        (missing if where < 0 else columns).append(gene if where < 0 else int(where))
    if missing:
        raise InputDataError(f"{len(missing)} gene(s) to knock out are not in the data: {missing[:10]}. "
                             "Use the data's gene identifiers (var_names or --gene-column).")
    unmapped = [g for g, c in zip(genes, columns, strict=True) if plan.column_slot[c] == UNMAPPED_SLOT]
    if unmapped:
        where = "the model's gene panel" if plan.mode == "panel" else "the model's vocabulary"
        raise VocabularyError(f"{unmapped[:10]} are in the data but not in {where}: the model never reads them, "
                              "so knocking them out changes nothing.")
    return columns


def knockout_variants(var: pd.DataFrame, model: TranslatorModel, plan: Plan, genes: Sequence[str], semantics: str,
                      *, gene_column: str | None = None) -> list[KnockoutVariant]:
    """One variant per gene, in the order asked (the plan's own column tokens, so its gene mapping).

    Parameters
    ----------
    var
        The input's var table.
    model
        The model (its gene panel, for a panel plan; its L).
    plan
        The plan of (input, model).
    genes
        The genes to knock out.
    semantics
        "drop" or "zero".
    gene_column
        The var column of gene identifiers (None: var_names).

    Returns
    -------
    list of KnockoutVariant
        Each gene's column and the alignment (column slots, real positions, gene ids) its
        knocked-out cells are prepared with.

    Raises
    ------
    InputDataError, VocabularyError
        As `resolve_columns`; an unknown semantics.
    """
    if semantics not in SEMANTICS:
        raise InputDataError(f"unknown knockout semantics {semantics!r}; choose one of {SEMANTICS}")
    columns = resolve_columns(var, genes, plan, gene_column)
    tokens = np.asarray(plan.column_tokens, dtype=np.int64)
    # The original mapping keeps every column of one token as its own position; otherwise they are added up.
    merge = plan.mode == "panel" or plan.gene_mapping != "original"
    if semantics == "zero":
        return [KnockoutVariant(str(g), c, _without_siblings(plan.column_slot, tokens, c) if merge else
                                plan.column_slot, plan.position_real, plan.gene_ids, True)
                for g, c in zip(genes, columns, strict=True)]
    length = model.config.max_genes
    variants = []
    for gene, column in zip(genes, columns, strict=True):
        without = tokens.copy()
        without[column] = 0  # an unmapped column is exactly a removed one for the alignment
        # Knocking out a gene removes all the columns that were added up into it.
        if merge:
            without[tokens == tokens[column]] = 0
        if plan.mode == "panel":
            panel_tokens = np.asarray(model.panel["genes"]["token_ids"], dtype=np.int64)
            slot, real, ids = panel_alignment(without, panel_tokens, length)
        else:
            slot, real, ids = reference_alignment(without, length, merge=merge)
        variants.append(KnockoutVariant(str(gene), column, slot, real, ids, False))
    return variants


def _without_siblings(column_slot: np.ndarray, tokens: np.ndarray, column: int) -> np.ndarray:
    """The alignment with the other columns added up into `column`'s gene left out: with `column`
    zeroed, the gene's summed expression is then 0, as "zero" means."""
    slots = column_slot.copy()
    siblings = (tokens == tokens[column]) & (np.arange(tokens.shape[0]) != column)
    slots[siblings] = UNMAPPED_SLOT
    return slots
