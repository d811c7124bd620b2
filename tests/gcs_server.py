"""A real Google Cloud Storage JSON API server on 127.0.0.1 for the tests: gcp-storage-emulator (dev extra).

`GcsServer.start()` runs it in a subprocess on a free port (in memory) and waits until it answers;
`env` is what a process needs to reach it through gcsfs (`STORAGE_EMULATOR_HOST`), and
`filesystem()` a gcsfs file system on it; `bucket(name)` creates a bucket. Used by the
module-scoped `gcs_server` fixture of tests/test_gcs_storage.py.

Run as a script (`python tests/gcs_server.py PORT`), it is the server: the emulator's
`http.server.HTTPServer` serves one connection at a time, and gcsfs keeps several keep-alive
connections open at once (its parallel PUTs of a store's objects), which deadlocks; the script
serves the same request handler from a `ThreadingHTTPServer` instead, one request at a time (its
storage is not thread-safe).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# gcsfs >= 2025 first asks the gRPC storage-control API whether a bucket is hierarchical, which an
# HTTP-only emulator cannot answer (a 60 s timeout per bucket); this turns that probe off.
GCSFS_ENV = {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class GcsServer:
    process: subprocess.Popen
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.endpoint, **GCSFS_ENV}

    @classmethod
    def start(cls, timeout_s: float = 60.0) -> GcsServer:
        port = free_port()
        process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(port)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/storage/v1/b?project=test", timeout=2):
                    return cls(process, port)
            except OSError:
                if process.poll() is not None:
                    raise RuntimeError("gcp-storage-emulator exited at start") from None
                time.sleep(0.2)
        process.kill()
        raise RuntimeError(f"gcp-storage-emulator did not answer on port {port} within {timeout_s} s")

    def filesystem(self):  # noqa: ANN201 - gcsfs.GCSFileSystem
        import gcsfs

        return gcsfs.GCSFileSystem(token="anon", project="test", skip_instance_cache=True)  # noqa: S106

    def bucket(self, name: str) -> str:
        self.filesystem().mkdir(name)
        return f"gs://{name}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _serve(port: int) -> None:
    import functools
    import http.server
    import threading

    http.server.HTTPServer = http.server.ThreadingHTTPServer  # type: ignore[misc]
    from gcp_storage_emulator import server as emulator

    # One request at a time (the emulator's storage is not thread-safe), each connection its own thread.
    lock = threading.Lock()

    def serialised(method):  # noqa: ANN001, ANN202
        @functools.wraps(method)
        def locked(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            with lock:
                return method(self, *args, **kwargs)
        return locked

    for name in ("do_GET", "do_HEAD", "do_POST", "do_PUT", "do_PATCH", "do_DELETE"):
        if hasattr(emulator.RequestHandler, name):
            setattr(emulator.RequestHandler, name, serialised(getattr(emulator.RequestHandler, name)))
    create_server = emulator.create_server

    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    _serve(int(sys.argv[1]))
