"""`translate`: the product's main job, from any source to an AnnData of predicted proteins."""

from __future__ import annotations

import logging
import platform
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import anndata as ad
import pandas as pd

from sctranslator import __version__
from sctranslator.engine.backends.base import BackendSpec
from sctranslator.engine.backends.capabilities import BackendCapabilities
from sctranslator.engine.backends.onnx_cache import onnx_file_for
from sctranslator.engine.backends.selection import ChosenBackend, get_backend, resolve_backend
from sctranslator.engine.collection import active_collection, is_collection, translate_collection
from sctranslator.engine.gpus import visible_gpus
from sctranslator.engine.input_checks import check_expression_scale
from sctranslator.engine.output_reader import TemporaryStore
from sctranslator.engine.pipeline import BlockJob, check_cluster, check_scheduler_address, run_job
from sctranslator.engine.remote_sink import open_sink
from sctranslator.engine.remote_writeback import check_locations, upload_write_back
from sctranslator.engine.sink import OUTPUT_KIND
from sctranslator.engine.sources import open_source
from sctranslator.engine.sources.base import Source, require_unique_cell_names
from sctranslator.engine.sources.soma import refuse_writeback
from sctranslator.engine.sources.subset import select_cells
from sctranslator.engine.threads import Parallelism, available_cpus, cell_flop, choose_parallelism
from sctranslator.engine.writeback import (
    check_keys,
    set_inplace,
    write_h5ad_with_proteins,
    write_mudata_with_proteins,
)
from sctranslator.errors import InputDataError, OutputConflictError
from sctranslator.graph.token_layout import TokenLayout
from sctranslator.model import TranslatorModel, load_model
from sctranslator.model.identity import model_fingerprint
from sctranslator.options import (
    BackendName,
    GeneMappingMode,
    IdType,
    InputOptions,
    MissingChunks,
    Normalize,
    Precision,
    TranslateOptions,
    check_device,  # noqa: F401  (re-exported: it lived here)
)
from sctranslator.outputs import claim_output, write_identity, writing
from sctranslator.plan import DEFAULT_MIN_COVERAGE, Plan, build_plan
from sctranslator.util.atomic import atomic_write_path, require_space
from sctranslator.util.storage import is_url

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


def encoder_tokens(plan: Plan, capabilities: BackendCapabilities, spec: BackendSpec) -> int:
    """How many gene tokens the encoder computes per cell: L, or with the padding collapse the
    real positions plus one shared padding token (recorded so a run says which path it took)."""
    # A backend that cannot turn the collapse off always collapses.
    collapsing = not capabilities.optional_padding_collapse or spec.options.get("collapse_padding", True)
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


