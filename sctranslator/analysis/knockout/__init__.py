"""`knockout`: pseudo-knockout of genes, batched over genes and cells, resumable.

For each gene, every cell is predicted twice: unperturbed and with the gene knocked out ("drop":
the column removed, as the original scTranslator script does; "zero": its expression set to 0).
The result is the change (knocked-out minus unperturbed) per gene x protein, as mean and sample
standard deviation over cells, overall and per obs group, optionally per cell.

Each block of cells is read and validated once and its unperturbed prediction made once; every
gene's perturbed input is then built from the same in-memory block by the engine's Numba
`prepare_values` kernel (O(cells x L), negligible next to the model) and predicted through the torch
backend. Each finished block's statistics are committed atomically, so a re-run resumes.
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
import scipy.sparse as sp

from sctranslator.analysis.attention.groups import group_codes, layer_key
from sctranslator.analysis.knockout.gene_columns import KnockoutVariant, default_semantics, knockout_variants
from sctranslator.analysis.knockout.knockout_output import (
    OUTPUT_KIND,
    check_out_path,
    effects_table,
    output_siblings,
    write_knockout_files,
)
from sctranslator.analysis.knockout.stats import block_stats, merge_stats, std_from
from sctranslator.analysis.knockout.store import KnockoutStore
from sctranslator.engine.backends.base import Batch
from sctranslator.engine.backends.torch_backend import TorchBackend
from sctranslator.engine.block_runner import BlockRunner
from sctranslator.engine.input_checks import check_expression_scale
from sctranslator.engine.sources import Source, open_source
from sctranslator.engine.sources.subset import select_cells
from sctranslator.errors import InputDataError
from sctranslator.model import TranslatorModel, load_model
from sctranslator.model.identity import model_fingerprint
from sctranslator.options import IdType, KnockoutSemantics, Normalize, check_choices, check_sizes
from sctranslator.outputs import claim_output, one_writer
from sctranslator.plan import DEFAULT_MIN_COVERAGE, Plan, build_plan
from sctranslator.util.progress import progress_bar

log = logging.getLogger(__name__)

DEFAULT_BLOCK_CELLS = 1024


@dataclass
class KnockoutResult:
    """Effects of each knocked-out gene on each protein (knocked-out minus unperturbed prediction)."""

    adata: ad.AnnData  # genes x proteins: X = mean over all cells; layers mean, std, mean:<group>, std:<group>
    mean: pd.DataFrame  # genes x proteins, all cells
    std: pd.DataFrame  # genes x proteins, all cells (ddof = 1)
    effects: pd.DataFrame  # long: gene, protein, group, n_cells, mean, std
    semantics: str
    n_cells: dict[str, int]
    per_cell: ad.AnnData | None = None  # cells x (gene, protein) changes; obsm['baseline'] unperturbed predictions
    files: dict[str, Path] = field(default_factory=dict)


@dataclass
class _Job:
    runner: BlockRunner
    variants: list[KnockoutVariant]
    backend: TorchBackend
    codes: np.ndarray
    n_slots: int
    batch_size: int
    per_cell: bool

    @property
    def source(self) -> Source:
        return self.runner.source

    @property
    def plan(self) -> Plan:
        return self.runner.plan


def _zeroed(block: Any, column: int) -> Any:
    """A copy of the block with one column's values set to 0 (CSR: stored entries zeroed in place)."""
    if sp.issparse(block):
        copy = sp.csr_matrix(block, copy=True)
        copy.data[copy.indices == column] = 0
        return copy
    copy = np.array(block, copy=True)
    copy[:, column] = 0
    return copy


def _predict(job: _Job, values: np.ndarray, gene_ids: np.ndarray, gene_mask: np.ndarray) -> np.ndarray:
    plan = job.plan
    out = np.empty((values.shape[0], plan.output_index.shape[0]), dtype=np.float64)
    for lo in range(0, values.shape[0], job.batch_size):
        batch = Batch(values[lo:lo + job.batch_size], gene_ids, gene_mask, plan.protein_windows,
                      plan.protein_window_mask)
        out[lo:lo + job.batch_size] = job.backend.predict(batch)[:, plan.output_index]
    return out


