"""Serving edges that need no tritonserver: timeouts against a server that accepts and never answers,
the owner of a busy port read from /proc, and backend options refused where the backend does not use them.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
from tritonclient.grpc import service_pb2

from sctranslator.engine.backends import BackendSpec, TritonBackend
from sctranslator.errors import ServerError


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
