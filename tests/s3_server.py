"""A real S3 API server for the object-storage tests: moto in server mode (`moto_server`) on 127.0.0.1.

`S3Server.start()` runs `moto_server` on a free loopback port and waits until it answers; `env`
is what a client process needs (endpoint and dummy credentials, the standard AWS_* variables),
`bucket(name)` creates a bucket. Used by the session-scoped `s3_server` fixture (tests/conftest.py).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def moto_server_program() -> str:
    """The moto_server beside this interpreter (the dev extra installs it), else on PATH."""
    beside = Path(sys.executable).parent / "moto_server"
    found = str(beside) if beside.exists() else shutil.which("moto_server")
    if found is None:
        raise RuntimeError("moto_server is not installed; install the dev extra: pip install -e '.[dev]'")
    return found


@dataclass
class S3Server:
    port: int
    process: subprocess.Popen
    buckets: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

    @classmethod
    def start(cls, timeout_s: float = 60.0) -> S3Server:
        port = free_port()
        process = subprocess.Popen([moto_server_program(), "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = cls(port, process)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"moto_server exited with status {process.returncode}")
            try:
                with urllib.request.urlopen(server.endpoint + "/moto-api/", timeout=2):
                    return server
            except OSError:
                time.sleep(0.2)
        server.stop()
        raise RuntimeError(f"moto_server did not answer on {server.endpoint} within {timeout_s} s")

    def filesystem(self):  # noqa: ANN201 - s3fs.S3FileSystem
        import s3fs

        return s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=self.endpoint, skip_instance_cache=True)

    def bucket(self, name: str) -> str:
        """Create the bucket `name` (once); returns 's3://name'."""
        if name not in self.buckets:
            self.filesystem().mkdir(name)
            self.buckets.append(name)
        return f"s3://{name}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def set_environment(server: S3Server) -> dict[str, str | None]:
    """Point this process's S3 clients at `server`; returns the previous values for `restore_environment`."""
    previous = {key: os.environ.get(key) for key in server.env}
    os.environ.update(server.env)
    return previous


def restore_environment(previous: dict[str, str | None]) -> None:
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
