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
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np
from tqdm import tqdm

from sctranslator._progress import progress_bar
from sctranslator.engine.backends.base import BackendSpec, Batch
from sctranslator.engine.backends.registry import get_backend
from sctranslator.engine.blocks import BlockRunner
from sctranslator.engine.gpus import gpu_cluster, threads_per_gpu
from sctranslator.engine.sink import ZarrSink
from sctranslator.engine.sources import Source
from sctranslator.errors import BadCellsError
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
    # Let the backend size its calls from free device memory (`cells_per_call`, torch on CUDA); batch_size
    # is the fallback for backends that cannot.
    auto_batch_size: bool = False
    runner: BlockRunner = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.runner = BlockRunner(self.source, self.plan, allow_empty_cells=self.allow_empty_cells)


_THREAD_STATE = threading.local()


def _values_buffer(rows: int, length: int) -> np.ndarray:
    """A per-thread (rows, L) float32 buffer, reused across blocks: filling fresh pages of a new
    array costs more than the preparation itself."""
    buffer = getattr(_THREAD_STATE, "values", None)
    if buffer is None or buffer.shape[1] != length or buffer.shape[0] < rows:
        buffer = _THREAD_STATE.values = np.empty((rows, length), dtype=np.float32)
    return buffer[:rows]


def predict_block(job: BlockJob, start: int, stop: int, progress: Callable[[int], object] | None = None
                  ) -> tuple[np.ndarray, np.ndarray | None, int]:
    """(predictions (stop - start, n_outputs), embeddings (stop - start, dim) if asked, empty cells)
    for one block; bad cells raise `BadCellsError`."""
    plan = job.plan
    block, values = job.runner.read_prepared(start, stop, out=_values_buffer(stop - start, plan.max_genes))
    backend = get_backend(job.backend)
    out = np.empty((stop - start, plan.output_index.shape[0]), dtype=np.float32)
    embedded: list[np.ndarray] = []

    def batch_of(lo: int, hi: int) -> Batch:
        return Batch(values[lo:hi], plan.gene_ids, plan.position_real, plan.protein_windows, plan.protein_window_mask)

    size = job.batch_size
    if job.auto_batch_size and hasattr(backend, "cells_per_call"):
        size = backend.cells_per_call(batch_of(0, 1)) or size
    ranges = [(lo, min(lo + size, stop - start)) for lo in range(0, stop - start, size)]
    batches = (batch_of(lo, hi) for lo, hi in ranges)
    if hasattr(backend, "predict_batches"):  # the torch backend pipelines a block's batches (copies overlap)
        results = backend.predict_batches(batches, job.embeddings)
    elif job.embeddings:
        results = (backend.predict_with_embeddings(batch) for batch in batches)
    else:
        results = ((backend.predict(batch), None) for batch in batches)
    for (lo, hi), (predictions, embedding) in zip(ranges, results, strict=True):
        if embedding is not None:
            embedded.append(embedding)
        out[lo:hi] = predictions[:, plan.output_index]
        if progress is not None:
            progress(hi - lo)
    return out, (np.concatenate(embedded) if embedded else None), block.n_empty


def run_block(job: BlockJob, index: int, progress: Callable[[int], object] | None = None) -> tuple[int, int]:
    """Predict and commit one block: (cells, empty cells among them); `progress` (local runs) is told
    about every finished batch."""
    start, stop = job.sink.blocks()[index]
    predictions, embeddings, n_empty = predict_block(job, start, stop, progress)
    job.sink.write_block(index, predictions, embeddings)
    return stop - start, n_empty


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def run_job(job: BlockJob, *, workers: int | None = None, scheduler: str | None = None,
            quiet: bool = False, gpus: Sequence[str] = ()) -> dict[str, Any]:
    """Run every pending block; returns timing and counts (`empty_cells`: empty cells predicted, when
    allowed). Bad cells raise the `BadCellsError` of the lowest bad row among the pending blocks,
    whichever block failed first. With 2+ `gpus` (CUDA_VISIBLE_DEVICES entries; engine.gpus) and
    no scheduler, blocks run on a local cluster of one worker per GPU (`blocks_per_worker` says
    where they ran)."""
    sink = job.sink
    pending = sink.pending()
    blocks = sink.blocks()
    todo = set(pending)  # built once: atlases have thousands of blocks
    done_cells = sum(stop - start for i, (start, stop) in enumerate(blocks) if i not in todo)
    bar = progress_bar(total=sink.n_obs, initial=done_cells, unit="cells", desc="translate", disable=quiet,
                       dynamic_ncols=True, smoothing=0.1)
    started = time.perf_counter()
    outcomes: list[tuple[int, int]] = []
    placement: dict[str, int] = {}
    try:
        if scheduler:
            outcomes, placement = _run_distributed(job, pending, scheduler, bar)
        elif pending and len(gpus) > 1:
            with gpu_cluster(gpus, threads_per_gpu(len(gpus), workers)) as cluster:
                outcomes, placement = _run_distributed(job, pending, cluster, bar)
        elif pending:
            # Local threads share the progress bar, so it advances batch by batch, not block by block.
            tasks = [dask.delayed(run_block, pure=False)(job, index, bar.update, dask_key_name=f"block-{index}")
                     for index in pending]
            outcomes = list(dask.compute(*tasks, scheduler="threads", num_workers=workers or default_workers()))
    except BadCellsError as error:
        # Blocks run concurrently: re-check the uncommitted blocks below the failed one, in order.
        unchecked = [blocks[i] for i in sink.pending()]
        raise job.runner.lowest_error(error, unchecked) from None
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    computed = sum(blocks[i][1] - blocks[i][0] for i in pending)
    empty = sum(n_empty for _, n_empty in outcomes)
    if empty:
        log.warning("%d empty cell(s) (no counts in any gene the model reads) were predicted as constant cells, "
                    "as allowed", empty)
    stats = {"blocks_computed": len(pending), "blocks_skipped": len(blocks) - len(pending),
             "cells_computed": computed, "empty_cells": empty, "seconds": elapsed,
             "cells_per_second": computed / elapsed if elapsed > 0 else float("nan")}
    if placement:
        stats["blocks_per_worker"] = placement
    return stats


def _run_block_on_worker(job: BlockJob, index: int) -> tuple[int, int, str]:
    """run_block on a dask.distributed worker, also naming the worker."""
    from distributed import get_worker

    cells, n_empty = run_block(job, index)
    return cells, n_empty, str(get_worker().name)


def _run_distributed(job: BlockJob, pending: list[int], cluster: Any, bar: tqdm
                     ) -> tuple[list[tuple[int, int]], dict[str, int]]:
    """Run on a dask.distributed cluster (an address or a cluster object); the job is shipped to each
    worker once. Returns the outcomes and the number of blocks each worker ran."""
    from distributed import Client, as_completed

    outcomes = []
    placement: dict[str, int] = {}
    with Client(cluster) as client:
        shared = client.scatter(job, broadcast=True)
        futures = [client.submit(_run_block_on_worker, shared, index,
                                 key=f"sctranslator-block-{index}-{job.sink.path}", pure=False) for index in pending]
        for future in as_completed(futures):
            cells, n_empty, worker = future.result()
            outcomes.append((cells, n_empty))
            placement[worker] = placement.get(worker, 0) + 1
            bar.update(cells)
    return outcomes, placement
