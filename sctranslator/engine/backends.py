"""Inference backends behind one small interface: `predict(batch) -> numpy array`.

The pipeline does not know which backend it drives. Backends are created from a picklable
`BackendSpec` once per worker process (see `get_backend`) and reused for every block.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from sctranslator import options
from sctranslator.errors import BackendError
from sctranslator.model import TranslatorModel, load_model

log = logging.getLogger(__name__)

BACKENDS = options.BACKENDS


@dataclass
class Batch:
    """Model inputs for a batch of B cells; the gene and protein rows are shared by every cell."""

    values: np.ndarray  # float32 (B, L)
    gene_ids: np.ndarray  # int64 (L,)
    gene_mask: np.ndarray  # bool (L,)
    protein_ids: np.ndarray  # int64 (W, P): one row per protein window
    protein_mask: np.ndarray  # bool (W, P)

    def expanded(self, window: int) -> dict[str, np.ndarray]:
        """Batch-shaped arrays for one protein window, as ONNX and Triton models take them."""
        batch = self.values.shape[0]
        return {
            "values": np.ascontiguousarray(self.values, dtype=np.float32),
            "gene_ids": np.ascontiguousarray(np.broadcast_to(self.gene_ids, (batch, self.gene_ids.shape[0]))),
            "gene_mask": np.ascontiguousarray(np.broadcast_to(self.gene_mask, (batch, self.gene_mask.shape[0]))),
            "protein_ids": np.ascontiguousarray(np.broadcast_to(self.protein_ids[window],
                                                                (batch, self.protein_ids.shape[1]))),
            "protein_mask": np.ascontiguousarray(np.broadcast_to(self.protein_mask[window],
                                                                 (batch, self.protein_mask.shape[1]))),
        }


class Backend(Protocol):
    name: str

    def predict(self, batch: Batch) -> np.ndarray:
        """(B, W * P) float32 predictions, windows concatenated in order."""
        ...

    def close(self) -> None: ...


@dataclass
class BackendSpec:
    """Everything needed to build a backend in any process (picklable)."""

    kind: str = "torch"
    model: str | TranslatorModel | None = None  # a path, or an in-memory model (local runs)
    device: str = "cpu"
    onnx_path: str | None = None  # onnxruntime: use this file instead of exporting
    onnx_cache_dir: str | None = None
    precision: str = "fp32"
    threads: int | None = None  # intra-op threads per backend
    options: dict[str, Any] = field(default_factory=dict)  # backend-specific (triton url, ...)

    def key(self) -> str:
        model_key = self.model if isinstance(self.model, str) else f"memory:{id(self.model)}"
        text = repr((self.kind, model_key, self.device, self.onnx_path, self.precision, self.threads,
                     sorted(self.options.items())))
        return hashlib.sha1(text.encode()).hexdigest()

    def load_model(self) -> TranslatorModel:
        if isinstance(self.model, TranslatorModel):
            return self.model
        if self.model is None:
            raise BackendError("no model given to the backend")
        return load_model(self.model, device="cpu")


def cell_embedding(encodings: torch.Tensor, gene_mask: torch.Tensor) -> torch.Tensor:
    """A cell's embedding: the mean of its encoder outputs over real gene tokens, (B, L, dim) -> (B, dim)."""
    weights = gene_mask.to(encodings.dtype).unsqueeze(-1)
    return (encodings * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class TorchBackend:
    """PyTorch in eval mode without autograd, on CPU or CUDA.

    The encoder and translator do not depend on the proteins, so they run once per batch and
    only the decoder runs once per protein window.
    """

    name = "torch"

    def __init__(self, model: TranslatorModel, device: str = "cpu"):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(f"--device {device} asked for, but PyTorch sees no CUDA device")
        self.device = torch.device(device)
        current = next(model.parameters()).device
        # nn.Module.to moves in place: never move the caller's model, move a copy.
        self.model = (model if current == self.device else copy.deepcopy(model).to(self.device)).eval()

    def predict(self, batch: Batch) -> np.ndarray:
        return self.predict_with_embeddings(batch, embeddings=False)[0]

    @torch.inference_mode()
    def predict_with_embeddings(self, batch: Batch, embeddings: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictions (B, W * P) and, if asked, cell embeddings (B, dim): see `cell_embedding`."""
        device = self.device
        values = torch.from_numpy(np.ascontiguousarray(batch.values, dtype=np.float32)).to(device)
        size = values.shape[0]
        genes = torch.from_numpy(batch.gene_ids).to(device).expand(size, -1)
        gene_mask = torch.from_numpy(batch.gene_mask).to(device).expand(size, -1)
        encodings = self.model.encode(values, genes, gene_mask)
        translated = self.model.translate_sequence(encodings)
        outputs = []
        for window in range(batch.protein_ids.shape[0]):
            proteins = torch.from_numpy(batch.protein_ids[window]).to(device).expand(size, -1)
            protein_mask = torch.from_numpy(batch.protein_mask[window]).to(device).expand(size, -1)
            outputs.append(self.model.decode(translated, proteins, protein_mask))
        predictions = torch.cat(outputs, dim=1).float().cpu().numpy()
        embedding = cell_embedding(encodings, gene_mask).float().cpu().numpy() if embeddings else None
        return predictions, embedding

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]


class OnnxRuntimeBackend:
    """ONNX Runtime on CPU, or with the CUDA / TensorRT execution providers when present."""

    name = "onnxruntime"

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

    def predict(self, batch: Batch) -> np.ndarray:
        outputs = [self.session.run(["predictions"], batch.expanded(w))[0]
                   for w in range(batch.protein_ids.shape[0])]
        return np.concatenate(outputs, axis=1).astype(np.float32, copy=False)

    def close(self) -> None:
        self.session = None


def onnx_file_for(spec: BackendSpec, model: TranslatorModel) -> str:
    """The ONNX file to run: the user's, or one exported from the model (cached by weights' hash)."""
    if spec.onnx_path:
        if not Path(spec.onnx_path).is_file():
            raise BackendError(f"ONNX file not found: {spec.onnx_path}")
        return spec.onnx_path
    from sctranslator.export import export_onnx
    from sctranslator.model.identity import model_fingerprint

    cache = Path(spec.onnx_cache_dir or os.environ.get("SCTRANSLATOR_CACHE", Path.home() / ".cache" / "sctranslator"))
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"model-{model_fingerprint(model)[:16]}-{spec.precision}.onnx"
    if not path.exists():  # export_onnx validates, then moves the file into place atomically
        log.info("exporting the model to ONNX (%s), cached at %s", spec.precision, path)
        export_onnx(model, path, precision=spec.precision)
    return str(path)


def create_backend(spec: BackendSpec) -> Backend:
    if spec.kind == "torch":
        if spec.threads:
            torch.set_num_threads(spec.threads)
        return TorchBackend(spec.load_model(), spec.device)
    if spec.kind == "onnxruntime":
        return OnnxRuntimeBackend(onnx_file_for(spec, spec.load_model()), spec.device, spec.threads)
    if spec.kind == "triton":
        from sctranslator.engine.triton_backend import TritonBackend

        return TritonBackend.from_spec(spec)
    raise BackendError(f"unknown backend {spec.kind!r}; choose one of {BACKENDS}")


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
    with _BACKENDS_LOCK:
        for backend in _BACKENDS.values():
            backend.close()
        _BACKENDS.clear()
