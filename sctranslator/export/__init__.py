"""Export models to other runtimes: ONNX (onnxruntime) and Triton model repositories.

Names are resolved lazily so that the command line (which imports `export.command`) does not pay
for importing torch and onnx until an export actually runs.
"""

from __future__ import annotations

from sctranslator.util.lazy import lazy_getattr

_EXPORTS = {
    "ExportReport": "sctranslator.export.onnx",
    "export_onnx": "sctranslator.export.onnx",
    "INPUT_NAMES": "sctranslator.graph.contract",
    "INPUTS": "sctranslator.graph.contract",
    "OUTPUT": "sctranslator.graph.contract",
    "OUTPUT_NAME": "sctranslator.graph.contract",
    "TENSORS": "sctranslator.graph.contract",
    "TensorSpec": "sctranslator.graph.contract",
    "PRECISIONS": "sctranslator.export.onnx_format",
    "TOLERANCES": "sctranslator.export.onnx_format",
    "read_onnx_metadata": "sctranslator.export.onnx_format",
    "ValidationResult": "sctranslator.export.onnx_validate",
    "create_session": "sctranslator.export.onnx_validate",
    "random_inputs": "sctranslator.export.onnx_validate",
    "validate_onnx": "sctranslator.export.onnx_validate",
    "export_triton": "sctranslator.export.triton",
}

__all__ = list(_EXPORTS)


__getattr__ = lazy_getattr("sctranslator.export", _EXPORTS)
