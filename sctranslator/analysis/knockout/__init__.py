"""`knockout`: pseudo-knockout of genes, batched over genes and cells, resumable.

For each gene, every cell is predicted twice: unperturbed and with the gene knocked out ("drop":
the column removed, as the original scTranslator script does; "zero": its expression set to 0).
The result is the change (knocked-out minus unperturbed) per gene x protein, as mean and sample
standard deviation over cells, overall and per obs group, optionally per cell.

The job runs on translate's engine: the input is opened the one way translate opens it
(`engine.translate.open_input`: sources, cell selection), and the blocks run on the Dask block
pipeline (`engine.pipeline.run_job`: workers, a progress bar that moves per batch, resume after any
interruption) with translate's backend, batch size and threads (`engine.job_sizing`). Each block is
read and validated once and its unperturbed prediction made once; every gene's perturbed input is
then built from the same in-memory block (`knockout_job.KnockoutJob`). Each finished block's
statistics are committed atomically (`store.KnockoutStore`), so a re-run resumes.
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

from sctranslator.analysis.attention.groups import group_codes, layer_key
from sctranslator.analysis.knockout.gene_columns import default_semantics, knockout_variants
from sctranslator.analysis.knockout.knockout_job import KnockoutJob
from sctranslator.analysis.knockout.knockout_output import (
    OUTPUT_KIND,
    check_out_path,
    effects_table,
    output_siblings,
    write_knockout_files,
)
from sctranslator.analysis.knockout.stats import merge_stats, std_from
from sctranslator.analysis.knockout.store import KnockoutStore
from sctranslator.engine.gpus import require_device
from sctranslator.engine.job_sizing import local_execution
from sctranslator.engine.pipeline import run_job
from sctranslator.engine.sources import Source
from sctranslator.engine.translate import make_plan, open_input
from sctranslator.errors import InputDataError
from sctranslator.model import TranslatorModel, load_model
from sctranslator.model.identity import model_fingerprint
from sctranslator.options import (
    IdType,
    KnockoutOptions,
    KnockoutSemantics,
    MissingChunks,
    Normalize,
    TranslateOptions,
)
from sctranslator.outputs import claim_output, writing
from sctranslator.plan import DEFAULT_MIN_COVERAGE, Plan

log = logging.getLogger(__name__)

__all__ = ["KnockoutResult", "knockout", "run_knockout"]


@dataclass
class KnockoutResult:
    """Effects of each knocked-out gene on each protein (knocked-out minus unperturbed prediction).

    Parameters
    ----------
    adata : AnnData
        Genes x proteins: X the mean over all cells; layers mean, std, mean:<group>, std:<group>.
    mean : pandas.DataFrame
        Genes x proteins mean change, all cells.
    std : pandas.DataFrame
        Genes x proteins standard deviation (ddof = 1), all cells.
    effects : pandas.DataFrame
        Long table: gene, protein, group, n_cells, mean, std.
    semantics : {'drop', 'zero'}
        How genes were knocked out.
    n_cells : dict of str to int
        Cells per group.
    per_cell : AnnData or None
        Cells x (gene, protein) changes, obsm['baseline'] the unperturbed predictions (with
        ``per_cell``).
    files : dict of str to pathlib.Path
        Files written.
    run : dict
        This run's blocks computed and skipped, and seconds.
    """

    adata: ad.AnnData  # genes x proteins: X = mean over all cells; layers mean, std, mean:<group>, std:<group>
    mean: pd.DataFrame  # genes x proteins, all cells
    std: pd.DataFrame  # genes x proteins, all cells (ddof = 1)
    effects: pd.DataFrame  # long: gene, protein, group, n_cells, mean, std
    semantics: str
    n_cells: dict[str, int]
    per_cell: ad.AnnData | None = None  # cells x (gene, protein) changes; obsm['baseline'] unperturbed predictions
    files: dict[str, Path] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)  # this run's blocks computed / skipped, seconds


def _identity(model: TranslatorModel, source: Source, plan: Plan, job: KnockoutJob, semantics: str,
              groupby: str | None) -> dict[str, Any]:
    return {"model": model_fingerprint(model), "input": source.fingerprint(), "plan": plan.fingerprint(),
            "genes": [[v.gene, v.column] for v in job.variants], "semantics": semantics, "groupby": groupby or "",
            "per_cell": job.per_cell}


def knockout(data: Any, model: str | Path | TranslatorModel, genes: Sequence[str],
             proteins: Sequence[str] | None = None, *, out: str | Path, semantics: KnockoutSemantics | None = None,
             block_cells: int | None = None, batch_size: int | None = None, workers: int | None = None,
             groupby: str | None = None, per_cell: bool = False, normalize: Normalize | None = None,
             target_sum: float | None = None, gene_column: str | None = None, id_type: IdType = "auto",
             layer: str | None = None, min_coverage: float = DEFAULT_MIN_COVERAGE, allow_low_coverage: bool = False,
             allow_empty_cells: bool = False, device: str = "cpu", overwrite: bool = False,
             quiet: bool = False, wait: bool = False, gene_mapping: str | None = None,
             use_raw: bool = False, modality: str | None = None, missing_chunks: MissingChunks = "error",
             measurement: str | None = None, cells: Sequence[str] | None = None, obs_query: str | None = None,
             max_cells: int | None = None) -> KnockoutResult:
    """Pseudo-knockout of `genes` on the predicted `proteins` of every (selected) cell of `data`.

    `out` (.h5ad or .zarr) receives a genes x proteins AnnData (X and layer 'mean': mean change
    over cells, 'std': its sample standard deviation, 'mean:<group>' and 'std:<group>' per obs
    group; var 'baseline_mean': the mean unperturbed prediction), beside it `<stem>_effects.csv`
    (long table), `<stem>_mean.csv`, `<stem>_heatmap.png`, and with `per_cell`
    `<stem>_per_cell<suffix>` (cells x gene|protein changes, obsm['baseline'] = unperturbed
    predictions). The keywords build one `sctranslator.options.KnockoutOptions` (the command line
    builds the same object), run by `run_knockout`.

    Parameters
    ----------
    data, model
        As for `translate` (a file, store, SOMA experiment or in-memory AnnData / MuData; a bundle,
        official checkpoint, model name or TranslatorModel).
    genes
        Names (as in the data's gene column, else its var names) to knock out.
    proteins
        As for `translate` (default: the model's panel).
    out
        The output .h5ad or .zarr.
    semantics
        "drop" (the column removed, as the original script; the default for published checkpoints)
        or "zero" (expression set to 0; the default for models with a fixed gene panel).
    block_cells
        Cells per block, the unit of work and resume (default: translate's block size divided by
        the forwards per cell, len(genes) + 1).
    batch_size
        Cells per model call (default: translate's for the model and device; on CUDA sized from free
        device memory).
    workers
        Concurrent blocks (default: translate's rule for the model and the cores).
    groupby
        An obs column whose groups are also summarised.
    per_cell
        Also write every cell's changes.
    device
        cpu, cuda or cuda:N (torch).
    normalize, target_sum, gene_column, id_type, layer, min_coverage, allow_low_coverage
        The input options of `sctranslator.options.InputOptions`, as for `translate`.
    allow_empty_cells, gene_mapping, use_raw, modality, missing_chunks, measurement
        Likewise.
    cells, obs_query, max_cells
        The cell selection, exactly as `translate` makes it (recorded in
        uns['sctranslator_knockout']['cell_selection']).
    overwrite
        Replace an earlier knockout output at `out` (anything else there, and an `out` that is or
        overlaps an input, is refused).
    quiet
        No progress bar.
    wait
        When another job writes `out`, wait for it instead of refusing.

    Returns
    -------
    KnockoutResult
        Changes on the model's target scale; `files`: what was written; `run`: this run's blocks
        computed and skipped (an interrupted run resumes from the committed blocks).

    Raises
    ------
    OptionError
        semantics, normalize or id_type outside its choices; a device that is not cpu, cuda or
        cuda:N; a size < 1 (named).
    InputDataError
        An unusable `out` suffix, no cells, a gene absent from the data or outside the model's
        panel, listed twice.
    CoverageError, VocabularyError, UnknownProteinError, CheckpointError
        As for `translate`.
    BadCellsError
        NaN/Inf/negative values, or empty cells unless `allow_empty_cells` (their number then goes
        in uns['sctranslator_knockout']['empty_cells']).
    StoreError
        An output written with other settings (without `overwrite`).
    OutputConflictError
        `out` holds something sctranslator did not write, or overlaps an input.
    """
    given = dict(locals())  # exactly the parameters
    del given["data"], given["model"]
    return run_knockout(data, model, KnockoutOptions.from_kwargs(**given))


def run_knockout(data: Any, model: str | Path | TranslatorModel, options: KnockoutOptions) -> KnockoutResult:
    """`knockout` from its options object: options -> claim output -> input -> plan -> job -> outputs.

    The one path of the Python API and the `knockout` command.

    Parameters
    ----------
    data, model
        As for `knockout`.
    options
        The validated-once options (`KnockoutOptions.from_kwargs` or `.from_cli_args`).

    Returns
    -------
    KnockoutResult

    Raises
    ------
    SctranslatorError
        As `knockout` lists.
    """
    with writing(options.output.wait):
        options.check()
        require_device(options.engine.device)  # before anything is created
        out_path = check_out_path(options.out)
        claim_output(out_path, OUTPUT_KIND, inputs=(data, model), overwrite=options.output.overwrite,
                     resumable=True, siblings=output_siblings(out_path))
        loaded = model if isinstance(model, TranslatorModel) else load_model(model)
        source = open_input(data, options.input)
        try:
            result, chosen, store = _run(source, loaded, out_path, options)
        finally:
            source.close()
        result.files = write_knockout_files(out_path, result.adata, result.effects, result.mean, result.per_cell,
                                            chosen)
        store.mark_finished()  # from now on, a deleted output leaves a stale ledger, removed by the next run
    return result


def _run(source: Source, loaded: TranslatorModel, out_path: Path,
         options: KnockoutOptions) -> tuple[KnockoutResult, str, KnockoutStore]:
    """Plan, variants, store and the job on the block pipeline; then the assembled result."""
    if source.n_obs == 0:
        raise InputDataError(f"{source.describe()} has no cells to knock genes out in")
    analysis, engine, given = options.analysis, options.engine, options.input
    plan = make_plan(source, loaded, TranslateOptions(input=given, proteins=options.proteins))
    chosen = analysis.semantics or default_semantics(plan)
    variants = knockout_variants(source.var, loaded, plan, list(options.genes), chosen,
                                 gene_column=given.gene_column)
    obs = source.read_obs()
    codes, group_names = group_codes(obs, analysis.groupby)
    execution = local_execution(loaded, plan, source.n_obs, device=engine.device, batch_size=engine.batch_size,
                                block_cells=engine.block_cells, workers=engine.workers, passes=len(variants) + 1)
    job = KnockoutJob(source=source, plan=plan, backend=execution.spec, sink=None,  # type: ignore[arg-type]
                      batch_size=execution.batch_size, allow_empty_cells=given.allow_empty_cells,
                      auto_batch_size=execution.auto_batch, flop_per_cell=execution.flop_per_cell,
                      compute_slots=execution.rule.compute_slots,
                      variants=variants, codes=codes, n_slots=len(group_names), per_cell=analysis.per_cell)
    identity = _identity(loaded, source, plan, job, chosen, analysis.groupby)
    store = KnockoutStore.open(out_path, identity=identity, n_obs=source.n_obs,
                               block_rows=max(1, min(execution.block_cells, source.n_obs)),
                               overwrite=options.output.overwrite)
    job.sink = store
    execution.announce()  # only once every check has passed: a refusal is one line
    stats = run_job(job, workers=execution.rule.workers, quiet=options.output.quiet,
                    desc=f"knockout x{len(variants)}")
    result = _assemble(job, obs, group_names, chosen, analysis.groupby)
    result.run = stats
    return result, chosen, store


def _merged(prefix: str, parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    total: dict[str, np.ndarray] | None = None
    for part in parts:
        stats = {k: part[f"{prefix}_{k}"] for k in ("count", "mean", "m2")}
        total = stats if total is None else merge_stats(total, stats)
    assert total is not None  # a job has at least one block
    return total


def _assemble(job: KnockoutJob, obs: pd.DataFrame, group_names: list[str], semantics: str,
              groupby: str | None) -> KnockoutResult:
    """The result from every committed block's statistics, merged in block order."""
    store: KnockoutStore = job.sink  # type: ignore[assignment]
    store.ledger.require_complete(f"knockout {store.path}")
    parts = [store.load(i) for i in range(len(store.blocks()))]
    delta, baseline = _merged("delta", parts), _merged("baseline", parts)
    means = np.where(delta["count"][:, None, None] > 0, delta["mean"], np.nan)
    stds = std_from(delta)
    genes = [v.gene for v in job.variants]
    proteins = job.plan.proteins["name"].astype(str).tolist()
    gene_index, protein_index = pd.Index(genes, name="gene"), pd.Index(proteins, name="protein")
    mean = pd.DataFrame(means[0], index=gene_index, columns=protein_index)
    std = pd.DataFrame(stds[0], index=gene_index, columns=protein_index)
    layers = {"mean": means[0], "std": stds[0]}
    for slot, name in enumerate(group_names[1:], start=1):
        layers[layer_key("mean", name)], layers[layer_key("std", name)] = means[slot], stds[slot]
    var = pd.DataFrame({"gene": job.plan.proteins["gene"].astype(str).to_numpy(),
                        "baseline_mean": baseline["mean"][0]}, index=protein_index)
    var_names = job.source.var.index.astype(str)
    gene_obs = pd.DataFrame({"column": [v.column for v in job.variants],
                             "var_name": [var_names[v.column] for v in job.variants],
                             "position": [int(job.plan.column_slot[v.column]) for v in job.variants]},
                            index=gene_index)
    n_cells = {name: int(delta["count"][i]) for i, name in enumerate(group_names)}
    empty = sum(int(part.get("empty_cells", 0)) for part in parts)
    if empty:
        log.warning("%d empty cell(s) (no counts in any gene the model reads) were included as constant cells, "
                    "as allowed", empty)
    uns = {"sctranslator_knockout": {"semantics": semantics, "groupby": groupby or "", "groups": list(n_cells),
                                     "n_cells": list(n_cells.values()), "empty_cells": empty,
                                     "plan": job.plan.summary(), "change": "knocked-out minus unperturbed",
                                     "cell_selection": getattr(job.source, "selection", "") or ""}}
    adata = ad.AnnData(X=means[0].astype(np.float32), obs=gene_obs, var=var, uns=uns,
                       layers={k: v.astype(np.float32) for k, v in layers.items()})
    effects = effects_table(genes, proteins, group_names, delta["count"], means, stds)
    per_cell = _per_cell(parts, obs, genes, proteins) if job.per_cell else None
    return KnockoutResult(adata, mean, std, effects, semantics, n_cells, per_cell)


def _per_cell(parts: list[dict[str, np.ndarray]], obs: pd.DataFrame, genes: list[str],
              proteins: list[str]) -> ad.AnnData:
    deltas = np.concatenate([p["per_cell_delta"] for p in parts])  # (cells, genes, proteins)
    baseline = np.concatenate([p["per_cell_baseline"] for p in parts])
    var = pd.DataFrame({"gene": np.repeat(genes, len(proteins)), "protein": np.tile(proteins, len(genes))})
    var.index = (var["gene"] + "|" + var["protein"]).to_numpy()
    result = ad.AnnData(X=deltas.reshape(deltas.shape[0], -1), obs=obs.copy(), var=var)
    result.obsm["baseline"] = baseline
    result.uns["baseline_proteins"] = list(proteins)
    return result
