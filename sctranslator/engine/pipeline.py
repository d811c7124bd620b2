"""The streaming job: blocks of rows -> validate -> prepare -> backend -> sink, on Dask.

One Dask task per block of rows. A task reads its rows, checks them, turns them into model
values with the Numba kernels (which release the GIL), predicts in batches through the
worker's one backend, and commits its rows to the sink. Tasks run concurrently, so reading,
preparing, inference and writing of different blocks overlap; memory is bounded by
(workers x block size), never by the dataset.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
from tqdm import tqdm

from sctranslator.engine.backends import BackendSpec, Batch, get_backend
from sctranslator.engine.sink import ZarrSink
from sctranslator.engine.sources import Source
from sctranslator.errors import InputDataError
from sctranslator.kernels import prepare_values, scan_block
from sctranslator.plan import Plan

log = logging.getLogger(__name__)


@dataclass
class BlockJob:
    """What every task needs; picklable so distributed workers can run it."""

    source: Source
    plan: Plan
    backend: BackendSpec
    sink: ZarrSink
    batch_size: int
    allow_empty_cells: bool = False
    embeddings: bool = False  # also write obsm['X_sctranslator'] (torch backend)


def check_block(job: BlockJob, block: Any, start: int) -> None:
    """Raise a named error for NaN/Inf/negative values or empty cells, naming the cell and gene."""
    scan = scan_block(block)
    problems = scan.problems(allow_empty_rows=job.allow_empty_cells)
    if not problems:
        return
    var_names = job.source.var.index
    obs_names = job.source.obs_names

    def where(position: tuple[int, int] | None) -> str:
        if position is None:
            return ""
        row, column = position
        return f" (first: cell {obs_names[start + row]!r}, row {start + row}; gene {var_names[column]!r})"

    details = []
    if scan.n_nan:
        details.append(f"{scan.n_nan} NaN value(s){where(scan.first_nan)}")
    if scan.n_inf:
        details.append(f"{scan.n_inf} infinite value(s){where(scan.first_inf)}")
    if scan.n_negative:
        details.append(f"{scan.n_negative} negative value(s){where(scan.first_negative)}")
    if scan.n_empty_rows and not job.allow_empty_cells:
        row = start + int(scan.first_empty_row)
        details.append(f"{scan.n_empty_rows} empty cell(s) with no expression at all (first: cell "
                       f"{obs_names[row]!r}, row {row}); remove them or pass --allow-empty-cells")
    raise InputDataError(f"rows {start}..{start + scan.n_rows - 1} of {job.source.path or 'the input'}: "
                         + "; ".join(details) + ". Expression must be finite and non-negative.")


_THREAD_STATE = threading.local()


def _values_buffer(rows: int, length: int) -> np.ndarray:
    """A per-thread (rows, L) float32 buffer, reused across blocks: filling fresh pages of a new
    array costs more than the preparation itself."""
    buffer = getattr(_THREAD_STATE, "values", None)
    if buffer is None or buffer.shape[1] != length or buffer.shape[0] < rows:
        buffer = _THREAD_STATE.values = np.empty((rows, length), dtype=np.float32)
    return buffer[:rows]


def predict_block(job: BlockJob, start: int, stop: int,
                  progress: Callable[[int], object] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Predictions (stop - start, n_outputs), and embeddings (stop - start, dim) if asked, for one block."""
    block = job.source.read_block(start, stop)
    check_block(job, block, start)
    plan = job.plan
    values = prepare_values(block, plan.column_slot, plan.position_real, normalize=plan.normalize,
                            target_sum=plan.target_sum, out=_values_buffer(stop - start, plan.max_genes))
    backend = get_backend(job.backend)
    out = np.empty((stop - start, plan.output_index.shape[0]), dtype=np.float32)
    embedded: list[np.ndarray] = []
    for lo in range(0, stop - start, job.batch_size):
        hi = min(lo + job.batch_size, stop - start)
        batch = Batch(values[lo:hi], plan.gene_ids, plan.position_real, plan.protein_windows,
                      plan.protein_window_mask)
        if job.embeddings:
            predictions, embedding = backend.predict_with_embeddings(batch)  # type: ignore[attr-defined]
            embedded.append(embedding)
        else:
            predictions = backend.predict(batch)
        out[lo:hi] = predictions[:, plan.output_index]
        if progress is not None:
            progress(hi - lo)
    return out, (np.concatenate(embedded) if embedded else None)


def run_block(job: BlockJob, index: int, progress: Callable[[int], object] | None = None) -> int:
    """Predict and commit one block; `progress` (local runs) is told about every finished batch."""
    start, stop = job.sink.blocks()[index]
    predictions, embeddings = predict_block(job, start, stop, progress)
    job.sink.write_block(index, predictions, embeddings)
    return stop - start


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def run_job(job: BlockJob, *, workers: int | None = None, scheduler: str | None = None,
            quiet: bool = False) -> dict[str, Any]:
    """Run every pending block; returns timing and counts."""
    sink = job.sink
    pending = sink.pending()
    blocks = sink.blocks()
    todo = set(pending)  # built once: atlases have thousands of blocks
    done_cells = sum(stop - start for i, (start, stop) in enumerate(blocks) if i not in todo)
    bar = tqdm(total=sink.n_obs, initial=done_cells, unit="cells", desc="translate", file=sys.stderr,
               disable=quiet, dynamic_ncols=True, smoothing=0.1)
    started = time.perf_counter()
    try:
        if scheduler:
            _run_distributed(job, pending, scheduler, bar)
        elif pending:
            # Local threads share the progress bar, so it advances batch by batch, not block by block.
            tasks = [dask.delayed(run_block, pure=False)(job, index, bar.update, dask_key_name=f"block-{index}")
                     for index in pending]
            dask.compute(*tasks, scheduler="threads", num_workers=workers or default_workers())
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    computed = sum(blocks[i][1] - blocks[i][0] for i in pending)
    return {"blocks_computed": len(pending), "blocks_skipped": len(blocks) - len(pending),
            "cells_computed": computed, "seconds": elapsed,
            "cells_per_second": computed / elapsed if elapsed > 0 else float("nan")}


def _run_distributed(job: BlockJob, pending: list[int], address: str, bar: tqdm) -> None:
    """Run on an existing dask.distributed cluster; the job is shipped to each worker once."""
    from distributed import Client, as_completed

    with Client(address) as client:
        shared = client.scatter(job, broadcast=True)
        futures = [client.submit(run_block, shared, index, key=f"sctranslator-block-{index}-{job.sink.path}",
                                 pure=False) for index in pending]
        for future in as_completed(futures):
            bar.update(future.result())
