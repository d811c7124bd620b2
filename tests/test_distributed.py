"""translate on a real `dask scheduler` + `dask worker` cluster on 127.0.0.1: relative paths, workers
killed by PID mid-job, a lost scheduler, no workers. Each process runs in its own directory, so a
path resolved in the wrong process names another file."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from datafiles import PBMC, TINY_A

import sctranslator

PROTEINS = ["CD3", "CD4", "CD8a", "CD14", "CD16", "CD19", "CD45RA", "PD-1", "TIGIT", "CD127"]
N_CELLS = 240
BLOCK = 10  # 24 blocks
CONNECT = "3s"  # the bounded waits (scheduler, workers) of the jobs below

# Loaded by the test's workers only (`dask worker --preload`): each block task waits a moment before it
# runs, so a job lasts long enough to kill a process part-way. Our code is untouched.
SLOW_TASKS = '''
import time
from distributed.diagnostics.plugin import WorkerPlugin

class SlowBlocks(WorkerPlugin):
    def transition(self, key, start, finish, **kwargs):
        if finish == "executing" and "sctranslator-block" in str(key):
            time.sleep(0.25)

async def dask_setup(worker):
    await worker.plugin_add(SlowBlocks(), name="slow-blocks")
'''


def _dask() -> list[str]:
    found = Path(sys.executable).with_name("dask")
    return [str(found)] if found.exists() else [shutil.which("dask") or "dask"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dask scheduler exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


class Cluster:
    """Real `dask scheduler` / `dask worker` processes, each started in its own directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.processes: list[subprocess.Popen] = []
        self.port = 0
        self.scheduler: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def _start(self, args: list[str], name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        where = self.root / name
        where.mkdir(parents=True, exist_ok=True)
        log = open(where / "log", "w")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen([*_dask(), *args], cwd=where, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})
        self.processes.append(process)
        return process

    def start_scheduler(self, **env: str) -> None:
        self.port = _free_port()
        self.scheduler = self._start(["scheduler", "--host", "127.0.0.1", "--port", str(self.port),
                                      "--no-dashboard"], f"scheduler-{len(self.processes)}", env)
        _wait_port(self.port, self.scheduler)

    def start_worker(self, wait: bool = True) -> subprocess.Popen:
        preload = self.root / "slow_tasks.py"
        preload.write_text(SLOW_TASKS)
        worker = self._start(["worker", self.address, "--nthreads", "1", "--no-nanny", "--no-dashboard",
                              "--host", "127.0.0.1", "--preload", str(preload)], f"worker-{len(self.processes)}")
        if wait:
            from distributed import Client

            with Client(self.address, timeout=60) as client:
                client.wait_for_workers(sum(p.poll() is None for p in self.workers), timeout=60)
        return worker

    @property
    def workers(self) -> list[subprocess.Popen]:
        return [p for p in self.processes if p is not self.scheduler and p.args[1] == "worker"]

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=60)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    started = Cluster(tmp_path / "cluster")
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def rna_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rna") / "rna.h5ad"
    ad.read_h5ad(PBMC / "rna.h5ad")[:N_CELLS].copy().write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def local(rna_path: Path) -> np.ndarray:
    return np.asarray(sctranslator.translate(rna_path, TINY_A, PROTEINS, block_cells=BLOCK, allow_empty_cells=True).X)


def _command(rna_path: Path, scheduler: str, allow_empty: bool = True) -> list[str]:
    """The same translate command every time, with a RELATIVE --out (resolved in the client's directory)."""
    return [sys.executable, "-m", "sctranslator", "translate", str(rna_path), "--model", str(TINY_A),
            "--proteins", ",".join(PROTEINS), "--out", "out.zarr", "--block-cells", str(BLOCK), "--scheduler",
            scheduler, *(["--allow-empty-cells"] if allow_empty else []), "--quiet"]


def _client_dir(tmp_path: Path) -> Path:
    path = tmp_path / "client"
    path.mkdir(exist_ok=True)
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": CONNECT}


