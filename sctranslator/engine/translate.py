"""`translate`: the product's main job, from any source to an AnnData of predicted proteins."""

from __future__ import annotations

import logging
import platform
import re
import tempfile
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import anndata as ad
import pandas as pd

from sctranslator import __version__
from sctranslator._atomic import atomic_write_path, require_space
from sctranslator.engine.backends.base import BackendSpec
from sctranslator.engine.backends.onnx_cache import onnx_file_for
from sctranslator.engine.backends.registry import choose_backend, get_backend
from sctranslator.engine.gpus import visible_gpus
from sctranslator.engine.input_checks import check_expression_scale
from sctranslator.engine.pipeline import BlockJob, check_cluster, check_scheduler_address, run_job
from sctranslator.engine.predictions import TemporaryStore
from sctranslator.engine.remote_sink import open_sink
from sctranslator.engine.remote_writeback import check_locations, upload_write_back
from sctranslator.engine.sink import OUTPUT_KIND
from sctranslator.engine.sources import open_source
from sctranslator.engine.sources.base import require_unique_cell_names
from sctranslator.engine.sources.subset import select_cells
from sctranslator.engine.threads import available_cpus, cell_flop, choose_parallelism
from sctranslator.engine.writeback import (
    check_keys,
    set_inplace,
    write_h5ad_with_proteins,
    write_mudata_with_proteins,
)
from sctranslator.errors import BackendError, InputDataError, OptionError, OutputConflictError, StoreError
from sctranslator.model import TranslatorModel, load_model
from sctranslator.model.identity import model_fingerprint
from sctranslator.options import (
    Backend,
    GeneMapping,
    IdType,
    MissingChunks,
    Normalize,
    Precision,
    check_backend_options,
    check_choices,
)
from sctranslator.outputs import claim_output, one_writer, write_identity
from sctranslator.plan import DEFAULT_MIN_COVERAGE, Plan, build_plan
from sctranslator.storage import is_url
from sctranslator.token_layout import TokenLayout

log = logging.getLogger(__name__)

WRITEBACK_KIND = "translate-writeback"

