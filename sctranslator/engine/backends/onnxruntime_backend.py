"""The `onnxruntime` backend: the exported ONNX graph on CPU, or with the CUDA / TensorRT providers."""

from __future__ import annotations

from typing import Any

import numpy as np

from sctranslator.engine.backends.base import BackendSpec, Batch, no_embeddings
from sctranslator.engine.backends.onnx_cache import onnx_file_for
from sctranslator.errors import BackendError
from sctranslator.export.contract import GENES, INPUTS, OUTPUT, OUTPUT_NAME, PROTEINS


def check_graph(session: Any, path: str, genes: int | None = None, proteins: int | None = None) -> None:
    """BackendError unless the session's graph takes and returns the contract's tensors (export/contract.py).

    Checks names, element types and that the second axes agree on one L and one P (and equal
    `genes` / `proteins` when given: the model's). A file from `sctranslator export onnx` passes.
    """
    found = {arg.name: arg for arg in [*session.get_inputs(), *session.get_outputs()]}
    problems = []
    widths: dict[str, set[int]] = {GENES: set(), PROTEINS: set()}
    for tensor in (*INPUTS, OUTPUT):
        arg = found.get(tensor.name)
        expected_type = f"tensor({tensor.onnx_type.lower()})"  # onnxruntime's spelling, e.g. tensor(float)
        if arg is None:
            problems.append(f"no tensor {tensor.name!r}")
        elif arg.type != expected_type:
            problems.append(f"{tensor.name} is {arg.type}, expected {expected_type}")
        elif len(arg.shape) != 2:
            problems.append(f"{tensor.name} has shape {arg.shape}, expected (batch, {tensor.axis})")
        elif isinstance(arg.shape[1], int):
            widths[tensor.axis].add(arg.shape[1])
    for axis, expected in ((GENES, genes), (PROTEINS, proteins)):
        if len(widths[axis]) > 1:
            problems.append(f"its tensors disagree on {axis}: {sorted(widths[axis])}")
        elif expected is not None and widths[axis] and widths[axis] != {expected}:
            problems.append(f"it takes {axis}={widths[axis].pop()}, the model takes {axis}={expected}")
    if problems:
        raise BackendError(f"{path} is not an sctranslator graph for this model: " + "; ".join(problems)
                           + f". Its tensors: {sorted(found)}. Export it with `sctranslator export onnx MODEL`.")


class OnnxRuntimeBackend:
    """ONNX Runtime on CPU, or with the CUDA / TensorRT execution providers when present."""

    name = "onnxruntime"
    supports_embeddings = False  # the graph ends at the predictions

    def __init__(self, onnx_path: str, device: str = "cpu", threads: int | None = None,
                 genes: int | None = None, proteins: int | None = None):
        """Load `onnx_path`; BackendError if it cannot be loaded, if `device` is CUDA without a CUDA
        provider, or if its graph breaks the contract (`check_graph`, with the model's L=`genes`, P=`proteins`)."""
        from sctranslator._optional import import_optional

        ort = import_optional("onnxruntime", "cpu", "the onnxruntime backend (or sctranslator[gpu] on CUDA)")
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
        check_graph(self.session, onnx_path, genes, proteins)

    @classmethod
    def from_spec(cls, spec: BackendSpec) -> OnnxRuntimeBackend:
        model = spec.load_model()
        return cls(onnx_file_for(spec, model), spec.device, spec.threads, model.config.max_genes,
                   model.config.max_proteins)

    def predict(self, batch: Batch) -> np.ndarray:
        outputs = [self.session.run([OUTPUT_NAME], batch.expanded(w))[0]
                   for w in range(batch.protein_ids.shape[0])]
        return np.concatenate(outputs, axis=1).astype(np.float32, copy=False)

    def predict_with_embeddings(self, batch: Batch, embeddings: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        return no_embeddings(self, batch, embeddings)

    def close(self) -> None:
        self.session = None
