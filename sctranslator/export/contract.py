"""The graph contract: the tensors an exported sctranslator model takes and returns, in one table.

Every exported graph (ONNX file, Triton model) takes five inputs and returns one output, all with
a leading batch axis of B cells and a second axis of L genes or P proteins (one protein window):

    name          numpy    ONNX    Triton  shape
    values        float32  FLOAT   FP32    (B, L)  model values, 0 at padded genes
    gene_ids      int64    INT64   INT64   (B, L)  gene token ids, 0 at padding
    gene_mask     bool     BOOL    BOOL    (B, L)  True at real genes
    protein_ids   int64    INT64   INT64   (B, P)  protein token ids, 0 at padding
    protein_mask  bool     BOOL    BOOL    (B, P)  True at real proteins
    predictions   float32  FLOAT   FP32    (B, P)  output, float32 for every compute precision

The exporter, the ONNX validation, the Triton configuration writer and the engine's backends
all read this table. It imports neither torch nor onnx, so the engine (and a Triton client)
can use it cheaply. The Triton Python-backend model (triton_python_model.py) cannot import the
package inside Triton: it reads the same facts from the model configuration written from this
table, and a test keeps the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BATCH_AXIS = "batch"  # the name of the graph's one dynamic axis
GENES = "L"
PROTEINS = "P"

# Compute precisions an export may use; graph IO stays as in the table for each of them.
PRECISION_NAMES = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class TensorSpec:
    """One graph tensor: name, element type in each runtime's spelling, and its second axis."""

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
        """The second axis' length for a model with L = `genes` and P = `proteins`."""
        return genes if self.axis == GENES else proteins

    def shape(self, batch: int, genes: int, proteins: int) -> tuple[int, int]:
        """(batch, L) or (batch, P)."""
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
