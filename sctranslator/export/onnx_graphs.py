"""Run an export's two graphs the way every runtime does: the encoder once per batch, the decoder per window.

Shared by the export's validation, the onnxruntime backend and (in spirit; it cannot import this
package) the Triton BLS model. numpy only, no torch and no onnx: the sessions are passed in
(onnxruntime.InferenceSession or anything with the same `run`, `get_inputs`, `get_outputs`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sctranslator.errors import BackendError
from sctranslator.graph.contract import DECODER, ENCODER, REEXPORT_HINT, GraphSpec
from sctranslator.graph.token_layout import TokenLayout

_LEGACY_INPUTS = {"values", "gene_ids", "gene_mask", "protein_ids", "protein_mask"}


def check_graph(session: Any, spec: GraphSpec, path: str, proteins: int | None = None,
                dim: int | None = None) -> None:
    """Refuse a session whose graph lacks `spec`'s tensors (graph/contract.py ENCODER / DECODER).

    Checks names, element types, ranks and the fixed axes P and dim, and names the likely cause: an
    old single-graph export, or the other graph of the pair.

    Parameters
    ----------
    session : onnxruntime.InferenceSession
        The loaded graph.
    spec : GraphSpec
        What it must be.
    path : str
        Its file, for the message.
    proteins : int or None
        The model's P; None: not checked.
    dim : int or None
        The model's dim; None: not checked.

    Raises
    ------
    BackendError
        The graph breaks the contract.
    """
    found = {arg.name: arg for arg in [*session.get_inputs(), *session.get_outputs()]}
    if spec is ENCODER and set(found) >= _LEGACY_INPUTS and "token_counts" not in found:
        raise BackendError(f"{path} is a single-graph export from an earlier sctranslator version (it takes the "
                           f"five whole-model inputs); this version runs an encoder and a decoder graph: "
                           f"{REEXPORT_HINT}")
    problems = []
    for tensor in (*spec.inputs, *spec.outputs):
        arg = found.get(tensor.name)
        expected_type = f"tensor({tensor.onnx_type.lower()})"  # onnxruntime's spelling, e.g. tensor(float)
        if arg is None:
            problems.append(f"no tensor {tensor.name!r}")
            continue
        if arg.type != expected_type:
            problems.append(f"{tensor.name} is {arg.type}, expected {expected_type}")
        if len(arg.shape) != len(tensor.axes):
            problems.append(f"{tensor.name} has shape {arg.shape}, expected ({', '.join(tensor.axes)})")
            continue
        for size, wanted, axis in zip(arg.shape, tensor.dims(proteins or -1, dim or -1), tensor.axes, strict=True):
            if isinstance(wanted, int) and wanted > 0 and isinstance(size, int) and size != wanted:
                problems.append(f"{tensor.name} has {axis}={size}, the model has {axis}={wanted}")
    if problems:
        raise BackendError(f"{path} is not the {spec.role} graph of an sctranslator export for this model: "
                           + "; ".join(problems) + f". Its tensors: {sorted(found)}. {REEXPORT_HINT[0].upper()}"
                           + REEXPORT_HINT[1:] + ".")


class SplitGraphs:
    """An export's encoder and decoder sessions, and how a batch runs through them.

    Parameters
    ----------
    encoder : onnxruntime.InferenceSession
        The encoder + translator graph.
    decoder : onnxruntime.InferenceSession
        The decoder graph.
    """

    def __init__(self, encoder: Any, decoder: Any):
        self.encoder = encoder
        self.decoder = decoder

    def encode(self, layout: TokenLayout, values: np.ndarray, gene_ids: np.ndarray,
               gene_mask: np.ndarray) -> np.ndarray:
        """Run the encoder + translator graph on one batch of one gene layout.

        Parameters
        ----------
        layout : TokenLayout
            The batch's token layout.
        values : numpy.ndarray
            float32 ``(B, L)``.
        gene_ids : numpy.ndarray
            int64 ``(L,)`` or ``(B, L)``.
        gene_mask : numpy.ndarray
            bool ``(L,)`` or ``(B, L)``.

        Returns
        -------
        numpy.ndarray
            float32 translated sequence ``(B, P, dim)``.
        """
        feed = layout.encoder_inputs(values, gene_ids, gene_mask)
        return self.encoder.run([ENCODER.output_names[0]], feed)[0]

    def decode(self, translated: np.ndarray, protein_ids: np.ndarray, protein_mask: np.ndarray) -> np.ndarray:
        """Run the decoder graph for one window of P proteins.

        Parameters
        ----------
        translated : numpy.ndarray
            float32 ``(B, P, dim)`` from `encode`.
        protein_ids : numpy.ndarray
            int64 ``(P,)`` or ``(B, P)``.
        protein_mask : numpy.ndarray
            bool ``(P,)`` or ``(B, P)``.

        Returns
        -------
        numpy.ndarray
            float32 predictions ``(B, P)``.
        """
        batch, proteins = translated.shape[0], translated.shape[1]
        feed = {"translated": translated,
                "protein_ids": np.ascontiguousarray(np.broadcast_to(protein_ids, (batch, proteins)), dtype=np.int64),
                "protein_mask": np.ascontiguousarray(np.broadcast_to(protein_mask, (batch, proteins)), dtype=np.bool_)}
        return self.decoder.run([DECODER.output_names[0]], feed)[0]

    def predict(self, layout: TokenLayout, values: np.ndarray, gene_ids: np.ndarray, gene_mask: np.ndarray,
                protein_ids: np.ndarray, protein_mask: np.ndarray) -> np.ndarray:
        """Predict a batch: the encoder once, then the decoder per window of P proteins.

        Parameters
        ----------
        layout : TokenLayout
            The batch's token layout.
        values : numpy.ndarray
            float32 ``(B, L)``.
        gene_ids : numpy.ndarray
            int64 ``(L,)`` or ``(B, L)``.
        gene_mask : numpy.ndarray
            bool ``(L,)`` or ``(B, L)``.
        protein_ids : numpy.ndarray
            int64 ``(B, W * P)`` per cell, or ``(1, W * P)`` shared by the batch (a ``(W, P)`` table of
            windows reshaped to one row).
        protein_mask : numpy.ndarray
            bool, the shape of `protein_ids`.

        Returns
        -------
        numpy.ndarray
            float32 ``(B, W * P)``.
        """
        translated = self.encode(layout, values, gene_ids, gene_mask)
        proteins = translated.shape[1]
        protein_ids = np.atleast_2d(protein_ids)
        protein_mask = np.atleast_2d(protein_mask)
        if protein_ids.shape[-1] % proteins or protein_ids.shape != protein_mask.shape:
            raise BackendError(f"protein_ids {protein_ids.shape} and protein_mask {protein_mask.shape} must agree "
                               f"and hold a multiple of P={proteins} proteins per row")
        outputs = [self.decode(translated, protein_ids[:, lo:lo + proteins], protein_mask[:, lo:lo + proteins])
                   for lo in range(0, protein_ids.shape[1], proteins)]
        return np.concatenate(outputs, axis=1).astype(np.float32, copy=False)
