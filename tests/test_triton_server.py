"""The triton backend against a real tritonserver (the BLS model over the encoder and decoder models,
Python backend running the exported ONNX graphs).

Same predictions as in-process onnxruntime over gRPC and HTTP with two protein windows, the encoder
model run at most once per request whatever the windows (the server's own statistics), a job that survives a
server restart in its middle, and clear errors for a server that serves another model or is not there.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch
from datafiles import FIXTURES, PBMC, data_file
from triton_server import require_tritonserver, running_server

import sctranslator
from sctranslator.engine.backends import BackendSpec, Batch, TritonBackend, release_backends
from sctranslator.engine.sink import JOB_DIR
from sctranslator.errors import PortInUseError, ServerError
from sctranslator.export.onnx import export_onnx
from sctranslator.export.serve import ServeRequest, serve
from sctranslator.export.triton import export_triton
from sctranslator.export.triton_config import ServingSettings
from sctranslator.export.triton_server import (
    TritonServer,
    _group_members,
    check_ports_free,
    clear_leftover,
    free_port,
    pid_file_for,
)
from sctranslator.model import TranslatorModel

pytestmark = pytest.mark.triton

RNA = PBMC / "rna.h5ad"
# 20 proteins: two windows of the tiny models' P=16, the second one padded.
PROTEINS = ["CD3", "CD4", "CD8a", "CD14", "CD16", "CD19", "CD45RA", "PD-1", "TIGIT", "CD127", "CD25", "CD56",
            "CD45RO", "CD28", "CD27", "CD11c", "HLA-DR", "CD15", "CD34", "CD86"]
N_CELLS = 300


@pytest.fixture(scope="module")
def tiny_a() -> TranslatorModel:
    return sctranslator.load_model(data_file(FIXTURES / "tiny_a_official.pt"))


@pytest.fixture(scope="module")
def tiny_b() -> TranslatorModel:
    return sctranslator.load_model(data_file(FIXTURES / "tiny_b_official.pt"))


@pytest.fixture(scope="module")
def rna_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Cell 159 has no counts in any of the tiny model's 64 genes: translate runs allow empty cells.
    rna = ad.read_h5ad(data_file(RNA))[:N_CELLS].copy()
    path = tmp_path_factory.mktemp("rna") / "rna.h5ad"
    rna.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def onnx_a(tiny_a: TranslatorModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "tiny_a.onnx"
    export_onnx(tiny_a, path, validation_batch_sizes=(1,))
    return path


@pytest.fixture(scope="module")
def repo(tiny_a: TranslatorModel, tiny_b: TranslatorModel, onnx_a: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_a and tiny_b served by the Python backend, with dynamic batching so requests get merged."""
    path = tmp_path_factory.mktemp("triton-repo")
    for name, model, onnx_path in (("tiny_a", tiny_a, onnx_a), ("tiny_b", tiny_b, None)):
        export_triton(model, path, ServingSettings(name=name, backend="python", max_batch_size=32,
                                                   dynamic_batching=True, max_queue_delay_us=200,
                                                   intra_op_threads=1), onnx_path=onnx_path)
    return path


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[TritonServer]:
    with running_server(repo) as running:
        yield running
    release_backends()


@pytest.fixture(scope="module")
def reference(rna_path: Path, tiny_a: TranslatorModel) -> ad.AnnData:
    """In-process onnxruntime predictions, the numbers the server must reproduce."""
    return sctranslator.translate(rna_path, tiny_a, PROTEINS, allow_empty_cells=True,
                                  backend="onnxruntime", block_cells=100, batch_size=16)


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual.astype(np.float64) - expected).max() / np.abs(expected).max())


