"""One writer per output: real `sctranslator translate` processes racing for one --out, and the lock file's
stale-lock rules (dead PID, reused PID, silent other host) with real processes."""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from datafiles import PBMC, TINY_A, data_file

from sctranslator.errors import OutputLockedError
from sctranslator.outputs import claim_output, writing
from sctranslator.util import output_lock as _lock
from sctranslator.util.output_lock import OutputLock, lock_path, process_start


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sctranslator", *args]


def _common(model: Path) -> list[str]:
    return ["--model", str(model), "--block-cells", "16", "--batch-size", "16", "--workers", "1", "--quiet",
            "--allow-empty-cells", "--normalize", "total_log1p"]


@pytest.fixture(scope="module")
def rna() -> Path:
    """The committed 1,000 PBMC cells: 63 blocks of 16, a run of seconds."""
    return data_file(PBMC) / "rna.h5ad"


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _wait_for(path: Path, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not path.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)


@pytest.mark.slow
def test_two_translates_on_one_out_give_exactly_one_success(rna: Path, tmp_path: Path) -> None:
    out = tmp_path / "shared.zarr"
    settings = {"a": "CD3,CD4", "b": "CD8a,CD14,CD19"}
    runs = {name: subprocess.Popen(cli("translate", str(rna), "--out", str(out), "--proteins", proteins,
                                       *_common(data_file(TINY_A))),
                                   env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name, proteins in settings.items()}
    done = {name: (p.wait(timeout=600), p.communicate()[1]) for name, p in runs.items()}
    winners = [name for name, (code, _) in done.items() if code == 0]
    assert len(winners) == 1, done
    loser = next(name for name in done if name not in winners)
    code, message = done[loser]
    assert code == 2, message
    last = message.strip().splitlines()[-1]
    # Either it met the lock (and was told who holds it and about --wait), or it started after the
    # winner had finished and found a store of other settings: refused both ways, nothing replaced.
    assert ("OutputLockedError" in last and f"host {socket.gethostname()}, PID {runs[winners[0]].pid}" in last
            and "--wait" in last) or ("StoreError" in last and "different model, input or settings" in last), last
    store = ad.read_zarr(out)
    assert list(store.var_names) == settings[winners[0]].split(",")
    assert not np.isnan(store.X).any()
    assert not lock_path(out).exists(), "the winner's lock is released when it ends"


@pytest.mark.slow
def test_wait_runs_the_second_job_after_the_first(rna: Path, tmp_path: Path) -> None:
    out = tmp_path / "shared.zarr"
    model = data_file(TINY_A)
    # The first job must still hold its lock when the later processes have started (seconds on an idle
    # machine): 8x the cells, 2 per call, keep it running well past their start-up.
    cells = ad.read_h5ad(rna)
    big = tmp_path / "big.h5ad"
    ad.concat([cells] * 8, index_unique="-").write_h5ad(big)
    rna = big
    first = subprocess.Popen(cli("translate", str(rna), "--out", str(out), "--proteins", "CD3,CD4", *_common(model),
                                 "--batch-size", "2"),
                             env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lock_path(out), first)
    assert lock_path(out).exists(), "the first job never locked its output"
    assert first.poll() is None, "the first job ended before the second could meet its lock; make it bigger"
    # Same settings would resume; other settings without --overwrite are refused after the wait ...
    refused = subprocess.Popen(cli("translate", str(rna), "--out", str(out), "--proteins", "CD8a", "--wait",
                                   *_common(model)), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    # ... and with --overwrite the second replaces the first's store once the first has finished.
    second = subprocess.Popen(cli("translate", str(rna), "--out", str(out), "--proteins", "CD8a,CD14", "--wait",
                                  "--overwrite", *_common(model)), env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    assert first.wait(timeout=600) == 0, first.communicate()[1]
    assert second.wait(timeout=600) == 0, second.communicate()[1]
    assert refused.wait(timeout=600) == 2
    refusal = refused.communicate()[1].strip().splitlines()[-1]
    assert "StoreError" in refusal or "OutputConflictError" in refusal, refusal
    assert "waiting for" in second.communicate()[1]
    store = ad.read_zarr(out)
    assert list(store.var_names) == ["CD8a", "CD14"]
    assert not np.isnan(store.X).any()


# -- the lock file's rules, with real processes --------------------------------------------------
def _plant(output: Path, **fields: object) -> Path:
    record = {"host": socket.gethostname(), "pid": os.getpid(), "process_start": process_start(os.getpid()),
              "boot_id": _lock._boot_id(), "started": "2026-01-01T00:00:00+00:00", "token": "planted", **fields}
    path = lock_path(output)
    path.write_text(json.dumps(record))
    return path


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_live_holder_refuses_with_its_host_pid_and_start(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _plant(tmp_path / "out.zarr", pid=sleeper.pid, process_start=process_start(sleeper.pid))
        with pytest.raises(OutputLockedError, match=rf"PID {sleeper.pid}, started 2026-01-01.*--wait"):
            OutputLock.acquire(tmp_path / "out.zarr")
        with pytest.raises(OutputLockedError):  # waiting gives up only at its timeout
            OutputLock.acquire(tmp_path / "out.zarr", wait=True, timeout_s=0.5)
    finally:
        sleeper.kill()
        sleeper.wait()
    # Its holder has gone: the lock is stale and taken over.
    lock = OutputLock.acquire(tmp_path / "out.zarr")
    assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not lock.path.exists()


@pytest.mark.parametrize("case", ["dead pid", "exited, not reaped", "reused pid", "silent other host",
                                  "never filled"])
def test_stale_locks_are_taken_over(tmp_path: Path, case: str) -> None:
    output = tmp_path / "out.zarr"
    zombie = None
    if case == "dead pid":
        path = _plant(output, pid=_dead_pid())
    elif case == "exited, not reaped":  # a zombie: its PID still answers kill(pid, 0)
        zombie = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
        path = _plant(output, pid=zombie.pid, process_start=process_start(zombie.pid))
        deadline = time.monotonic() + 30
        while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child never became a zombie"
            time.sleep(0.05)
    elif case == "reused pid":  # a live PID, but not the process that took the lock
        path = _plant(output, pid=os.getppid(), process_start="1")
    elif case == "never filled":
        path = lock_path(output)
        path.write_text("")
        old = time.time() - 2 * _lock.TAKEOVER_STALE_S
        os.utime(path, (old, old))
    else:
        path = _plant(output, host="another-host.example", pid=1, boot_id="other")
        old = time.time() - 2 * _lock.stale_after_s()
        os.utime(path, (old, old))
    lock = OutputLock.acquire(output)
    assert json.loads(path.read_text())["token"] == lock.record["token"]
    lock.release()
    if zombie is not None:
        zombie.wait()


def test_another_hosts_lock_with_a_fresh_heartbeat_is_respected(tmp_path: Path) -> None:
    _plant(tmp_path / "out.zarr", host="another-host.example", pid=1, boot_id="other")
    with pytest.raises(OutputLockedError, match="host another-host.example, PID 1"):
        OutputLock.acquire(tmp_path / "out.zarr")


def test_the_holder_refreshes_its_heartbeat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_lock, "HEARTBEAT_S", 0.05)
    lock = OutputLock.acquire(tmp_path / "out.zarr")
    old = time.time() - 1000
    os.utime(lock.path, (old, old))
    time.sleep(0.5)
    assert time.time() - lock.path.stat().st_mtime < 10
    lock.release()


def _contend(output: str, barrier: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue) -> None:
    barrier.wait(timeout=60)
    try:
        lock = OutputLock.acquire(output)
    except OutputLockedError:
        results.put("refused")
        barrier.wait(timeout=60)
        return
    results.put(lock.record["token"])
    barrier.wait(timeout=60)  # hold it until every contender has tried
    lock.release()


def test_concurrent_takeover_of_a_stale_lock_has_one_winner(tmp_path: Path) -> None:
    output = tmp_path / "out.zarr"
    for attempt in range(3):
        _plant(output, pid=_dead_pid())
        context = multiprocessing.get_context("fork")
        barrier, results = context.Barrier(6), context.Queue()
        workers = [context.Process(target=_contend, args=(str(output), barrier, results)) for _ in range(6)]
        for worker in workers:
            worker.start()
        outcomes = [results.get(timeout=60) for _ in workers]
        for worker in workers:
            worker.join(timeout=60)
            if worker.is_alive():
                worker.terminate()
            assert worker.exitcode == 0, worker.exitcode
        winners = [o for o in outcomes if o != "refused"]
        assert len(winners) == 1, (attempt, outcomes)
        assert not lock_path(output).exists()


def test_a_job_whose_lock_was_taken_over_does_not_succeed(tmp_path: Path) -> None:
    output = tmp_path / "out.zarr"
    with pytest.raises(OutputLockedError, match="taken over"), writing():
        claim_output(output, "evaluate")
        _plant(output, pid=os.getppid(), token="someone-else")  # as if another job judged us dead


def test_a_scope_releases_its_locks_and_a_thread_reuses_its_own(tmp_path: Path) -> None:
    output = tmp_path / "out.zarr"
    with writing():
        assert claim_output(output, "evaluate") is False
        assert claim_output(output, "evaluate") is False  # the same job claiming twice
        assert lock_path(output).exists()
    assert not lock_path(output).exists()


def test_every_writing_api_function_takes_wait() -> None:
    import inspect

    from sctranslator.analysis.attention import interactions
    from sctranslator.analysis.evaluate import evaluate
    from sctranslator.analysis.knockout import knockout
    from sctranslator.cli.demo import run_demo
    from sctranslator.engine.translate import translate
    from sctranslator.export.onnx import export_onnx
    from sctranslator.export.triton import export_triton
    from sctranslator.train.api import finetune

    for function in (translate, knockout, interactions, evaluate, finetune, export_onnx, export_triton, run_demo):
        assert inspect.signature(function).parameters["wait"].default is False, function.__name__


def _holder(output: Path) -> subprocess.Popen:
    """A real process that takes the lock on `output` and then sleeps (until killed)."""
    code = ("import sys, time; from sctranslator.util.output_lock import OutputLock; OutputLock.acquire(sys.argv[1]); "
            "print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(output)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_other_commands_refuse_a_locked_output_and_wait_takes_over_when_its_holder_dies(tmp_path: Path) -> None:
    from sctranslator.cli.entry import main
    from sctranslator.export.onnx import export_onnx
    from sctranslator.model import load_model

    bundle, graph = tmp_path / "bundle", tmp_path / "model.onnx"
    holders = [_holder(bundle), _holder(graph)]
    try:
        # The command line (convert writes a bundle) and the Python API (export_onnx) alike.
        assert main(["convert", str(data_file(TINY_A)), str(bundle)]) == 2
        assert not bundle.exists()
        with pytest.raises(OutputLockedError, match=f"PID {holders[1].pid}"):
            export_onnx(load_model(data_file(TINY_A)), graph, validate=False)
        # With wait=True the export waits; once its holder is killed the stale lock is taken over.
        threading_timer = __import__("threading").Timer(1.0, holders[1].kill)
        threading_timer.start()
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # bounded: a broken take-over fails, not hangs
            pool.submit(export_onnx, load_model(data_file(TINY_A)), graph, validate=False, wait=True).result(
                timeout=120)
        assert time.monotonic() - started >= 1.0
        assert graph.is_file() and not lock_path(graph).exists()
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
