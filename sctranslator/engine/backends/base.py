"""What every backend shares, without torch: the Batch, the picklable BackendSpec, the Backend protocol.

This module must stay importable without torch (a Triton-only client never needs it): the model
type is named for type checkers only and the model is loaded lazily by `BackendSpec.load_model`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from sctranslator.engine.backends.capabilities import BackendCapabilities
from sctranslator.errors import BackendError
from sctranslator.graph.contract import INPUTS, PROTEINS

if TYPE_CHECKING:
    from sctranslator.model import TranslatorModel


@dataclass
class Batch:
    """Model inputs for a batch of B cells; the gene and protein rows are shared by every cell.

    Parameters
    ----------
    values : numpy.ndarray
        float32 ``(B, L)``: each cell's prepared expression values in the model's gene order.
    gene_ids : numpy.ndarray
        int64 ``(L,)``: the gene token at each position (0 = padding).
    gene_mask : numpy.ndarray
        bool ``(L,)``: which positions hold a real gene.
    protein_ids : numpy.ndarray
        int64 ``(W, P)``: the protein tokens, one row per protein window of P.
    protein_mask : numpy.ndarray
        bool ``(W, P)``: which protein positions are real.
    """

    values: np.ndarray  # float32 (B, L)
    gene_ids: np.ndarray  # int64 (L,)
    gene_mask: np.ndarray  # bool (L,)
    protein_ids: np.ndarray  # int64 (W, P): one row per protein window
    protein_mask: np.ndarray  # bool (W, P)

    def expanded(self, window: int) -> dict[str, np.ndarray]:
        """The graph's inputs for one protein window, as ONNX and Triton models take them.

        Parameters
        ----------
        window : int
            Which protein window (row of `protein_ids`).

        Returns
        -------
        dict of str to numpy.ndarray
            Input name -> C-contiguous array of the graph contract's dtype: ``(B, L)`` for the gene
            inputs, ``(B, P)`` for the protein inputs.
        """
        batch, genes = self.values.shape
        proteins = self.protein_ids.shape[1]
        arrays = {}
        for tensor in INPUTS:  # Batch's fields are named after the graph inputs
            row = getattr(self, tensor.name)
            if tensor.axis == PROTEINS:
                row = row[window]
            shape = tensor.shape(batch, genes, proteins)
            arrays[tensor.name] = np.ascontiguousarray(np.broadcast_to(row, shape), dtype=tensor.dtype)
        return arrays


    def all_windows(self) -> dict[str, np.ndarray]:
        """The contract's inputs with every protein window side by side, for one Triton request.

        Returns
        -------
        dict of str to numpy.ndarray
            Input name -> array: ``(B, L)`` for the gene inputs, ``(B, W * P)`` for the protein inputs
            (the Triton ``sctranslator`` model takes a protein axis of any multiple of P).
        """
        arrays = self.expanded(0)
        batch = self.values.shape[0]
        for name in ("protein_ids", "protein_mask"):
            row = getattr(self, name).reshape(-1)
            arrays[name] = np.ascontiguousarray(np.broadcast_to(row, (batch, row.shape[0])), dtype=arrays[name].dtype)
        return arrays


class Backend(Protocol):
    """One inference runtime, built once per worker process from a BackendSpec and shared by its threads.

    Attributes
    ----------
    name : str
        The backend's name ("torch", "onnxruntime", "triton").
    capabilities : BackendCapabilities
        What it declares it can do; the engine asks this before building it.
    supports_embeddings : bool
        ``capabilities.embeddings``: whether `predict_with_embeddings` can return cell embeddings.
    """

    name: str
    # What it can do (embeddings, devices, precisions, options ...), asked by the engine before it is built.
    capabilities: BackendCapabilities
    # capabilities.embeddings: whether predict_with_embeddings can return cell embeddings.
    supports_embeddings: bool

    def predict(self, batch: Batch) -> np.ndarray:
        """Predict the proteins of a batch of cells.

        Parameters
        ----------
        batch : Batch
            The model inputs of B cells.

        Returns
        -------
        numpy.ndarray
            float32 ``(B, W * P)``: the predictions, protein windows concatenated in order, on the
            model's target scale.
        """
        ...

    def predict_with_embeddings(self, batch: Batch, embeddings: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Predict a batch's proteins and, with `embeddings`, the cells' embeddings.

        Parameters
        ----------
        batch : Batch
            The model inputs of B cells.
        embeddings : bool
            Also return each cell's embedding.

        Returns
        -------
        tuple of (numpy.ndarray, numpy.ndarray or None)
            The predictions, float32 ``(B, W * P)``, and the embeddings, float32 ``(B, dim)``, or None
            without `embeddings`.

        Raises
        ------
        BackendError
            `embeddings` is asked of a backend whose `supports_embeddings` is False.
        """
        ...

    def close(self) -> None:
        """Release the runtime's sessions, clients and threads."""
        ...