def options(url: str, protocol: str = "grpc", **extra: object) -> dict[str, object]:
    return {"url": url, "model_name": "tiny_a", "protocol": protocol} | extra


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_translate_through_triton_matches_onnxruntime(protocol: str, server: TritonServer, rna_path: Path,
                                                      tiny_a: TranslatorModel, reference: ad.AnnData,
                                                      tmp_path: Path) -> None:
    url = server.grpc_url if protocol == "grpc" else server.http_url
    result = sctranslator.translate(rna_path, tiny_a, PROTEINS, allow_empty_cells=True,
                                    out=tmp_path / "triton.zarr", backend="triton",
                                    backend_options=options(url, protocol, max_in_flight=4), block_cells=100,
                                    batch_size=16)
    assert result.shape == (N_CELLS, len(PROTEINS))
    assert list(result.var_names) == list(reference.var_names)
    assert np.isfinite(result.X).all()
    assert relative_error(result.X, reference.X) <= 1e-5
    assert result.uns["sctranslator"]["settings"]["backend"] == "triton"


def inference_counts(url: str, model: str) -> tuple[int, int]:
    """(requests answered, executions) of `model`, from the server's own statistics (as they stand now)."""
    import tritonclient.grpc as grpc_client

    client = grpc_client.InferenceServerClient(url)
    try:
        (stats,) = client.get_inference_statistics(model, as_json=True)["model_stats"]
    finally:
        client.close()
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def settled_counts(url: str, models: list[str], reached: Callable[[dict[str, tuple[int, int]]], bool],
                   quiet_s: float = 1.0, timeout_s: float = 60.0) -> dict[str, tuple[int, int]]:
    """The models' statistics once `reached(counts)` holds and no count has changed for `quiet_s`.

    Triton updates a model's statistics after it has sent the response, so a client that reads them
    the moment its answers are in can see some requests not yet counted (under load: 33 of 37
    cells). Waiting for the counts to reach what the test expects *and* stop moving reads them
    settled; a count that never gets there is returned after `timeout_s` for the test to report.
    """
    deadline = time.monotonic() + timeout_s
    counts = {model: inference_counts(url, model) for model in models}
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = {model: inference_counts(url, model) for model in models}
        if now != counts:
            counts, stable_since = now, time.monotonic()
        elif reached(counts) and time.monotonic() - stable_since >= quiet_s:
            break
    return counts


