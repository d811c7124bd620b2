"""Backend names -> implementations, and the per-process cache of built backends.

Backend modules are imported by name on first use, so a Triton-only client never imports torch
or onnxruntime.
"""

from __future__ import annotations

import threading
from importlib import import_module

from sctranslator import options
from sctranslator._optional import import_optional
from sctranslator.engine.backends.base import Backend, BackendSpec
from sctranslator.errors import BackendError

# name -> (module, class, optional dependency as (module, pip extra) or None); each class has
# `from_spec(spec) -> Backend`.
_IMPLEMENTATIONS: dict[str, tuple[str, str, tuple[str, str] | None]] = {
    "torch": ("sctranslator.engine.backends.torch_backend", "TorchBackend", None),
    "onnxruntime": ("sctranslator.engine.backends.onnxruntime_backend", "OnnxRuntimeBackend", None),
    "triton": ("sctranslator.engine.backends.triton", "TritonBackend", ("tritonclient.grpc", "triton")),
}
BACKENDS = options.BACKENDS  # the one list of choices (sctranslator.options)
AUTO = "auto"  # a choice resolved by choose_backend, not an implementation
if set(BACKENDS) != {AUTO, *_IMPLEMENTATIONS}:  # a choice without an implementation is a bug, caught at import
    raise ImportError(f"backends offered {BACKENDS} differ from those implemented {tuple(_IMPLEMENTATIONS)}")


def choose_backend(requested: str, *, device: str = "cpu", onnx_path: str | None = None) -> tuple[str, str]:
    """The backend to run and why: `requested` itself, or for "auto" the fastest exact path.

    auto: onnxruntime when an ONNX export is given (`onnx_path`: the user chose that graph);
    otherwise the torch backend, on CPU and CUDA alike: measured on the full-size model
    (benchmarks/bench_fullsize.py, README "Performance") it is the fastest exact path at every gene
    count on CPU, it needs no export (tens of seconds for a new model), it is the one with cell
    embeddings and the CUDA pipeline (memory-sized batches, overlapped copies). Triton is never
    chosen: it needs a server.
    """
    if requested != AUTO:
        return requested, "asked for"
    if onnx_path is not None:
        return "onnxruntime", "auto: an ONNX export was given (--onnx)"
    where = "CUDA (the GPU pipeline)" if device.startswith("cuda") else "CPU"
    return "torch", (f"auto: torch on {where}, the fastest exact path measured (benchmarks/bench_fullsize.py); "
                     "no export needed")


def create_backend(spec: BackendSpec) -> Backend:
    """A new backend of kind `spec.kind` (whatever building it raises passes through).

    BackendError for an unknown kind; MissingExtraError when the backend's optional dependency
    (tritonclient for triton) is not installed.
    """
    try:
        module, cls, requirement = _IMPLEMENTATIONS[spec.kind]
    except KeyError:
        raise BackendError(f"unknown backend {spec.kind!r}; choose one of {BACKENDS}") from None
    if requirement is not None:
        import_optional(*requirement, f"the {spec.kind} backend")
    backend: Backend = getattr(import_module(module), cls).from_spec(spec)
    return backend


_BACKENDS: dict[str, Backend] = {}
_BACKENDS_LOCK = threading.Lock()


def get_backend(spec: BackendSpec) -> Backend:
    """The backend for `spec` in this process: built on first use, then shared by every block."""
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
