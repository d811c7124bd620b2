"""The `onnxruntime` backend: an export's encoder and decoder graphs on CPU, or with the CUDA / TensorRT providers.

Per batch: the token layout of its gene layout (padding collapsed; built once per layout), the
encoder graph once, then the decoder graph once per protein window on that one translation.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sctranslator.engine.backends.base import BackendSpec, Batch, no_embeddings
from sctranslator.engine.backends.capabilities import BackendCapabilities
from sctranslator.engine.backends.onnx_cache import onnx_file_for
from sctranslator.errors import BackendError
from sctranslator.export.onnx_graphs import SplitGraphs, check_graph
from sctranslator.graph.contract import DECODER, DECODER_FILE_KEY, ENCODER, REEXPORT_HINT
from sctranslator.graph.token_layout import TokenLayout
from sctranslator.options import PRECISIONS

if TYPE_CHECKING:
    from sctranslator.model import TranslatorModel

__all__ = ["OnnxRuntimeBackend", "check_graph"]

# Export metadata keys (export/onnx_format.py, which imports onnx and torch: not needed here)
META_FINGERPRINT, META_PRECISION = "sctranslator.fingerprint", "sctranslator.precision"


def check_export_matches(metadata: dict[str, str], path: str, model: TranslatorModel, precision: str) -> None:
    """Refuse an export made from another model or at another precision.

    Another model's graphs would run without complaint and give that model's numbers.

    Parameters
    ----------
    metadata : dict of str to str
        The encoder graph's metadata.
    path : str
        The export, for the message.
    model : TranslatorModel
        The job's model (its weights' fingerprint is compared).
    precision : str
        The precision asked for.

    Raises
    ------
    BackendError
        The fingerprint or precision differs.
    """
    from sctranslator.model.identity import model_fingerprint

    recorded, expected = metadata.get(META_FINGERPRINT), model_fingerprint(model)
    if recorded != expected:
        raise BackendError(f"{path} was exported from another model (weights fingerprint {str(recorded)[:12]}; the "
                           f"model given has {expected[:12]}): export this model with `sctranslator export onnx "
                           "MODEL --out FILE`, or give the model the file was exported from")
    exported = metadata.get(META_PRECISION)
    if exported != precision:
        raise BackendError(f"{path} computes in {exported}, but --precision {precision} was asked for: pass "
                           f"--precision {exported}, or export the model at {precision}")


class OnnxRuntimeBackend:
    """ONNX Runtime on CPU, or with the CUDA / TensorRT execution providers when present.

    Parameters
    ----------
    onnx_path : str
        The export's encoder graph; its decoder graph is named in its metadata and lies beside it.
    device : str
        "cpu", "cuda" or "cuda:N".
    threads : int or None
        Intra-op threads; None: onnxruntime's default.
    genes : int or None
        The model's L, checked against every batch.
    proteins : int or None
        The model's P, checked against the graphs.
    spinning : bool
        False stops idle intra-op threads from spinning (they take the cores from other processes).

    Raises
    ------
    BackendError
        A graph cannot be loaded or breaks the graph contract (an old single-graph export is named as
        such), or `device` is CUDA without a CUDA provider.
    MissingExtraError
        onnxruntime is not installed.
    """

    name = "onnxruntime"
    capabilities = BackendCapabilities(
        embeddings=False,  # the graphs end at the translation and the predictions
        precisions={"cpu": ("fp32", "fp16"), "cuda": PRECISIONS},  # the CPU provider has no bf16 kernels
        onnx_file=True,
        reduced_precision_warning=(
            "the {precision} ONNX graphs round every activation to {precision} (a graph has no reference cell, "
            "unlike the torch backend): per-protein r against fp32 measured 0.997 (tiny_a, real cells) down to "
            "0.92 (full-size random weights), below the 0.999 the torch backend keeps; see "
            "docs/guide/backends.md, 'Reduced precision'"))
    supports_embeddings = capabilities.embeddings

    def __init__(self, onnx_path: str, device: str = "cpu", threads: int | None = None,
                 genes: int | None = None, proteins: int | None = None, spinning: bool = True):
        """Load both graphs of the export at `onnx_path` and check them (see the class docstring)."""
        from sctranslator.util.optional import import_optional

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
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")

        def session(path: str) -> Any:
            try:
                return ort.InferenceSession(path, sess_options=options, providers=providers)
            except Exception as exc:  # onnxruntime raises its own exception types
                raise BackendError(f"onnxruntime could not load {path}: {exc}") from exc

        encoder = session(onnx_path)
        decoder_file = encoder.get_modelmeta().custom_metadata_map.get(DECODER_FILE_KEY)
        if not decoder_file:
            check_graph(encoder, ENCODER, onnx_path, proteins)  # names an old single-graph export
            raise BackendError(f"{onnx_path} is not the encoder graph of an sctranslator export (its metadata names "
                               f"no decoder graph); {REEXPORT_HINT}")
        decoder_path = Path(onnx_path).parent / decoder_file
        if not decoder_path.is_file():
            raise BackendError(f"{onnx_path} names its decoder graph {decoder_file}, which is not beside it: the "
                               f"two files of an export belong together; {REEXPORT_HINT}")
        decoder = session(str(decoder_path))
        check_graph(encoder, ENCODER, onnx_path, proteins)
        check_graph(decoder, DECODER, str(decoder_path), proteins)
        self.graphs = SplitGraphs(encoder, decoder)
        self.metadata: dict[str, str] = dict(encoder.get_modelmeta().custom_metadata_map)
        self.genes = genes
        self.providers = encoder.get_providers()
        self._layouts: dict[bytes, TokenLayout] = {}

    @classmethod
    def from_spec(cls, spec: BackendSpec) -> OnnxRuntimeBackend:
        """Build the backend for `spec`: its ONNX file, or one exported from its model and cached.

        Parameters
        ----------
        spec : BackendSpec
            The model, device, threads, precision and optional onnx_path.

        Returns
        -------
        OnnxRuntimeBackend
            The backend, its export checked against the model (weights, L, P, precision).

        Raises
        ------
        BackendError
            The export is missing, broken or made from another model.
        """
        model = spec.load_model()
        path = onnx_file_for(spec, model)
        backend = cls(path, spec.device, spec.threads, model.config.max_genes, model.config.max_proteins)
        check_export_matches(backend.metadata, path, model, spec.precision)
        return backend

    def layout_for(self, batch: Batch) -> TokenLayout:
        """The batch's token layout, built once per gene layout and checked against its values.

        A padded-looking position that holds a value in some cell is a token of its own.

        Parameters
        ----------
        batch : Batch
            The model inputs of B cells.

        Returns
        -------
        TokenLayout
            The positions the encoder computes for this batch.
        """
        key = hashlib.sha1(np.ascontiguousarray(batch.gene_ids).tobytes()
                           + np.ascontiguousarray(batch.gene_mask).tobytes()).digest()
        layout = self._layouts.get(key)
        if layout is None:
            if len(self._layouts) > 8:  # a process serves few plans; never grow without bound
                self._layouts.clear()
            layout = self._layouts[key] = TokenLayout.for_layout(batch.gene_ids, batch.gene_mask)
        if not layout.fits(batch.values):
            return TokenLayout.for_layout(batch.gene_ids, batch.gene_mask, batch.values)  # this batch only
        return layout

    def predict(self, batch: Batch) -> np.ndarray:
        """Predict a batch: the encoder once, the decoder once per protein window.

        Parameters
        ----------
        batch : Batch
            The model inputs of B cells.

        Returns
        -------
        numpy.ndarray
            float32 ``(B, W * P)`` predictions.

        Raises
        ------
        BackendError
            The batch's L differs from the graph's.
        """
        if self.genes is not None and batch.values.shape[1] != self.genes:
            raise BackendError(f"the batch has L={batch.values.shape[1]} genes per cell; the graph takes "
                               f"L={self.genes}")
        layout = self.layout_for(batch)
        return self.graphs.predict(layout, batch.values, batch.gene_ids, batch.gene_mask,
                                   batch.protein_ids.reshape(1, -1), batch.protein_mask.reshape(1, -1))

    def predict_with_embeddings(self, batch: Batch, embeddings: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictions and, when asked, cell embeddings (this backend has none).

        Parameters
        ----------
        batch : Batch
            The model inputs of B cells.
        embeddings : bool
            Whether embeddings are asked for; this backend refuses them.

        Returns
        -------
        tuple of (numpy.ndarray, None)
            The predictions, float32 ``(B, W * P)``, and None.

        Raises
        ------
        BackendError
            `embeddings` is True.
        """
        return no_embeddings(self, batch, embeddings)

    def close(self) -> None:
        """Drop the onnxruntime sessions."""
        self.graphs = None  # type: ignore[assignment]
