"""Find and run a local `tritonserver` process (for `sctranslator serve`, tests and benchmarks).

Where the binary comes from, first match wins: $SCTRANSLATOR_TRITONSERVER; `tritonserver` on
PATH (NVIDIA's container images); the copy that scripts/install_tritonserver.sh unpacks from the
nvidia-pytriton wheel into `<venv>/tritonserver/`; an importable `pytriton` package. The pytriton
build carries only the Python backend, its shared libraries beside it, and one backend stub per
Python version; running it outside pytriton needs the environment set up in `server_env`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from sctranslator.errors import PortInUseError, ServerError
from sctranslator.export import server_watchdog
from sctranslator.export.server_watchdog import command_line, end_group, group_members, is_alive, start_time

TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"  # Triton 2.51, the pytriton 0.7 server's version
ENV_BINARY = "SCTRANSLATOR_TRITONSERVER"
INSTALL_DIR_NAME = "tritonserver"  # under the virtualenv: <venv>/tritonserver/pkg/pytriton/...
STUB_ENV_NAME = "stub-env"  # <venv>/tritonserver/stub-env: numpy<2 for the stubs (install_tritonserver.sh)
STUB_NAME = server_watchdog.STUB_NAME
PID_FILE_NAME = ".sctranslator-serve.json"  # in the model repository: the server serving it, and who started it
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class TritonInstall:
    """A tritonserver binary and what it needs to run outside its own image.

    Parameters
    ----------
    binary : pathlib.Path
        The tritonserver executable.
    backend_dir : pathlib.Path or None
        Its backends; None: the binary's built-in default (/opt/tritonserver/backends).
    lib_dirs : tuple of pathlib.Path
        Shared-library directories it needs on LD_LIBRARY_PATH.
    stub_env : pathlib.Path or None
        A virtualenv layout for the Python-backend stubs with numpy<2 before this venv's packages (the
        pytriton build's stub is compiled against numpy 1; scripts/install_tritonserver.sh makes it).
    """

    binary: Path
    backend_dir: Path | None = None  # None: the binary's built-in default (/opt/tritonserver/backends)
    lib_dirs: tuple[Path, ...] = ()
    # A virtualenv layout for the Python-backend stubs with numpy<2 before this venv's packages: the
    # pytriton build's stub is compiled against numpy 1 and under numpy 2 turns every BYTES input into
    # copies of its first byte (scripts/install_tritonserver.sh makes it).
    stub_env: Path | None = None

    @classmethod
    def from_pytriton_dir(cls, package_dir: Path) -> TritonInstall:
        """The layout inside the nvidia-pytriton wheel: pytriton/tritonserver/{bin,backends}.

        Parameters
        ----------
        package_dir : pathlib.Path
            The installed pytriton package.

        Returns
        -------
        TritonInstall
            Its tritonserver.
        """
        root = package_dir / "tritonserver"
        libs = package_dir.parent / "nvidia_pytriton.libs"
        env = package_dir.parent.parent / STUB_ENV_NAME  # <venv>/tritonserver/stub-env
        return cls(binary=root / "bin" / "tritonserver", backend_dir=root / "backends",
                   lib_dirs=(libs,) if libs.is_dir() else (),
                   stub_env=env if (env / "bin" / "python").exists() else None)

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
    """The tritonserver to run here.

    Returns
    -------
    TritonInstall or None
        $SCTRANSLATOR_TRITONSERVER, one on PATH, or the pytriton wheel's; None when there is none.

    Raises
    ------
    ServerError
        $SCTRANSLATOR_TRITONSERVER names no file.
    """
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

    The stub embeds libpython: it must load *this* interpreter's libpython (not a system one of the same
    version) and find this virtualenv's python first on PATH, so that ``import numpy, onnxruntime``
    inside Triton sees the packages installed here.

    Parameters
    ----------
    install : TritonInstall
        The server.

    Returns
    -------
    dict of str to str
        The environment.
    """
    env = os.environ.copy()
    libdir = sysconfig.get_config_var("LIBDIR")
    libs = [str(path) for path in ([Path(libdir)] if libdir else []) + list(install.lib_dirs)]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
    bins = [str(Path(sys.executable).parent), env.get("PATH", "")]
    if install.stub_env is not None:
        bins.insert(0, str(install.stub_env / "bin"))
    env["PATH"] = os.pathsep.join(bins)
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (the operating system's choice).

    Parameters
    ----------
    host : str
        The address.

    Returns
    -------
    int
        The port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class PortOwner:
    """The process listening on a port.

    Parameters
    ----------
    port : int
        The port.
    pid : int or None
        Its process; None: a socket whose process this user cannot see.
    command : str
        Its command line.
    """

    port: int
    pid: int | None
    command: str

    def describe(self) -> str:
        """The owner, for messages.

        Returns
        -------
        str
            PID and command line, or why they are unknown.
        """
        if self.pid is None:
            return "a process this user cannot see (another user's, or another container's)"
        return f"PID {self.pid} ({self.command or 'command line unreadable'})"


def port_owner(port: int) -> PortOwner | None:
    """Who listens on TCP `port` (any address), from /proc/net/tcp{,6} and /proc/*/fd.

    Parameters
    ----------
    port : int
        The port.

    Returns
    -------
    PortOwner or None
        None: nobody.
    """
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            columns = row.split()  # sl local_address rem_address st ... inode
            if len(columns) > 9 and columns[3] == "0A" and int(columns[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{columns[9]}]")
    if not inodes:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            descriptors = os.listdir(entry / "fd")
        except OSError:
            continue
        for descriptor in descriptors:
            with contextlib.suppress(OSError):
                if os.readlink(entry / "fd" / descriptor) in inodes:
                    pid = int(entry.name)
                    return PortOwner(port, pid, " ".join(command_line(pid))[:300])
    return PortOwner(port, None, "")


def check_ports_free(host: str, ports: dict[str, int]) -> None:
    """Refuse to start a server on ports another process holds.

    Checked before a server starts: otherwise an old server still answering on the port would look
    like the new one being ready.

    Parameters
    ----------
    host : str
        The address.
    ports : dict of str to int
        Flag -> port.

    Raises
    ------
    PortInUseError
        A port is held (the message names the process).
    """
    seen: dict[int, str] = {}
    for flag, port in ports.items():
        if port in seen:
            raise PortInUseError(f"{seen[port]} and {flag} are both {port}; give each its own port")
        seen[port] = flag
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is free
            try:
                probe.bind((host, port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise ServerError(f"cannot listen on {host}:{port} ({flag}): {exc.strerror}") from exc
                owner = port_owner(port)
                who = owner.describe() if owner is not None else "another process"
                raise PortInUseError(f"port {port} on {host} ({flag}) is in use by {who}; stop it, or choose "
                                     f"another {flag}") from None


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGKILL when the thread that started it dies (Linux prctl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # looked up before the fork, not in the child
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: no signal will come
            os._exit(1)

    return set_death_signal


def docker_command(repo: str | Path, *, http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = 8002,
                   image: str = TRITON_IMAGE) -> str:
    """The ``docker run`` line that serves `repo` with NVIDIA's Triton image on a GPU.

    Parameters
    ----------
    repo : str or pathlib.Path
        The model repository.
    http_port : int
        HTTP port.
    grpc_port : int
        gRPC port.
    metrics_port : int
        Metrics port.
    image : str
        The Triton image.

    Returns
    -------
    str
        The command line.
    """
    repo = Path(repo).resolve()
    return (f"docker run --rm --gpus all -p{http_port}:8000 -p{grpc_port}:8001 -p{metrics_port}:8002 "
            f"-v {repo}:/models {image} tritonserver --model-repository=/models")


@dataclass
class TritonServer:
    """A tritonserver child process serving `repo` on 127.0.0.1 (or `host`); stop() or use as a context.

    Parameters
    ----------
    repo : pathlib.Path
        The model repository.
    http_port : int
        HTTP port; 0: a free one.
    grpc_port : int
        gRPC port; 0: a free one.
    metrics_port : int or None
        Metrics port; None: metrics off.
    host : str
        The address it listens on.
    install : TritonInstall or None
        The server; None: `find_tritonserver`.
    log_path : pathlib.Path or None
        Its log file; None: a temporary file.
    exit_timeout_s : int
        Seconds Triton waits for in-flight requests on exit.
    extra_args : tuple of str
        Further tritonserver arguments.
    pid_file : pathlib.Path or None
        Where the running server is recorded (see `pid_file_for`).
    watchdog : bool
        Start a watchdog that ends the server if this process is killed.
    """

    repo: Path
    http_port: int = 0  # 0: a free port
    grpc_port: int = 0
    metrics_port: int | None = None  # None: metrics off
    host: str = "127.0.0.1"
    install: TritonInstall | None = None
    log_path: Path | None = None
    exit_timeout_s: int = 5
    extra_args: tuple[str, ...] = ()
    pid_file: Path | None = None  # written on start, removed on stop (see clear_leftover)
    watchdog: bool = True  # a watchdog process ends the server if this process dies (kill -9 included)
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _watchdog: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

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
        """HOST:PORT of the HTTP endpoint."""
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """HOST:PORT of the gRPC endpoint."""
        return f"{self.host}:{self.grpc_port}"

    def command(self) -> list[str]:
        """The tritonserver command line.

        Returns
        -------
        list of str
            The arguments.
        """
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

    def ports(self) -> dict[str, int]:
        """The ports this server listens on, by the ``serve`` flag that sets each.

        Returns
        -------
        dict of str to int
            Flag -> port.
        """
        ports = {"--http-port": self.http_port, "--grpc-port": self.grpc_port}
        if self.metrics_port is not None:
            ports["--metrics-port"] = self.metrics_port
        return ports

    def start(self) -> None:
        """Launch the process (returns at once; see wait_ready).

        The server runs in a process group of its own with its stubs; it is killed if the thread
        that started it dies (PR_SET_PDEATHSIG; only when started from the main thread, whose end is
        the process's), and a watchdog process ends the whole group if this process dies.

        Raises:
            PortInUseError: a port is held by another process (named in the message).
        """
        if self.running:
            return
        assert self.install is not None and self.log_path is not None
        check_ports_free(self.host, self.ports())
        self.install.check_python_stub()
        main = threading.current_thread() is threading.main_thread()
        with open(self.log_path, "ab") as log:
            # A session of its own, so stop() can end the stubs with the server (and ^C in a
            # terminal reaches the server only through us).
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            env=server_env(self.install), start_new_session=True,
                                            preexec_fn=_die_with_parent(os.getpid()) if main else None)
        try:
            server_start = start_time(self.process.pid)
            if self.watchdog and server_start is not None:
                me = os.getpid()
                self._watchdog = subprocess.Popen(
                    [sys.executable, "-I", server_watchdog.__file__, str(me), str(start_time(me)),
                     str(self.process.pid), str(self.pid_file or "")],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    start_new_session=True)  # outside our group: a signal to us must not end it first
            if self.pid_file is not None:
                self._write_pid_file(server_start)
        except BaseException:
            self.stop()
            raise

    def _write_pid_file(self, server_start: int | None) -> None:
        assert self.process is not None and self.pid_file is not None
        me = os.getpid()
        record = {"server_pid": self.process.pid, "server_start": server_start, "owner_pid": me,
                  "owner_start": start_time(me), "owner_command": " ".join(command_line(me))[:300],
                  "watchdog_pid": self._watchdog.pid if self._watchdog is not None else None,
                  "host": self.host, "ports": self.ports(), "log": str(self.log_path),
                  "started": datetime.now(UTC).isoformat(timespec="seconds")}
        temporary = self.pid_file.with_name(self.pid_file.name + f".{me}.tmp")
        temporary.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(temporary, self.pid_file)

    @property
    def running(self) -> bool:
        """Whether the server process is running.

        Returns
        -------
        bool
            False before start and after it exits.
        """
        return self.process is not None and self.process.poll() is None

    def check_own_ports(self) -> None:
        """PortInUseError if another process (not this server's group) listens on our ports."""
        assert self.process is not None
        for flag, port in self.ports().items():
            owner = port_owner(port)
            if owner is None or owner.pid is None:
                continue
            fields = server_watchdog._stat_fields(owner.pid)
            if fields is not None and int(fields[2]) != self.process.pid:
                raise PortInUseError(f"port {port} on {self.host} ({flag}) is held by {owner.describe()}, not by "
                                     f"the tritonserver just started; stop it, or choose another {flag}")

    def is_ready(self) -> bool:
        """Whether the server answers ready on its HTTP health endpoint.

        Returns
        -------
        bool
            True once every model is loaded.
        """
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's log.

        Parameters
        ----------
        lines : int
            How many.

        Returns
        -------
        str
            The lines; "" without a log.
        """
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Block until every model is loaded and the server answers ready.

        Parameters
        ----------
        timeout_s : float
            Seconds to wait.

        Raises
        ------
        ServerError
            The server exits or is not ready in time (the message ends with its log).
        PortInUseError
            Another process holds one of its ports.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                code = self.process.returncode if self.process is not None else None
                raise ServerError(f"tritonserver exited (status {code}) before it was ready; its log "
                                  f"({self.log_path}) ends:\n{self.log_tail()}")
            if self.is_ready():
                self.check_own_ports()  # the answer came from this server, not an old one on the port
                return
            time.sleep(0.25)
        raise ServerError(f"tritonserver was not ready within {timeout_s:.0f} s; its log ({self.log_path}) "
                          f"ends:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the server gracefully (in-flight requests finish), then kill it after `timeout_s`.

        The stubs, the watchdog and the pid file are ended too.

        Parameters
        ----------
        timeout_s : float
            Seconds to wait before killing.
        """
        process = self.process
        if process is None:
            return
        try:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)  # our own session: server and its stubs
                    process.wait()
        finally:  # also when interrupted while waiting: nothing of the server's group survives
            _end_orphaned_stubs(process.pid)
            if self._watchdog is not None:
                self._watchdog.terminate()
                self._watchdog.wait()
                self._watchdog = None
            if self.pid_file is not None:
                server_watchdog.remove_pid_file(self.pid_file, process.pid)
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


_group_members = group_members  # the name tests and benchmarks use


def _end_orphaned_stubs(pgid: int) -> None:
    """Kill Python-backend stubs the server left behind, and free their shared memory.

    When the server exits quickly (--exit-timeout-secs=0, or killed), a stub can outlive it: it
    ignores SIGTERM and keeps its /dev/shm region. They are in the server's own process group.
    """
    end_group(pgid)


def pid_file_for(repo: str | Path) -> Path:
    """Where ``serve`` records the server that serves `repo` (absolute: the watchdog may remove it).

    Parameters
    ----------
    repo : str or pathlib.Path
        The model repository.

    Returns
    -------
    pathlib.Path
        REPO/.sctranslator-serve.json.
    """
    return Path(repo).resolve() / PID_FILE_NAME


def clear_leftover(pid_file: Path) -> str | None:
    """Deal with the server an earlier ``serve`` recorded in `pid_file`, before serving again.

    A server left behind by a serve that died (kill -9 before its watchdog could act) is killed with
    its stubs and the file removed.

    Parameters
    ----------
    pid_file : pathlib.Path
        The record.

    Returns
    -------
    str or None
        A line saying what was cleared; None when nothing was recorded.

    Raises
    ------
    ServerError
        The repository is still served by a live ``serve`` (named).
    """
    try:
        record = json.loads(pid_file.read_text())
        server, owner = int(record["server_pid"]), int(record["owner_pid"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        pid_file.unlink(missing_ok=True)  # unreadable: nothing in it can be acted on
        return None
    leader_alive = is_alive(server, record.get("server_start"))
    members = [pid for pid in group_members(server) if server_watchdog.is_triton_process(pid)]
    if (leader_alive or members) and is_alive(owner, record.get("owner_start")):
        raise ServerError(f"{pid_file.parent} is already served by PID {owner} ({record.get('owner_command', '?')}; "
                          f"tritonserver PID {server}, ports {record.get('ports')}); stop it (kill {owner}) or "
                          "serve another --repo")
    killed = end_group(server, only_triton=True) if (leader_alive or members) else []
    pid_file.unlink(missing_ok=True)
    if not killed:
        return None
    return (f"removed a tritonserver left by an earlier serve (PID {owner}, gone): killed PIDs "
            f"{', '.join(map(str, killed))}")
