"""`translate`: the product's main job, from any source to an AnnData of predicted proteins."""

from __future__ import annotations

import functools
import logging
import platform
import tempfile
import threading
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
from sctranslator.engine.warmup import warm_kernels_in_background, warm_up_in_background
from sctranslator.engine.writeback import (
    check_keys,
    set_inplace,
    write_h5ad_with_proteins,
    write_mudata_with_proteins,
)
from sctranslator.errors import InputDataError, OutputConflictError
from sctranslator.graph.token_layout import TokenLayout
from sctranslator.model import TranslatorModel, load_model
from sctranslator.model.identity import fingerprint_in_background, model_fingerprint
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
    """Cells per block (the unit of work, commit and resume): about 4 M model values per block.

    A block of the full-size model (L = 20,000) is 209 cells, one of a tiny model up to 8,192.

    Parameters
    ----------
    model : TranslatorModel
        The model.

    Returns
    -------
    int
        Between 16 and 8,192.
    """
    return max(16, min(8192, 4_194_304 // model.config.max_genes))


def _versions() -> dict[str, str]:
    return dict(_installed_versions())  # a copy: the provenance is the caller's to change


@functools.cache
def _installed_versions() -> dict[str, str]:
    """Found once per process: each lookup parses a package's metadata file (milliseconds per input of a
    collection), and the modules this process imported do not change while it runs."""
    found = {"sctranslator": __version__, "python": platform.python_version()}
    for package in ("torch", "numpy", "numba", "anndata", "zarr", "dask", "onnxruntime"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def default_batch_size(model: TranslatorModel, device: str) -> int:
    """Cells per backend call when none is given.

    Small models amortise call overhead over many cells; on CPU the full-size model (L = 20,000) is
    fastest one cell at a time; GPUs like bigger batches.

    Parameters
    ----------
    model : TranslatorModel
        The model.
    device : str
        "cpu", "cuda" or "cuda:N".

    Returns
    -------
    int
        Between 1 and 512.
    """
    budget = 32_768 if device == "cpu" else 262_144
    return max(1, min(512, budget // model.config.max_genes))


def encoder_tokens(plan: Plan, capabilities: BackendCapabilities, spec: BackendSpec) -> int:
    """How many gene tokens the encoder computes per cell, recorded so a run says which path it took.

    Parameters
    ----------
    plan : Plan
        The job's plan.
    capabilities : BackendCapabilities
        The backend's; one that cannot turn the padding collapse off always collapses.
    spec : BackendSpec
        The backend's spec (``options['collapse_padding']``).

    Returns
    -------
    int
        L, or with the padding collapse the real positions plus one shared padding token.
    """
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

    Bundles record it (``preprocessing.target_scaling``); published checkpoints were trained on
    per-cell min-max scaled proteins.

    Parameters
    ----------
    model : TranslatorModel
        The model.

    Returns
    -------
    str
        "minmax", "clr" or "log1p".
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

    The input is read block by block (never loaded whole) and the predictions are written block by
    block into an AnnData-layout Zarr store: re-running the same call after an interruption resumes.
    Every keyword is one option of `sctranslator.options.TranslateOptions` (its groups document the
    choices and defaults); the ``sctranslator translate`` command takes the same options as flags.

    Parameters
    ----------
    data : str, pathlib.Path, AnnData, MuData, tiledbsoma.Experiment, or a sequence of these
        Cells x genes: an .h5ad file, an AnnData .zarr store (v2/v3), an .h5mu file or MuData store
        (see `modality`), a TileDB-SOMA experiment (its URI or an open ``tiledbsoma.Experiment``;
        see `measurement`), an in-memory AnnData / MuData, or any of these files at an s3://, gs://
        or http(s):// URL. A list of them (or a glob such as ``"atlas/*.h5ad"``) is a collection: each
        input is translated as if alone into its own store in `out` (a directory, with
        collection.json) and a list of AnnData is returned.
    model : str, pathlib.Path or TranslatorModel
        A bundle directory, a published .pt checkpoint (read without executing it), a model name
        ("demo", or one added by ``sctranslator convert --name``) or a loaded model.
    proteins : sequence of str or None
        Antibody or gene names to predict; None: the model's protein panel.
    out : str, pathlib.Path or None
        The output Zarr store (or a directory for a collection); None: a temporary store, removed
        once the result is dropped.
    backend : {'auto', 'torch', 'onnxruntime', 'triton'}
        The inference backend; "auto" picks the fastest exact one for the device and model and
        records why.
    device : str
        "cpu", "cuda" or "cuda:N". ``"cuda"`` with several GPUs visible (and no `scheduler`) runs one
        worker process per GPU.
    batch_size : int or None
        Cells per model call; None: from free device memory on CUDA (torch), else from the model size.
    block_cells : int or None
        Cells per block, the unit of work, commit and resume; None: from the model size.
    workers : int or None
        Blocks in flight on the local scheduler; None: from the cores this process may use.
    scheduler : str or None
        Address of a running dask.distributed scheduler; None: a local one.
    normalize : {'none', 'log1p', 'total', 'total_log1p'} or None
        Library-size normalisation and/or log1p of the counts before the per-cell scaling; None: as
        the model was trained (a bundle records it), X as stored for published checkpoints.
    target_sum : float or None
        Library size (counts per cell) for "total" / "total_log1p"; None: the model's, else 10,000.
    gene_column : str or None
        The var column holding the gene identifiers; None: the var index (SOMA: feature_name).
    id_type : {'auto', 'symbol', 'entrez', 'ensembl', 'mouse_symbol', 'mouse_ensembl'}
        Kind of gene identifier; "auto" detects it.
    layer : str or None
        Read this layer instead of X (SOMA: the X layer, by default raw, else the only one).
    use_raw : bool
        Read ``.raw.X`` with ``.raw.var`` (e.g. the counts scanpy keeps in ``.raw``).
    modality : str or None
        The MuData modality holding the RNA; None: "rna", else the one RNA-like modality.
    missing_chunks : {'error', 'zeros'}
        What a chunk of X absent from a Zarr store means: refuse, or zeros.
    min_coverage : float
        Least fraction (0.5 = 50%) of the model's genes found in the data (published checkpoints:
        of the dataset's genes that map onto the vocabulary).
    allow_low_coverage : bool
        Go on, with a warning, below `min_coverage`.
    allow_empty_cells : bool
        Predict cells with no counts in any gene the model reads instead of refusing them.
    overwrite : bool
        Replace an earlier translate store (or write-back file) at the same path; nothing else is
        ever replaced.
    onnx_path : str or None
        onnxruntime backend: run this export; None: export on demand and cache it.
    precision : {'fp32', 'fp16', 'bf16'}
        Compute dtype; fp32 is exact, bf16 / fp16 are opt-in and recorded.
    compile : bool
        torch backend: run the model's blocks through torch.compile.
    backend_options : dict or None
        Per-backend settings; triton: url, model_name, protocol, timeout_s, ready_timeout_s,
        max_in_flight, retry_timeout_s, ... (see `sctranslator.engine.backends.TritonConnection`).
    write_h5ad : str, pathlib.Path or None
        Also write a copy of the input with the predictions in ``obsm[key]`` (a DataFrame, proteins
        as columns) and provenance in ``uns[key]``.
    write_mudata : str, pathlib.Path or None
        Also write a MuData (.h5mu): the input's modalities and the predictions as modality `key`.
    embeddings : bool
        Also write ``obsm['X_sctranslator']``, each cell's embedding (cells x model dim): the mean of
        the encoder's outputs over its real gene tokens (torch backend only).
    quiet : bool
        No progress bar.
    gene_mapping : {'original', 'extended'} or None
        How gene identifiers become tokens: "original" (the published pipeline's, the default for
        published checkpoints) or "extended" (wider tables); None: the model's own setting.
    inplace : bool
        Also set the predictions on `data` (an AnnData: ``obsm[key]``; a MuData: a new modality);
        nothing is returned then.
    cells : sequence of str or None
        Translate only these cells (obs names), in the input's order.
    obs_query : str or None
        Translate only the cells where this pandas expression over obs holds (SOMA: a
        value_filter evaluated by TileDB).
    max_cells : int or None
        Translate only the first N cells (of the selection).
    key : str or None
        Where `write_h5ad`, `write_mudata` and `inplace` put the predictions; None:
        "protein_predicted" (AnnData obsm) or "prot_predicted" (MuData modality).
    replace_key : bool
        Replace what the input already holds under `key` (needs an explicit `key`). Measured
        proteins (``obsm['protein_expression']``, a ``prot`` modality) are never replaced otherwise.
    wait : bool
        When another job is writing one of the outputs, wait for it to end (then check the outputs
        afresh) instead of refusing.
    measurement : str or None
        TileDB-SOMA experiment: the measurement holding the RNA; None: "RNA".
    obs_columns : sequence of str or None
        Only these obs columns go into the output's obs; None: all (SOMA: soma_joinid always does).
    storage_options : dict or None
        fsspec options (credentials, endpoint_url, anon, ...) for inputs and outputs in object
        storage; None: each file system's standard environment (AWS_ENDPOINT_URL, ...).

    Returns
    -------
    AnnData, list of AnnData, or None
        Cells x proteins, read lazily from the output store: ``X`` is a float32
        ``dask.array.Array`` on the model's target scale (per-cell min-max for published
        checkpoints), so the predictions are never all in memory; obs, var and uns are in memory.
        ``X.compute()`` gives a numpy array and ``to_memory()`` an in-memory AnnData.
        ``uns['sctranslator']`` records the model, settings, output scaling, plan, coverage and run.
        With `embeddings`, ``obsm['X_sctranslator']`` is a lazy ``(n_cells, dim)`` array. A list,
        one per input, for a collection; None with ``inplace=True``.

    Raises
    ------
    OptionError
        A choice (backend, normalize, id_type, precision, ...) outside its choices, a device that is
        not cpu / cuda / cuda:N, a size below 1, `replace_key` without `key`, `key` without a
        write-back, a `key` with "/".
    BackendOptionError
        An option the chosen backend does not use (url without triton, onnx_path, compile, a
        precision or device with triton), or one it needs and lacks (triton's url).
    BackendError
        Embeddings from a backend that declares none; a precision the backend cannot run on the
        device; a backend that cannot start or fails.
    InputDataError
        No ``.raw``, layer or modality as asked; `inplace` without an AnnData; a cell selection with
        a write-back.
    BadCellsError
        NaN / Inf / negative values (naming the lowest bad row), or empty cells unless
        `allow_empty_cells`.
    CoverageError
        Fewer than `min_coverage` of the genes map, unless `allow_low_coverage`.
    VocabularyError
        Identifiers that cannot be mapped as asked; UnknownProteinError for a protein outside the
        vocabulary or the model's panel.
    KeyConflictError
        A write-back target that already exists (without `key` and `replace_key`).
    CheckpointError
        An unreadable or unsafe model.
    StoreError
        An unreadable input, a missing Zarr chunk (with ``missing_chunks="error"``), an `out` naming
        an HDF5 file, or an output written by another job (without `overwrite`).
    OutputConflictError
        An output path that holds something sctranslator did not write, or overlaps an input.
    OutputLockedError
        Another job is writing the same output and `wait` is False.
    CollectionError
        Some inputs of a collection failed (the others are complete).

    Examples
    --------
    >>> import sctranslator
    >>> pred = sctranslator.translate("pbmc.h5ad", "demo", ["CD3", "CD4"], out="pbmc.zarr")  # doctest: +SKIP
    >>> pred.X[:100].compute()  # doctest: +SKIP
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

    The one path of the Python API and the ``translate`` command.

    Parameters
    ----------
    data : str, pathlib.Path, AnnData, MuData or tiledbsoma.Experiment
        One input (see `translate`).
    model : str, pathlib.Path or TranslatorModel
        The model (see `translate`).
    options : TranslateOptions
        The job's options.

    Returns
    -------
    AnnData or None
        As `translate`.

    Raises
    ------
    SctranslatorError
        As `translate`.
    """
    with writing(options.output.wait):
        return prepare_translate(data, model, options).run()


def prepare_input(data: Any, model: str | Path | TranslatorModel, proteins: Sequence[str] | None = None,
                  **kwargs: Any) -> PreparedTranslate:
    """`prepare_translate` from `translate`'s keywords (an input of a collection: engine.collection).

    The claims go to the enclosing `writing` scope (the collection's).

    Parameters
    ----------
    data : str, pathlib.Path or AnnData
        The input, as `translate` takes it.
    model : str, pathlib.Path or TranslatorModel
        The model, as `translate` takes it.
    proteins : sequence of str or None
        The proteins to predict; None: the model's panel.
    **kwargs
        `translate`'s other keywords.

    Returns
    -------
    PreparedTranslate
        The input ready to compute.
    """
    return prepare_translate(data, model, TranslateOptions.from_kwargs(proteins=proteins, **kwargs))


@dataclass
class PreparedTranslate:
    """An input ready to compute: its outputs claimed, its source open, its plan, backend and store made.

    `run()` computes it and writes its outputs (closing the source); `close()` drops it unrun.

    Parameters
    ----------
    data : Any
        The input as given.
    source : Source
        The input opened and restricted to the selected cells.
    options : TranslateOptions
        The job's options, paths made absolute and storage options resolved.
    plan : Plan
        The gene layout and protein windows.
    execution : Execution
        The backend and parallelism chosen for the job.
    sink : Any
        The output store the blocks are written into.
    owner : TemporaryStore or None
        The temporary store to remove afterwards, when there is no `out`.
    target : Any
        The AnnData or MuData written into in place, or None.
    warming : threading.Thread or None
        The read of the first row that loads the kernels early (`engine.warmup`), joined before the
        source closes.
    """

    data: Any
    source: Source
    options: TranslateOptions
    plan: Plan
    execution: Execution
    sink: Any
    owner: TemporaryStore | None
    target: Any
    warming: threading.Thread | None = None

    def run(self) -> ad.AnnData | None:
        """The job into the output store, then the write-backs (errors as `translate`).

        Returns
        -------
        AnnData or None
            The predictions (cells x proteins, X lazy), or None when written in place.
        """
        try:
            return _run_and_write(self.data, self.source, self.options, self.execution, self.sink, self.owner,
                                  self.plan, self.target)
        finally:
            _close_source(self.source, self.warming)

    def close(self) -> None:
        """Close the input without computing it (its store stays resumable; a temporary one is removed)."""
        _close_source(self.source, self.warming)
        if self.owner is not None:
            self.owner.remove()


def prepare_translate(data: str | Path | ad.AnnData, model: str | Path | TranslatorModel,
                      options: TranslateOptions) -> PreparedTranslate:
    """Everything of `run_translate` before the blocks compute: checks, claims, source, plan, backend.

    Claims go to the enclosing `writing` scope. Raises as `translate`; the source is closed on failure.

    Parameters
    ----------
    data : str, pathlib.Path or AnnData
        The input, as `translate` takes it.
    model : str, pathlib.Path or TranslatorModel
        The model, as `translate` takes it.
    options : TranslateOptions
        The validated options.

    Returns
    -------
    PreparedTranslate
        The input ready to compute (`run()`), or to drop (`close()`).
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
    warming = None
    try:
        check_write_targets(data, source, options)
        loaded, model_source = _resolve_model(model)
        # The output's identity needs the weights' hash (~1 s per 0.5 GB): it runs beside the planning.
        fingerprint_in_background(loaded)
        plan = make_plan(source, loaded, options)
        execution = plan_execution(options, backend, loaded, model_source, plan, source.n_obs, cluster_workers)
        if scheduler is None and not execution.gpus:  # the blocks run in this process
            warming = warm_kernels_in_background(source, plan)
        sink, owner = _open_output(source, options, backend, loaded, model_source, plan, execution, inputs)
        log.info("parallelism: %s", execution.parallelism["why"])
    except BaseException:
        _close_source(source, warming)
        raise
    return PreparedTranslate(data, source, options, plan, execution, sink, owner, target, warming)


def _close_source(source: Source, warming: threading.Thread | None) -> None:
    """Close the input once the warm-up's read of it is over (a read after closing would reopen it)."""
    if warming is not None:
        warming.join()
    source.close()


def with_absolute_paths(options: TranslateOptions) -> TranslateOptions:
    """The options with `out` and `onnx_path` absolute (~ expanded; URLs kept).

    Parameters
    ----------
    options : TranslateOptions
        The job's options.

    Returns
    -------
    TranslateOptions
        A copy.
    """
    onnx_path = options.engine.onnx_path
    engine = replace(options.engine, onnx_path=None if onnx_path is None else str(_absolute(onnx_path)))
    return replace(options, out=_absolute(options.out), engine=engine)


def open_input(data: Any, given: InputOptions, storage_options: dict[str, Any] | None = None) -> Source:
    """The input as a Source, restricted to the selected cells: the one place an input is opened.

    Parameters
    ----------
    data : str, pathlib.Path, AnnData, MuData or tiledbsoma.Experiment
        The input.
    given : InputOptions
        Layer, raw, modality, measurement, gene column and the cell selection.
    storage_options : dict or None
        fsspec options for an input in object storage.

    Returns
    -------
    Source
        Cells x genes, read in row blocks.

    Raises
    ------
    StoreError
        An unreadable input.
    InputDataError
        No such layer, raw or modality; a bad cell selection.
    """
    return select_cells(open_source(data, layer=given.layer, use_raw=given.use_raw, modality=given.modality,
                                    missing_chunks=given.missing_chunks, measurement=given.measurement,
                                    gene_column=given.gene_column, storage_options=storage_options),
                        cells=given.cells, obs_query=given.obs_query, max_cells=given.max_cells)


def check_write_targets(data: Any, source: Source, options: TranslateOptions) -> None:
    """Refuse write-backs that would pair the wrong cells or replace what the input holds.

    Parameters
    ----------
    data : object
        The input as given.
    source : Source
        The opened input.
    options : TranslateOptions
        The job's options.

    Raises
    ------
    InputDataError
        Repeated cell names where cells are matched by name (MuData), or a write-back of a SOMA input.
    KeyConflictError
        A write-back target that exists (without `key` and `replace_key`).
    OptionError
        A bad `key`.
    """
    output = options.output
    refuse_writeback(source, write_h5ad=output.write_h5ad, write_mudata=output.write_mudata)
    if output.write_mudata is not None or (options.inplace and not isinstance(data, ad.AnnData)):
        # MuData pairs its modalities by cell name: a repeated name would pair the wrong cells
        require_unique_cell_names(source.obs_names, source.describe(), "a MuData pairs modalities by cell name")
    check_keys(data, source, modality=options.input.modality, key=output.key, replace=output.replace_key,
               embeddings=output.embeddings, h5ad=output.write_h5ad is not None,
               mudata=output.write_mudata is not None, inplace=options.inplace)


def make_plan(source: Source, model: TranslatorModel, options: TranslateOptions) -> Plan:
    """The plan of (input, model), its coverage and expression scale checked.

    Parameters
    ----------
    source : Source
        The opened input.
    model : TranslatorModel
        The model.
    options : TranslateOptions
        The job's options.

    Returns
    -------
    Plan
        The alignment and protein windows.

    Raises
    ------
    CoverageError
        Too few genes map.
    SctranslatorError
        As `build_plan` and `check_expression_scale`.
    """
    given = options.input
    plan = build_plan(source.var, model, options.proteins, gene_column=given.gene_column, id_type=given.id_type,
                      normalize=given.normalize, target_sum=given.target_sum, min_coverage=given.min_coverage,
                      allow_low_coverage=given.allow_low_coverage, gene_mapping=given.gene_mapping)
    check_expression_scale(source, plan)
    return plan


@dataclass
class Execution:
    """How the job runs: the backend spec, call and block sizes, parallelism, GPUs and cluster workers.

    Parameters
    ----------
    spec : BackendSpec
        What each worker builds.
    batch_size : int
        Cells per backend call.
    auto_batch : bool
        The backend sizes its calls from free device memory.
    block_cells : int
        Cells per block.
    gpus : list of str
        The GPUs with a worker of their own (empty: none).
    rule : Parallelism
        Blocks in flight and intra-op threads.
    parallelism : dict
        The record of that choice for the provenance.
    tokens : int
        Gene tokens the encoder computes per cell.
    flop : float
        Estimated floating-point operations per cell.
    cluster_workers : dict of str to int
        A dask.distributed cluster's workers and their threads (empty: local).
    """

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
    """The backend spec, sizes and parallelism of the run; the backend is built here when it runs in-process.

    Parameters
    ----------
    options : TranslateOptions
        The job's options.
    backend : ChosenBackend
        The resolved backend.
    loaded : TranslatorModel
        The model.
    model_source : str or None
        Where it was loaded from (None: in memory).
    plan : Plan
        The job's plan.
    n_obs : int
        Cells to translate.
    cluster_workers : dict of str to int
        A cluster's workers (empty: local).

    Returns
    -------
    Execution
        How the job runs.

    Raises
    ------
    BackendError
        The backend cannot be built.
    """
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
        parallelism.update(workers=sum(cluster_workers.values()) or None, threads=None, streams=None,
                           compute_slots=None,
                           why=f"on {where}: each worker applies the rule to its own --nthreads and cores "
                               "(run['threads_per_worker'] records what each used)")
    # Logged by prepare_translate once the output store is open: a refusal stays the only line printed.
    block_cells = engine.block_cells
    if block_cells is None:  # also keep every worker busy on small datasets
        block_cells = min(default_block_cells(loaded), max(16, -(-n_obs // (4 * rule.workers))))
    if caps.onnx_file and engine.onnx_path is None:
        # Export (once, cached) here, announced with its cost, rather than inside the progress bar.
        spec.onnx_path = str(Path(onnx_file_for(spec, loaded)).absolute())
    if engine.scheduler is None and not gpus:
        # Built here, before the output store exists: a device, file or server that cannot serve
        # fails without leaving an unfinished store behind. The run's workers reuse this backend,
        # whose preparation of the plan's gene layout runs beside the store's creation.
        warm_up_in_background(get_backend(spec), plan)
    return Execution(spec=spec, batch_size=batch_size, auto_batch=auto_batch, block_cells=block_cells, gpus=gpus,
                     rule=rule, parallelism=parallelism, tokens=tokens, flop=flop, cluster_workers=cluster_workers)


def provenance(options: TranslateOptions, backend: ChosenBackend, loaded: TranslatorModel, model_source: str | None,
               source: Source, plan: Plan, execution: Execution) -> dict[str, Any]:
    """The record in ``uns['sctranslator']``: model, input, plan and settings (run statistics come later).

    Parameters
    ----------
    options : TranslateOptions
        The job's options.
    backend : ChosenBackend
        The resolved backend and why.
    loaded : TranslatorModel
        The model.
    model_source : str or None
        Where it was loaded from.
    source : Source
        The opened input.
    plan : Plan
        The plan.
    execution : Execution
        How the job runs.

    Returns
    -------
    dict
        JSON-able provenance.
    """
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
    """Write the write-back files: the input with the predictions under keys of their own.

    Parameters
    ----------
    data : object
        The input as given.
    source : Source
        The opened input.
    result : AnnData
        The predictions (cells x proteins).
    options : TranslateOptions
        The job's options.

    Raises
    ------
    OutputWriteError
        The write failed (full disk, no permission).
    """
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