def translate(data: str | Path | ad.AnnData | Sequence[Any], model: str | Path | TranslatorModel,
              proteins: Sequence[str] | None = None, *, out: str | Path | None = None, backend: BackendName = "auto",
              device: str = "cpu", batch_size: int | None = None, block_cells: int | None = None,
              workers: int | None = None, scheduler: str | None = None, normalize: Normalize | None = None,
              target_sum: float | None = None, gene_column: str | None = None, id_type: IdType = "auto",
              layer: str | None = None, use_raw: bool = False, modality: str | None = None,
              missing_chunks: MissingChunks = "error", min_coverage: float = DEFAULT_MIN_COVERAGE,
              allow_low_coverage: bool = False, allow_empty_cells: bool = False, overwrite: bool = False,
              onnx_path: str | None = None, precision: Precision = "fp32", compile: bool = False,
              backend_options: dict[str, Any] | None = None, write_h5ad: str | Path | None = None,
              write_mudata: str | Path | None = None, embeddings: bool = False, quiet: bool = False,
              gene_mapping: GeneMappingMode | None = None, inplace: bool = False,
              cells: Sequence[str] | None = None, obs_query: str | None = None,
              max_cells: int | None = None, key: str | None = None,
              replace_key: bool = False, wait: bool = False, measurement: str | None = None,
              obs_columns: Sequence[str] | None = None,
              storage_options: dict[str, Any] | None = None) -> ad.AnnData | list[ad.AnnData] | None:
    """Predict protein abundance for every cell of `data` with `model`.

    Parameters (the option groups of `sctranslator.options` document each one and its choices):
        data: .h5ad, AnnData .zarr store (v2/v3), .h5mu (see `modality`), a TileDB-SOMA experiment
            (its URI or an open `tiledbsoma.Experiment`; see `measurement`) or an in-memory AnnData /
            MuData; cells x genes, read block by block. A list of them (or a glob such as
            "atlas/*.h5ad") is a collection: each input is translated as if alone into its own store
            in `out` (a directory, with collection.json); a list of AnnData is returned, and
            CollectionError is raised at the end when some inputs failed (engine.collection).
            For a SOMA experiment `obs_query` is a SOMA value_filter, evaluated by TileDB.
        measurement: the SOMA experiment's measurement (default RNA); `layer` is its X layer (default
            raw, else the only one) and `gene_column` its var column (default feature_name).
        obs_columns: only these obs columns go into the output's obs (default all; a SOMA
            experiment's soma_joinid always does).
        storage_options: fsspec options (credentials, endpoint) for inputs and outputs in object
            storage: `data`, `out`, `write_h5ad`, `write_mudata` may be s3:// or gs:// URLs (inputs
            also http(s)://); by default each file system reads its standard environment
            (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...). See README, "Object storage".
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
            onnx_path, compile, a precision or device with triton), or one it needs and lacks (triton's
            url); asked of the backend's declared capabilities (engine.backends.capabilities).
        BackendError: embeddings from a backend that declares none (only torch has them); a precision
            the backend has no kernels for on the device; a backend that cannot start or fails.
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
    """
    if is_collection(data):  # several inputs: one store each in `out` (engine.collection)
        return translate_collection(prepare_input, **locals())
    # Every keyword goes into one options object, checked once; the command line builds the same object.
    given = dict(locals())  # exactly the parameters
    del given["data"], given["model"]
    return run_translate(data, model, TranslateOptions.from_kwargs(**given))


def run_translate(data: str | Path | ad.AnnData, model: str | Path | TranslatorModel,
                  options: TranslateOptions) -> ad.AnnData | None:
    """`translate` from its options object: options -> claim outputs -> plan -> backend -> job -> outputs.

    The one path of the Python API and the `translate` command (errors and result as `translate`).
    """
    with writing(options.output.wait):
        return prepare_translate(data, model, options).run()


def prepare_input(data: Any, model: str | Path | TranslatorModel, proteins: Sequence[str] | None = None,
                  **kwargs: Any) -> PreparedTranslate:
    """`prepare_translate` from `translate`'s keywords (an input of a collection: engine.collection).

    The claims go to the enclosing `writing` scope (the collection's).
    """
    return prepare_translate(data, model, TranslateOptions.from_kwargs(proteins=proteins, **kwargs))


@dataclass
class PreparedTranslate:
    """An input ready to compute: its outputs claimed, its source open, its plan, backend and store made.

    `run()` computes it and writes its outputs (closing the source); `close()` drops it unrun.
    """

    data: Any
    source: Source
    options: TranslateOptions
    plan: Plan
    execution: Execution
    sink: Any
    owner: TemporaryStore | None
    target: Any

    def run(self) -> ad.AnnData | None:
        """The job into the output store, then the write-backs (errors as `translate`)."""
        try:
            return _run_and_write(self.data, self.source, self.options, self.execution, self.sink, self.owner,
                                  self.plan, self.target)
        finally:
            self.source.close()

    def close(self) -> None:
        """Close the input without computing it (its store stays resumable; a temporary one is removed)."""
        self.source.close()
        if self.owner is not None:
            self.owner.remove()


def prepare_translate(data: str | Path | ad.AnnData, model: str | Path | TranslatorModel,
                      options: TranslateOptions) -> PreparedTranslate:
    """Everything of `run_translate` before the blocks compute: checks, claims, source, plan, backend.

    Claims go to the enclosing `writing` scope. Raises as `translate`; the source is closed on failure.
    """
    options.check()
    output = options.output
    # URLs: a supported scheme and its extra, before any work; the options every file system then uses.
    storage = check_locations(data, options.out, output.write_h5ad, output.write_mudata, output.storage_options)
    options = replace(options, output=replace(output, storage_options=storage))
    check_scheduler_address(options.engine.scheduler)
    backend = resolve_backend(options.engine, options.backend_options, embeddings=options.output.embeddings)
    options = with_absolute_paths(options)  # dask workers resolve paths in their own directories
    target = _inplace_target(data) if options.inplace else None
    inputs = (data, model, options.engine.onnx_path)
    _claim_outputs(options.out, options.output.write_h5ad, options.output.write_mudata, inputs,
                   options.output.overwrite, storage)
    scheduler = options.engine.scheduler
    cluster_workers = check_cluster(scheduler) if scheduler else {}  # before any store exists
    source = open_input(data, options.input, storage)
    try:
        check_write_targets(data, source, options)
        loaded, model_source = _resolve_model(model)
        plan = make_plan(source, loaded, options)
        execution = plan_execution(options, backend, loaded, model_source, plan, source.n_obs, cluster_workers)
        sink, owner = _open_output(source, options, backend, loaded, model_source, plan, execution, inputs)
    except BaseException:
        source.close()
        raise
    return PreparedTranslate(data, source, options, plan, execution, sink, owner, target)