def _compute_block(job: _Job, start: int, stop: int) -> dict[str, np.ndarray]:
    """Unperturbed and every gene's knocked-out predictions for rows [start, stop) -> block statistics."""
    plan, runner = job.plan, job.runner
    block, values = runner.read_prepared(start, stop)
    baseline = _predict(job, values, plan.gene_ids, plan.position_real)
    deltas = np.empty((stop - start, len(job.variants), baseline.shape[1]), dtype=np.float64)
    for g, variant in enumerate(job.variants):
        data = _zeroed(block.data, variant.column) if variant.zero_column else block.data
        runner.prepare(data, column_slot=variant.column_slot, position_real=variant.position_real, out=values)
        deltas[:, g] = _predict(job, values, variant.gene_ids, variant.position_real) - baseline
    codes = job.codes[start:stop]
    arrays = {f"delta_{k}": v for k, v in block_stats(deltas, codes, job.n_slots).items()}
    arrays.update({f"baseline_{k}": v for k, v in block_stats(baseline, codes, job.n_slots).items()})
    arrays["empty_cells"] = np.asarray(block.n_empty, dtype=np.int64)
    if job.per_cell:
        arrays["per_cell_delta"] = deltas.astype(np.float32)
        arrays["per_cell_baseline"] = baseline.astype(np.float32)
    return arrays


def _identity(model: TranslatorModel, source: Source, plan: Plan, variants: list[KnockoutVariant],
              semantics: str, groupby: str | None, per_cell: bool) -> dict[str, Any]:
    return {"model": model_fingerprint(model), "input": source.fingerprint(), "plan": plan.fingerprint(),
            "genes": [[v.gene, v.column] for v in variants], "semantics": semantics, "groupby": groupby or "",
            "per_cell": per_cell}


