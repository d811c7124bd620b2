"""Inference backends behind one small interface (`Backend` in base.py): torch, onnxruntime, triton.

The pipeline does not know which backend it drives. Backends are created from a picklable
`BackendSpec` once per worker process (`get_backend`) and reused for every block. Modules:
`base` (Batch, BackendSpec, the Backend protocol; no torch), `capabilities` (what each backend class
declares it can do, and the settings checked against it), one module per backend
(`torch_backend`, `onnxruntime_backend` with `onnx_cache`, `triton`) and `registry` (names ->
backends, the per-process cache). Names are resolved lazily, so importing this package imports
neither torch nor onnxruntime nor tritonclient.
"""

from __future__ import annotations

from sctranslator.util.lazy import lazy_getattr

_EXPORTS = {
    "Backend": "sctranslator.engine.backends.base",
    "BackendSpec": "sctranslator.engine.backends.base",
    "Batch": "sctranslator.engine.backends.base",
    "BackendCapabilities": "sctranslator.engine.backends.capabilities",
    "backend_capabilities": "sctranslator.engine.backends.selection",
    "resolve_backend": "sctranslator.engine.backends.selection",
    "BACKENDS": "sctranslator.engine.backends.selection",
    "create_backend": "sctranslator.engine.backends.selection",
    "get_backend": "sctranslator.engine.backends.selection",
    "release_backends": "sctranslator.engine.backends.selection",
    "TorchBackend": "sctranslator.engine.backends.torch_backend",
    "cell_embedding": "sctranslator.engine.backends.torch_backend",
    "OnnxRuntimeBackend": "sctranslator.engine.backends.onnxruntime_backend",
    "onnx_file_for": "sctranslator.engine.backends.onnx_cache",
    "TritonBackend": "sctranslator.engine.backends.triton_backend",
    "TritonConnection": "sctranslator.engine.backends.triton_backend",
}

__all__ = list(_EXPORTS)


__getattr__ = lazy_getattr("sctranslator.engine.backends", _EXPORTS)
