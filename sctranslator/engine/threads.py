"""How many blocks run at once and how many threads each backend call uses: one rule, never oversubscribed.

The rule (`choose_parallelism`): concurrent *computing* blocks x intra-op threads never exceed the
cores this process may use (`available_cpus`: the CPU affinity mask, capped by a cgroup v2 `cpu.max`
or v1 CFS quota). How many threads one call deserves follows from its arithmetic: a call too small to
keep several threads busy runs single-threaded and several blocks run side by side; a call that
already saturates every core (the full-size published model) gets every core, and one more block is
read and prepared while it computes (a compute gate lets one block compute at a time). The same rule
runs inside each dask.distributed worker with that worker's own `--nthreads` and cores.

A backend that declares `cpu_streams` (torch) spends a computing block's threads as that many
single-thread calls side by side, one batch each (`streams`), rather than one call on all of them:
threads of one call wait for each other at every operator, streams never do (see
engine/backends/cpu_streams.py). Cores in use stay the same: computing blocks x threads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# A forward with about 0.25 GFLOP per thread keeps each intra-op thread busy for milliseconds per
# call, long enough that splitting it pays for the fork/join; below that, more threads only add overhead.
FLOP_PER_THREAD = 2.5e8
MAX_LOCAL_WORKERS = 8  # blocks in flight hold (rows x genes) buffers each; more adds memory, not speed

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")


@dataclass(frozen=True)
class Parallelism:
    """The parallelism chosen for one process: what runs concurrently and with how many threads.

    Parameters
    ----------
    cpus : int
        Cores this process may use.
    workers : int
        Concurrent blocks (reading, preparing, computing).
    threads : int
        Intra-op threads per backend call.
    compute_slots : int or None
        Blocks allowed to compute at once; None: every worker may compute.
    why : str
        The reason, in words (recorded in the provenance).
    streams : int
        Single-thread calls a computing block runs side by side (1: one call on all its threads).
    """

    cpus: int
    workers: int
    threads: int
    compute_slots: int | None
    why: str
    streams: int = 1

    def record(self, batch_size: int | str) -> dict[str, Any]:
        """The provenance entry (``uns['sctranslator']['settings']['parallelism']``).

        Parameters
        ----------
        batch_size : int or str
            Cells per call (or how they were sized).

        Returns
        -------
        dict
            JSON-able record.
        """
        return {"cpus": self.cpus, "workers": self.workers, "threads": self.threads, "streams": self.streams,
                "compute_slots": self.compute_slots or self.workers, "batch_size": batch_size, "why": self.why}


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_limit(root: str | Path = CGROUP_ROOT, self_cgroup: str | Path = SELF_CGROUP) -> float | None:
    """The CPU quota, in cores, of this process's cgroup (the smallest along its path).

    cgroup v2: ``<root>/<path>/cpu.max``; cgroup v1: ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``.
    Where the process's cgroup path does not exist under `root` (a container sees its own cgroup as
    the root), the root's files are read.

    Parameters
    ----------
    root : str or pathlib.Path
        The cgroup file system.
    self_cgroup : str or pathlib.Path
        /proc/self/cgroup (which cgroup the process is in).

    Returns
    -------
    float or None
        Cores; None when unlimited.
    """
    root = Path(root)
    text = _read(Path(self_cgroup)) or ""
    v2_path, v1_path = "/", "/"
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2_path = parts[2] or "/"
        elif "cpu" in parts[1].split(","):
            v1_path = parts[2] or "/"
    limits: list[float] = []

    def walk(base: Path, relative: str) -> list[Path]:
        # The process's own cgroup and every ancestor: a parent's quota bounds its children.
        node = base / relative.lstrip("/")
        chain = [node, *node.parents] if node.exists() else [base]
        return [p for p in chain if p == base or base in p.parents]

    for directory in walk(root, v2_path):
        quota = _read(directory / "cpu.max")
        if quota:
            fields = quota.split()
            if fields[0] != "max" and len(fields) == 2 and float(fields[1]) > 0:
                limits.append(float(fields[0]) / float(fields[1]))
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        base = root / name
        if not base.is_dir():
            continue
        for directory in walk(base, v1_path):
            quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
            if quota and period and int(quota) > 0 and int(period) > 0:
                limits.append(int(quota) / int(period))
        break
    return min(limits) if limits else None


def available_cpus(affinity: set[int] | None = None, root: str | Path = CGROUP_ROOT,
                   self_cgroup: str | Path = SELF_CGROUP) -> tuple[int, str]:
    """The cores this process may use, and where that number came from.

    The CPUs in the affinity mask (``os.sched_getaffinity``, else ``os.cpu_count``), capped by the
    cgroup quota rounded down (a 1.5-core quota is 1 busy thread, never 2 throttled ones), at least 1.

    Parameters
    ----------
    affinity : set of int or None
        The affinity mask; None: this process's.
    root : str or pathlib.Path
        The cgroup file system.
    self_cgroup : str or pathlib.Path
        /proc/self/cgroup.

    Returns
    -------
    cpus : int
        Cores.
    source : str
        Where the number came from.
    """
    if affinity is None:
        try:
            affinity = os.sched_getaffinity(0)
        except (AttributeError, OSError):
            affinity = set(range(os.cpu_count() or 1))
    cpus, source = max(1, len(affinity)), f"{len(affinity)} CPUs in the affinity mask"
    quota = cgroup_cpu_limit(root, self_cgroup)
    if quota is not None and math.floor(quota) < cpus:
        cpus, source = max(1, math.floor(quota)), f"a cgroup CPU quota of {quota:g} cores"
    return cpus, source


def cell_flop(config: Any, tokens: int) -> float:
    """Rough floating-point operations of one cell's forward over `tokens` encoder tokens.

    Counts the matrix products (encoder projections, random-feature maps, feed-forward; the
    translator's dense layers; the decoder over the protein panel): enough to tell a forward that keeps
    many cores busy from one that does not.

    Parameters
    ----------
    config : ModelConfig
        The model's sizes.
    tokens : int
        Encoder tokens per cell.

    Returns
    -------
    float
        Operations.
    """
    def layer(width: int, heads: int, head_dim: int, features: int, length: int) -> float:
        inner = heads * head_dim
        per_token = 2 * (4 * width * inner + 2 * inner * features + 2 * features * head_dim * heads
                         + 2 * config.ff_mult * width * width)
        return per_token * length

    encoder = config.enc_depth * layer(config.dim, config.enc_heads, config.enc_dim_head, config.enc_nb_features,
                                       tokens)
    widths = config.translator_layer_widths
    translator = sum(2 * a * b * config.dim for a, b in zip(widths, widths[1:], strict=False))
    decoder = config.dec_depth * layer(config.dim, config.dec_heads, config.dec_dim_head, config.dec_nb_features,
                                       config.max_proteins)
    return float(encoder + translator + decoder)


def choose_parallelism(*, remote: bool = False, device: str = "cpu", flop_per_cell: float = 0.0,
                       cpus: int | None = None, workers: int | None = None, concurrent: int | None = None,
                       cpu_source: str = "", streams: bool = False) -> Parallelism:
    """The rule: concurrent computing blocks x intra-op threads <= `cpus` (see the module docstring).

    Parameters
    ----------
    remote : bool
        The arithmetic runs on a server (a backend whose capabilities say so, e.g. triton).
    device : str
        Otherwise where it runs: "cuda" (the GPU) or "cpu" (here).
    flop_per_cell : float
        The arithmetic of one cell's forward (`cell_flop`), which sets the threads a call deserves.
    cpus : int or None
        Cores this process may use; None: `available_cpus`.
    workers : int or None
        Concurrent blocks the user asked for (threads then share the cores among them).
    concurrent : int or None
        Concurrent blocks fixed by the runtime (a Dask worker's ``--nthreads``); computing is gated to
        what the cores allow.
    cpu_source : str
        Where `cpus` came from, for the reason.
    streams : bool
        The backend declares ``cpu_streams``: on CPU a computing block's threads become that many
        single-thread calls side by side.

    Returns
    -------
    Parallelism
        The choice.
    """
    rule = _choose(remote=remote, device=device, flop_per_cell=flop_per_cell, cpus=cpus, workers=workers,
                   concurrent=concurrent, cpu_source=cpu_source)
    if streams and not remote and not device.startswith("cuda") and rule.threads > 1:
        return dataclasses.replace(rule, streams=rule.threads, why=f"{rule.why}; each computing block runs "
                                   f"{rule.threads} single-thread calls side by side (one batch each)")
    return rule


def _choose(*, remote: bool, device: str, flop_per_cell: float, cpus: int | None, workers: int | None,
            concurrent: int | None, cpu_source: str) -> Parallelism:
    """choose_parallelism without streams."""
    if cpus is None:
        cpus, cpu_source = available_cpus()
    cpus = max(1, int(cpus))
    where = f"{cpus} core(s) ({cpu_source})" if cpu_source else f"{cpus} core(s)"
    if remote:
        # The server computes; blocks here read, prepare and wait on requests, one thread each.
        count = workers or concurrent or max(2, min(cpus, MAX_LOCAL_WORKERS))
        return Parallelism(cpus, count, 1, None, f"the server computes; {count} blocks read, prepare and "
                           f"send with 1 thread each on {where}")
    if device.startswith("cuda"):
        # One block at a time on the GPU (one stream; memory-sized batches assume the device is theirs),
        # the others read and prepare on the CPU cores.
        count = workers or concurrent or max(2, min(cpus, MAX_LOCAL_WORKERS))
        threads = max(1, cpus // count)
        return Parallelism(cpus, count, threads, 1, f"the GPU computes one block at a time while {count - 1} more "
                           f"are read and prepared, {threads} CPU thread(s) each on {where}")
    if workers:
        threads = max(1, cpus // workers)
        note = "" if workers * threads <= cpus else f"; {workers} workers asked for exceed the cores"
        if note:  # the user's choice is kept, but they should know it oversubscribes
            log.warning("--workers %d is more than the %d core(s) this process may use (%s): blocks will compete "
                        "for the cores; leave --workers unset to let sctranslator choose", workers, cpus,
                        cpu_source or "affinity")
        return Parallelism(cpus, workers, threads, None, f"{workers} workers asked for, {threads} thread(s) each on "
                           f"{where}{note}")
    wanted = max(1, min(cpus, int(flop_per_cell // FLOP_PER_THREAD)))
    slots = max(1, cpus // wanted)
    threads = max(1, cpus // slots)
    size = f"one cell's forward is ~{flop_per_cell / 1e9:.3g} GFLOP"
    if concurrent:
        gate = slots if slots < concurrent else None
        return Parallelism(cpus, concurrent, threads, gate,
                           f"{size}: {concurrent} concurrent tasks (worker nthreads), at most {slots} computing with "
                           f"{threads} thread(s) each on {where}")
    if slots == 1:
        busy = "one core" if cpus == 1 else "enough to keep every core busy"
        return Parallelism(cpus, 2, threads, 1, f"{size}, {busy}: one block computes with "
                           f"{threads} thread(s) while the next is read and prepared, on {where}")
    count = min(slots, MAX_LOCAL_WORKERS)
    return Parallelism(cpus, count, threads, None, f"{size}: {count} blocks at once with {threads} thread(s) each "
                       f"on {where}")


_GATES: dict[int, threading.BoundedSemaphore] = {}
_GATES_LOCK = threading.Lock()


@contextlib.contextmanager
def compute_gate(slots: int | None) -> Iterator[None]:
    """Hold one of this process's compute slots while inside (no limit for None).

    Parameters
    ----------
    slots : int or None
        The process's compute slots.

    Yields
    ------
    None
        While the slot is held.
    """
    if not slots:
        yield
        return
    with _GATES_LOCK:
        gate = _GATES.setdefault(int(slots), threading.BoundedSemaphore(int(slots)))
    with gate:
        yield
