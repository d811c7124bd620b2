"""Panels and model inputs for training, made by the engine's own plan and kernels.

Training and `translate` must see identical numbers for the same cell, so the trainer attaches its
panels to the model, asks `build_plan` for the alignment, and calls `prepare_values` on CSR blocks,
exactly as the engine does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from sctranslator.engine.block_runner import BlockRunner
from sctranslator.engine.input_checks import check_counts_table, check_expression_scale
from sctranslator.errors import InputDataError, UnknownProteinError
from sctranslator.kernels import scale_targets
from sctranslator.model import TranslatorModel
from sctranslator.plan import Plan, build_plan, column_tokens, gene_identifiers
from sctranslator.train.paired import PairedData
from sctranslator.vocab import map_genes, map_proteins, token_symbols
from sctranslator.vocab.proteins import check_protein_list

log = logging.getLogger(__name__)

PREPARE_BLOCK_CELLS = 1024


@dataclass
class TrainingArrays:
    """Prepared values and targets of all paired cells, held in memory (held-out ones included).

    The trainer streams (`sctranslator.train.stream`); this whole-data form is the in-memory reference
    the tests compare the stream with, and a convenience for small data.

    Parameters
    ----------
    values : numpy.ndarray
        float32 ``(n_cells, K)``: prepared values of the K panel genes (positions 0..K-1).
    targets : numpy.ndarray
        float32 ``(n_cells, n_proteins)``, scaled per cell.
    gene_ids : numpy.ndarray
        int64 ``(L,)``.
    gene_mask : numpy.ndarray
        bool ``(L,)``.
    protein_ids : numpy.ndarray
        int64 ``(P,)``.
    protein_mask : numpy.ndarray
        bool ``(P,)``.
    plan : Plan
        The data's plan.
    n_empty_cells : int
        Paired cells with no counts in any panel gene (when allowed).
    """

    values: np.ndarray  # float32 (n_cells, K): prepared values of the K panel genes (positions 0..K-1)
    targets: np.ndarray  # float32 (n_cells, n_proteins): scaled per cell
    gene_ids: np.ndarray  # int64 (L,)
    gene_mask: np.ndarray  # bool (L,)
    protein_ids: np.ndarray  # int64 (P,)
    protein_mask: np.ndarray  # bool (P,)
    plan: Plan
    n_empty_cells: int = 0  # paired cells with no counts in any panel gene (trained on when allowed)


def data_gene_tokens(var: pd.DataFrame, *, gene_column: str | None = None, id_type: str = "auto",
                     only: Sequence[str] | None = None, gene_mapping: str = "extended") -> np.ndarray:
    """The token id of each input column, for building a gene panel from the data.

    make_unique copies ("CD4-1") take their gene's token: the plan adds them up into it.

    Parameters
    ----------
    var : pandas.DataFrame
        The RNA's var table.
    gene_column : str or None
        The column holding the identifiers; None: the index.
    id_type : str
        Kind of identifier, or "auto".
    only : sequence of str or None
        Keep only these genes; None: all mapped ones.
    gene_mapping : str
        "original" or "extended".

    Returns
    -------
    numpy.ndarray
        int64 ``(n_vars,)``; 0 where unmapped or not among `only`.

    Raises
    ------
    InputDataError
        Genes of `only` missing from the data, or none of the genes mapping.
    """
    identifiers = gene_identifiers(var, gene_column)
    tokens = column_tokens(map_genes(identifiers, id_type=id_type, mapping=gene_mapping), merge_copies=True)
    if only is not None:
        wanted = pd.Index([str(g) for g in only])
        missing = wanted.difference(identifiers)
        if len(missing):
            raise InputDataError(f"{len(missing)} of the genes chosen for the panel are not in the RNA data "
                                 f"(e.g. {list(missing[:5])})")
        tokens = np.where(identifiers.isin(wanted), tokens, 0)
    return tokens


def gene_panel_from_data(tokens: np.ndarray, max_genes: int | None = None,
                         gene_mapping: str = "extended") -> dict[str, Any]:
    """A gene panel from the data: the mapped genes in the dataset's order, each once, the first L kept.

    It records the gene mapping that gave the tokens (a bundle's translate runs reuse it).

    Parameters
    ----------
    tokens : numpy.ndarray
        int64 token per input column (see `data_gene_tokens`).
    max_genes : int or None
        L: the most genes kept; None: all.
    gene_mapping : str
        The mapping that gave the tokens.

    Returns
    -------
    dict
        token_ids, symbols and gene_mapping of the panel.
    """
    mapped = tokens[tokens > 0]
    unique = pd.unique(mapped)[:max_genes] if max_genes else pd.unique(mapped)
    if unique.size == 0:
        raise InputDataError("none of the RNA genes map onto the model's vocabulary: check the gene identifiers "
                             "(gene_column / id_type)")
    unique = np.asarray(unique, dtype=np.int64)
    return {"token_ids": unique.tolist(), "symbols": [str(s) for s in token_symbols(unique)],
            "mapping": gene_mapping}


def protein_panel(names: Sequence[str], wanted: Sequence[str] | None = None) -> tuple[dict[str, list], np.ndarray]:
    """A protein panel from a measured table, and where each panel protein is in it.

    Isotype controls and blanks are left out (they are not proteins to predict); any other name that
    maps to no gene is an error, unless `wanted` selects the proteins to train on.

    Parameters
    ----------
    names : sequence of str
        The measured table's protein names.
    wanted : sequence of str or None
        Train on these only.

    Returns
    -------
    panel : dict
        names, token_ids and genes of the panel.
    columns : numpy.ndarray
        int64 column of each panel protein in the measured table.

    Raises
    ------
    UnknownProteinError
        A wanted name not in the table, names that map to no gene, or no protein left.
    """
    names = check_protein_list(names, "the measured protein table's columns")
    if wanted is not None:
        wanted = check_protein_list(wanted, "the proteins to train on")
        missing = [w for w in wanted if w not in names]
        if missing:
            raise UnknownProteinError(f"{missing} are not in the protein table; it has {names}")
        columns = [names.index(w) for w in wanted]
    else:
        columns = list(range(len(names)))
    mapping = map_proteins([names[c] for c in columns])
    controls = [names[c] for c, s in zip(columns, mapping.status, strict=True) if s == "control"]
    unmapped = [names[c] for c, s in zip(columns, mapping.status, strict=True) if s == "unmapped"]
    if unmapped:
        raise UnknownProteinError(
            f"{len(unmapped)} protein name(s) map to no gene: {unmapped}. Rename them to the gene that encodes "
            "the protein (e.g. PTPRC for CD45), or choose the proteins to train on (proteins=[...])."
        )
    if controls:
        log.warning("leaving out isotype controls / blanks: %s", controls)
    keep = [i for i, s in enumerate(mapping.status) if s != "control"]
    if not keep:
        raise UnknownProteinError("no protein left to train on after removing isotype controls")
    panel = {"names": [names[columns[i]] for i in keep],
             "token_ids": [int(mapping.token_ids[i]) for i in keep],
             "genes": [str(mapping.genes[i]) for i in keep]}
    return panel, np.asarray([columns[i] for i in keep], dtype=np.int64)


def attach_panels(model: TranslatorModel, genes: dict[str, list], proteins: dict[str, list],
                  preprocessing: dict[str, Any]) -> None:
    """Record the panels and preprocessing on the model: the bundle persists them, the plan reads them.

    Parameters
    ----------
    model : TranslatorModel
        The model, changed in place.
    genes : dict
        The gene panel.
    proteins : dict
        The protein panel.
    preprocessing : dict
        normalize, target_sum and target_scaling.

    Raises
    ------
    InputDataError
        A panel larger than the model's L or P.
    """
    if len(genes["token_ids"]) > model.config.max_genes:
        raise InputDataError(f"the gene panel has {len(genes['token_ids'])} genes but the model takes "
                             f"L={model.config.max_genes}")
    if len(proteins["names"]) > model.config.max_proteins:
        raise InputDataError(f"{len(proteins['names'])} proteins to train on but the model's decoder takes "
                             f"P={model.config.max_proteins}; choose fewer proteins or a larger max_proteins")
    model.panel = {"genes": genes, "proteins": proteins}
    model.preprocessing = dict(preprocessing)


def prepare_arrays(data: PairedData, model: TranslatorModel, protein_columns: np.ndarray, *,
                   gene_column: str | None = None, id_type: str = "auto", target_scaling: str = "minmax",
                   allow_low_coverage: bool = False, allow_empty_cells: bool = False,
                   gene_mapping: str | None = None) -> TrainingArrays:
    """Model values and scaled targets of every paired cell, through the engine's plan and block runner.

    Warns when the RNA or protein values do not look like the counts the preprocessing expects.

    Parameters
    ----------
    data : PairedData
        The paired cells.
    model : TranslatorModel
        The model, its panels attached.
    protein_columns : numpy.ndarray
        int64 trained protein columns.
    gene_column : str or None
        The var column of gene identifiers.
    id_type : str
        Kind of identifier, or "auto".
    target_scaling : str
        Per-cell scaling of the targets.
    allow_low_coverage : bool
        Go on when few genes map.
    allow_empty_cells : bool
        Keep cells with no counts in any panel gene.
    gene_mapping : str or None
        The gene mapping; None: the model's.

    Returns
    -------
    TrainingArrays
        Values, targets and panels.

    Raises
    ------
    BadCellsError
        NaN / Inf / negative RNA values, or empty cells unless `allow_empty_cells`.
    CoverageError
        Too few genes map, unless `allow_low_coverage`.
    """
    plan = build_plan(data.source.var, model, gene_column=gene_column, id_type=id_type,
                      allow_low_coverage=allow_low_coverage, gene_mapping=gene_mapping)
    check_expression_scale(data.source, plan, what="the RNA")
    check_counts_table(data.proteins, what="the protein table",
                       advice=f"targets are scaled from counts ({target_scaling}); give raw protein counts")
    runner = BlockRunner(data.source, plan, allow_empty_cells=allow_empty_cells)
    n_panel = int(plan.position_real.sum())
    values = np.empty((data.n_cells, n_panel), dtype=np.float32)
    rows = data.rows
    n_empty = 0
    first, last = (int(rows[0]), int(rows[-1]) + 1) if rows.size else (0, 0)
    for start in range(first, last, PREPARE_BLOCK_CELLS):
        stop = min(start + PREPARE_BLOCK_CELLS, last)
        lo, hi = np.searchsorted(rows, [start, stop])
        if lo == hi:
            continue
        block, prepared = runner.read_prepared(start, stop, rows[lo:hi])
        values[lo:hi] = prepared[:, :n_panel]
        n_empty += block.n_empty
    if n_empty:
        log.warning("%d paired cell(s) have no counts in any panel gene; trained on as constant cells, as allowed",
                    n_empty)
    targets = scale_targets(data.proteins[:, protein_columns], target_scaling)
    window = plan.protein_windows[0]
    return TrainingArrays(values=values, targets=targets, gene_ids=plan.gene_ids, gene_mask=plan.position_real,
                          protein_ids=window, protein_mask=plan.protein_window_mask[0], plan=plan,
                          n_empty_cells=n_empty)
