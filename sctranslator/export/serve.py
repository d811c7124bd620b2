"""`sctranslator serve`: export a model repository and serve it with a local tritonserver.

Where no tritonserver binary is available, the repository is still written and the `docker run`
line that serves it with NVIDIA's image is printed instead.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sctranslator.errors import ServerError
from sctranslator.export.triton import export_triton, model_dir_names
from sctranslator.export.triton_config import DEFAULT_MODEL_NAME, ServingSettings
from sctranslator.export.triton_reuse import export_mismatch
from sctranslator.export.triton_server import (
    TritonInstall,
    TritonServer,
    check_ports_free,
    clear_leftover,
    docker_command,
    find_tritonserver,
    pid_file_for,
)
from sctranslator.model import TranslatorModel, load_model

log = logging.getLogger(__name__)
DEFAULT_REPO = Path("sctranslator-triton-repo")


@dataclass(frozen=True)
class ServeRequest:
    """What ``sctranslator serve`` was asked for.

    Parameters
    ----------
    model : str, pathlib.Path or TranslatorModel
        The model.
    repo : pathlib.Path
        The Triton model repository.
    name : str
        The client-facing model's name.
    backend : str or None
        The Triton backend of the graph models; None: python for the pytriton build, else onnxruntime.
    host : str
        Address the server listens on.
    http_port : int
        HTTP port.
    grpc_port : int
        gRPC port.
    metrics_port : int
        Metrics port.
    max_batch_size : int
        Cells per request.
    instances : int
        Model instances.
    ready_timeout_s : float
        Seconds to wait for the server to be ready.
    onnx_path : pathlib.Path or None
        Reuse this ONNX export.
    """

    model: str | Path | TranslatorModel
    repo: Path = DEFAULT_REPO
    name: str = DEFAULT_MODEL_NAME
    backend: str | None = None  # None: python for the pytriton build, onnxruntime otherwise
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch_size: int = 64
    instances: int = 1
    ready_timeout_s: float = 120.0
    onnx_path: Path | None = None  # reuse a file from `export onnx` instead of exporting again


def has_backend(install: TritonInstall, backend: str) -> bool:
    """Whether the server has a backend (onnxruntime serves the tensorrt variant too).

    Parameters
    ----------
    install : TritonInstall
        The tritonserver installation.
    backend : str
        The backend.

    Returns
    -------
    bool
        True when installed.
    """
    if install.backend_dir is None:  # NVIDIA's images: every backend under /opt/tritonserver/backends
        return True
    directory = "onnxruntime" if backend == "tensorrt" else backend
    return (install.backend_dir / directory).is_dir()


def choose_server_backend(requested: str | None, install: TritonInstall | None) -> str:
    """The Triton backend to serve with: `requested`, else onnxruntime when installed, else python.

    Parameters
    ----------
    requested : str or None
        The backend asked for.
    install : TritonInstall or None
        The tritonserver installation found (None: none here).

    Returns
    -------
    str
        The backend.
    """
    if requested:
        return requested
    if install is not None and not has_backend(install, "onnxruntime"):
        return "python"
    return "onnxruntime"


def serve(request: ServeRequest, *, echo: Callable[[str], None] = print,
          block: bool = True) -> TritonServer | None:
    """Write the model repository (or reuse it), then start tritonserver on it.

    The repository is reused when it holds this export already (see
    `sctranslator.export.triton_reuse.export_mismatch`). The server runs in a process group of its own;
    on any exit of serve that it can observe (return, exception, SIGINT, SIGTERM, SIGHUP) the server and
    every Python-backend stub are killed, and a watchdog process does the same if serve is killed with
    SIGKILL. The server is recorded in REPO/.sctranslator-serve.json; a later serve of the same
    repository refuses while that serve lives, and otherwise kills what it left behind.

    Parameters
    ----------
    request : ServeRequest
        The model, repository, name, backend, host and ports, batch size and instances.
    echo : callable
        Where progress lines and the docker command go: a few lines (the repository, its models, the
        URLs, "ready"); the exported files are listed in this module's DEBUG log (``serve -v``).
    block : bool
        Wait until interrupted and stop the server; otherwise return it running.

    Returns
    -------
    TritonServer or None
        The server: running without `block`, stopped after an interrupted blocking run; None when
        there is no tritonserver binary here (the docker command is echoed instead).

    Raises
    ------
    CheckpointError
        An unreadable model.
    ExportError
        As `export_triton` (ExportValidationError for a failed validation).
    PortInUseError
        A port is held by another process (named, with its command line).
    ServerError
        The repository is served by another live serve; the server lacks the backend, fails to start,
        or is not ready in time.
    """
    install = find_tritonserver()
    backend = choose_server_backend(request.backend, install)
    ports = {"--http-port": request.http_port, "--grpc-port": request.grpc_port,
             "--metrics-port": request.metrics_port}
    if install is not None:  # before the (slow) export: a busy port or a live server fails at once
        leftover = clear_leftover(pid_file_for(request.repo))
        if leftover:
            echo(leftover)
        check_ports_free(request.host, ports)
    model = request.model if isinstance(request.model, TranslatorModel) else load_model(request.model)
    settings = ServingSettings(name=request.name, backend=backend, max_batch_size=request.max_batch_size,
                               instances=request.instances, kind="cpu" if backend == "python" else None,
                               dynamic_batching=True, max_queue_delay_us=100)
    # An earlier export of this model with these options is served as it is (the full-size model's
    # export takes minutes); otherwise serve replaces its own earlier export (never anything else).
    mismatch = export_mismatch(model, request.repo, settings)
    if mismatch is None:
        models = ", ".join(repr(name) for name in model_dir_names(request.name).values())
        echo(f"reusing the Triton repository {request.repo} (models {models}): same model fingerprint, precision "
             "and options")
    else:
        echo(f"exporting to {request.repo} ({mismatch})")
        exported = export_triton(model, request.repo, settings, onnx_path=request.onnx_path, overwrite=True)
        files = exported.files()
        # The file list (about 100 lines, mostly the names-in model's package copy) is for -v only.
        echo(f"{exported.summary()} ({len(files)} files; -v lists them)")
        log.debug("files of the Triton repository %s:\n%s", request.repo,
                  "\n".join(f"  {path}" for path in files))
    if install is None:
        echo("No tritonserver binary here (scripts/install_tritonserver.sh installs one for the Python backend). "
             "Serve the repository with NVIDIA's Triton image:")
        echo("  " + docker_command(request.repo, http_port=request.http_port, grpc_port=request.grpc_port,
                                   metrics_port=request.metrics_port))
        return None
    if not has_backend(install, backend):
        raise ServerError(f"{install.binary} has no {backend} backend in {install.backend_dir}; pass --backend python "
                          f"or serve with Docker:\n  {docker_command(request.repo)}")
    server = TritonServer(request.repo, http_port=request.http_port, grpc_port=request.grpc_port,
                          metrics_port=request.metrics_port, host=request.host, install=install,
                          pid_file=pid_file_for(request.repo))
    try:
        server.start()
        server.wait_ready(request.ready_timeout_s)
    except BaseException:
        server.stop()
        raise
    echo(f"tritonserver ready (log: {server.log_path}):\n  HTTP    {server.http_url}\n  gRPC    {server.grpc_url}\n"
         f"  metrics {request.host}:{request.metrics_port}/metrics")
    echo(f"Translate with: sctranslator translate DATA --model MODEL --out OUT --backend triton "
         f"--url {server.grpc_url} --model-name {request.name} --protocol grpc")
    if not block:
        return server
    # Service managers (Docker, Kubernetes, systemd) stop a service with SIGTERM, a closed terminal
    # sends SIGHUP: treat them like Ctrl-C, so the server and its Python-backend stubs go down with us.
    main = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
    previous = {number: signal.signal(number, _interrupt) for number in STOP_SIGNALS} if main else {}
    try:
        assert server.process is not None
        code = server.process.wait()
        raise ServerError(f"tritonserver exited with status {code}; its log ends:\n{server.log_tail()}")
    except KeyboardInterrupt:
        echo("stopping tritonserver")
        return server
    finally:
        try:
            server.stop()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