def no_embeddings(backend: Backend, batch: Batch, embeddings: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """`predict_with_embeddings` for backends without embeddings: predictions only.

    Parameters
    ----------
    backend : Backend
        The backend.
    batch : Batch
        The model inputs.
    embeddings : bool
        Whether embeddings are asked for.

    Returns
    -------
    tuple of (numpy.ndarray, None)
        The predictions ``(B, W * P)`` and None.

    Raises
    ------
    BackendError
        `embeddings` is True.
    """
    if embeddings:
        raise BackendError(f"the {backend.name} backend cannot return cell embeddings: they come from the encoder's "
                           "outputs, which only the torch backend exposes; use --backend torch with --embeddings")
    return backend.predict(batch), None


@dataclass
class BackendSpec:
    """Everything needed to build a backend in any process (picklable).

    Parameters
    ----------
    kind : str
        The backend: "torch", "onnxruntime" or "triton".
    model : str or TranslatorModel or None
        A model path or name, or an in-memory model (local runs only).
    device : str
        "cpu", "cuda" or "cuda:N".
    onnx_path : str or None
        onnxruntime: run this export instead of exporting the model.
    onnx_cache_dir : str or None
        Where on-demand ONNX exports are cached (default $SCTRANSLATOR_CACHE, else
        ~/.cache/sctranslator).
    precision : str
        Compute dtype: "fp32", "fp16" or "bf16".
    threads : int or None
        Intra-op threads per backend; None: the runtime's default.
    options : dict
        Backend-specific settings (triton: url, model_name, protocol, ...).
    """

    kind: str = "torch"
    model: str | TranslatorModel | None = None  # a path, or an in-memory model (local runs)
    device: str = "cpu"
    onnx_path: str | None = None  # onnxruntime: use this file instead of exporting
    onnx_cache_dir: str | None = None
    precision: str = "fp32"
    threads: int | None = None  # intra-op threads per backend
    options: dict[str, Any] = field(default_factory=dict)  # backend-specific (triton url, ...)

    def key(self) -> str:
        """A hash that is equal for specs that build the same backend (the per-process cache key).

        Returns
        -------
        str
            A hex SHA-1 digest.
        """
        model_key = self.model if isinstance(self.model, str) else f"memory:{id(self.model)}"
        text = repr((self.kind, model_key, self.device, self.onnx_path, self.precision, self.threads,
                     sorted(self.options.items())))
        return hashlib.sha1(text.encode()).hexdigest()

    def load_model(self) -> TranslatorModel:
        """The model: the in-memory one as is, or loaded on CPU from its path (this imports torch).

        Returns
        -------
        TranslatorModel
            The model, in evaluation mode.

        Raises
        ------
        BackendError
            No model was given.
        CheckpointError
            The path is not a readable model.
        """
        if self.model is None:
            raise BackendError("no model given to the backend")
        from sctranslator.model import TranslatorModel, load_model

        if isinstance(self.model, TranslatorModel):
            return self.model
        return load_model(self.model, device="cpu")
