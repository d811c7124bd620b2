"""Serving edges that need no tritonserver: timeouts against a server that accepts and never answers,
the owner of a busy port read from /proc, and backend options refused where the backend does not use them.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from datafiles import PBMC, TINY_A, data_file
from tritonclient.grpc import service_pb2

import sctranslator
from sctranslator import options
from sctranslator.cli.entry import main
from sctranslator.engine.backends import BackendSpec, TritonBackend
from sctranslator.engine.backends.selection import all_capabilities
from sctranslator.engine.backends.triton_backend import TritonConnection as TritonBackendOptions
from sctranslator.errors import BackendOptionError, ServerError


class SilentServer(threading.Thread):
    """A TCP server on 127.0.0.1 that accepts every connection and never sends a byte."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = int(self.listener.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.accepted.append(connection)  # held open, never read or answered

    def close(self) -> None:
        self.stopping.set()
        self.join(5)
        for connection in self.accepted:
            connection.close()
        self.listener.close()


@pytest.fixture()
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    server.start()
    yield server
    server.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_server_that_never_answers_fails_within_the_ready_timeout(protocol: str,
                                                                   silent_server: SilentServer) -> None:
    options = {"url": f"127.0.0.1:{silent_server.port}", "protocol": protocol, "ready_timeout_s": 2,
               "timeout_s": 30}
    started = time.monotonic()
    with pytest.raises(ServerError, match=rf"\({protocol}\) not ready after 2 s"):
        TritonBackend.from_spec(BackendSpec(kind="triton", options=options))
    elapsed = time.monotonic() - started
    assert elapsed < 8, f"{protocol}: the ready timeout of 2 s took {elapsed:.1f} s"
    assert silent_server.accepted, "the client never connected: the test did not exercise a silent server"


