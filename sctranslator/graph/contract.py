"""The graph contract: the tensors an exported sctranslator model takes and returns, in tables.

The client-facing contract (the Triton `sctranslator` model's IO, and what a backend's Batch
expands to) takes five inputs and returns one output, all with a leading batch axis of B cells
and a second axis of L genes or P proteins (one protein window; the Triton model also takes
several windows at once, a protein axis of any multiple of P):

    name          numpy    ONNX    Triton  shape
    values        float32  FLOAT   FP32    (B, L)  model values, 0 at padded genes
    gene_ids      int64    INT64   INT64   (B, L)  gene token ids, 0 at padding
    gene_mask     bool     BOOL    BOOL    (B, L)  True at real genes
    protein_ids   int64    INT64   INT64   (B, P)  protein token ids, 0 at padding
    protein_mask  bool     BOOL    BOOL    (B, P)  True at real proteins
    predictions   float32  FLOAT   FP32    (B, P)  output, float32 for every compute precision

An export writes two graphs behind that contract (ENCODER, DECODER below; see model/graphs.py):
the encoder + translator over a collapsed token layout of N tokens (sctranslator.graph.token_layout),
run once per cell, and the decoder, run once per protein window on the encoder's translation:

    encoder  values (B, N) f32, gene_ids (B, N) i64, gene_mask (B, N) bool, token_counts (N,) f32,
             token_positions (N,) i64  ->  translated (B, P, dim) f32
    decoder  translated (B, P, dim) f32, protein_ids (B, P) i64, protein_mask (B, P) bool
             ->  predictions (B, P) f32

B and N are dynamic; P and dim are fixed by the model. token_counts and token_positions describe
one layout shared by every cell of a call.

The exporter, the ONNX validation, the Triton configuration writer and the engine's backends
all read this table. It imports neither torch nor onnx, so the engine (and a Triton client)
can use it cheaply. The Triton Python-backend model (triton_python_model.py) cannot import the
package inside Triton: it reads the same facts from the model configuration written from this
table, and a test keeps the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BATCH_AXIS = "batch"  # the name of the batch axis in every graph
TOKENS_AXIS = "tokens"  # the encoder graph's token axis N (dynamic: one layout's token count)
GENES = "L"
PROTEINS = "P"
DIM = "dim"  # the model width, the translated sequence's last axis

# The encoder file's metadata key naming its decoder file beside it (onnx_format.py holds the other
# keys; this one is here so that runtimes find the decoder without importing torch or onnx).
DECODER_FILE_KEY = "sctranslator.decoder_file"
REEXPORT_HINT = "re-export it with this sctranslator: sctranslator export onnx MODEL --out FILE"

# Compute precisions an export may use; graph IO stays as in the table for each of them.
PRECISION_NAMES = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the client graph contract: name, element type in each runtime's spelling, second axis.

    Parameters
    ----------
    name : str
        The tensor's name.
    dtype : type
        Its numpy element type.
    onnx_type : str
        Its ONNX element type.
    triton_type : str
        Its Triton element type.
    axis : str
        What its second axis counts: genes (L) or proteins (P).
    """

    name: str
    dtype: type[np.generic]  # numpy scalar type
    onnx_type: str  # onnx.TensorProto.DataType name
    triton_type: str  # Triton's datatype string (model metadata, InferInput); config enum is TYPE_<this>
    axis: str  # GENES or PROTEINS: the width of the second axis

    @property
    def triton_config_type(self) -> str:
        """The Triton model-configuration enum name (config.pbtxt's data_type), e.g. TYPE_FP32."""
        return f"TYPE_{self.triton_type}"

    def width(self, genes: int, proteins: int) -> int:
        """The second axis' length for a model with L = `genes` and P = `proteins`.

        Parameters
        ----------
        genes : int
            L.
        proteins : int
            P.

        Returns
        -------
        int
            L or P.
        """
        return genes if self.axis == GENES else proteins

    def shape(self, batch: int, genes: int, proteins: int) -> tuple[int, int]:
        """The tensor's shape for a batch.

        Parameters
        ----------
        batch : int
            Cells, B.
        genes : int
            L.
        proteins : int
            P.

        Returns
        -------
        tuple of int
            ``(B, L)`` or ``(B, P)``.
        """
        return batch, self.width(genes, proteins)


INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("values", np.float32, "FLOAT", "FP32", GENES),
    TensorSpec("gene_ids", np.int64, "INT64", "INT64", GENES),
    TensorSpec("gene_mask", np.bool_, "BOOL", "BOOL", GENES),
    TensorSpec("protein_ids", np.int64, "INT64", "INT64", PROTEINS),
    TensorSpec("protein_mask", np.bool_, "BOOL", "BOOL", PROTEINS),
)
OUTPUT = TensorSpec("predictions", np.float32, "FLOAT", "FP32", PROTEINS)

INPUT_NAMES: tuple[str, ...] = tuple(tensor.name for tensor in INPUTS)
OUTPUT_NAME = OUTPUT.name
TENSORS: dict[str, TensorSpec] = {tensor.name: tensor for tensor in (*INPUTS, OUTPUT)}


@dataclass(frozen=True)
class GraphTensor:
    """One tensor of the encoder or decoder graph: name, element type per runtime, and its axes.

    Parameters
    ----------
    name : str
        The tensor's name.
    dtype : type
        Its numpy element type.
    onnx_type : str
        Its ONNX element type.
    triton_type : str
        Its Triton element type.
    axes : tuple of str
        Each dimension's name: BATCH_AXIS and TOKENS_AXIS are dynamic, PROTEINS and DIM are fixed by
        the model (P, dim).
    """

    name: str
    dtype: type[np.generic]
    onnx_type: str
    triton_type: str
    axes: tuple[str, ...]

    @property
    def triton_config_type(self) -> str:
        """The element type as a Triton config.pbtxt spells it (TYPE_FP32, ...)."""
        return f"TYPE_{self.triton_type}"

    def dims(self, proteins: int, dim: int) -> list[int | str]:
        """The shape as ONNX declares it: dynamic axes by name, P and dim as numbers.

        Parameters
        ----------
        proteins : int
            P.
        dim : int
            The model's embedding width.

        Returns
        -------
        list of int or str
            One entry per axis.
        """
        sizes: dict[str, int | str] = {PROTEINS: proteins, DIM: dim}
        return [sizes.get(axis, axis) for axis in self.axes]

    def dynamic_axes(self) -> dict[int, str]:
        """The dynamic axes (batch, tokens), for the exporter.

        Returns
        -------
        dict of int to str
            Axis index -> name.
        """
        return {i: axis for i, axis in enumerate(self.axes) if axis in (BATCH_AXIS, TOKENS_AXIS)}


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph: its role and its tensors in order.

    Parameters
    ----------
    role : str
        "encoder" or "decoder".
    inputs : tuple of GraphTensor
        The graph's inputs, in order.
    outputs : tuple of GraphTensor
        The graph's outputs, in order.
    """

    role: str  # "encoder" or "decoder"
    inputs: tuple[GraphTensor, ...]
    outputs: tuple[GraphTensor, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        """The inputs' names, in order."""
        return tuple(tensor.name for tensor in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        """The outputs' names, in order."""
        return tuple(tensor.name for tensor in self.outputs)


TRANSLATED = GraphTensor("translated", np.float32, "FLOAT", "FP32", (BATCH_AXIS, PROTEINS, DIM))
ENCODER = GraphSpec("encoder", (
    GraphTensor("values", np.float32, "FLOAT", "FP32", (BATCH_AXIS, TOKENS_AXIS)),
    GraphTensor("gene_ids", np.int64, "INT64", "INT64", (BATCH_AXIS, TOKENS_AXIS)),
    GraphTensor("gene_mask", np.bool_, "BOOL", "BOOL", (BATCH_AXIS, TOKENS_AXIS)),
    GraphTensor("token_counts", np.float32, "FLOAT", "FP32", (TOKENS_AXIS,)),
    GraphTensor("token_positions", np.int64, "INT64", "INT64", (TOKENS_AXIS,)),
), (TRANSLATED,))
DECODER = GraphSpec("decoder", (
    TRANSLATED,
    GraphTensor("protein_ids", np.int64, "INT64", "INT64", (BATCH_AXIS, PROTEINS)),
    GraphTensor("protein_mask", np.bool_, "BOOL", "BOOL", (BATCH_AXIS, PROTEINS)),
), (GraphTensor(OUTPUT_NAME, np.float32, "FLOAT", "FP32", (BATCH_AXIS, PROTEINS)),))
GRAPHS: dict[str, GraphSpec] = {graph.role: graph for graph in (ENCODER, DECODER)}
