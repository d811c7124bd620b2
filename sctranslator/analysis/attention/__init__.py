"""`interactions`: gene-protein, gene-gene and protein-protein attention, accumulated over cells.

See `sctranslator.analysis.attention.passes` (gene-protein, received attention) and
`sctranslator.analysis.attention.pairs` (gene-gene, protein-protein) for the exact definitions. Cells stream through the
engine's source -> plan -> prepare path block by block; per cell the memory is O(L x (H1 + nb)),
never L x L, so the full-size model (L = 20,000) runs on a laptop.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import torch

from sctranslator.analysis.attention.attention_output import (
    MIN_RELATIVE_SPREAD,
    OUTPUT_KIND,
    interaction_anndata,
    minmax_columns_then_rows,
    top_genes,
    write_interaction_files,
)
from sctranslator.analysis.attention.groups import add_by_group, group_codes
from sctranslator.analysis.attention.kinds import (
    GENE_PROTEIN,
    PairSums,
    PairTables,
    annotate,
    pair_tables,
    parse_kinds,
    query_rows,
    write_pair_files,
)
from sctranslator.analysis.attention.passes import decoder_pass, encoder_pass, gene_to_protein_block, translate_rows
from sctranslator.engine.block_runner import BlockRunner
from sctranslator.engine.input_checks import check_expression_scale
from sctranslator.engine.sources import open_source
from sctranslator.engine.sources.subset import select_cells
from sctranslator.model import TranslatorModel, load_model
from sctranslator.options import IdType, Normalize, check_choices, check_sizes
from sctranslator.outputs import claim_output, one_writer
from sctranslator.plan import DEFAULT_MIN_COVERAGE, Plan, build_plan
from sctranslator.util.progress import progress_bar
from sctranslator.vocab import token_symbols

log = logging.getLogger(__name__)

DEFAULT_BLOCK_CELLS = 256


@dataclass
class InteractionResult:
    """Means over cells; per-group tables have one column per group ('all' first)."""

    gene_to_protein: pd.DataFrame | None  # genes x proteins: mean G[i, j] (None: gene-protein not asked for)
    scaled: pd.DataFrame | None  # the same, min-max scaled per column then per row (the original's normalisation)
    gene_attention: pd.DataFrame  # genes x groups: mean encoder attention received
    protein_attention: pd.DataFrame  # proteins x groups: mean decoder attention received
    top_genes: pd.DataFrame | None  # protein, rank, gene, score, fold_over_mean, scaled, separates_genes
    group_gene_to_protein: dict[str, pd.DataFrame]  # per obs group (groupby only)
    n_cells: dict[str, int]
    adata: ad.AnnData
    files: dict[str, Path] = field(default_factory=dict)
    kinds: tuple[str, ...] = ()
    pairs: PairTables | None = None  # gene-gene and protein-protein means and top-partner tables


def position_names(plan: Plan, var_names: pd.Index) -> tuple[np.ndarray, list[str]]:
    """Real model positions and a name for each: the input column that feeds it, else the token's symbol."""
    positions = np.flatnonzero(plan.position_real)
    names = np.asarray(token_symbols(plan.gene_ids[positions]), dtype=object)
    fed = plan.column_slot >= 0
    lookup = pd.Series(np.asarray(var_names.astype(str))[fed], index=plan.column_slot[fed])
    lookup = lookup[~lookup.index.duplicated()]
    found = lookup.reindex(positions)
    names = np.where(found.notna().to_numpy(), found.to_numpy(dtype=object), names)
    return positions, [str(n) for n in names]


