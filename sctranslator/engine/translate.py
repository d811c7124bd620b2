"""`translate`: the product's main job, from any source to an AnnData of predicted proteins."""

from __future__ import annotations

import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from sctranslator import __version__
from sctranslator.engine.backends import BackendSpec
from sctranslator.engine.pipeline import BlockJob, default_workers, run_job
from sctranslator.engine.sink import ZarrSink
from sctranslator.engine.sources import Source, open_source
from sctranslator.engine.writeback import write_h5ad_with_proteins, write_mudata_with_proteins
from sctranslator.errors import BackendError, InputDataError
from sctranslator.model import TranslatorModel, load_model
from sctranslator.model.identity import model_fingerprint
from sctranslator.options import Backend, IdType, Normalize, Precision, check_choices
from sctranslator.plan import DEFAULT_MIN_COVERAGE, Plan, build_plan

log = logging.getLogger(__name__)

def default_block_cells(model: TranslatorModel) -> int:
    """Cells per block (the unit of work, commit and resume): about 4 M model values per block, so a
    block of the full-size model (L = 20,000) is 209 cells and one of a tiny model up to 8,192."""
    return max(16, min(8192, 4_194_304 // model.config.max_genes))
RAW_COUNT_MAX = 50.0


def _versions() -> dict[str, str]:
    found = {"sctranslator": __version__, "python": platform.python_version()}
    for package in ("torch", "numpy", "numba", "anndata", "zarr", "dask", "onnxruntime"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def _warn_if_raw_counts(source: Source, plan: Plan) -> None:
    """Published checkpoints take X as stored; raw counts are allowed but worth a warning."""
    if plan.normalize != "none" or source.n_obs == 0:
        return
    sample = source.read_block(0, min(source.n_obs, 256))
    data = sample.data if hasattr(sample, "data") and not isinstance(sample, np.ndarray) else np.asarray(sample)
    data = data[np.isfinite(data)]  # bad values are reported by the block checks, not here
    if data.size and np.all(np.mod(data, 1) == 0) and float(data.max()) > RAW_COUNT_MAX:
        log.warning("X looks like raw counts (integers up to %.0f). The model takes X as stored; pass "
                    "--normalize total_log1p if you want library-size normalisation and log1p first.",
                    float(data.max()))


def default_batch_size(model: TranslatorModel, device: str) -> int:
    """Cells per backend call: small models amortise call overhead over many cells; on CPU the
    full-size model (L = 20,000) is fastest one cell at a time; GPUs like bigger batches."""
    budget = 32_768 if device == "cpu" else 262_144
    return max(1, min(512, budget // model.config.max_genes))


def _output_var(plan: Plan) -> pd.DataFrame:
    table = plan.proteins
    var = pd.DataFrame({"gene": table["gene"].astype(str).to_numpy(), "token_id": table["token_id"].to_numpy(),
                        "window": table["window"].to_numpy(), "position": table["position"].to_numpy()},
                       index=pd.Index(table["name"].astype(str).to_numpy(), name="protein"))
    return var


def _resolve_model(model: str | Path | TranslatorModel) -> tuple[TranslatorModel, str | None]:
    if isinstance(model, TranslatorModel):
        return model, getattr(model, "source", None)
    return load_model(model), str(Path(model).resolve())


def translate(data: str | Path | ad.AnnData, model: str | Path | TranslatorModel,
              proteins: Sequence[str] | None = None, *, out: str | Path | None = None, backend: Backend = "torch",
              device: str = "cpu", batch_size: int | None = None, block_cells: int | None = None,
              workers: int | None = None, scheduler: str | None = None, normalize: Normalize | None = None,
              target_sum: float | None = None, gene_column: str | None = None, id_type: IdType = "auto",
              layer: str | None = None, min_coverage: float = DEFAULT_MIN_COVERAGE,
              allow_low_coverage: bool = False, allow_empty_cells: bool = False, overwrite: bool = False,
              onnx_path: str | None = None, precision: Precision = "fp32",
              backend_options: dict[str, Any] | None = None, write_h5ad: str | Path | None = None,
              write_mudata: str | Path | None = None, embeddings: bool = False, quiet: bool = True) -> ad.AnnData:
    """Predict protein abundance for every cell of `data` with `model`.

    Parameters (the option groups of `sctranslator.options` document each one and its choices):
        data: .h5ad, AnnData .zarr store (v2/v3), .h5mu (its 'rna' modality) or an in-memory AnnData;
            cells x genes, read block by block.
        model: a bundle directory, an official .pt checkpoint (read without executing it) or a model.
        proteins: antibody or gene names to predict (default: the model's protein panel).
        out: the output Zarr store (default: a temporary one, removed after reading).
        backend, device, precision, batch_size (cells per model call), block_cells (cells per block,
            the unit of work and resume), workers (concurrent blocks), scheduler (a dask.distributed
            address), onnx_path, backend_options (triton: url, model_name, protocol): EngineOptions.
        normalize, target_sum, gene_column, id_type, layer, min_coverage (a fraction, 0.5 = 50%),
            allow_low_coverage, allow_empty_cells: InputOptions.
        overwrite, write_h5ad, write_mudata, embeddings, quiet: OutputOptions.

    Returns an AnnData (cells x proteins; X float32, on the model's target scale) whose
    `uns['sctranslator']` records the model, settings, plan and coverage. With `out`, the result is
    an AnnData-layout Zarr store there, written block by block: re-running the same call after an
    interruption resumes. With `embeddings`, obsm['X_sctranslator'] (cells x dim, float32) holds each
    cell's embedding: the mean of the encoder's outputs over the cell's real gene tokens (torch backend).

    Raises:
        OptionError: a choice option (backend, normalize, id_type, precision) outside its choices.
        BackendError: embeddings without the torch backend; a backend that cannot start or fails.
        InputDataError: batch_size or block_cells < 1; NaN/Inf/negative values; empty cells.
        CoverageError: fewer than `min_coverage` of the genes map (without allow_low_coverage).
        VocabularyError / UnknownProteinError: identifiers or proteins that do not map.
        CheckpointError: an unreadable model. StoreError: an unreadable input, or an output written by
            another job (without overwrite).
    """
    check_choices(backend=backend, normalize=normalize, id_type=id_type, precision=precision)
    if embeddings and backend != "torch":
        raise BackendError("embeddings come from the encoder's outputs, which only the torch backend exposes; "
                           "use --backend torch with --embeddings")
    if (batch_size is not None and batch_size < 1) or (block_cells is not None and block_cells < 1):
        raise InputDataError("batch_size and block_cells must be >= 1")
    source = open_source(data, layer=layer)
    loaded, model_source = _resolve_model(model)
    batch_size = batch_size or default_batch_size(loaded, device)
    n_workers = workers or default_workers()
    if block_cells is None:  # also keep every worker busy on small datasets
        block_cells = min(default_block_cells(loaded), max(16, -(-source.n_obs // (4 * n_workers))))
    plan = build_plan(source.var, loaded, proteins, gene_column=gene_column, id_type=id_type, normalize=normalize,
                      target_sum=target_sum, min_coverage=min_coverage, allow_low_coverage=allow_low_coverage)
    _warn_if_raw_counts(source, plan)
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    # A model path travels to workers as a path (each loads it once); in-memory models go as objects.
    spec_model: str | TranslatorModel = model_source if (model_source and scheduler) else loaded
    spec = BackendSpec(kind=backend, model=spec_model, device=device, onnx_path=onnx_path, precision=precision,
                       threads=threads, options=dict(backend_options or {}))
    identity = {"model": model_fingerprint(loaded), "input": source.fingerprint(), "plan": plan.fingerprint(),
                "embeddings": bool(embeddings)}
    uns = {"sctranslator": {
        "version": __version__,
        "model": {"source": model_source or "in-memory", "fingerprint": identity["model"],
                  "config": loaded.config.to_dict()},
        "input": {k: v for k, v in source.fingerprint().items() if v is not None},
        "plan": plan.summary(),
        "settings": {"backend": backend, "device": device, "precision": precision, "batch_size": batch_size,
                     "normalize": plan.normalize, "target_sum": plan.target_sum, "id_type": id_type,
                     "gene_column": gene_column or "", "layer": layer or "", "embeddings": bool(embeddings)},
        "versions": _versions(),
    }}
    temporary = None
    if out is None:
        temporary = tempfile.mkdtemp(prefix="sctranslator-")
        out = Path(temporary) / "predictions.zarr"
    rows = max(1, min(block_cells, source.n_obs or 1))
    try:
        sink = ZarrSink.open(out, identity=identity, obs=source.read_obs(), var=_output_var(plan), uns=uns,
                             block_rows=rows, overwrite=overwrite,
                             embedding_dim=loaded.config.dim if embeddings else 0)
        job = BlockJob(source=source, plan=plan, backend=spec, sink=sink, batch_size=batch_size,
                       allow_empty_cells=allow_empty_cells, embeddings=embeddings)
        stats = run_job(job, workers=n_workers, scheduler=scheduler, quiet=quiet)
        sink.finish({"last_run": stats})
        result = sink.read()
        result.uns["sctranslator"]["run"] = stats
        if write_h5ad:
            write_h5ad_with_proteins(data, source, result, write_h5ad)
        if write_mudata:
            write_mudata_with_proteins(data, source, result, write_mudata)
        return result
    finally:
        source.close()
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)