def with_absolute_paths(options: TranslateOptions) -> TranslateOptions:
    """The options with `out` and `onnx_path` absolute (~ expanded; URLs kept)."""
    onnx_path = options.engine.onnx_path
    engine = replace(options.engine, onnx_path=None if onnx_path is None else str(_absolute(onnx_path)))
    return replace(options, out=_absolute(options.out), engine=engine)


def open_input(data: Any, given: InputOptions, storage_options: dict[str, Any] | None = None) -> Source:
    """The input as a Source, restricted to the selected cells: the one place an input is opened."""
    return select_cells(open_source(data, layer=given.layer, use_raw=given.use_raw, modality=given.modality,
                                    missing_chunks=given.missing_chunks, measurement=given.measurement,
                                    gene_column=given.gene_column, storage_options=storage_options),
                        cells=given.cells, obs_query=given.obs_query, max_cells=given.max_cells)


def check_write_targets(data: Any, source: Source, options: TranslateOptions) -> None:
    """Refuse write-backs that would pair the wrong cells or replace what the input holds (writeback.check_keys)."""
    output = options.output
    refuse_writeback(source, write_h5ad=output.write_h5ad, write_mudata=output.write_mudata)
    if output.write_mudata is not None or (options.inplace and not isinstance(data, ad.AnnData)):
        # MuData pairs its modalities by cell name: a repeated name would pair the wrong cells
        require_unique_cell_names(source.obs_names, source.describe(), "a MuData pairs modalities by cell name")
    check_keys(data, source, modality=options.input.modality, key=output.key, replace=output.replace_key,
               embeddings=output.embeddings, h5ad=output.write_h5ad is not None,
               mudata=output.write_mudata is not None, inplace=options.inplace)


def make_plan(source: Source, model: TranslatorModel, options: TranslateOptions) -> Plan:
    """The plan of (input, model), its coverage and expression scale checked."""
    given = options.input
    plan = build_plan(source.var, model, options.proteins, gene_column=given.gene_column, id_type=given.id_type,
                      normalize=given.normalize, target_sum=given.target_sum, min_coverage=given.min_coverage,
                      allow_low_coverage=given.allow_low_coverage, gene_mapping=given.gene_mapping)
    check_expression_scale(source, plan)
    return plan


@dataclass
class Execution:
    """How the job runs: the backend spec, call and block sizes, parallelism, GPUs and cluster workers."""

    spec: BackendSpec
    batch_size: int
    auto_batch: bool  # sized from free device memory by the backend
    block_cells: int
    gpus: list[str]
    rule: Parallelism
    parallelism: dict[str, Any]  # the record that goes into the provenance
    tokens: int
    flop: float
    cluster_workers: dict[str, int]