def test_many_requests_in_flight_are_batched_and_split_back_in_order(server: TritonServer,
                                                                     tiny_a: TranslatorModel) -> None:
    """Small requests, 8 in flight, 3 windows each: every request carries all windows, the BLS model runs the
    encoder once per call and the decoder once per window, and the answers come back in order."""
    rng = np.random.default_rng(0)
    L, P = tiny_a.config.max_genes, tiny_a.config.max_proteins
    batch = Batch(values=rng.uniform(0, 1, (37, L)).astype(np.float32), gene_ids=rng.integers(1, 500, L),
                  gene_mask=np.arange(L) < 50, protein_ids=rng.integers(1, 500, (3, P)),
                  protein_mask=np.ones((3, P), dtype=bool))
    spec = BackendSpec(kind="triton", model=tiny_a, options=options(server.grpc_url, max_in_flight=8, max_batch=3))
    backend = TritonBackend.from_spec(spec)
    models = [f"tiny_a{role}" for role in ("", "_encoder", "_decoder")]
    requests = -(-37 // 3)  # chunks of max_batch=3 cells, all windows in each
    # Settled before too: an earlier test's last requests may still be being counted.
    before = settled_counts(server.grpc_url, models, reached=lambda counts: True)
    try:
        assert backend.windows_at_once
        served = backend.predict(batch)
    finally:
        backend.close()
    # Every count the assertions below expect, reached and no longer moving.
    after = settled_counts(server.grpc_url, models, reached=lambda counts: (
        counts["tiny_a"][0] - before["tiny_a"][0] >= 37
        and counts["tiny_a_decoder"][0] - before["tiny_a_decoder"][0] >= 3 * 37))
    after = {model.removeprefix("tiny_a"): value for model, value in after.items()}
    before = {model.removeprefix("tiny_a"): value for model, value in before.items()}
    local = sctranslator.engine.backends.TorchBackend(tiny_a).predict(batch)
    assert served.shape == (37, 3 * P)
    assert relative_error(served, local) <= 1e-5
    cells = {role: after[role][0] - before[role][0] for role in after}
    executions = {role: after[role][1] - before[role][1] for role in after}
    assert cells[""] == 37
    # The encoder (max_batch_size 0: Triton counts calls) at most once per request (requests Triton merged
    # share one call: they share a gene layout), the decoder once per window of each encoder call.
    assert 1 <= cells["_encoder"] == executions["_encoder"] <= requests
    assert cells["_decoder"] == 3 * 37 and executions["_decoder"] == 3 * executions["_encoder"]


def test_serving_another_model_is_a_server_error(server: TritonServer, rna_path: Path, tiny_a: TranslatorModel,
                                                 tmp_path: Path) -> None:
    with pytest.raises(ServerError, match=r"L=100 genes per cell.*takes 64.*P=10"):
        sctranslator.translate(rna_path, tiny_a, PROTEINS, allow_empty_cells=True,
                               out=tmp_path / "x.zarr", backend="triton",
                               backend_options={"url": server.grpc_url, "model_name": "tiny_b"})


def test_same_shapes_but_other_weights_is_a_server_error(server: TritonServer, tiny_a: TranslatorModel) -> None:
    other = sctranslator.load_model(data_file(FIXTURES / "tiny_a_official.pt"))
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    spec = BackendSpec(kind="triton", model=other, options=options(server.http_url, "http"))
    with pytest.raises(ServerError, match="weights differ"):
        TritonBackend.from_spec(spec)


def test_unknown_model_name_and_absent_server_are_server_errors(server: TritonServer,
                                                                tiny_a: TranslatorModel) -> None:
    spec = BackendSpec(kind="triton", model=tiny_a,
                       options={"url": server.grpc_url, "model_name": "nope", "ready_timeout_s": 1})
    with pytest.raises(ServerError, match="model 'nope' not ready"):
        TritonBackend.from_spec(spec)
    nobody = f"127.0.0.1:{free_port()}"
    spec = BackendSpec(kind="triton", model=tiny_a, options=options(nobody, "http", ready_timeout_s=1))
    started = time.monotonic()
    with pytest.raises(ServerError, match="not ready after 1 s"):
        TritonBackend.from_spec(spec)
    assert time.monotonic() - started < 10


class Restarter(threading.Thread):
    """Stops the server once the job has committed a block, and starts it again on the same ports."""

    def __init__(self, server: TritonServer, out: Path, down_s: float):
        super().__init__(daemon=True)
        self.server, self.blocks_dir, self.down_s = server, out / JOB_DIR / "blocks", down_s
        self.committed_at_stop: int | None = None
        self.pids: list[int] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if self.blocks_dir.is_dir() and any(self.blocks_dir.iterdir()):
                    break
                time.sleep(0.005)
            assert self.server.process is not None
            self.pids.append(self.server.process.pid)
            self.server.stop()
            self.committed_at_stop = len(list(self.blocks_dir.iterdir()))  # counted once it is down
            time.sleep(self.down_s)
            self.server.start()
            assert self.server.process is not None
            self.pids.append(self.server.process.pid)
            self.server.wait_ready(120)
        except BaseException as exc:  # reported by the test
            self.error = exc


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_server_restart_in_the_middle_of_a_job_is_retried(protocol: str, repo: Path, rna_path: Path,
                                                          tiny_a: TranslatorModel, reference: ad.AnnData,
                                                          tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "restart.zarr"
    # Small blocks and requests, one worker, one request in flight: the job is still running when
    # the server goes, and every request holds the same cells in both runs (bit-identical output).
    settings = {"backend": "triton", "workers": 1, "block_cells": 10, "batch_size": 1}
    # exit_timeout_s=0: stop at once; the default grace period lets a busy client finish the job first.
    with running_server(repo, exit_timeout_s=0) as server:
        url = server.grpc_url if protocol == "grpc" else server.http_url
        job_options = options(url, protocol, max_in_flight=1, backoff_s=0.1, max_backoff_s=1.0)
        restarter = Restarter(server, out, down_s=3.0)
        restarter.start()
        with caplog.at_level(logging.WARNING, logger="sctranslator.engine.backends.triton_backend"):
            interrupted = sctranslator.translate(rna_path, tiny_a, PROTEINS, allow_empty_cells=True,
                                                 out=out, backend_options=job_options,
                                                 **settings)
        restarter.join(timeout=150)
        assert restarter.error is None, restarter.error
        uninterrupted = sctranslator.translate(rna_path, tiny_a, PROTEINS, allow_empty_cells=True,
                                               out=tmp_path / "plain.zarr",
                                               backend_options=job_options, **settings)
    release_backends()
    n_blocks = N_CELLS // 10
    assert restarter.committed_at_stop is not None and 1 <= restarter.committed_at_stop < n_blocks, \
        f"the server must go down mid-job; it went down with {restarter.committed_at_stop}/{n_blocks} blocks done"
    assert any("retry" in record.getMessage() for record in caplog.records), "no request was retried"
    assert interrupted.uns["sctranslator"]["run"]["blocks_computed"] == n_blocks
    np.testing.assert_array_equal(interrupted.X, uninterrupted.X)
    # Neither server left a Python-backend stub running (stubs ignore SIGTERM and outlive a quick exit).
    assert [_group_members(pid) for pid in restarter.pids] == [[], []]
    assert relative_error(interrupted.X, reference.X) <= 1e-5


def test_serve_starts_a_local_server_and_prints_its_urls(onnx_a: Path, tiny_a: TranslatorModel,
                                                         tmp_path: Path) -> None:
    require_tritonserver()
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    lines: list[str] = []
    request = ServeRequest(model=tiny_a, repo=tmp_path / "served", onnx_path=onnx_a, **ports)
    server = serve(request, echo=lines.append, block=False)
    assert server is not None
    try:
        assert server.is_ready()
        text = "\n".join(lines)
        assert f"HTTP    127.0.0.1:{ports['http_port']}" in text and f"gRPC    127.0.0.1:{ports['grpc_port']}" in text
        assert "(python backend)" in text  # the pytriton build has no ONNX Runtime backend
        backend = TritonBackend.from_spec(BackendSpec(kind="triton", model=tiny_a, options=options(
            server.grpc_url, model_name="sctranslator")))
        assert (backend.genes, backend.proteins) == (64, 16)
        backend.close()
    finally:
        server.stop()


def test_server_as_a_context_manager_is_ready_inside_and_gone_after(repo: Path) -> None:
    with TritonServer(repo, install=require_tritonserver()) as server:
        assert server.running and server.is_ready()
    assert not server.running and not server.is_ready()


# -- serve's process lifetime and ports ---------------------------------------------------------------

def serve_process(repo: Path, onnx_path: Path, ports: dict[str, int], log: Path) -> subprocess.Popen[bytes]:
    """`sctranslator serve` as a user runs it, in a process of its own (its output in `log`)."""
    flags = [f"--{name.replace('_', '-')}={port}" for name, port in ports.items()]
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "sctranslator", "serve", str(data_file(FIXTURES /
                                "tiny_a_official.pt")), "--repo", str(repo), "--onnx", str(onnx_path), *flags],
                                stdout=out, stderr=subprocess.STDOUT)


