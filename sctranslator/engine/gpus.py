"""Several GPUs on one machine: a local dask.distributed cluster of one worker per GPU.

With `--device cuda` (no index) and no `--scheduler`, a run over 2+ visible GPUs starts one worker
process per GPU, each started with CUDA_VISIBLE_DEVICES naming its GPU alone, so that worker's
backend ("cuda") lands on its own GPU and nothing else in it needs to know. Blocks are
independent (the ledger and the sink commit them one by one), so the scheduler hands them to
whichever worker is free. `cuda:N` pins one GPU and runs locally as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

from sctranslator.engine.threads import available_cpus
from sctranslator.errors import BackendError

WORKER_PREFIX = "gpu-"


def require_device(device: str, *, count: int | None = None) -> None:
    """Refuse a CUDA device PyTorch cannot see, before a job creates anything.

    Parameters
    ----------
    device : str
        cpu, cuda or cuda:N (already checked for its form, `options.check_device`).
    count : int or None
        CUDA devices PyTorch sees; None: ``torch.cuda.device_count()`` (0 without CUDA).

    Raises
    ------
    BackendError
        `device` names a CUDA device and there is none, or not that many.
    """
    if not device.startswith("cuda"):
        return
    if count is None:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.partition(":")[2] or 0)
    if count == 0:
        raise BackendError(f"--device {device} asked for, but PyTorch sees no CUDA device; use --device cpu "
                           "(nothing was written)")
    if index >= count:
        raise BackendError(f"--device {device} asked for, but PyTorch sees {count} CUDA device(s) (cuda:0 to "
                           f"cuda:{count - 1}); choose one of them (nothing was written)")


def visible_gpus(device: str, *, count: int | None = None, visible: str | None = None) -> list[str]:
    """The GPUs a run on `device` spreads over, as CUDA_VISIBLE_DEVICES names them.

    Only ``device == "cuda"`` spreads (``cuda:N`` names one GPU).

    Parameters
    ----------
    device : str
        The device asked for.
    count : int or None
        Devices PyTorch sees; None: ``torch.cuda.device_count()``.
    visible : str or None
        The CUDA_VISIBLE_DEVICES to honour; None: this process's. Its entries (indices or UUIDs) are
        handed on as written.

    Returns
    -------
    list of str
        One entry per GPU; [] for one GPU or none.
    """
    if device != "cuda":
        return []
    if count is None:
        try:
            import torch
        except ImportError:
            return []
        count = torch.cuda.device_count()
    if visible is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [entry.strip() for entry in visible.split(",") if entry.strip()]
    else:
        ids = [str(i) for i in range(count)]
    ids = ids[:count]
    return ids if len(ids) > 1 else []


def threads_per_gpu(gpus: int, workers: int | None, cpus: int | None = None) -> int:
    """Concurrent blocks per GPU worker: `workers` (or the CPUs) shared out, at least 2.

    Two, so that one block is read and prepared while another computes.

    Parameters
    ----------
    gpus : int
        GPU workers.
    workers : int or None
        Blocks in flight asked for in all; None: from the CPUs.
    cpus : int or None
        CPUs to share; None: those this process may use.

    Returns
    -------
    int
        Threads per worker.
    """
    total = workers or cpus or available_cpus()[0]
    return max(2, total // max(1, gpus))


def worker_specs(gpu_ids: Sequence[str], threads: int) -> dict[str, dict[str, Any]]:
    """SpecCluster worker specs: one Nanny per GPU, its process started with CUDA_VISIBLE_DEVICES=that GPU.

    Parameters
    ----------
    gpu_ids : sequence of str
        The GPUs, as CUDA_VISIBLE_DEVICES names them.
    threads : int
        Threads per worker.

    Returns
    -------
    dict
        Worker name (``gpu-<id>``) -> spec.
    """
    from distributed import Nanny

    return {f"{WORKER_PREFIX}{gpu}": {"cls": Nanny, "options": {
        "nthreads": threads, "env": {"CUDA_VISIBLE_DEVICES": str(gpu)}, "name": f"{WORKER_PREFIX}{gpu}",
        "memory_limit": 0,  # host memory is bounded by blocks x workers, not by Dask's spilling
    }} for gpu in gpu_ids}


@contextlib.contextmanager
def gpu_cluster(gpu_ids: Sequence[str], threads: int) -> Iterator[Any]:
    """A local SpecCluster with one worker per GPU (see `worker_specs`), closed on exit.

    Parameters
    ----------
    gpu_ids : sequence of str
        The GPUs.
    threads : int
        Threads per worker.

    Yields
    ------
    distributed.SpecCluster
        The running cluster.
    """
    from distributed import Scheduler, SpecCluster

    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": None}}
    cluster = SpecCluster(workers=worker_specs(gpu_ids, threads), scheduler=scheduler,
                          silence_logs=logging.WARNING, name="sctranslator-gpus")
    try:
        yield cluster
    finally:
        cluster.close()