@one_writer
def knockout(data: Any, model: str | Path | TranslatorModel, genes: Sequence[str],
             proteins: Sequence[str] | None = None, *, out: str | Path, semantics: KnockoutSemantics | None = None,
             block_cells: int = DEFAULT_BLOCK_CELLS, batch_size: int = 8, groupby: str | None = None,
             per_cell: bool = False, normalize: Normalize | None = None, target_sum: float | None = None,
             gene_column: str | None = None, id_type: IdType = "auto", layer: str | None = None,
             min_coverage: float = DEFAULT_MIN_COVERAGE, allow_low_coverage: bool = False,
             allow_empty_cells: bool = False, device: str = "cpu", overwrite: bool = False,
             quiet: bool = False, gene_mapping: str | None = None,
             use_raw: bool = False, modality: str | None = None, missing_chunks: str = "error",
             measurement: str | None = None, cells: Sequence[str] | None = None, obs_query: str | None = None,
             max_cells: int | None = None) -> KnockoutResult:
    """Pseudo-knockout of `genes` on the predicted `proteins` of every cell of `data`.

    `semantics`: "drop" (default for published checkpoints, the original's) or "zero" (default for
    models with a fixed gene panel). `out` (.h5ad or .zarr) receives a genes x proteins AnnData (X and
    layer 'mean': mean change over cells, 'std': its sample standard deviation, 'mean:<group>' and
    'std:<group>' per obs group; var 'baseline_mean': the mean unperturbed prediction), beside it
    `<stem>_effects.csv` (long table), `<stem>_mean.csv`, `<stem>_heatmap.png`, and with `per_cell`
    `<stem>_per_cell<suffix>` (cells x gene|protein changes, obsm['baseline'] = unperturbed predictions).
    Interrupted runs resume from the committed blocks; other settings need `overwrite`.

    Parameters: `data` and `model` as for `translate`; `genes`: names (as in the data's gene column)
    to knock out; `proteins`: as for `translate`. `block_cells`: cells per block (the unit of work
    and resume); `batch_size`: cells per model call (each gene adds one call per batch); `groupby`:
    an obs column whose groups are also summarised; `device`: cpu, cuda or cuda:N (torch). The input
    options (normalize, target_sum, gene_column, id_type, layer, min_coverage, allow_low_coverage,
    allow_empty_cells, gene_mapping, measurement) and the cell selection (cells, obs_query, max_cells: as for
    `translate`, recorded in uns['sctranslator_knockout']['cell_selection']) are those of
    `sctranslator.options.InputOptions`; empty cells
    are refused unless `allow_empty_cells` (their number then goes in
    uns['sctranslator_knockout']['empty_cells']). `overwrite` replaces only an earlier knockout
    output (anything else at `out`, and an `out` that is or overlaps an input, is refused).

    Returns a KnockoutResult (changes on the model's target scale; `files`: what was written).

    Raises:
        OptionError: semantics, normalize or id_type outside its choices.
        InputDataError: an unusable `out` suffix, sizes < 1, no cells, a gene absent from the data
            or outside the model's panel, bad values in the matrix.
        CoverageError, VocabularyError, UnknownProteinError, CheckpointError: as for `translate`.
        BadCellsError: NaN/Inf/negative values, or empty cells (see above).
        StoreError: an output written with other settings (without `overwrite`).
        OutputConflictError: `out` holds something sctranslator did not write, or overlaps an input.
    """
    check_choices(semantics=semantics, normalize=normalize, id_type=id_type)
    out_path = check_out_path(out)
    check_sizes(batch_size=batch_size, block_cells=block_cells)
    claim_output(out_path, OUTPUT_KIND, inputs=(data, model), overwrite=overwrite, resumable=True,
                 siblings=output_siblings(out_path))
    loaded = model if isinstance(model, TranslatorModel) else load_model(model)
    source = open_source(data, layer=layer, use_raw=use_raw, modality=modality, missing_chunks=missing_chunks,
                         measurement=measurement, gene_column=gene_column)
    try:
        source = select_cells(source, cells=cells, obs_query=obs_query, max_cells=max_cells)
    except BaseException:
        source.close()
        raise
    try:
        if source.n_obs == 0:
            raise InputDataError(f"{source.describe()} has no cells to knock genes out in")
        plan = build_plan(source.var, loaded, proteins, gene_column=gene_column, id_type=id_type, normalize=normalize,
                          target_sum=target_sum, min_coverage=min_coverage, allow_low_coverage=allow_low_coverage,
                          gene_mapping=gene_mapping)
        chosen = semantics or default_semantics(plan)
        variants = knockout_variants(source.var, loaded, plan, list(genes), chosen, gene_column=gene_column)
        check_expression_scale(source, plan)
        obs = source.read_obs()
        codes, group_names = group_codes(obs, groupby)
        identity = _identity(loaded, source, plan, variants, chosen, groupby, per_cell)
        store = KnockoutStore.open(out_path, identity=identity, n_obs=source.n_obs,
                                   block_rows=max(1, min(block_cells, source.n_obs or 1)), overwrite=overwrite)
        runner = BlockRunner(source, plan, allow_empty_cells=allow_empty_cells)
        job = _Job(runner, variants, TorchBackend(loaded, device), codes, len(group_names), batch_size, per_cell)
        _run(job, store, quiet)
        result = _assemble(job, store, obs, group_names, chosen, groupby)
    finally:
        source.close()
    result.files = write_knockout_files(out_path, result.adata, result.effects, result.mean, result.per_cell,
                                        chosen)
    return result


def _run(job: _Job, store: KnockoutStore, quiet: bool) -> None:
    blocks, pending = store.blocks(), store.pending()
    done = sum(stop - start for i, (start, stop) in enumerate(blocks) if i not in set(pending))
    if done:
        log.info("resuming knockout: %d of %d blocks already committed", len(blocks) - len(pending), len(blocks))
    bar = progress_bar(total=store.n_obs, initial=done, unit="cells", desc=f"knockout x{len(job.variants)}",
                       disable=quiet)
    for index in pending:
        start, stop = blocks[index]
        store.commit(index, _compute_block(job, start, stop))
        bar.update(stop - start)
    bar.close()


def _merged(prefix: str, parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    total: dict[str, np.ndarray] | None = None
    for part in parts:
        stats = {k: part[f"{prefix}_{k}"] for k in ("count", "mean", "m2")}
        total = stats if total is None else merge_stats(total, stats)
    assert total is not None  # a job has at least one block
    return total


def _assemble(job: _Job, store: KnockoutStore, obs: pd.DataFrame, group_names: list[str], semantics: str,
              groupby: str | None) -> KnockoutResult:
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