class _Accumulator:
    """Sums over cells, slot 0 = all cells, slots 1.. = obs groups (float64)."""

    def __init__(self, n_slots: int, n_genes: int, n_proteins: int):
        self.count = np.zeros(n_slots, dtype=np.int64)
        self.gene_received = np.zeros((n_slots, n_genes))
        self.protein_received = np.zeros((n_slots, n_proteins))
        self.gene_to_protein = np.zeros((n_slots, n_genes, n_proteins))

    def means(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with np.errstate(invalid="ignore", divide="ignore"):
            n = self.count.astype(np.float64)
            return (self.gene_received / n[:, None], self.protein_received / n[:, None],
                    self.gene_to_protein / n[:, None, None])


def _batch_interactions(model: TranslatorModel, values: np.ndarray, plan: Plan, rows: torch.Tensor,
                        codes: np.ndarray, acc: _Accumulator, *, row_block: int, as_published: bool,
                        pairs: PairSums) -> None:
    """One batch of cells: trace encoder and decoder windows, then gene rows block by block."""
    batch = values.shape[0]
    tensor = torch.from_numpy(values)
    gene_ids = torch.from_numpy(plan.gene_ids).expand(batch, -1)
    gene_mask = torch.from_numpy(plan.position_real).expand(batch, -1)
    heads = model.enc.layers[0].attn.heads if len(model.enc.layers) else 1
    enc = encoder_pass(model, tensor, gene_ids, gene_mask, rows, row_block=row_block, as_published=as_published,
                       also=pairs.encoder_callback(heads, len(model.enc.layers)))
    pairs.count += batch
    translated = model.translate_sequence(enc.encodings)
    del enc.encodings
    decoders = [decoder_pass(model, translated, torch.from_numpy(ids).expand(batch, -1),
                             torch.from_numpy(mask).expand(batch, -1), as_published=as_published)
                for ids, mask in zip(plan.protein_windows, plan.protein_window_mask, strict=True)]
    pairs.add_decoders([d.queries for d in decoders], [d.keys for d in decoders])
    index = torch.from_numpy(plan.output_index)
    protein_received = torch.cat([d.protein_received for d in decoders], dim=1)[:, index]
    acc.count[0] += batch
    for code in np.unique(codes[codes > 0]):
        acc.count[code] += int((codes == code).sum())
    add_by_group(acc.gene_received, enc.gene_received.double().numpy(), codes)
    add_by_group(acc.protein_received, protein_received.double().numpy(), codes)
    gene_protein_rows = rows.shape[0] if GENE_PROTEIN in pairs.kinds else 0  # else skip the translator rows
    for lo in range(0, gene_protein_rows, row_block):
        translated_rows = translate_rows(model, enc.first_layer[:, lo:lo + row_block])
        block = gene_to_protein_block(translated_rows, decoders)[:, :, index]
        add_by_group(acc.gene_to_protein[:, lo:lo + block.shape[1]], block.double().numpy(), codes)


@one_writer
def interactions(data: Any, model: str | Path | TranslatorModel, proteins: Sequence[str] | None = None, *,
                 out: str | Path | None = None, top_k: int = 20, groupby: str | None = None,
                 block_cells: int = DEFAULT_BLOCK_CELLS, batch_size: int = 1, row_block: int = 2048,
                 normalize: Normalize | None = None, target_sum: float | None = None,
                 gene_column: str | None = None, id_type: IdType = "auto", layer: str | None = None,
                 min_coverage: float = DEFAULT_MIN_COVERAGE,
                 allow_low_coverage: bool = False, allow_empty_cells: bool = False, as_published: bool = False,
                 overwrite: bool = False, quiet: bool = False, gene_mapping: str | None = None,
             use_raw: bool = False, modality: str | None = None, missing_chunks: str = "error",
             kinds: str | Sequence[str] | None = None, genes: Sequence[str] | None = None,
             measurement: str | None = None, cells: Sequence[str] | None = None, obs_query: str | None = None,
             max_cells: int | None = None) -> InteractionResult:
    """Gene-to-protein interaction scores and received attention, averaged over the cells of `data`.

    `kinds`: which matrices, any of "gene-protein", "gene-gene", "protein-protein" (a list or a
    comma-separated string; default gene-protein and protein-protein). `genes`: the query genes of
    gene-gene attention (implies it); without them gene-gene runs over every gene the model reads
    and keeps each gene's `top_k` partners (O(L^2) work per cell, as the original's dense matrix;
    sums over 256 MiB go to a temporary file). With `out`, gene-gene adds top_gene_pairs.csv (and,
    with `genes`, gene_to_gene.csv / .png and obsm['gene_to_gene']; without, top_gene_pairs.png);
    protein-protein adds protein_to_protein.csv / .png, top_protein_pairs.csv and varp['protein_to_protein'(_scaled)].

    Returns an `InteractionResult`; with `out` (a directory) also writes interactions.h5ad (genes x
    proteins; X = mean score, layers 'scaled' and 'mean:<group>', obs/var 'received:<group>'),
    gene_to_protein.csv, top_genes.csv (the `top_k` genes per protein), gene_attention.csv,
    protein_attention.csv and gene_to_protein.png. `batch_size` cells are traced together (each
    costs about L x (H1 + nb) floats); `row_block` genes at a time go through the translator.
    `as_published` reproduces the original script's choice of hidden state for each layer's
    attention (see `capture_features`). Torch on CPU; the model runs in eval mode without autograd.

    Parameters: `data`, `model` and `proteins` as for `translate`; `top_k`: genes listed per protein
    (and partners per gene / protein in the pair tables);
    `groupby`: an obs column whose groups are also averaged; `block_cells`: cells read and prepared at
    a time. The input options (normalize, target_sum, gene_column, id_type, layer, min_coverage,
    allow_low_coverage, allow_empty_cells, gene_mapping, measurement) and the cell selection (cells,
    obs_query, max_cells: as for `translate`, recorded in uns['sctranslator_attention']['cell_selection'])
    are those of `sctranslator.options.InputOptions`.
    Empty cells (no counts in any gene the model reads) are refused unless `allow_empty_cells` (then
    their number is in uns['sctranslator_attention']['empty_cells']). `overwrite` replaces an earlier
    attention output at `out`; anything else there, and an `out` that is or overlaps an input, is
    refused before any work.

    Raises:
        OptionError: normalize or id_type outside its choices.
        OptionError: a size < 1 (named). BadCellsError: bad values in the matrix, or empty cells.
        OutputConflictError: `out` holds something else, or is or overlaps an input.
        CoverageError, VocabularyError, UnknownProteinError, CheckpointError: as for `translate`.
    """
    check_choices(normalize=normalize, id_type=id_type)
    chosen = parse_kinds(kinds, genes)
    check_sizes(batch_size=batch_size, block_cells=block_cells, row_block=row_block, top_k=top_k)
    if out is not None:
        claim_output(out, OUTPUT_KIND, inputs=(data, model), overwrite=overwrite)
    loaded = model if isinstance(model, TranslatorModel) else load_model(model)
    loaded.eval()
    source = open_source(data, layer=layer, use_raw=use_raw, modality=modality, missing_chunks=missing_chunks,
                         measurement=measurement, gene_column=gene_column)
    try:
        source = select_cells(source, cells=cells, obs_query=obs_query, max_cells=max_cells)
    except BaseException:
        source.close()
        raise
    selection = getattr(source, "selection", "") or ""
    try:
        plan = build_plan(source.var, loaded, proteins, gene_column=gene_column, id_type=id_type,
                          normalize=normalize, target_sum=target_sum, min_coverage=min_coverage,
                          allow_low_coverage=allow_low_coverage, gene_mapping=gene_mapping)
        check_expression_scale(source, plan)
        runner = BlockRunner(source, plan, allow_empty_cells=allow_empty_cells)
        codes, group_names = group_codes(source.read_obs(), groupby)
        positions, gene_names = position_names(plan, source.var.index)
        protein_names = plan.proteins["name"].astype(str).tolist()
        acc = _Accumulator(len(group_names), positions.shape[0], len(protein_names))
        query = query_rows(genes, _unique_genes(gene_names))
        pairs = PairSums(chosen, positions, query, all_genes=not genes, windows=plan.n_windows,
                         window_size=int(plan.protein_windows.shape[1]), row_block=row_block)
        rows = torch.from_numpy(positions)
        bar = progress_bar(total=source.n_obs, unit="cells", desc="attention", disable=quiet)
        n_empty = 0
        with torch.inference_mode():
            for start in range(0, source.n_obs, block_cells):
                stop = min(start + block_cells, source.n_obs)
                block, values = runner.read_prepared(start, stop)
                n_empty += block.n_empty
                for lo in range(0, stop - start, batch_size):
                    hi = min(lo + batch_size, stop - start)
                    _batch_interactions(loaded, values[lo:hi], plan, rows, codes[start + lo:start + hi], acc,
                                        row_block=row_block, as_published=as_published, pairs=pairs)
                    bar.update(hi - lo)
        bar.close()
    finally:
        source.close()
    if n_empty:
        log.warning("%d empty cell(s) (no counts in any gene the model reads) were included as constant cells, "
                    "as allowed", n_empty)
    try:
        return _result(acc, gene_names, positions, plan, group_names, top_k, out, groupby, as_published, n_empty,
                       pairs, selection)
    finally:
        pairs.close()


def _unique_genes(gene_names: list[str]) -> pd.Index:
    """Gene names can repeat (two columns, one symbol in panel mode): the tables' unique index."""
    gene_index = pd.Index(gene_names, name="gene")
    if gene_index.has_duplicates:
        gene_index = pd.Index(ad.utils.make_index_unique(pd.Index(gene_names)), name="gene")
    return gene_index


def _result(acc: _Accumulator, gene_names: list[str], positions: np.ndarray, plan: Plan, group_names: list[str],
            top_k: int, out: str | Path | None, groupby: str | None, as_published: bool,
            n_empty: int, pairs: PairSums, selection: str = "") -> InteractionResult:
    gene_mean, protein_mean, matrix_mean = acc.means()
    gene_index = _unique_genes(gene_names)
    protein_index = pd.Index(plan.proteins["name"].astype(str), name="protein")
    tables = pair_tables(pairs, gene_index, protein_index, plan.output_index, top_k, plan.protein_window_mask)
    gene_received = pd.DataFrame(gene_mean.T, index=gene_index, columns=group_names)
    protein_received = pd.DataFrame(protein_mean.T, index=protein_index, columns=group_names)
    matrix = scaled = top = None
    groups: dict[str, pd.DataFrame] = {}
    if GENE_PROTEIN in pairs.kinds:
        matrix = pd.DataFrame(matrix_mean[0], index=gene_index, columns=protein_index)
        scaled = minmax_columns_then_rows(matrix)
        groups = {name: pd.DataFrame(matrix_mean[i], index=gene_index, columns=protein_index)
                  for i, name in enumerate(group_names) if i > 0}
        top = top_genes(matrix, scaled, top_k)
        near_ties = sorted(set(top.loc[~top["separates_genes"], "protein"]))
        if near_ties:
            log.warning("attention does not separate genes for %d protein(s) (%s): their top-%d gene scores differ "
                        "by less than %.1g relative; the ranking in top_genes.csv is an ordering of near-ties",
                        len(near_ties), ", ".join(near_ties[:10]), top_k, MIN_RELATIVE_SPREAD)
    n_cells = {name: int(acc.count[i]) for i, name in enumerate(group_names)}
    gene_obs = pd.DataFrame({"position": positions, "token_id": plan.gene_ids[positions]}, index=gene_index)
    protein_var = pd.DataFrame({"gene": plan.proteins["gene"].astype(str).to_numpy(),
                                "token_id": plan.proteins["token_id"].to_numpy()}, index=protein_index)
    uns = {"sctranslator_attention": {"groups": list(n_cells), "n_cells": list(n_cells.values()),
                                      "groupby": groupby or "", "as_published": as_published,
                                      "empty_cells": n_empty, "cell_selection": selection,
                                      "plan": plan.summary(),
                                      "definition": "see sctranslator.analysis.attention.passes and .pairs"}}
    adata = interaction_anndata(matrix, scaled, gene_received, protein_received,
                                {name: frame.to_numpy() for name, frame in groups.items()}, gene_obs, protein_var, uns)
    annotate(adata, tables, pairs.kinds)
    result = InteractionResult(matrix, scaled, gene_received, protein_received, top, groups, n_cells, adata,
                               kinds=pairs.kinds, pairs=tables)
    if out is not None:
        result.files = write_interaction_files(out, adata, matrix, top, gene_received, protein_received, top_k,
                                               extra=lambda staging: write_pair_files(staging, tables, top_k))
    return result