def default_block_cells(model: TranslatorModel) -> int:
    """Cells per block (the unit of work, commit and resume): about 4 M model values per block, so a
    block of the full-size model (L = 20,000) is 209 cells and one of a tiny model up to 8,192."""
    return max(16, min(8192, 4_194_304 // model.config.max_genes))


def _versions() -> dict[str, str]:
    found = {"sctranslator": __version__, "python": platform.python_version()}
    for package in ("torch", "numpy", "numba", "anndata", "zarr", "dask", "onnxruntime"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def default_batch_size(model: TranslatorModel, device: str) -> int:
    """Cells per backend call: small models amortise call overhead over many cells; on CPU the
    full-size model (L = 20,000) is fastest one cell at a time; GPUs like bigger batches."""
    budget = 32_768 if device == "cpu" else 262_144
    return max(1, min(512, budget // model.config.max_genes))


def check_device(device: str) -> None:
    """OptionError unless `device` is cpu, cuda or cuda:N."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise OptionError(f"unknown device {device!r}; use cpu, cuda or cuda:N (for example cuda:1)")


def encoder_tokens(plan: Plan, backend: str, spec: BackendSpec) -> int:
    """How many gene tokens the encoder computes per cell: L, or with the padding collapse the
    real positions plus one shared padding token (recorded so a run says which path it took)."""
    collapsing = backend != "torch" or spec.options.get("collapse_padding", True)
    if not collapsing:
        return plan.max_genes
    return TokenLayout.for_layout(plan.gene_ids, plan.position_real).tokens


def _output_var(plan: Plan) -> pd.DataFrame:
    table = plan.proteins
    var = pd.DataFrame({"gene": table["gene"].astype(str).to_numpy(), "token_id": table["token_id"].to_numpy(),
                        "window": table["window"].to_numpy(), "position": table["position"].to_numpy()},
                       index=pd.Index(table["name"].astype(str).to_numpy(), name="protein"))
    return var


def output_scaling(model: TranslatorModel) -> str:
    """The per-cell scale the model's predictions are on: its training targets' scaling.

    Bundles record it (`preprocessing.target_scaling`); published checkpoints were trained on
    per-cell min-max scaled proteins.
    """
    preprocessing = getattr(model, "preprocessing", None) or {}
    return str(preprocessing.get("target_scaling") or "minmax")


def _resolve_model(model: str | Path | TranslatorModel) -> tuple[TranslatorModel, str | None]:
    if isinstance(model, TranslatorModel):
        return model, getattr(model, "source", None)
    loaded = load_model(model)  # a path, or a model name such as "demo"
    return loaded, str(Path(loaded.source).resolve())


def _claim_outputs(out: str | Path | None, write_h5ad: str | Path | None, write_mudata: str | Path | None,
                   inputs: tuple[Any, ...], overwrite: bool, storage_options: dict[str, Any] | None = None) -> None:
    """Refuse, before anything is read or written, outputs that are inputs or are not ours to replace."""
    named = [Path(p) for p in (out, write_h5ad, write_mudata) if p is not None]
    if len({p.expanduser().resolve() for p in named}) < len(named):
        raise OutputConflictError(f"the outputs {[str(p) for p in named]} name the same path twice; give each "
                                  "its own path")
    if out is not None:
        claim_output(out, OUTPUT_KIND, inputs=inputs, overwrite=overwrite, resumable=True,
                     storage_options=storage_options)
    for path in (write_h5ad, write_mudata):
        if path is not None:
            claim_output(path, WRITEBACK_KIND, inputs=(*inputs, out), overwrite=overwrite,
                         storage_options=storage_options)


def _write_back(path: str | Path, write: Callable[[Path], Any], needed: int | None = None,
                storage_options: dict[str, Any] | None = None) -> None:
    """Write a write-back file aside, mark it as ours, then rename it into place (or, for a URL,
    upload it as one object: see `engine.remote_writeback`).

    `needed`: the file's estimated size, named in the error when the disk fills up.
    """
    def write_marked(tmp: Path) -> None:
        write(tmp)
        write_identity(tmp, WRITEBACK_KIND)

    if is_url(path):
        upload_write_back(str(path), write_marked, needed, storage_options)
        return

    require_space(path, needed)  # HDF5's object copy may crash the process on a full disk
    atomic_write_path(path, write_marked, needed)


def _writeback_bytes(data: Any, source: Any, result: ad.AnnData) -> int | None:
    """About how large a write-back file gets: the input file (its elements are copied as stored)
    plus the predictions and embeddings (float32)."""
    size = 4 * result.n_obs * (result.n_vars + sum(int(v.shape[1]) for v in result.obsm.values()))
    path = getattr(source, "path", None)
    if isinstance(data, ad.AnnData) and not data.isbacked:  # written from memory
        matrix = data.X
        parts = (matrix.data, matrix.indices, matrix.indptr) if hasattr(matrix, "indptr") else (matrix,)
        return size + sum(int(getattr(p, "nbytes", 0)) for p in parts) + int(data.obs.memory_usage().sum())
    try:
        if path is not None and Path(path).is_file():
            size += Path(path).stat().st_size
        elif path is not None and Path(path).is_dir():  # a Zarr store: compressed, copied as stored or larger
            size += 2 * sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    except OSError:
        return None
    return size


@one_writer
def translate(data: str | Path | ad.AnnData, model: str | Path | TranslatorModel,
              proteins: Sequence[str] | None = None, *, out: str | Path | None = None, backend: Backend = "auto",
              device: str = "cpu", batch_size: int | None = None, block_cells: int | None = None,
              workers: int | None = None, scheduler: str | None = None, normalize: Normalize | None = None,
              target_sum: float | None = None, gene_column: str | None = None, id_type: IdType = "auto",
              layer: str | None = None, use_raw: bool = False, modality: str | None = None,
              missing_chunks: MissingChunks = "error", min_coverage: float = DEFAULT_MIN_COVERAGE,
              allow_low_coverage: bool = False, allow_empty_cells: bool = False, overwrite: bool = False,
              onnx_path: str | None = None, precision: Precision = "fp32", compile: bool = False,
              backend_options: dict[str, Any] | None = None, write_h5ad: str | Path | None = None,
              write_mudata: str | Path | None = None, embeddings: bool = False, quiet: bool = False,
              gene_mapping: GeneMapping | None = None, inplace: bool = False,
              cells: Sequence[str] | None = None, obs_query: str | None = None,
              max_cells: int | None = None, key: str | None = None,
              replace_key: bool = False, wait: bool = False,
              storage_options: dict[str, Any] | None = None) -> ad.AnnData | None:
    """Predict protein abundance for every cell of `data` with `model`.

    Parameters (the option groups of `sctranslator.options` document each one and its choices):
        data: .h5ad, AnnData .zarr store (v2/v3), .h5mu (see `modality`) or an in-memory AnnData /
            MuData; cells x genes, read block by block.
        model: a bundle directory, an official .pt checkpoint (read without executing it), a model
            name (`demo`, or one added by `sctranslator convert --name`) or a TranslatorModel.
        proteins: antibody or gene names to predict (default: the model's protein panel).
        out: the output Zarr store (default: a temporary one, removed once the result is dropped).
        backend, device, precision, batch_size (cells per model call), block_cells (cells per block,
            the unit of work and resume), workers (concurrent blocks), scheduler (a dask.distributed
            address), onnx_path, compile (torch.compile the torch backend's blocks), backend_options
            (triton: url, model_name, protocol): EngineOptions. On CUDA the torch backend sizes its
            calls from free device memory unless batch_size is given, and `device="cuda"` with several
            GPUs visible (and no scheduler) runs one worker process per GPU (engine.gpus).
        normalize, target_sum, gene_column, id_type, layer, use_raw, modality, missing_chunks,
            min_coverage (a fraction, 0.5 = 50%), allow_low_coverage, allow_empty_cells,
            gene_mapping: InputOptions.
        overwrite, write_h5ad, write_mudata, embeddings, quiet: OutputOptions.
        storage_options: fsspec options (credentials, endpoint) for inputs and outputs in object
            storage: `data`, `out`, `write_h5ad`, `write_mudata` may be s3:// or gs:// URLs (inputs
            also http(s)://); by default each file system reads its standard environment
            (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...). See README, "Object storage".
        wait: when another job is writing one of the outputs, wait for it to end instead of
            refusing (OutputLockedError); the outputs are then checked afresh (see README, Outputs).
        inplace: also set the predictions on `data` (an AnnData / MuData object) and return None.
        key, replace_key: where write_h5ad / write_mudata / inplace put the predictions (below);
            an existing entry there is replaced only with an explicit `key` and `replace_key=True`.
        cells, obs_query, max_cells: translate only the named cells, the cells where a pandas
            expression over obs holds, and/or the first N of them (in the input's order; recorded in
            provenance). Not with write_h5ad / write_mudata / inplace, which write the whole input.

    Returns an AnnData (cells x proteins) read lazily from the output store: `X` is a float32
    `dask.array.Array` over the store's chunks (on the model's target scale), so the predictions are
    never all in memory; obs, var and uns are in memory. For a numpy array use `result.X.compute()`
    (or `np.asarray(result.X)`, `result.X[:100].compute()` for some rows); `result.to_memory()` gives
    an in-memory AnnData (for results that fit). `uns['sctranslator']` records the model, settings
    (the output scaling among them), plan, coverage and run. With `out`, the result is an
    AnnData-layout Zarr store there, written block by block: re-running the same call after an
    interruption resumes. With `embeddings`, obsm['X_sctranslator'] (a dask array likewise, cells x
    model dim) holds each cell's embedding: the mean of the encoder's outputs over the cell's real
    gene tokens (torch backend). `write_h5ad` / `write_mudata` also write the input with the
    predictions under keys of their own (see `engine.writeback`), streamed element by element:
    `obsm[key]` (a DataFrame, proteins as columns; default key 'protein_predicted'), `uns[key]`
    (provenance) and `obsm['X_' + key]` (embeddings) in an AnnData; a new modality `key` (default
    'prot_predicted') in a MuData, beside every modality of a MuData input. With `inplace=True`
    the same go onto `data` (an AnnData; a MuData gets the new modality); nothing is returned then.
    `obsm['protein_expression']` and a `prot` modality, where scvi-tools and CITE-seq files keep
    MEASURED proteins, are never written unless named as `key` with `replace_key=True`.

    Which matrix is read: X, or ``layers[layer]``, or with `use_raw` ``.raw.X`` with ``.raw.var``.
    `modality` names the MuData modality (None: `rna`, else the one RNA-like modality).
    `missing_chunks` ("error" or "zeros") says what an absent chunk of a dense zarr X means.
    `gene_mapping`: "original" (the published pipeline's, default for published checkpoints) or
    "extended" (wider; see `sctranslator.vocab.genes`); default: the one the model was trained with.
    `overwrite` replaces an earlier translate store (or write-back file) at the same path; nothing
    else is ever replaced.

    Raises:
        OptionError: a choice option (backend, normalize, id_type, precision, ...) outside its choices;
            `replace_key` without `key`, `key` without a write-back, a `key` with '/'.
        BackendOptionError: an option the chosen backend does not use (backend_options such as url,
            onnx_path, compile, a precision or device with triton); see options.check_backend_options.
        BackendError: embeddings without the torch backend; a backend that cannot start or fails.
        InputDataError: batch_size or block_cells < 1; no `.raw`, layer or modality as asked;
            `inplace` without an AnnData. KeyConflictError: a write-back target that exists (without
            an explicit `key` and `replace_key`). BadCellsError: NaN/Inf/negative values (naming the lowest
            bad row); empty cells (no counts in any gene the model reads) unless `allow_empty_cells`.
        CoverageError: fewer than `min_coverage` of the genes map (without allow_low_coverage).
        VocabularyError / UnknownProteinError: identifiers or proteins that do not map.
        CheckpointError: an unreadable model. StoreError: an unreadable input, a missing zarr chunk
            (with missing_chunks="error"), an `out` naming an HDF5 file, or an output written by
            another job (without overwrite). OutputConflictError: an output path that holds something
            sctranslator did not write, or that is or overlaps an input.
        UnsupportedStorageError: a URL scheme other than s3://, gs:// (and http(s):// for the input),
            before any work. MissingExtraError: the extra (s3, gcs, http) such a URL needs.
    """
    check_choices(backend=backend, normalize=normalize, id_type=id_type, precision=precision)
    storage_options = check_locations(data, out, write_h5ad, write_mudata, storage_options)
    check_device(device)
    check_scheduler_address(scheduler)
    requested_backend = backend
    backend, backend_reason = choose_backend(backend, device=device, onnx_path=onnx_path)
    check_backend_options(backend, requested=requested_backend, backend_options=backend_options,
                          onnx_path=onnx_path, compile=compile, precision=precision, device=device)
    if backend == "onnxruntime" and precision == "bf16" and not device.startswith("cuda"):
        raise BackendError("onnxruntime's CPU execution provider has no bf16 kernels; use --precision fp32 or fp16 "
                           "with onnxruntime on CPU, --backend torch --precision bf16, or --device cuda")
    if backend == "onnxruntime" and precision != "fp32":
        log.warning("the %s ONNX graphs round every activation to %s (a graph has no reference cell, unlike the "
                    "torch backend): per-protein r against fp32 measured 0.997 (tiny_a, real cells) down to 0.92 "
                    "(full-size random weights), below the 0.999 the torch backend keeps; see README "
                    "'Reduced precision'", precision, precision)
    if embeddings and backend != "torch":
        raise BackendError("embeddings come from the encoder's outputs, which only the torch backend exposes; "
                           "use --backend torch with --embeddings")
    if (batch_size is not None and batch_size < 1) or (block_cells is not None and block_cells < 1):
        raise InputDataError("batch_size and block_cells must be >= 1")
    _check_out(out)
    # Workers (dask processes) resolve paths in their own directories: every path is absolute from here on.
    out = _absolute(out)
    onnx_path = None if onnx_path is None else str(_absolute(onnx_path))
    target = _inplace_target(data) if inplace else None
    inputs = (data, model, onnx_path)
    _claim_outputs(out, write_h5ad, write_mudata, inputs, overwrite, storage_options)
    cluster_workers = check_cluster(scheduler) if scheduler else {}  # before any store exists
    selecting = cells is not None or obs_query is not None or max_cells is not None
    if selecting and (write_h5ad or write_mudata or inplace):
        raise InputDataError("a cell selection (--cells / --obs-query / --max-cells) cannot be combined with "
                             "--write-h5ad, --write-mudata or inplace=True: those write the whole input; translate "
                             "the selection into --out and join it yourself, or translate every cell")
    source = select_cells(open_source(data, layer=layer, use_raw=use_raw, modality=modality,
                                      missing_chunks=missing_chunks, storage_options=storage_options),
                          cells=cells, obs_query=obs_query, max_cells=max_cells)
    if write_mudata is not None or (inplace and not isinstance(data, ad.AnnData)):
        # MuData pairs its modalities by cell name: a repeated name would pair the wrong cells
        require_unique_cell_names(source.obs_names, source.describe(), "a MuData pairs modalities by cell name")
    check_keys(data, source, modality=modality, key=key, replace=replace_key, embeddings=embeddings,
               h5ad=write_h5ad is not None, mudata=write_mudata is not None, inplace=inplace)
    loaded, model_source = _resolve_model(model)
    auto_batch = batch_size is None and backend == "torch" and device.startswith("cuda")  # from device memory
    batch_size = batch_size or default_batch_size(loaded, device)
    gpus = visible_gpus(device) if (scheduler is None and backend != "triton") else []
    plan = build_plan(source.var, loaded, proteins, gene_column=gene_column, id_type=id_type, normalize=normalize,
                      target_sum=target_sum, min_coverage=min_coverage, allow_low_coverage=allow_low_coverage,
                      gene_mapping=gene_mapping)
    check_expression_scale(source, plan)
    # A model path travels to workers as a path (each loads it once); in-memory models go as objects.
    spec_model: str | TranslatorModel = model_source if (model_source and (scheduler or gpus)) else loaded
    spec = BackendSpec(kind=backend, model=spec_model, device=device, onnx_path=onnx_path, precision=precision,
                       options=dict(backend_options or {}))
    if compile:
        spec.options["compile"] = True
    # Concurrent blocks x intra-op threads never exceed the cores this process may use (engine.threads).
    tokens = encoder_tokens(plan, backend, spec)
    flop = cell_flop(loaded.config, tokens)
    cpus, cpu_source = available_cpus()
    rule = choose_parallelism(backend=backend, device=device, flop_per_cell=flop, cpus=cpus, cpu_source=cpu_source,
                              workers=workers)
    spec.threads = rule.threads
    parallelism = rule.record("auto (free device memory)" if auto_batch else batch_size)
    if scheduler or gpus:
        where = f"the {len(cluster_workers)} worker(s) of {scheduler}" if scheduler else f"{len(gpus)} GPU workers"
        parallelism.update(workers=sum(cluster_workers.values()) or None, threads=None, compute_slots=None,
                           why=f"on {where}: each worker applies the rule to its own --nthreads and cores "
                               "(run['threads_per_worker'] records what each used)")
        log.info("parallelism: %s", parallelism["why"])
    else:
        log.info("parallelism: %s", rule.why)
    if block_cells is None:  # also keep every worker busy on small datasets
        block_cells = min(default_block_cells(loaded), max(16, -(-source.n_obs // (4 * rule.workers))))
    if backend == "onnxruntime" and onnx_path is None:
        # Export (once, cached) here, announced with its cost, rather than inside the progress bar.
        spec.onnx_path = str(Path(onnx_file_for(spec, loaded)).absolute())
    if scheduler is None and not gpus:
        # Built here, before the output store exists: a device, file or server that cannot serve
        # fails without leaving an unfinished store behind. The run's workers reuse this backend.
        get_backend(spec)
    identity = {"model": model_fingerprint(loaded), "input": source.fingerprint(), "plan": plan.fingerprint(),
                "embeddings": bool(embeddings)}
    uns = {"sctranslator": {
        "version": __version__,
        "model": {"source": model_source or "in-memory", "fingerprint": identity["model"],
                  "config": loaded.config.to_dict()},
        "input": {k: v for k, v in source.fingerprint().items() if v is not None},
        "plan": plan.summary(),
        "settings": {"backend": backend, "backend_requested": requested_backend, "backend_choice": backend_reason,
                     "encoder_tokens": tokens, "parallelism": parallelism,
                     "device": device, "precision": precision,
                     "batch_size": "auto (free device memory)" if auto_batch else batch_size,
                     "compile": bool(compile), "gpus": ",".join(gpus),
                     "normalize": plan.normalize, "target_sum": plan.target_sum, "id_type": id_type,
                     "gene_mapping": plan.gene_mapping,
                     "gene_column": gene_column or "", "layer": layer or "", "use_raw": bool(use_raw),
                     "modality": getattr(source, "modality", None) or "", "missing_chunks": missing_chunks,
                     "embeddings": bool(embeddings), "output_scaling": output_scaling(loaded),
                     "allow_empty_cells": bool(allow_empty_cells),
                     "cell_selection": getattr(source, "selection", "") or ""},
        "versions": _versions(),
    }}
    owner = None
    if out is None:
        owner = TemporaryStore(tempfile.mkdtemp(prefix="sctranslator-"))
        out = Path(owner.path) / "predictions.zarr"
    rows = max(1, min(block_cells, source.n_obs or 1))
    try:
        sink = open_sink(out, identity=identity, obs=source.read_obs(), var=_output_var(plan), uns=uns,
                             block_rows=rows, overwrite=overwrite, inputs=inputs,
                             embedding_dim=loaded.config.dim if embeddings else 0, obsm=source.obsm_arrays(),
                             storage_options=storage_options)
        job = BlockJob(source=source, plan=plan, backend=spec, sink=sink, batch_size=batch_size,
                       allow_empty_cells=allow_empty_cells, embeddings=embeddings, auto_batch_size=auto_batch,
                       flop_per_cell=flop, compute_slots=rule.compute_slots)
        stats = run_job(job, workers=workers if gpus else rule.workers, scheduler=scheduler, quiet=quiet, gpus=gpus)
        sink.finish({"last_run": stats}, run=stats)
        result = sink.read(owner)  # lazy: X stays in the store
        result.uns["sctranslator"]["run"] = stats
        if write_h5ad:
            _write_back(write_h5ad, lambda tmp: write_h5ad_with_proteins(data, source, result, tmp, key=key,
                                                                          modality=modality),
                        _writeback_bytes(data, source, result), storage_options)
        if write_mudata:
            _write_back(write_mudata, lambda tmp: write_mudata_with_proteins(data, source, result, tmp, key=key,
                                                                              modality=modality),
                        _writeback_bytes(data, source, result), storage_options)
        if target is not None:
            set_inplace(target, result, key=key, modality=modality)
            return None
        owner = None  # the returned arrays own the temporary store now
        return result
    finally:
        source.close()
        if owner is not None:
            owner.remove()


def _absolute(path: str | Path | None) -> str | Path | None:
    """`path` made absolute (with ~ expanded), kept as given when None or a URL."""
    if path is None or "://" in str(path):
        return path
    return Path(path).expanduser().absolute()


_HDF5_SUFFIXES = (".h5ad", ".h5mu", ".h5", ".hdf5", ".loom")


def _check_out(out: str | Path | None) -> None:
    """`out` is a resumable Zarr directory; refuse a name that promises an HDF5 file."""
    if out is None or Path(out).suffix.lower() not in _HDF5_SUFFIXES:
        return
    stem = Path(out).with_suffix(".zarr")
    if Path(out).suffix.lower() == ".h5mu":
        also = f"--write-mudata {out} for a MuData with the predictions as a modality 'prot_predicted'"
    else:
        also = f"--write-h5ad {out} for a copy of the input with the predictions in obsm['protein_predicted']"
    raise StoreError(f"--out {out}: the output of translate is a resumable AnnData Zarr store (a directory), not "
                     f"an HDF5 file. Use --out {stem}, and add {also}; the Zarr store itself reads with "
                     f"anndata.read_zarr('{stem}').")


def _inplace_target(data: Any) -> Any:
    if isinstance(data, ad.AnnData) or (type(data).__name__ == "MuData" and hasattr(data, "mod")):
        return data
    raise InputDataError(f"inplace=True needs an AnnData or a MuData object to write into, not a "
                         f"{type(data).__name__}; pass the object, or use the returned AnnData")
