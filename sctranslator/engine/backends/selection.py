"""Backend names -> implementations and their declared capabilities, and the per-process cache of built backends.

Backend modules are imported by name on first use, so a Triton-only client never imports torch
or onnxruntime.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from sctranslator import options
from sctranslator.engine.backends.base import Backend, BackendSpec
from sctranslator.engine.backends.capabilities import BackendCapabilities, check_backend_settings
from sctranslator.errors import BackendError, MissingExtraError
from sctranslator.options import EngineOptions
from sctranslator.util.optional import import_optional

log = logging.getLogger(__name__)

# name -> (module, class, optional dependency as (module, pip extra) or None); each class has
# `from_spec(spec) -> Backend`.
_IMPLEMENTATIONS: dict[str, tuple[str, str, tuple[str, str] | None]] = {
    "torch": ("sctranslator.engine.backends.torch_backend", "TorchBackend", None),
    "onnxruntime": ("sctranslator.engine.backends.onnxruntime_backend", "OnnxRuntimeBackend", None),
    "triton": ("sctranslator.engine.backends.triton_backend", "TritonBackend", ("tritonclient.grpc", "triton")),
}
BACKENDS = options.BACKENDS  # the one list of choices (sctranslator.options)
AUTO = "auto"  # a choice resolved by choose_backend, not an implementation
if set(BACKENDS) != {AUTO, *_IMPLEMENTATIONS}:  # a choice without an implementation is a bug, caught at import
    raise ImportError(f"backends offered {BACKENDS} differ from those implemented {tuple(_IMPLEMENTATIONS)}")


def choose_backend(requested: str, *, device: str = "cpu", onnx_path: str | None = None) -> tuple[str, str]:
    """The backend to run and why: `requested` itself, or for "auto" the fastest exact path.

    "auto" takes onnxruntime when an ONNX export is given (the user chose that graph), otherwise the
    torch backend on CPU and CUDA alike: it is the fastest exact path at every gene count on CPU
    (benchmarks/bench_fullsize.py), needs no export, has cell embeddings and the CUDA pipeline. Triton
    is never chosen: it needs a server.

    Parameters
    ----------
    requested : str
        "auto", "torch", "onnxruntime" or "triton".
    device : str
        The device asked for.
    onnx_path : str or None
        An ONNX export given by the user.

    Returns
    -------
    kind : str
        The backend.
    reason : str
        Why, for the provenance.
    """
    if requested != AUTO:
        return requested, "asked for"
    if onnx_path is not None:
        return "onnxruntime", "auto: an ONNX export was given (--onnx)"
    where = "CUDA (the GPU pipeline)" if device.startswith("cuda") else "CPU"
    return "torch", (f"auto: torch on {where}, the fastest exact path measured (benchmarks/bench_fullsize.py); "
                     "no export needed")


def backend_class(kind: str) -> type:
    """The class implementing backend `kind` (its module imported on first use).

    Parameters
    ----------
    kind : str
        "torch", "onnxruntime" or "triton".

    Returns
    -------
    type
        The backend class.

    Raises
    ------
    BackendError
        An unknown kind.
    MissingExtraError
        The backend's optional dependency (tritonclient for triton) is not installed.
    """
    try:
        module, cls, requirement = _IMPLEMENTATIONS[kind]
    except KeyError:
        raise BackendError(f"unknown backend {kind!r}; choose one of {BACKENDS}") from None
    if requirement is not None:
        import_optional(*requirement, f"the {kind} backend")
    found: type = getattr(import_module(module), cls)
    return found


def backend_capabilities(kind: str) -> BackendCapabilities:
    """What backend `kind` declares it can do (its class's `capabilities`), without building it.

    Parameters
    ----------
    kind : str
        "torch", "onnxruntime" or "triton".

    Returns
    -------
    BackendCapabilities
        The class attribute ``capabilities`` of that backend.

    Raises
    ------
    BackendError
        An unknown `kind`.
    MissingExtraError
        The backend's optional dependency is not installed.
    """
    capabilities: BackendCapabilities = backend_class(kind).capabilities  # type: ignore[attr-defined]
    return capabilities


def all_capabilities() -> dict[str, BackendCapabilities]:
    """Every installed backend's capabilities, by name (a backend whose extra is missing is left out).

    Returns
    -------
    dict of str to BackendCapabilities
        Name -> capabilities.
    """
    found = {}
    for kind in _IMPLEMENTATIONS:
        try:
            found[kind] = backend_capabilities(kind)
        except MissingExtraError:
            continue
    return found


@dataclass(frozen=True)
class ChosenBackend:
    """The backend that runs, why it was chosen, and what it declares it can do.

    Parameters
    ----------
    kind : str
        The backend's name.
    reason : str
        Why it was chosen.
    capabilities : BackendCapabilities
        What it declares.
    """

    kind: str
    reason: str
    capabilities: BackendCapabilities


def resolve_backend(engine: EngineOptions, backend_options: Mapping[str, Any] | None = None, *,
                    embeddings: bool = False) -> ChosenBackend:
    """Choose the backend to run and check every setting against what it declares.

    Parameters
    ----------
    engine : EngineOptions
        The job's engine options (backend, device, precision, onnx_path, compile).
    backend_options : mapping or None
        The ``backend_options`` given (triton: url, ...).
    embeddings : bool
        Whether the job asks for cell embeddings.

    Returns
    -------
    ChosenBackend
        The backend's name (``kind``), why it was chosen (``reason``) and its capabilities.

    Raises
    ------
    BackendOptionError
        An option the chosen backend does not use (e.g. ``url`` without triton).
    BackendError
        A device, precision or embeddings request the backend cannot serve.
    MissingExtraError
        The chosen backend's extra is not installed.
    """
    kind, reason = choose_backend(engine.backend, device=engine.device, onnx_path=engine.onnx_path)
    capabilities = backend_capabilities(kind)
    check_backend_settings(kind, capabilities, requested=engine.backend, backend_options=backend_options,
                           onnx_path=engine.onnx_path, compile=engine.compile, precision=engine.precision,
                           device=engine.device, embeddings=embeddings, others=all_capabilities)
    if engine.precision != "fp32" and capabilities.reduced_precision_warning:
        log.warning(capabilities.reduced_precision_warning.format(precision=engine.precision))
    return ChosenBackend(kind, reason, capabilities)


def create_backend(spec: BackendSpec) -> Backend:
    """Build a new backend of kind ``spec.kind``.

    Parameters
    ----------
    spec : BackendSpec
        What to build.

    Returns
    -------
    Backend
        A new backend; close it when done.

    Raises
    ------
    BackendError
        An unknown kind, or the backend cannot be built (each backend's own errors pass through:
        ServerError for an unreachable Triton server, CheckpointError for a bad model, ...).
    MissingExtraError
        The backend's optional dependency (tritonclient for triton) is not installed.
    """
    backend: Backend = backend_class(spec.kind).from_spec(spec)  # type: ignore[attr-defined]
    return backend


_BACKENDS: dict[str, Backend] = {}
_BACKENDS_LOCK = threading.Lock()


def get_backend(spec: BackendSpec) -> Backend:
    """The backend for `spec` in this process: built on first use, then shared by every block.

    Parameters
    ----------
    spec : BackendSpec
        What to build; equal specs (``spec.key()``) share one backend.

    Returns
    -------
    Backend
        The cached backend (`release_backends` closes it).

    Raises
    ------
    BackendError
        As `create_backend`.
    """
    key = spec.key()
    with _BACKENDS_LOCK:
        backend = _BACKENDS.get(key)
        if backend is None:
            backend = _BACKENDS[key] = create_backend(spec)
        return backend


def release_backends() -> None:
    """Close and forget every backend this process built (the next get_backend builds afresh)."""
    with _BACKENDS_LOCK:
        for backend in _BACKENDS.values():
            backend.close()
        _BACKENDS.clear()