def plan_execution(options: TranslateOptions, backend: ChosenBackend, loaded: TranslatorModel,
                   model_source: str | None, plan: Plan, n_obs: int, cluster_workers: dict[str, int]) -> Execution:
    """The backend spec, sizes and parallelism of the run; the backend is built here when it runs in this process."""
    engine, caps = options.engine, backend.capabilities
    auto_batch = engine.batch_size is None and caps.memory_sized_batches and engine.device.startswith("cuda")
    batch_size = engine.batch_size or default_batch_size(loaded, engine.device)
    gpus = visible_gpus(engine.device) if (engine.scheduler is None and not caps.remote) else []
    # A model path travels to workers as a path (each loads it once); in-memory models go as objects.
    spec_model: str | TranslatorModel = model_source if (model_source and (engine.scheduler or gpus)) else loaded
    spec = BackendSpec(kind=backend.kind, model=spec_model, device=engine.device, onnx_path=engine.onnx_path,
                       precision=engine.precision, options=dict(options.backend_options))
    if engine.compile:
        spec.options["compile"] = True
    if "selected_outputs" in caps.options:
        # translate reads the real proteins only: the decoder's padded positions need no last layer.
        spec.options.setdefault("selected_outputs", True)
    # Concurrent blocks x intra-op threads never exceed the cores this process may use (engine.threads).
    tokens = encoder_tokens(plan, caps, spec)
    flop = cell_flop(loaded.config, tokens)
    cpus, cpu_source = available_cpus()
    rule = choose_parallelism(remote=caps.remote, device=engine.device, flop_per_cell=flop, cpus=cpus,
                              cpu_source=cpu_source, workers=engine.workers,
                              streams=caps.cpu_streams and bool(spec.options.get("cpu_streams", True)))
    spec.threads = rule.threads
    shared = active_collection()
    if shared is not None:  # an input of a collection: one backend and one progress bar for all
        rule = shared.started(plan, n_obs, spec, rule)
    parallelism = rule.record("auto (free device memory)" if auto_batch else batch_size)
    if engine.scheduler or gpus:
        where = (f"the {len(cluster_workers)} worker(s) of {engine.scheduler}" if engine.scheduler
                 else f"{len(gpus)} GPU workers")
        parallelism.update(workers=sum(cluster_workers.values()) or None, threads=None, compute_slots=None,
                           why=f"on {where}: each worker applies the rule to its own --nthreads and cores "
                               "(run['threads_per_worker'] records what each used)")
        log.info("parallelism: %s", parallelism["why"])
    else:
        log.info("parallelism: %s", rule.why)
    block_cells = engine.block_cells
    if block_cells is None:  # also keep every worker busy on small datasets
        block_cells = min(default_block_cells(loaded), max(16, -(-n_obs // (4 * rule.workers))))
    if caps.onnx_file and engine.onnx_path is None:
        # Export (once, cached) here, announced with its cost, rather than inside the progress bar.
        spec.onnx_path = str(Path(onnx_file_for(spec, loaded)).absolute())
    if engine.scheduler is None and not gpus:
        # Built here, before the output store exists: a device, file or server that cannot serve
        # fails without leaving an unfinished store behind. The run's workers reuse this backend.
        get_backend(spec)
    return Execution(spec=spec, batch_size=batch_size, auto_batch=auto_batch, block_cells=block_cells, gpus=gpus,
                     rule=rule, parallelism=parallelism, tokens=tokens, flop=flop, cluster_workers=cluster_workers)


def provenance(options: TranslateOptions, backend: ChosenBackend, loaded: TranslatorModel, model_source: str | None,
               source: Source, plan: Plan, execution: Execution) -> dict[str, Any]:
    """uns['sctranslator']: the model, input, plan and settings of the run (the run's statistics come later)."""
    engine, given = options.engine, options.input
    return {"sctranslator": {
        "version": __version__,
        "model": {"source": model_source or "in-memory", "fingerprint": model_fingerprint(loaded),
                  "config": loaded.config.to_dict()},
        "input": {k: v for k, v in source.fingerprint().items() if v is not None},
        "plan": plan.summary(),
        "settings": {"backend": backend.kind, "backend_requested": engine.backend, "backend_choice": backend.reason,
                     "encoder_tokens": execution.tokens, "parallelism": execution.parallelism,
                     "device": engine.device, "precision": engine.precision,
                     "batch_size": "auto (free device memory)" if execution.auto_batch else execution.batch_size,
                     "compile": bool(engine.compile), "gpus": ",".join(execution.gpus),
                     "normalize": plan.normalize, "target_sum": plan.target_sum, "id_type": given.id_type,
                     "gene_mapping": plan.gene_mapping,
                     "gene_column": given.gene_column or "", "layer": given.layer or "", "use_raw": bool(given.use_raw),
                     "modality": getattr(source, "modality", None) or "", "missing_chunks": given.missing_chunks,
                     "measurement": getattr(source, "measurement", None) or "",
                     "embeddings": bool(options.output.embeddings), "output_scaling": output_scaling(loaded),
                     "allow_empty_cells": bool(given.allow_empty_cells),
                     "cell_selection": getattr(source, "selection", "") or ""},
        "versions": _versions(),
    }}


def _open_output(source: Source, options: TranslateOptions, backend: ChosenBackend, loaded: TranslatorModel,
                 model_source: str | None, plan: Plan, execution: Execution,
                 inputs: tuple[Any, ...]) -> tuple[Any, TemporaryStore | None]:
    """The output store (a temporary one, with its owner, without `out`), created or resumed."""
    output = options.output
    identity = {"model": model_fingerprint(loaded), "input": source.fingerprint(), "plan": plan.fingerprint(),
                "embeddings": bool(output.embeddings)}
    if options.input.obs_columns is not None:  # the output's obs differs: a resume must not keep another choice's
        identity["obs_columns"] = list(options.input.obs_columns)
    uns = provenance(options, backend, loaded, model_source, source, plan, execution)
    out, owner = options.out, None
    if out is None:
        owner = TemporaryStore(tempfile.mkdtemp(prefix="sctranslator-"))
        out = Path(owner.path) / "predictions.zarr"
    try:
        sink = open_sink(out, identity=identity, obs=source.obs_table(options.input.obs_columns),
                         var=_output_var(plan), uns=uns,
                         block_rows=max(1, min(execution.block_cells, source.n_obs or 1)),
                         overwrite=output.overwrite, inputs=inputs,
                         embedding_dim=loaded.config.dim if output.embeddings else 0, obsm=source.obsm_arrays(),
                         storage_options=output.storage_options)
    except BaseException:
        if owner is not None:
            owner.remove()
        raise
    return sink, owner


def _run_and_write(data: Any, source: Source, options: TranslateOptions, execution: Execution, sink: Any,
                   owner: TemporaryStore | None, plan: Plan, target: Any) -> ad.AnnData | None:
    """The job into the output store (removed, when temporary, on failure), then the write-backs / in-place result."""
    output, engine = options.output, options.engine
    try:
        job = BlockJob(source=source, plan=plan, backend=execution.spec, sink=sink, batch_size=execution.batch_size,
                       allow_empty_cells=options.input.allow_empty_cells, embeddings=output.embeddings,
                       auto_batch_size=execution.auto_batch, flop_per_cell=execution.flop,
                       compute_slots=execution.rule.compute_slots)
        workers = engine.workers if execution.gpus else execution.rule.workers
        shared = active_collection()
        stats = run_job(job, workers=workers, scheduler=engine.scheduler, quiet=output.quiet, gpus=execution.gpus,
                        bar=shared.bar if shared is not None else None)
        sink.finish({"last_run": stats}, run=stats)
        result = sink.read(owner)  # lazy: X stays in the store
        result.uns["sctranslator"]["run"] = stats
        write_outputs(data, source, result, options)
        if target is not None:
            set_inplace(target, result, key=output.key, modality=options.input.modality)
            return None
        owner = None  # the returned arrays own the temporary store now
        return result
    finally:
        if owner is not None:
            owner.remove()


def write_outputs(data: Any, source: Source, result: ad.AnnData, options: TranslateOptions) -> None:
    """The write-back files (--write-h5ad / --write-mudata): the input with the predictions under keys of their own."""
    output, modality = options.output, options.input.modality
    if output.write_h5ad:
        _write_back(output.write_h5ad, lambda tmp: write_h5ad_with_proteins(data, source, result, tmp, key=output.key,
                                                                             modality=modality),
                    _writeback_bytes(data, source, result), output.storage_options)
    if output.write_mudata:
        _write_back(output.write_mudata, lambda tmp: write_mudata_with_proteins(data, source, result, tmp,
                                                                                key=output.key, modality=modality),
                    _writeback_bytes(data, source, result), output.storage_options)


def _absolute(path: str | Path | None) -> str | Path | None:
    """`path` made absolute (with ~ expanded), kept as given when None or a URL."""
    if path is None or "://" in str(path):
        return path
    return Path(path).expanduser().absolute()


def _inplace_target(data: Any) -> Any:
    if isinstance(data, ad.AnnData) or (type(data).__name__ == "MuData" and hasattr(data, "mod")):
        return data
    raise InputDataError(f"inplace=True needs an AnnData or a MuData object to write into, not a "
                         f"{type(data).__name__}; pass the object, or use the returned AnnData")
