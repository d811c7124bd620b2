"""Find and run a local `tritonserver` process (for `sctranslator serve`, tests and benchmarks).

Where the binary comes from, first match wins: $SCTRANSLATOR_TRITONSERVER; `tritonserver` on
PATH (NVIDIA's container images); the copy that scripts/install_tritonserver.sh unpacks from the
nvidia-pytriton wheel into `<venv>/tritonserver/`; an importable `pytriton` package. The pytriton
build carries only the Python backend, its shared libraries beside it, and one backend stub per
Python version; running it outside pytriton needs the environment set up in `server_env`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from sctranslator.errors import ServerError

TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"  # Triton 2.51, the pytriton 0.7 server's version
ENV_BINARY = "SCTRANSLATOR_TRITONSERVER"
INSTALL_DIR_NAME = "tritonserver"  # under the virtualenv: <venv>/tritonserver/pkg/pytriton/...
STUB_NAME = "triton_python_backend_stub"


@dataclass(frozen=True)
class TritonInstall:
    """A tritonserver binary and what it needs to run outside its own image."""

    binary: Path
    backend_dir: Path | None = None  # None: the binary's built-in default (/opt/tritonserver/backends)
    lib_dirs: tuple[Path, ...] = ()

    @classmethod
    def from_pytriton_dir(cls, package_dir: Path) -> TritonInstall:
        """The layout inside the nvidia-pytriton wheel: pytriton/tritonserver/{bin,backends}."""
        root = package_dir / "tritonserver"
        libs = package_dir.parent / "nvidia_pytriton.libs"
        return cls(binary=root / "bin" / "tritonserver", backend_dir=root / "backends",
                   lib_dirs=(libs,) if libs.is_dir() else ())

    def check_python_stub(self) -> None:
        """Put the Python-backend stub for this interpreter's version where the backend looks for it."""
        if self.backend_dir is None:
            return
        stub = self.backend_dir / "python" / STUB_NAME
        if stub.exists():
            return
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        source = self.backend_dir.parent / "python_backend_stubs" / version / STUB_NAME
        if not source.exists():
            raise ServerError(f"{self.binary} has no Python-backend stub for Python {version} ({source} missing)")
        try:
            shutil.copyfile(source, stub)
            stub.chmod(0o755)
        except OSError as exc:
            raise ServerError(f"cannot install the Python-backend stub into {stub}: {exc}; "
                              "run scripts/install_tritonserver.sh") from exc


def _pytriton_package() -> Path | None:
    installed = Path(sys.prefix) / INSTALL_DIR_NAME / "pkg" / "pytriton"
    if installed.is_dir():
        return installed
    with contextlib.suppress(ImportError):
        import pytriton  # type: ignore[import-not-found]

        return Path(pytriton.__file__).parent
    return None


def find_tritonserver() -> TritonInstall | None:
    """The tritonserver to run here, or None when there is none."""
    explicit = os.environ.get(ENV_BINARY)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ServerError(f"${ENV_BINARY} is {explicit}, which is not a file")
        if path.parent.name == "bin" and path.parent.parent.name == "tritonserver":  # a pytriton layout
            return TritonInstall.from_pytriton_dir(path.parents[2])
        return TritonInstall(binary=path)
    on_path = shutil.which("tritonserver")
    if on_path:
        return TritonInstall(binary=Path(on_path))
    package = _pytriton_package()
    if package is not None:
        install = TritonInstall.from_pytriton_dir(package)
        if install.binary.is_file():
            return install
    return None


