"""The streaming job: blocks of rows -> validate -> prepare -> backend -> sink, on Dask.

One Dask task per block of rows. A task reads its rows, checks them, turns them into model
values with the Numba kernels (which release the GIL), predicts in batches through the
worker's one backend, and commits its rows to the sink. Tasks run concurrently, so reading,
preparing, inference and writing of different blocks overlap; memory is bounded by
(workers x block size), never by the dataset.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from typing import Any, Protocol

import dask
import dask.threaded
import numpy as np
from tqdm import tqdm

from sctranslator.engine.backends.base import BackendSpec, Batch
from sctranslator.engine.backends.selection import backend_capabilities, get_backend
from sctranslator.engine.block_runner import BlockRunner
from sctranslator.engine.gpus import gpu_cluster, threads_per_gpu
from sctranslator.engine.prefetch import prefetching
from sctranslator.engine.sources import Source
from sctranslator.engine.threads import Parallelism, available_cpus, choose_parallelism, compute_gate
from sctranslator.errors import BadCellsError, ClusterError, OptionError
from sctranslator.plan import Plan
from sctranslator.util.progress import count_done, progress_bar

log = logging.getLogger(__name__)


class BlockSink(Protocol):
    """Where a job's blocks go: row ranges, which are committed (a ledger), and a path to name it by.

    `engine.sink.ZarrSink` (translate's output store) and the analyses' block stores
    (`engine.block_results.BlockResults`) are sinks.
    """

    n_obs: int

    @property
    def path(self) -> str | os.PathLike[str]:
        """The sink's location, for messages and workers."""
        ...

    def blocks(self) -> list[tuple[int, int]]:
        """Row range of each block.

        Returns
        -------
        list of tuple of int
            ``[start, stop)`` per block.
        """
        ...

    def pending(self) -> list[int]:
        """Blocks still to compute, in order.

        Returns
        -------
        list of int
            Block indices.
        """
        ...

    def block_done(self, index: int) -> bool:
        """Whether block `index` is committed.

        Parameters
        ----------
        index : int
            The block.

        Returns
        -------
        bool
            True when committed.
        """
        ...


@dataclass
class BlockJob:
    """What every block task needs; picklable so distributed workers can run it.

    Parameters
    ----------
    source : Source
        The input.
    plan : Plan
        The alignment onto the model.
    backend : BackendSpec
        What each worker builds.
    sink : ZarrSink
        Where predictions go.
    batch_size : int
        Cells per backend call.
    allow_empty_cells : bool
        Predict cells with no counts in the genes the model reads.
    embeddings : bool
        Also write obsm['X_sctranslator'] (torch backend).
    auto_batch_size : bool
        Let the backend size its calls from free device memory (torch on CUDA); `batch_size` is the
        fallback.
    flop_per_cell : float
        The arithmetic of one cell's forward (the threads rule, applied again inside each Dask worker).
    compute_slots : int or None
        Blocks that may compute at once in a process; None: all.
    in_caller_thread : bool
        With one local worker, run the blocks in the calling thread (no scheduler thread).
    """

    source: Source
    plan: Plan
    backend: BackendSpec
    sink: BlockSink
    batch_size: int
    allow_empty_cells: bool = False
    embeddings: bool = False  # also write obsm['X_sctranslator'] (torch backend)
    # Let the backend size its calls from free device memory (`cells_per_call`, torch on CUDA); batch_size
    # is the fallback for backends that cannot.
    auto_batch_size: bool = False
    # The arithmetic of one cell's forward (engine.threads.cell_flop) and how many blocks may compute
    # at once in a process (None: all): the threads rule, applied again inside each dask worker.
    flop_per_cell: float = 0.0
    compute_slots: int | None = None
    # With one local worker, run the blocks in order in the calling thread (attention: its tracing is
    # thread-local torch state) instead of on dask's thread pool.
    in_caller_thread: bool = False
    runner: BlockRunner = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.runner = BlockRunner(self.source, self.plan, allow_empty_cells=self.allow_empty_cells)

    def process(self, index: int, start: int, stop: int, progress: Callable[[int], object] | None = None, *,
                threads: int | None = None, compute_slots: int | None = None) -> int:
        """Compute block `index` (rows [start, stop)) and commit it to the sink; returns its empty cells.

        Parameters
        ----------
        index, start, stop
            The block and its input rows.
        progress
            Told the number of cells of every finished batch (local runs), or None.
        threads, compute_slots
            Override the job's (a dask worker applies the threads rule to its own cores).

        Returns
        -------
        int
            Empty cells predicted in the block (only when allowed).

        Raises
        ------
        BadCellsError
            Bad values, or empty cells when not allowed.
        """
        predictions, embeddings, n_empty = predict_block(self, start, stop, progress, threads=threads,
                                                         compute_slots=compute_slots)
        self.sink.write_block(index, predictions, embeddings)  # type: ignore[attr-defined]
        return n_empty


_THREAD_STATE = threading.local()


def values_buffer(rows: int, length: int) -> np.ndarray:
    """A per-thread float32 buffer, reused across blocks (fresh pages cost more than preparing).

    Parameters
    ----------
    rows : int
        Cells.
    length : int
        L.

    Returns
    -------
    numpy.ndarray
        float32 ``(rows, length)``, contents undefined.
    """
    buffer = getattr(_THREAD_STATE, "values", None)
    if buffer is None or buffer.shape[1] != length or buffer.shape[0] < rows:
        buffer = _THREAD_STATE.values = np.empty((rows, length), dtype=np.float32)
    return buffer[:rows]


def backend_for(job: BlockJob, threads: int | None = None) -> Any:
    """The process's backend for `job` (built once per spec), with `threads` intra-op threads if given.

    Parameters
    ----------
    job : BlockJob
        The job.
    threads : int or None
        Intra-op threads; None: the backend's.

    Returns
    -------
    Backend
        The backend.
    """
    spec = job.backend
    if threads is not None and threads != spec.threads:
        spec = dataclasses.replace(spec, threads=threads)
    return get_backend(spec)


def predict_values(job: BlockJob, backend: Any, values: np.ndarray, gene_ids: np.ndarray, gene_mask: np.ndarray,
                   progress: Callable[[int], object] | None = None, *, embeddings: bool = False
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """Predictions (cells, n_outputs) float32 of prepared `values` (cells, L) with one gene layout, batch by batch.

    Parameters
    ----------
    job
        Supplies the plan's protein windows and output columns and the batch size.
    backend
        The backend that computes (see `backend_for`).
    values
        float32 (cells, L) model values (`BlockRunner.prepare`).
    gene_ids, gene_mask
        int64 (L,) and bool (L,): the layout every cell of `values` has (the plan's, or a knockout variant's).
    progress
        Told the cells of each finished batch.
    embeddings
        Also return cell embeddings (cells, dim) (torch backend).

    Returns
    -------
    tuple
        (predictions, embeddings or None). The arithmetic runs as the results are taken: callers
        hold their compute gate around this call.
    """
    plan = job.plan
    cells = values.shape[0]
    out = np.empty((cells, plan.output_index.shape[0]), dtype=np.float32)
    embedded: list[np.ndarray] = []

    def batch_of(lo: int, hi: int) -> Batch:
        return Batch(values[lo:hi], gene_ids, gene_mask, plan.protein_windows, plan.protein_window_mask)

    size = job.batch_size
    if job.auto_batch_size and hasattr(backend, "cells_per_call"):
        size = backend.cells_per_call(batch_of(0, 1)) or size
    ranges = [(lo, min(lo + size, cells)) for lo in range(0, cells, size)]
    batches = (batch_of(lo, hi) for lo, hi in ranges)
    if hasattr(backend, "predict_batches"):  # the torch backend pipelines a block's batches (copies overlap)
        results = backend.predict_batches(batches, embeddings)
    elif embeddings:
        results = (backend.predict_with_embeddings(batch) for batch in batches)
    else:
        results = ((backend.predict(batch), None) for batch in batches)
    for (lo, hi), (predictions, embedding) in zip(ranges, results, strict=True):
        if embedding is not None:
            embedded.append(embedding)
        out[lo:hi] = predictions[:, plan.output_index]
        if progress is not None:
            progress(hi - lo)
    return out, (np.concatenate(embedded) if embedded else None)


def predict_block(job: BlockJob, start: int, stop: int, progress: Callable[[int], object] | None = None,
                  *, threads: int | None = None, compute_slots: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Predict one block; bad cells raise BadCellsError.

    The block is read and prepared freely, then computes only while it holds a compute slot.

    Parameters
    ----------
    job : BlockJob
        The job.
    start : int
        First row.
    stop : int
        Row after the last.
    progress : callable or None
        Told the cells of every finished batch.
    threads : int or None
        Intra-op threads; None: the job's (a Dask worker applies the rule to its own cores).
    compute_slots : int or None
        Compute slots; None: the job's.

    Returns
    -------
    predictions : numpy.ndarray
        float32 ``(stop - start, n_outputs)``.
    embeddings : numpy.ndarray or None
        float32 ``(stop - start, dim)`` when asked.
    n_empty : int
        Empty cells predicted.

    Raises
    ------
    BadCellsError
        Bad values, or empty cells unless allowed.
    """
    plan = job.plan
    block, values = job.runner.read_prepared(start, stop, out=values_buffer(stop - start, plan.max_genes))
    backend = backend_for(job, threads)
    with compute_gate(job.compute_slots if compute_slots is None else compute_slots):
        out, embedded = predict_values(job, backend, values, plan.gene_ids, plan.position_real, progress,
                                       embeddings=job.embeddings)
    return out, embedded, block.n_empty


def run_block(job: BlockJob, index: int, progress: Callable[[int], object] | None = None, *,
              threads: int | None = None, compute_slots: int | None = None) -> tuple[int, int, bool]:
    """Predict and commit one block.

    A block the ledger already holds returns at once, computed False: a task that Dask runs again (its
    worker died after the commit, or the result never reached the client) never rewrites committed rows.

    Parameters
    ----------
    job : BlockJob
        The job.
    index : int
        The block.
    progress : callable or None
        Told about every finished batch (local runs).
    threads : int or None
        Intra-op threads; None: the job's.
    compute_slots : int or None
        Compute slots; None: the job's.

    Returns
    -------
    cells : int
        Cells in the block.
    n_empty : int
        Empty cells among them.
    computed : bool
        False when the block was already committed.
    """
    start, stop = job.sink.blocks()[index]
    if job.sink.block_done(index):
        if progress is not None:
            progress(stop - start)
        return stop - start, 0, False
    n_empty = job.process(index, start, stop, progress, threads=threads, compute_slots=compute_slots)
    return stop - start, n_empty, True


def run_job(job: BlockJob, *, workers: int | None = None, scheduler: str | None = None,
            quiet: bool = False, gpus: Sequence[str] = (), bar: tqdm | None = None,
            desc: str = "translate") -> dict[str, Any]:
    """Run every pending block of a job, locally or on a dask.distributed cluster.

    With 2+ `gpus` and no scheduler, blocks run on a local cluster of one worker per GPU. Committed
    blocks are kept for a re-run whatever fails.

    Parameters
    ----------
    job : BlockJob
        The job.
    workers : int or None
        Concurrent local blocks; None: the `sctranslator.engine.threads` rule for the job's model.
    scheduler : str or None
        A dask.distributed scheduler's address; None: local.
    quiet : bool
        No progress bar.
    gpus : sequence of str
        CUDA_VISIBLE_DEVICES entries, one worker each.
    bar : tqdm or None
        A progress bar to advance (a collection's, left open) instead of a new one.
    desc : str
        The progress bar's label.

    Returns
    -------
    dict
        Timing and counts (``empty_cells``: empty cells predicted; ``blocks_per_worker``: where blocks
        ran).

    Raises
    ------
    BadCellsError
        The error of the lowest bad row among the pending blocks, whichever block failed first.
    ClusterError
        A lost scheduler, no workers, or a block whose workers keep dying.
    """
    sink = job.sink
    pending = sink.pending()
    blocks = sink.blocks()
    todo = set(pending)  # built once: atlases have thousands of blocks
    done_cells = sum(stop - start for i, (start, stop) in enumerate(blocks) if i not in todo)
    own_bar = bar is None
    if bar is None:
        bar = progress_bar(total=sink.n_obs, initial=done_cells, unit="cells", desc=desc, disable=quiet,
                           dynamic_ncols=True, smoothing=0.1)
    else:
        count_done(bar, done_cells)
    started = time.perf_counter()
    outcomes: list[tuple[int, int, bool]] = []
    placement: dict[str, int] = {}
    worker_threads: dict[str, int] = {}
    try:
        if scheduler:
            outcomes, placement, worker_threads = _run_distributed(job, pending, scheduler, bar)
        elif pending and len(gpus) > 1:
            with gpu_cluster(gpus, threads_per_gpu(len(gpus), workers)) as cluster:
                outcomes, placement, worker_threads = _run_distributed(job, pending, cluster, bar)
        elif pending:
            if workers is None:
                workers = choose_parallelism(remote=backend_capabilities(job.backend.kind).remote,
                                             device=job.backend.device,
                                             flop_per_cell=job.flop_per_cell).workers
            # Local threads share the progress bar, so it advances batch by batch, not block by block.
            tasks = [dask.delayed(run_block, pure=False)(job, index, bar.update, dask_key_name=f"block-{index}")
                     for index in pending]
            # The next block is read while the current ones compute (one block ahead: memory stays bounded).
            with prefetching(job.runner, [blocks[i] for i in pending]):
                if workers == 1 and job.in_caller_thread:
                    # In order, in this thread: thread-local state (a torch dispatch mode) sees the work.
                    outcomes = [run_block(job, index, bar.update) for index in pending]
                else:
                    # The threaded scheduler itself: named by its string, dask first imports
                    # dask.distributed (about a second) to look for a client.
                    outcomes = list(dask.compute(*tasks, scheduler=dask.threaded.get, num_workers=workers))
    except BadCellsError as error:
        # Blocks run concurrently: re-check the uncommitted blocks below the failed one, in order.
        unchecked = [blocks[i] for i in sink.pending()]
        raise job.runner.lowest_error(error, unchecked) from None
    finally:
        if own_bar:
            bar.close()
    elapsed = time.perf_counter() - started
    n_computed = sum(1 for outcome in outcomes if outcome[2])
    computed = sum(cells for cells, _, did in outcomes if did)
    empty = sum(n_empty for _, n_empty, _ in outcomes)
    if empty:
        log.warning("%d empty cell(s) (no counts in any gene the model reads) were predicted as constant cells, "
                    "as allowed", empty)
    stats = {"blocks_computed": n_computed, "blocks_skipped": len(blocks) - n_computed,
             "cells_computed": computed, "empty_cells": empty, "seconds": elapsed,
             "cells_per_second": computed / elapsed if elapsed > 0 else float("nan")}
    if placement:
        stats["blocks_per_worker"] = placement
    if worker_threads:
        stats["threads_per_worker"] = worker_threads
    return stats


# -- dask.distributed ---------------------------------------------------------------------------

def cluster_timeout() -> float:
    """Seconds to wait for a scheduler to answer or a worker to join.

    Returns
    -------
    float
        dask's ``distributed.comm.timeouts.connect`` (default 30 s).
    """
    from dask.utils import parse_timedelta

    return float(parse_timedelta(dask.config.get("distributed.comm.timeouts.connect", "30s"), default="s"))


@contextlib.contextmanager
def _quiet_distributed() -> Iterator[None]:
    """Keep distributed's own logging of a lost connection (an ERROR with a traceback) off the terminal:
    it becomes our one-line ClusterError. Shown again when our logger is at DEBUG (-v)."""
    # dask's logging config gives some (distributed.client) levels of their own: set each one.
    names = ["distributed", *(n for n in logging.root.manager.loggerDict if n.startswith("distributed."))]
    before = {name: logging.getLogger(name).level for name in names}
    if not log.isEnabledFor(logging.DEBUG):
        for name in names:
            logging.getLogger(name).setLevel(logging.CRITICAL)
    yield  # on an error the levels stay: the client's loop thread goes on logging its reconnects
    for name, level in before.items():
        logging.getLogger(name).setLevel(level)


_SCHEDULER_PROTOCOLS = ("tcp", "tls", "inproc", "ucx", "ws", "wss")


def check_scheduler_address(scheduler: str | None) -> None:
    """Refuse a scheduler address that does not read as a dask.distributed address, before any work.

    Accepted: ``tcp://host:port``, ``host:port``, ``tls://``, ``ucx://``, ``ws(s)://`` with a port, or
    ``inproc://...``; a typo then fails at once instead of after the data and model are read.

    Parameters
    ----------
    scheduler : str or None
        The address; None passes.

    Raises
    ------
    OptionError
        Not an address.
    """
    if scheduler is None:
        return
    expected = ("expected a dask.distributed scheduler address such as tcp://host:8786 or host:8786 "
                f"(protocols: {', '.join(_SCHEDULER_PROTOCOLS)})")
    if not isinstance(scheduler, str) or not scheduler.strip():
        raise OptionError(f"--scheduler {scheduler!r} is not an address; {expected}")
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        protocol, location = parse_address(scheduler)
        if protocol not in _SCHEDULER_PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}")
        if protocol == "inproc":
            if not location:
                raise ValueError("empty inproc address")
            return
        host, _ = parse_host_port(location)
        if not host:
            raise ValueError("missing host")
    except (ValueError, TypeError) as exc:
        raise OptionError(f"--scheduler {scheduler!r} is not a scheduler address ({exc}); "
                                 f"{expected}") from None


def _connect(cluster: Any) -> Any:
    """A Client of `cluster` (an address or a cluster object); ClusterError when it cannot be reached."""
    from distributed import Client

    timeout = cluster_timeout()
    try:
        return Client(cluster, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"cannot reach the dask scheduler at {cluster} within {timeout:g} s "
                           f"({type(exc).__name__}); start it (`dask scheduler`) or fix --scheduler; nothing was "
                           "written") from None


def check_cluster(scheduler: str) -> dict[str, int]:
    """The workers of a scheduler, waiting up to `cluster_timeout` for one to join.

    Called before the output store is created, so a cluster that cannot run leaves nothing.

    Parameters
    ----------
    scheduler : str
        The address.

    Returns
    -------
    dict of str to int
        Worker address -> threads.

    Raises
    ------
    ClusterError
        The scheduler cannot be reached, or no worker joins.
    """
    check_scheduler_address(scheduler)
    timeout = cluster_timeout()
    with _quiet_distributed():
        client = _connect(scheduler)
        try:
            client.wait_for_workers(1, timeout=timeout)
            return dict(client.nthreads())
        except (TimeoutError, OSError) as exc:
            raise ClusterError(f"the dask scheduler at {scheduler} has no workers (waited {timeout:g} s; "
                               f"{type(exc).__name__}); start some with `dask worker {scheduler}` and run the same "
                               "command again; nothing was written") from None
        finally:
            client.close()


def worker_paths(job: BlockJob) -> dict[str, str]:
    """Every file system path a worker opens for a job (output store, input, model, ONNX file).

    Parameters
    ----------
    job : BlockJob
        The job.

    Returns
    -------
    dict of str to str
        Role -> path.
    """
    paths = {"output store": str(job.sink.path)}
    if getattr(job.source, "path", None):
        paths["input"] = str(job.source.path)
    if isinstance(job.backend.model, str | os.PathLike):
        paths["model"] = str(job.backend.model)
    for name in ("onnx_path", "onnx_cache_dir"):
        if getattr(job.backend, name, None):
            paths[name] = str(getattr(job.backend, name))
    return paths


def _check_absolute(job: BlockJob) -> None:
    """Workers run in their own directories: a relative path would name another file there."""
    relative = {what: path for what, path in worker_paths(job).items()
                if "://" not in path and not os.path.isabs(path)}
    if relative:
        raise ClusterError(f"paths {relative} are relative; workers resolve them in their own directories. Give "
                           "absolute paths (translate() makes its own absolute)")


_WORKER_RULES: dict[tuple[Any, ...], Parallelism] = {}


def _worker_parallelism(job: BlockJob, nthreads: int) -> Parallelism:
    """The `engine.threads` rule applied inside a worker process to its own nthreads and cores (once).

    A worker's ``--nthreads`` is the share of the host its operator gave it (several workers may share
    one host, e.g. ``dask worker --nworkers 4 --nthreads 1``), so it caps the cores the rule divides.
    """
    key = (job.backend.kind, job.backend.device, job.flop_per_cell, nthreads)
    if key not in _WORKER_RULES:
        host, source = available_cpus()
        cpus = max(1, min(host, nthreads))
        if cpus < host:
            source = f"this worker's --nthreads {nthreads} of {host} ({source})"
        _WORKER_RULES[key] = choose_parallelism(remote=backend_capabilities(job.backend.kind).remote,
                                                device=job.backend.device,
                                                flop_per_cell=job.flop_per_cell, cpus=cpus, cpu_source=source,
                                                concurrent=nthreads)
        log.info("worker parallelism: %s", _WORKER_RULES[key].why)
    return _WORKER_RULES[key]


def _run_block_on_worker(job: BlockJob, index: int) -> tuple[int, int, bool, str, int]:
    """run_block on a dask.distributed worker with the threads rule for that worker; also names the
    worker and the threads it used."""
    from distributed import get_worker

    worker = get_worker()
    rule = _worker_parallelism(job, int(worker.state.nthreads))
    cells, n_empty, computed = run_block(job, index, threads=rule.threads, compute_slots=rule.compute_slots)
    # Unnamed `dask worker`s are named by address; '/' cannot be a key in the store's uns.
    name = str(worker.name).split("://")[-1].replace("/", "_")
    return cells, n_empty, computed, name, rule.threads


_POLL_S = 0.05  # how often the client looks for finished blocks (it sleeps in between)
_HEALTH_S = 1.0  # how often it asks the scheduler for its workers while nothing finishes


def _run_distributed(job: BlockJob, pending: list[int], cluster: Any, bar: tqdm
                     ) -> tuple[list[tuple[int, int, bool]], dict[str, int], dict[str, int]]:
    """Run on a dask.distributed cluster (an address or a cluster object); the job is shipped to each
    worker once. Returns the outcomes, the blocks each worker ran and the threads each used.

    Each future is released as soon as its result is recorded: a finished block's result is then
    nobody's, so when a worker dies the scheduler has nothing of it to recompute (a block it still
    recomputes finds its commit in the ledger and returns at once, see `run_block`).
    """
    from distributed import as_completed

    _check_absolute(job)
    timeout = cluster_timeout()
    outcomes: list[tuple[int, int, bool]] = []
    placement: dict[str, int] = {}
    threads: dict[str, int] = {}
    where = getattr(cluster, "scheduler_address", cluster)
    with _quiet_distributed(), _connect(cluster) as client:
        try:
            shared = client.scatter(job, broadcast=True)
            running = as_completed(loop=client.loop)
            for index in pending:
                running.add(client.submit(_run_block_on_worker, shared, index,
                                          key=f"sctranslator-block-{index}-{job.sink.path}", pure=False))
        except (OSError, TimeoutError, CancelledError) as exc:
            raise _lost(where, exc) from None
        del shared  # the futures hold it; the client need not
        healthy = last_check = time.monotonic()
        while not running.is_empty():
            if not running.has_ready():
                time.sleep(_POLL_S)
                now = time.monotonic()
                if now - last_check >= _HEALTH_S:
                    last_check = now
                    if _has_workers(client, where):
                        healthy = now
                    elif now - healthy > timeout:
                        raise ClusterError(f"the dask cluster at {where} has had no workers for {timeout:g} s "
                                           f"with {running.count()} block(s) left; committed blocks are kept: "
                                           "start workers and run the same command again to resume")
                continue
            for future in running.next_batch(block=False):
                cells, n_empty, computed, worker, used = _result(future, where, client)
                future.release()  # recorded: the scheduler may forget it
                del future
                outcomes.append((cells, n_empty, computed))
                placement[worker] = placement.get(worker, 0) + int(computed)
                threads[worker] = used
                bar.update(cells)
    return outcomes, placement, threads


def _has_workers(client: Any, where: Any) -> bool:
    """Whether the scheduler has a worker; ClusterError when the scheduler is gone."""
    try:
        if client.status not in ("running", "connecting"):
            raise OSError(f"client status {client.status}")
        return bool(client.nthreads())
    except (OSError, TimeoutError, CancelledError) as exc:
        raise _lost(where, exc) from None


def _lost(where: Any, exc: BaseException) -> ClusterError:
    return ClusterError(f"lost the dask scheduler at {where} ({type(exc).__name__}); committed blocks are kept: "
                        "restart the scheduler and workers, then run the same command again to resume")


def _result(future: Any, where: Any, client: Any) -> tuple[int, int, bool, str, int]:
    """A finished block's result. Its task's own errors (bad cells, a full disk) pass through as
    raised on the worker; a block whose workers kept dying, or a future cancelled or cut off because
    the scheduler went away, becomes a ClusterError."""
    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    try:
        if future.status == "cancelled":
            raise CancelledError(future.key)
        return future.result()
    except KilledWorker:
        raise _kept_dying(where, future.key) from None
    except CommClosedError as exc:
        raise _lost(where, exc) from None
    except CancelledError as exc:
        # Cancelled with the scheduler still answering: the job's shared data (scattered to the
        # workers) died with them, which Dask reports as a cancellation of the blocks needing it.
        if _scheduler_answers(client):
            raise _kept_dying(where, future.key) from None
        raise _lost(where, exc) from None


def _kept_dying(where: Any, key: Any) -> ClusterError:
    return ClusterError(f"workers of the dask cluster at {where} kept dying while running {key} (out of memory, "
                        "or killed); committed blocks are kept: give workers more memory (or lower "
                        "--block-cells) and run the same command again to resume")


def _scheduler_answers(client: Any) -> bool:
    try:
        if client.status not in ("running", "connecting"):
            return False
        client.nthreads()
        return True
    except (OSError, TimeoutError, CancelledError):
        return False