def wait_for_text(log: Path, text: str, process: subprocess.Popen[bytes], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if process.poll() is not None:
            break
        time.sleep(0.2)
    pytest.fail(f"serve never printed {text!r}; its output:\n{log.read_text(errors='replace')}")


@pytest.mark.parametrize("stop_signal", [signal.SIGKILL, signal.SIGHUP], ids=["SIGKILL", "SIGHUP"])
def test_serve_stopped_by_a_signal_leaves_no_server_or_stub_behind(stop_signal: signal.Signals, onnx_a: Path,
                                                                   tiny_a: TranslatorModel, tmp_path: Path) -> None:
    """SIGKILL: serve cannot act, its server dies with it (death signal, watchdog). SIGHUP (a closed
    terminal), like SIGTERM and Ctrl-C: serve stops the server and its stubs itself and exits 0."""
    require_tritonserver()
    repo, log = tmp_path / "repo", tmp_path / "serve.log"
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    process = serve_process(repo, onnx_a, ports, log)
    try:
        wait_for_text(log, "tritonserver ready", process)
        record = json.loads(pid_file_for(repo).read_text())
        server = int(record["server_pid"])
        assert record["owner_pid"] == process.pid
        members = _group_members(server)
        assert server in members and len(members) == 5, members  # the server and a stub per model (4)
        # A second serve of the same repository, while the first lives, is refused and touches nothing.
        with pytest.raises(ServerError, match=rf"already served by PID {process.pid}"):
            serve(ServeRequest(model=tiny_a, repo=repo, onnx_path=onnx_a, http_port=free_port(),
                               grpc_port=free_port(), metrics_port=free_port()), echo=lambda line: None)
        assert _group_members(server) == members
    finally:
        process.send_signal(stop_signal)
        code = process.wait(60)
    if stop_signal == signal.SIGHUP:
        assert code == 0 and "stopping tritonserver" in log.read_text(), log.read_text()
    # Bounded waits: after SIGKILL the watchdog acts once serve is gone, and removes the pid file last.
    deadline = time.monotonic() + 20
    while (_group_members(server) or pid_file_for(repo).exists()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _group_members(server) == [], f"tritonserver or a stub outlived serve stopped by {stop_signal.name}"
    assert not pid_file_for(repo).exists()
    check_ports_free("127.0.0.1", ports)  # the ports are free for the next serve


def test_serve_names_the_process_holding_its_port_and_writes_nothing(server: TritonServer, tiny_a: TranslatorModel,
                                                                      tmp_path: Path) -> None:
    require_tritonserver()
    # An old tritonserver on the port (it would answer "ready" for the new one).
    request = ServeRequest(model=tiny_a, repo=tmp_path / "a", http_port=server.http_port, grpc_port=free_port(),
                           metrics_port=free_port())
    assert server.process is not None
    with pytest.raises(PortInUseError, match=rf"port {server.http_port} on 127.0.0.1 \(--http-port\) is in use by "
                                             rf"PID {server.process.pid} \(\S*tritonserver "):
        serve(request, echo=lambda line: None)
    # Any other process: here this test's own listening socket.
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        request = ServeRequest(model=tiny_a, repo=tmp_path / "b", http_port=free_port(), grpc_port=port,
                               metrics_port=free_port())
        with pytest.raises(PortInUseError, match=rf"port {port} on 127.0.0.1 \(--grpc-port\) is in use by PID "
                                                 rf"{os.getpid()} \(\S*python"):
            serve(request, echo=lambda line: None)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_server_whose_owner_died_unwatched_is_cleaned_up_from_its_pid_file(repo: Path, tmp_path: Path) -> None:
    """Without the watchdog and the death signal (started from a thread that ended), a server outlives its
    owner's kill -9, as every server did before; its pid file lets the next serve remove it."""
    require_tritonserver()
    pid_file, ports = tmp_path / "serve.json", {"http_port": free_port(), "grpc_port": free_port()}
    code = (f"import threading, time\nfrom pathlib import Path\nfrom sctranslator.export.triton_server import "
            f"TritonServer\nserver = TritonServer(Path({str(repo)!r}), pid_file=Path({str(pid_file)!r}), "
            f"watchdog=False, http_port={ports['http_port']}, grpc_port={ports['grpc_port']})\n"
            "starter = threading.Thread(target=lambda: (server.start(), server.wait_ready(180)))\n"
            "starter.start(); starter.join(); print('ready', flush=True); time.sleep(600)\n")
    log = tmp_path / "owner.log"
    with open(log, "wb") as out:
        owner = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_text(log, "ready", owner)
    finally:
        owner.kill()
        owner.wait()
    server = int(json.loads(pid_file.read_text())["server_pid"])
    time.sleep(1)
    assert server in _group_members(server), "the unwatched server died with its owner: nothing left to clean"
    with pytest.raises(PortInUseError, match=rf"in use by PID {server} "):
        check_ports_free("127.0.0.1", {"--http-port": ports["http_port"]})
    message = clear_leftover(pid_file)
    assert message is not None and f"earlier serve (PID {owner.pid}, gone)" in message and str(server) in message
    assert _group_members(server) == [] and not pid_file.exists()
    check_ports_free("127.0.0.1", {"--http-port": ports["http_port"], "--grpc-port": ports["grpc_port"]})
