"""`interactions`: gene-protein, gene-gene and protein-protein attention, accumulated over cells.

See `sctranslator.analysis.attention.passes` (gene-protein, received attention) and
`sctranslator.analysis.attention.pairs` (gene-gene, protein-protein) for the exact definitions. The
input is opened the one way translate opens it (`engine.translate.open_input`: sources, cell
selection) and the blocks run on the engine's Dask block pipeline (`engine.pipeline.run_job`:
workers, a progress bar that moves per batch, resume after any interruption): each block's sums are
committed (`attention_job.AttentionJob`) and the result is their sum. Per cell the memory is
O(L x (H1 + nb)), never L x L, so the full-size model (L = 20,000) runs on a laptop.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from sctranslator.analysis.attention.attention_job import Accumulator, AttentionJob, traced_model
from sctranslator.analysis.attention.attention_output import (
    MIN_RELATIVE_SPREAD,
    OUTPUT_KIND,
    interaction_anndata,
    minmax_columns_then_rows,
    top_genes,
    write_interaction_files,
)
from sctranslator.analysis.attention.groups import group_codes
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
from sctranslator.engine.block_results import BlockResults
from sctranslator.engine.gpus import require_device
from sctranslator.engine.job_sizing import local_execution
from sctranslator.engine.pipeline import run_job
from sctranslator.engine.sources import Source
from sctranslator.engine.translate import make_plan, open_input
from sctranslator.model import TranslatorModel, load_model
from sctranslator.model.identity import model_fingerprint
from sctranslator.options import AttentionOptions, IdType, MissingChunks, Normalize, TranslateOptions
from sctranslator.outputs import claim_output, writing
from sctranslator.plan import DEFAULT_MIN_COVERAGE, Plan
from sctranslator.vocab import token_symbols

log = logging.getLogger(__name__)

__all__ = ["InteractionResult", "interactions", "position_names", "run_interactions"]

DEFAULT_BLOCK_CELLS = 256


@dataclass
class InteractionResult:
    """What `interactions` computed: means over cells, per-group tables with one column per group ('all' first).

    Parameters
    ----------
    gene_to_protein : pandas.DataFrame or None
        Genes x proteins mean interaction scores (gene-protein kind).
    scaled : pandas.DataFrame or None
        The same, scaled per protein.
    gene_attention : pandas.DataFrame
        Attention each gene receives, per group.
    protein_attention : pandas.DataFrame
        Attention each protein receives, per group.
    top_genes : pandas.DataFrame or None
        The `top_k` genes per protein.
    group_gene_to_protein : dict of str to pandas.DataFrame
        Group -> its genes x proteins means.
    n_cells : dict of str to int
        Cells per group.
    adata : AnnData
        Genes x proteins: X the mean score, layers 'scaled' and 'mean:<group>'.
    files : dict of str to pathlib.Path
        Files written (with `out`).
    kinds : tuple of str
        The kinds computed.
    pairs : PairTables or None
        Gene-gene and protein-protein pair tables.
    run : dict
        This run's blocks computed and skipped, and seconds.
    """

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
    run: dict[str, Any] = field(default_factory=dict)  # this run's blocks computed / skipped, seconds


def position_names(plan: Plan, var_names: pd.Index) -> tuple[np.ndarray, list[str]]:
    """Real model positions and a name for each: the input column that feeds it, else the token's symbol.

    Parameters
    ----------
    plan
        The plan of (input, model).
    var_names
        The input's var names (one per column).

    Returns
    -------
    tuple
        (positions (n,) int64, names (n,) str).
    """
    positions = np.flatnonzero(plan.position_real)
    names = np.asarray(token_symbols(plan.gene_ids[positions]), dtype=object)
    fed = plan.column_slot >= 0
    lookup = pd.Series(np.asarray(var_names.astype(str))[fed], index=plan.column_slot[fed])
    lookup = lookup[~lookup.index.duplicated()]
    found = lookup.reindex(positions)
    names = np.where(found.notna().to_numpy(), found.to_numpy(dtype=object), names)
    return positions, [str(n) for n in names]


def interactions(data: Any, model: str | Path | TranslatorModel, proteins: Sequence[str] | None = None, *,
                 out: str | Path | None = None, top_k: int = 20, groupby: str | None = None,
                 block_cells: int = DEFAULT_BLOCK_CELLS, batch_size: int = 1, workers: int | None = None,
                 row_block: int = 2048, normalize: Normalize | None = None, target_sum: float | None = None,
                 gene_column: str | None = None, id_type: IdType = "auto", layer: str | None = None,
                 min_coverage: float = DEFAULT_MIN_COVERAGE,
                 allow_low_coverage: bool = False, allow_empty_cells: bool = False, as_published: bool = False,
                 overwrite: bool = False, quiet: bool = False, wait: bool = False, gene_mapping: str | None = None,
                 use_raw: bool = False, modality: str | None = None, missing_chunks: MissingChunks = "error",
                 kinds: str | Sequence[str] | None = None, genes: Sequence[str] | None = None,
                 measurement: str | None = None, cells: Sequence[str] | None = None, obs_query: str | None = None,
                 max_cells: int | None = None, device: str = "cpu") -> InteractionResult:
    """Gene-to-protein interaction scores and received attention, averaged over the (selected) cells of `data`.

    `kinds`: which matrices, any of "gene-protein", "gene-gene", "protein-protein" (a list or a
    comma-separated string; default gene-protein and protein-protein). `genes`: the query genes of
    gene-gene attention (implies it); without them gene-gene runs over every gene the model reads
    and keeps each gene's `top_k` partners (O(L^2) work per cell, as the original's dense matrix;
    sums over 256 MiB go to a temporary file). With `out`, gene-gene adds top_gene_pairs.csv (and,
    with `genes`, gene_to_gene.csv / .png and obsm['gene_to_gene']; without, top_gene_pairs.png);
    protein-protein adds protein_to_protein.csv / .png, top_protein_pairs.csv and
    varp['protein_to_protein'(_scaled)]. With `out` (a directory) also interactions.h5ad (genes x
    proteins; X = mean score, layers 'scaled' and 'mean:<group>', obs/var 'received:<group>'),
    gene_to_protein.csv, top_genes.csv (the `top_k` genes per protein), gene_attention.csv,
    protein_attention.csv and gene_to_protein.png. The keywords build one
    `sctranslator.options.AttentionOptions` (the command line builds the same object), run by
    `run_interactions`. Torch on `device` (a copy of the model moves there; the sums are kept on the
    CPU in float64); the model runs in eval mode without autograd.

    Parameters
    ----------
    data, model, proteins
        As for `translate`.
    out
        The output directory (None: nothing written). Its job ledger `.<name>.attention-job` sits
        beside it: re-running the same call after an interruption resumes from the committed blocks.
    top_k
        Genes listed per protein (and partners per gene / protein in the pair tables).
    groupby
        An obs column whose groups are also averaged.
    block_cells
        Cells per block, the unit of work and resume.
    batch_size
        Cells traced together (each costs about L x (H1 + nb) floats).
    workers
        Concurrent blocks; one traces at a time (the hooks sit on the one model), the others read
        and prepare (default: the `engine.threads` rule).
    row_block
        Genes at a time through the translator.
    as_published
        Reproduce the original script's choice of hidden state for each layer's attention (see
        `capture_features`).
    device
        cpu, cuda or cuda:N (torch), as for `knockout`; checked before anything is written.
    kinds, genes
        See above.
    normalize, target_sum, gene_column, id_type, layer, min_coverage, allow_low_coverage
        The input options of `sctranslator.options.InputOptions`, as for `translate`.
    allow_empty_cells, gene_mapping, use_raw, modality, missing_chunks, measurement
        Likewise; empty cells are refused unless allowed (their number then goes in
        uns['sctranslator_attention']['empty_cells']).
    cells, obs_query, max_cells
        The cell selection, exactly as `translate` makes it (recorded in
        uns['sctranslator_attention']['cell_selection']).
    overwrite
        Replace an earlier attention output at `out`; anything else there, and an `out` that is or
        overlaps an input, is refused before any work.
    quiet
        No progress bar.
    wait
        When another job writes `out`, wait for it instead of refusing.

    Returns
    -------
    InteractionResult

    Raises
    ------
    OptionError
        normalize or id_type outside its choices; a size < 1 (named); an unknown kind; a device that
        is not cpu, cuda or cuda:N.
    BackendError
        A CUDA device PyTorch does not see.
    BadCellsError
        Bad values in the matrix, or empty cells.
    OutputConflictError
        `out` holds something else, or is or overlaps an input.
    StoreError
        `out` was written with other settings (without `overwrite`).
    CoverageError, VocabularyError, UnknownProteinError, CheckpointError
        As for `translate`.
    """
    given = dict(locals())  # exactly the parameters
    del given["data"], given["model"]
    return run_interactions(data, model, AttentionOptions.from_kwargs(**given))


def run_interactions(data: Any, model: str | Path | TranslatorModel, options: AttentionOptions) -> InteractionResult:
    """`interactions` from its options object: options -> claim output -> input -> plan -> job -> outputs.

    The one path of the Python API and the `attention` command.

    Parameters
    ----------
    data, model
        As for `interactions`.
    options
        The validated-once options (`AttentionOptions.from_kwargs` or `.from_cli_args`).

    Returns
    -------
    InteractionResult

    Raises
    ------
    SctranslatorError
        As `interactions` lists.
    """
    with writing(options.output.wait):
        options.check()
        require_device(options.engine.device)  # before anything is created
        chosen = parse_kinds(options.kinds, options.genes)
        out = None if options.out is None else Path(options.out)
        if out is not None:
            claim_output(out, OUTPUT_KIND, inputs=(data, model), overwrite=options.output.overwrite, resumable=True)
        loaded = model if isinstance(model, TranslatorModel) else load_model(model)
        loaded.eval()
        source = open_input(data, options.input)
        scratch = None if out is not None else Path(tempfile.mkdtemp(prefix="sctranslator-attention-"))
        try:
            return _run(source, loaded, out, scratch, chosen, options)
        finally:
            source.close()
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)


def _run(source: Source, loaded: TranslatorModel, out: Path | None, scratch: Path | None, chosen: tuple[str, ...],
         options: AttentionOptions) -> InteractionResult:
    """Plan, job on the block pipeline, the summed blocks, the result (and its files with `out`)."""
    given, analysis, engine = options.input, options.analysis, options.engine
    plan = make_plan(source, loaded, TranslateOptions(input=given, proteins=options.proteins))
    codes, group_names = group_codes(source.read_obs(), analysis.groupby)
    positions, gene_names = position_names(plan, source.var.index)
    query = query_rows(options.genes, _unique_genes(gene_names))
    execution = local_execution(loaded, plan, source.n_obs, device=engine.device, batch_size=engine.batch_size,
                                block_cells=engine.block_cells, workers=engine.workers)
    pair_settings = {"kinds": chosen, "query": query, "all_genes": not options.genes, "windows": plan.n_windows,
                     "window_size": int(plan.protein_windows.shape[1])}
    job = AttentionJob(source=source, plan=plan, backend=execution.spec, sink=None,  # type: ignore[arg-type]
                       batch_size=execution.batch_size, allow_empty_cells=given.allow_empty_cells,
                       flop_per_cell=execution.flop_per_cell, compute_slots=1, in_caller_thread=True,
                       model=traced_model(loaded, engine.device),
                       positions=positions,
                       codes=codes, n_slots=len(group_names), n_proteins=len(plan.proteins),
                       row_block=analysis.row_block, as_published=analysis.as_published, pair_settings=pair_settings)
    # A temporary ledger (no `out`) is never resumed: it needs no identity (nor the model's fingerprint).
    identity = {"scratch": str(scratch)} if out is None else {
        "model": model_fingerprint(loaded), "input": source.fingerprint(), "plan": plan.fingerprint(),
        "kinds": list(chosen), "query": query.tolist(), "groupby": analysis.groupby or "",
        "as_published": analysis.as_published, "row_block": analysis.row_block}
    target = out if out is not None else scratch / "attention"  # type: ignore[operator]
    store = BlockResults.open(target, identity=identity, n_obs=source.n_obs,
                              block_rows=max(1, min(execution.block_cells, source.n_obs or 1)),
                              overwrite=options.output.overwrite, kind="attention")
    job.sink = store
    execution.announce()  # only once every check has passed: a refusal is one line
    stats = run_job(job, workers=execution.rule.workers, quiet=options.output.quiet, desc="attention")
    acc, pairs, n_empty = _summed(job)
    try:
        result = _result(acc, gene_names, positions, plan, group_names, analysis.top_k, out, analysis.groupby,
                         analysis.as_published, n_empty, pairs, getattr(source, "selection", "") or "")
    finally:
        pairs.close()
    if out is not None:
        store.mark_finished()  # from now on, a deleted output leaves a stale ledger, removed by the next run
    result.run = stats
    return result


def _summed(job: AttentionJob) -> tuple[Accumulator, PairSums, int]:
    """The sums over every committed block, added in block order (a resumed run equals an uninterrupted one)."""
    store: BlockResults = job.sink  # type: ignore[assignment]
    store.ledger.require_complete(f"attention {store.path}")
    acc, pairs = job.new_sums()
    n_empty = 0
    for index in range(len(store.blocks())):
        part = store.load(index)
        acc.add(part)
        pairs.count += int(part["pair_count"])
        n_empty += int(part["empty_cells"])
        if pairs.gene_sums is not None:
            pairs.gene_sums += part["gene_sums"].astype(pairs.gene_sums.dtype, copy=False)
        if pairs.protein_sums is not None:
            pairs.protein_sums += part["protein_sums"]
    if n_empty:
        log.warning("%d empty cell(s) (no counts in any gene the model reads) were included as constant cells, "
                    "as allowed", n_empty)
    return acc, pairs, n_empty


def _unique_genes(gene_names: list[str]) -> pd.Index:
    """Gene names can repeat (two columns, one symbol in panel mode): the tables' unique index."""
    gene_index = pd.Index(gene_names, name="gene")
    if gene_index.has_duplicates:
        gene_index = pd.Index(ad.utils.make_index_unique(pd.Index(gene_names)), name="gene")
    return gene_index


def _result(acc: Accumulator, gene_names: list[str], positions: np.ndarray, plan: Plan, group_names: list[str],
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
