"""Export models to other runtimes (ONNX for onnxruntime and Triton)."""

from sctranslator.export.onnx import ExportReport, OnnxAdapter, export_onnx
from sctranslator.export.onnx_format import INPUT_NAMES, OUTPUT_NAME, PRECISIONS, TOLERANCES, read_onnx_metadata
from sctranslator.export.onnx_validate import ValidationResult, create_session, random_inputs, validate_onnx

__all__ = ["INPUT_NAMES", "OUTPUT_NAME", "PRECISIONS", "TOLERANCES", "ExportReport", "OnnxAdapter",
           "ValidationResult", "create_session", "export_onnx", "random_inputs", "read_onnx_metadata",
           "validate_onnx"]