def server_env(install: TritonInstall) -> dict[str, str]:
    """Environment for the server and its Python-backend stubs.

    The stub embeds libpython: it must load *this* interpreter's libpython (not a system one of
    the same version) and find this virtualenv's python first on PATH, so that `import numpy,
    onnxruntime` inside Triton sees the packages installed here.
    """
    env = os.environ.copy()
    libdir = sysconfig.get_config_var("LIBDIR")
    libs = [str(path) for path in ([Path(libdir)] if libdir else []) + list(install.lib_dirs)]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def docker_command(repo: str | Path, *, http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = 8002,
                   image: str = TRITON_IMAGE) -> str:
    """The `docker run` line that serves `repo` with NVIDIA's Triton image on a GPU."""
    repo = Path(repo).resolve()
    return (f"docker run --rm --gpus all -p{http_port}:8000 -p{grpc_port}:8001 -p{metrics_port}:8002 "
            f"-v {repo}:/models {image} tritonserver --model-repository=/models")


@dataclass
class TritonServer:
    """A tritonserver child process serving `repo` on 127.0.0.1 (or `host`); stop() or use as a context."""

    repo: Path
    http_port: int = 0  # 0: a free port
    grpc_port: int = 0
    metrics_port: int | None = None  # None: metrics off
    host: str = "127.0.0.1"
    install: TritonInstall | None = None
    log_path: Path | None = None
    exit_timeout_s: int = 5
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.repo = Path(self.repo)
        self.install = self.install or find_tritonserver()
        if self.install is None:
            raise ServerError("no tritonserver found: run scripts/install_tritonserver.sh, put tritonserver on "
                              f"PATH, or set ${ENV_BINARY}; or serve with Docker:\n  {docker_command(self.repo)}")
        self.http_port = self.http_port or free_port(self.host)
        self.grpc_port = self.grpc_port or free_port(self.host)
        if self.log_path is None:
            handle, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(handle)
            self.log_path = Path(name)

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def command(self) -> list[str]:
        assert self.install is not None
        args = [str(self.install.binary), f"--model-repository={self.repo}",
                f"--http-address={self.host}", f"--http-port={self.http_port}",
                f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
                f"--exit-timeout-secs={self.exit_timeout_s}"]
        if self.metrics_port is None:
            args.append("--allow-metrics=false")
        else:
            args += [f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}"]
        if self.install.backend_dir is not None:
            args.append(f"--backend-directory={self.install.backend_dir}")
        return args + list(self.extra_args)

    def start(self) -> None:
        """Launch the process (returns at once; see wait_ready)."""
        if self.running:
            return
        assert self.install is not None and self.log_path is not None
        self.install.check_python_stub()
        with open(self.log_path, "ab") as log:
            # A session of its own, so stop() can end the stubs with the server (and ^C in a
            # terminal reaches the server only through us).
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            env=server_env(self.install), start_new_session=True)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Block until every model is loaded and the server answers ready; ServerError otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                code = self.process.returncode if self.process is not None else None
                raise ServerError(f"tritonserver exited (status {code}) before it was ready; its log "
                                  f"({self.log_path}) ends:\n{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.25)
        raise ServerError(f"tritonserver was not ready within {timeout_s:.0f} s; its log ({self.log_path}) "
                          f"ends:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """Terminate (graceful: in-flight requests finish), then kill after `timeout_s`."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)  # our own session: server and its stubs
                process.wait()
        _end_orphaned_stubs(process.pid)
        self.process = None

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()


def _group_members(pgid: int) -> list[int]:
    """Live processes of process group `pgid` (Linux /proc; zombies excluded)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _end_orphaned_stubs(pgid: int) -> None:
    """Kill Python-backend stubs the server left behind, and free their shared memory.

    When the server exits quickly (--exit-timeout-secs=0, or killed), a stub can outlive it: it
    ignores SIGTERM and keeps its /dev/shm region. They are in the server's own process group.
    """
    for pid in _group_members(pgid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        regions = [arg.decode(errors="replace") for arg in argv if arg.startswith(b"triton_python_backend_shm_region")]
        for region in regions:
            with contextlib.suppress(OSError):
                (Path("/dev/shm") / region).unlink()
    deadline = time.monotonic() + 5  # SIGKILL is asynchronous: wait until they are gone
    while _group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
