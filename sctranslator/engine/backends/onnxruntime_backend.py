"""The `onnxruntime` backend: the exported ONNX graph on CPU, or with the CUDA / TensorRT providers."""

from __future__ import annotations

from typing import Any

import numpy as np

from sctranslator.engine.backends.base import BackendSpec, Batch, no_embeddings
from sctranslator.engine.backends.onnx_cache import onnx_file_for
from sctranslator.errors import BackendError
from sctranslator.export.contract import OUTPUT_NAME


class OnnxRuntimeBackend:
    """ONNX Runtime on CPU, or with the CUDA / TensorRT execution providers when present."""

    name = "onnxruntime"
    supports_embeddings = False  # the graph ends at the predictions

    def __init__(self, onnx_path: str, device: str = "cpu", threads: int | None = None):
        import onnxruntime as ort

        available = ort.get_available_providers()
        providers: list[Any] = []
        if device.startswith("cuda"):
            device_id = int(device.split(":")[1]) if ":" in device else 0
            if "TensorrtExecutionProvider" in available:
                providers.append(("TensorrtExecutionProvider", {"device_id": device_id}))
            if "CUDAExecutionProvider" in available:
                providers.append(("CUDAExecutionProvider", {"device_id": device_id}))
            if not providers:
                raise BackendError(f"--device {device} asked for, but onnxruntime offers only {available}; "
                                   "install onnxruntime-gpu")
        providers.append("CPUExecutionProvider")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(onnx_path, sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BackendError(f"onnxruntime could not load {onnx_path}: {exc}") from exc
        self.providers = self.session.get_providers()

    @classmethod
    def from_spec(cls, spec: BackendSpec) -> OnnxRuntimeBackend:
        return cls(onnx_file_for(spec, spec.load_model()), spec.device, spec.threads)

    def predict(self, batch: Batch) -> np.ndarray:
        outputs = [self.session.run([OUTPUT_NAME], batch.expanded(w))[0]
                   for w in range(batch.protein_ids.shape[0])]
        return np.concatenate(outputs, axis=1).astype(np.float32, copy=False)

    def predict_with_embeddings(self, batch: Batch, embeddings: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        return no_embeddings(self, batch, embeddings)

    def close(self) -> None:
        self.session = None