def _run(rna_path: Path, scheduler: str, tmp_path: Path, allow_empty: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(_command(rna_path, scheduler, allow_empty), cwd=_client_dir(tmp_path), capture_output=True,
                          text=True, env=_env(), timeout=300)


def _start(rna_path: Path, scheduler: str, tmp_path: Path) -> subprocess.Popen:
    return subprocess.Popen(_command(rna_path, scheduler), cwd=_client_dir(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())


def _committed(store: Path) -> set[int]:
    blocks = store / ".sctranslator-job" / "blocks"
    return {int(name) for name in os.listdir(blocks) if name.isdigit()} if blocks.is_dir() else set()


def _wait_committed(store: Path, count: int, job: subprocess.Popen) -> set[int]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = _committed(store)
        if len(done) >= count:
            return done
        if job.poll() is not None:
            output = job.communicate(timeout=60)
            raise AssertionError(f"the job ended (exit {job.returncode}) before {count} blocks: {output}")
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} blocks committed in 120 s")


def _chunk_times(store: Path, blocks: set[int]) -> dict[str, int]:
    """mtime (ns) of each block's X chunk file and ledger marker."""
    times = {}
    for index in blocks:
        for chunk in [store / "X" / "c" / str(index) / "0", store / "X" / f"{index}.0",
                      store / ".sctranslator-job" / "blocks" / f"{index:09d}"]:
            if chunk.exists():
                times[str(chunk)] = chunk.stat().st_mtime_ns
    assert len(times) == 2 * len(blocks), "every committed block has a chunk file and a marker"
    return times


def _one_line_error(result: subprocess.CompletedProcess | tuple[str, str], kind: str) -> str:
    stderr = result.stderr if hasattr(result, "stderr") else result[1]
    lines = [line for line in stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(f"error: {kind}: "), stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


def _assert_same(store: Path, local: np.ndarray) -> None:
    np.testing.assert_allclose(np.asarray(ad.read_zarr(store).X), local, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_relative_out_and_a_worker_killed_mid_job(cluster: Cluster, rna_path: Path, local: np.ndarray,
                                                  tmp_path: Path) -> None:
    cluster.start_scheduler()
    doomed = cluster.start_worker()
    cluster.start_worker()
    job = _start(rna_path, cluster.address, tmp_path)
    store = tmp_path / "client" / "out.zarr"
    before = _wait_committed(store, 4, job)
    times = _chunk_times(store, before)
    doomed.send_signal(signal.SIGKILL)
    stdout, stderr = job.communicate(timeout=300)
    assert job.returncode == 0, stderr
    _assert_same(store, local)
    # Nothing committed before the kill was computed or written again.
    assert _chunk_times(store, before) == times
    run = ad.read_zarr(store).uns["sctranslator"]["run"]
    assert run["blocks_computed"] <= N_CELLS // BLOCK
    for directory in (cluster.root / name for name in os.listdir(cluster.root) if name.startswith("worker")):
        assert not (directory / "out.zarr").exists()  # the workers wrote where the client named, not beside them


def test_cluster_faults_are_named_errors_that_write_nothing_and_block_errors_stay_themselves(
        cluster: Cluster, rna_path: Path, tmp_path: Path) -> None:
    cluster.start_scheduler()
    result = _run(rna_path, cluster.address, tmp_path)
    assert result.returncode == 2
    assert "no workers" in _one_line_error(result, "ClusterError")
    assert not (tmp_path / "client" / "out.zarr").exists()
    unreachable = _run(rna_path, f"tcp://127.0.0.1:{_free_port()}", tmp_path)
    assert unreachable.returncode == 2
    assert "cannot reach" in _one_line_error(unreachable, "ClusterError")
    assert not (tmp_path / "client" / "out.zarr").exists()
    # A block's own error (cell 159 has no counts in the model's genes) comes back as itself, not as a
    # cluster fault.
    cluster.start_worker()
    bad = _run(rna_path, cluster.address, tmp_path, allow_empty=False)
    assert bad.returncode == 2
    assert "row 159" in _one_line_error(bad, "BadCellsError")


@pytest.mark.slow
def test_lost_scheduler_then_the_same_command_resumes(cluster: Cluster, rna_path: Path, local: np.ndarray,
                                                      tmp_path: Path) -> None:
    cluster.start_scheduler()
    cluster.start_worker()
    job = _start(rna_path, cluster.address, tmp_path)
    store = tmp_path / "client" / "out.zarr"
    _wait_committed(store, 3, job)
    cluster.scheduler.send_signal(signal.SIGKILL)
    output = job.communicate(timeout=120)
    assert job.returncode == 2, output[1][-3000:]
    assert "lost the dask scheduler" in _one_line_error(output, "ClusterError")
    cluster.stop()
    before = _committed(store)
    assert 3 <= len(before) < N_CELLS // BLOCK
    times = _chunk_times(store, before)
    cluster.start_scheduler()
    cluster.start_worker()
    result = _run(rna_path, cluster.address, tmp_path)
    assert result.returncode == 0, result.stderr
    _assert_same(store, local)
    assert _chunk_times(store, before) == times


@pytest.mark.slow
def test_a_worker_dying_on_a_block_is_a_named_error_then_the_same_command_resumes(
        cluster: Cluster, rna_path: Path, local: np.ndarray, tmp_path: Path) -> None:
    # No retries: one death of the worker running a block is KilledWorker for that block.
    cluster.start_scheduler(DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="0")
    worker = cluster.start_worker()
    job = _start(rna_path, cluster.address, tmp_path)
    store = tmp_path / "client" / "out.zarr"
    _wait_committed(store, 2, job)
    worker.send_signal(signal.SIGKILL)
    output = job.communicate(timeout=120)
    assert job.returncode == 2, output[1][-3000:]
    assert "kept dying" in _one_line_error(output, "ClusterError")
    before = _committed(store)
    times = _chunk_times(store, before)
    cluster.start_worker()
    result = _run(rna_path, cluster.address, tmp_path)
    assert result.returncode == 0, result.stderr
    _assert_same(store, local)
    assert _chunk_times(store, before) == times