class HangingTriton:
    """A real gRPC or HTTP server on 127.0.0.1 that speaks the protocol but answers only what `answers` allows.

    With answers=(): no call is ever answered (the connection and, for gRPC, the HTTP/2 handshake
    succeed). With answers=("ready",): server and model readiness are answered, every other call
    (model metadata, inference) hangs until the test ends.
    """

    def __init__(self, protocol: str, answers: tuple[str, ...]):
        self.protocol, self.answers = protocol, answers
        self.release = threading.Event()
        self.calls: list[str] = []
        if protocol == "grpc":
            self.grpc_server = grpc.server(ThreadPoolExecutor(16))
            self.grpc_server.add_generic_rpc_handlers([_GrpcHandler(self)])
            self.port = self.grpc_server.add_insecure_port("127.0.0.1:0")
            self.grpc_server.start()
        else:
            owner = self

            class Handler(BaseHTTPRequestHandler):
                def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                    owner.calls.append(self.path)
                    if "ready" in owner.answers and self.path.endswith("/ready"):
                        self.send_response(200)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    owner.release.wait(60)

                def log_message(self, *args: Any) -> None:
                    pass

            self.http_server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            self.http_server.daemon_threads = True
            self.port = int(self.http_server.server_address[1])
            threading.Thread(target=self.http_server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        if self.protocol == "grpc":
            self.grpc_server.stop(0)
        else:
            self.http_server.shutdown()
            self.http_server.server_close()


class _GrpcHandler(grpc.GenericRpcHandler):
    def __init__(self, owner: HangingTriton):
        self.owner = owner

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method.rsplit("/", 1)[-1]
        ready = {"ServerReady": service_pb2.ServerReadyResponse, "ModelReady": service_pb2.ModelReadyResponse}

        def answer(request: bytes, context: grpc.ServicerContext) -> Any:
            self.owner.calls.append(method)
            if "ready" in self.owner.answers and method in ready:
                return ready[method](ready=True)
            self.owner.release.wait(60)
            context.abort(grpc.StatusCode.UNAVAILABLE, "test server closing")

        serialize: Callable[[Any], bytes] = lambda message: message.SerializeToString()  # noqa: E731
        return grpc.unary_unary_rpc_method_handler(answer, response_serializer=serialize)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_server_that_never_answers_a_call_fails_within_the_ready_timeout(protocol: str) -> None:
    server = HangingTriton(protocol, answers=())
    options = {"url": f"127.0.0.1:{server.port}", "protocol": protocol, "ready_timeout_s": 2, "timeout_s": 30}
    started = time.monotonic()
    try:
        with pytest.raises(ServerError, match=rf"\({protocol}\) not ready after 2 s"):
            TritonBackend.from_spec(BackendSpec(kind="triton", options=options))
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert server.calls, "no call reached the server"
    assert elapsed < 8, f"{protocol}: the ready timeout of 2 s took {elapsed:.1f} s"


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_request_the_server_never_answers_fails_within_the_request_timeouts(protocol: str) -> None:
    """Ready, then silent: each request ends after timeout_s, and retrying ends after retry_timeout_s."""
    server = HangingTriton(protocol, answers=("ready",))
    options = {"url": f"127.0.0.1:{server.port}", "protocol": protocol, "ready_timeout_s": 5, "timeout_s": 1,
               "retry_timeout_s": 3, "backoff_s": 0.1, "max_backoff_s": 0.2}
    started = time.monotonic()
    try:
        with pytest.raises(ServerError, match=r"still unavailable after \d+ attempts over 3 s \(reading the model "
                                              r"metadata\)"):
            TritonBackend.from_spec(BackendSpec(kind="triton", options=options))
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert len(server.calls) >= 3, server.calls  # readiness answered, then metadata asked (and retried)
    assert elapsed < 10, f"{protocol}: timeouts of 1 s per request and 3 s in all took {elapsed:.1f} s"


# -- backend options refused where the backend does not use them --------------------------------------

REFUSED = [
    (["--backend", "torch", "--url", "127.0.0.1:8001"], r"--url applies to --backend triton, not torch"),
    (["--url", "127.0.0.1:8001"], r"--url applies to --backend triton, not torch \(chosen by --backend auto\)"),
    (["--backend", "onnxruntime", "--protocol", "http"], r"--protocol applies to --backend triton, not onnxruntime"),
    (["--backend", "torch", "--model-name", "m"], r"--model-name applies to --backend triton"),
    (["--backend", "torch", "--timeout", "5"], r"--timeout applies to --backend triton"),
    (["--backend", "torch", "--ready-timeout", "5"], r"--ready-timeout applies to --backend triton"),
    (["--backend", "torch", "--onnx", "x.onnx"], r"--onnx applies to --backend onnxruntime, not torch"),
    (["--backend", "onnxruntime", "--compile"], r"--compile applies to --backend torch, not onnxruntime"),
    (["--backend", "triton", "--url", "127.0.0.1:1", "--precision", "fp16"],
     r"--precision fp16 applies to --backend torch or onnxruntime, not triton"),
    (["--backend", "triton", "--url", "127.0.0.1:1", "--device", "cuda"],
     r"--device cuda applies to --backend torch or onnxruntime, not triton"),
]


@pytest.mark.parametrize(("flags", "message"), REFUSED, ids=[" ".join(flags) for flags, _ in REFUSED])
def test_an_option_the_backend_does_not_use_is_refused_before_anything_is_written(
        flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.zarr"
    code = main(["translate", str(data_file(PBMC / "rna.h5ad")), "--model", str(data_file(TINY_A)),
                 "--proteins", "CD3,CD4", "--out", str(out), *flags])
    err = capsys.readouterr().err
    assert code == 2, err
    assert re.search(r"^error: BackendOptionError: " + message, err, re.MULTILINE), err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_the_api_refuses_backend_options_of_another_backend(tmp_path: Path) -> None:
    rna = data_file(PBMC / "rna.h5ad")
    with pytest.raises(BackendOptionError, match=r"--url applies to --backend triton, not torch"):
        sctranslator.translate(rna, data_file(TINY_A), ["CD3"], backend="torch", out=tmp_path / "a.zarr",
                               backend_options={"url": "127.0.0.1:8001"})
    with pytest.raises(BackendOptionError, match=r"backend option 'max_in_flight' applies to --backend triton"):
        sctranslator.translate(rna, data_file(TINY_A), ["CD3"], backend="onnxruntime", out=tmp_path / "b.zarr",
                               backend_options={"max_in_flight": 2})
    with pytest.raises(BackendOptionError, match=r"unknown backend option 'urll'"):
        sctranslator.translate(rna, data_file(TINY_A), ["CD3"], backend="triton", out=tmp_path / "c.zarr",
                               backend_options={"urll": "127.0.0.1:8001"})
    assert not any(tmp_path.iterdir())


def test_the_declared_backend_options_are_what_the_backends_read() -> None:
    declared = {kind: caps.options for kind, caps in all_capabilities().items()}
    assert set(declared) == set(options.BACKENDS) - {"auto"}
    assert set(declared["triton"]) == {f.name for f in dataclasses.fields(TritonBackendOptions)}
    # Every triton option offered on the command line is one the backend reads.
    assert {f.name for f in dataclasses.fields(options.TritonOptions)} <= set(declared["triton"])
