"""Check an export's two ONNX graphs, composed, against the PyTorch model they came from, in onnxruntime."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sctranslator.errors import BackendError, ExportError, ExportValidationError
from sctranslator.export.onnx_format import META_DECODER_FILE, REEXPORT_HINT, TOLERANCES, check_precision
from sctranslator.export.onnx_graphs import SplitGraphs, check_graph
from sctranslator.graph.contract import DECODER, ENCODER, INPUT_NAMES, INPUTS
from sctranslator.model.config import ModelConfig
from sctranslator.model.network import TranslatorModel
from sctranslator.util.optional import import_optional

# Validation runs the graph in onnxruntime: either wheel (CPU or GPU) provides the module.
ort = import_optional("onnxruntime", "cpu", "validating ONNX exports (or sctranslator[gpu] on CUDA)")

BF16_ON_CPU_MESSAGE = (
    "onnxruntime's CPU execution provider has no bfloat16 kernels (MatMul, LayerNormalization...), so a bf16 "
    "model cannot run there; run it on a GPU execution provider (CUDAExecutionProvider or "
    "TensorrtExecutionProvider), export fp16 or fp32 for CPU, or pass validate=False to write it unchecked"
)


@dataclass(frozen=True)
class ValidationResult:
    """How far onnxruntime's predictions are from the float32 PyTorch model's on one batch.

    Parameters
    ----------
    label : str
        Which batch (e.g. "random, padded").
    precision : str
        The graphs' compute dtype, which sets the tolerance.
    batch_size : int
        Cells in the batch.
    max_abs_error : float
        ``max |onnx - torch|``, on the model's output scale.
    max_rel_error : float
        ``max |onnx - torch| / max |torch|``.
    tolerance : float
        The largest relative error that passes for this precision.
    """

    label: str
    precision: str
    batch_size: int
    max_abs_error: float
    max_rel_error: float  # max|onnx - torch| / max|torch|
    tolerance: float

    @property
    def passed(self) -> bool:
        """Whether the relative error is finite and within the tolerance."""
        return bool(np.isfinite(self.max_rel_error)) and self.max_rel_error <= self.tolerance

    def __str__(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        return (f"{self.label} (batch {self.batch_size}, {self.precision}): max abs error {self.max_abs_error:.3g}, "
                f"max relative error {self.max_rel_error:.3g} (tolerance {self.tolerance:g}) {verdict}")

    def check(self) -> ValidationResult:
        """Refuse a result above the tolerance.

        Returns
        -------
        ValidationResult
            This result, when it passed.

        Raises
        ------
        ExportValidationError
            The error is above the tolerance (or not finite).
        """
        if not self.passed:
            raise ExportValidationError(f"ONNX predictions differ from PyTorch: {self}")
        return self


def random_inputs(config: ModelConfig, batch_size: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    """A realistic random batch: values in [1e-8, 1], token ids in [1, vocab), padded tails.

    The first cell is unpadded; the others keep a random length of at least half of L (and P),
    with padded positions set to id 0 and value 0 as the engine pads them.

    Parameters
    ----------
    config : ModelConfig
        The model's sizes (L, P, vocabulary).
    batch_size : int
        Cells, B.
    seed : int
        Seed of the draw.

    Returns
    -------
    dict of str to numpy.ndarray
        The five client-contract inputs: values float32 ``(B, L)``, gene_ids int64 ``(B, L)``,
        gene_mask bool ``(B, L)``, protein_ids int64 ``(B, P)``, protein_mask bool ``(B, P)``.
    """
    rng = np.random.default_rng(seed)
    genes, proteins = config.max_genes, config.max_proteins

    def mask(length: int) -> np.ndarray:
        kept = rng.integers(length // 2, length + 1, size=batch_size)
        kept[0] = length
        return np.arange(length)[None, :] < kept[:, None]

    gene_mask, protein_mask = mask(genes), mask(proteins)
    values = rng.uniform(1e-8, 1.0, size=(batch_size, genes)).astype(np.float32)
    gene_ids = rng.integers(1, config.vocab_size, size=(batch_size, genes), dtype=np.int64)
    protein_ids = rng.integers(1, config.vocab_size, size=(batch_size, proteins), dtype=np.int64)
    return {"values": np.where(gene_mask, values, np.float32(0)), "gene_ids": np.where(gene_mask, gene_ids, 0),
            "gene_mask": gene_mask, "protein_ids": np.where(protein_mask, protein_ids, 0),
            "protein_mask": protein_mask}


def normalize_inputs(inputs: dict[str, np.ndarray], config: ModelConfig) -> dict[str, np.ndarray]:
    """The five graph inputs with the graph's dtypes; missing masks mean "no padding".

    Parameters
    ----------
    inputs : dict of str to numpy.ndarray
        The five client-contract inputs of B cells (masks optional).
    config : ModelConfig
        The model's sizes.

    Returns
    -------
    dict of str to numpy.ndarray
        All five inputs, C-contiguous.
    """
    missing = [name for name in ("values", "gene_ids", "protein_ids") if name not in inputs]
    if missing:
        raise ExportError(f"validation inputs lack {missing}; expected keys {list(INPUT_NAMES)}")
    batch = np.asarray(inputs["values"]).shape[0]
    normalized = {}
    for tensor in INPUTS:
        shape = tensor.shape(batch, config.max_genes, config.max_proteins)
        array = inputs.get(tensor.name)
        if array is None:  # only masks can be absent here
            array = np.ones(shape, dtype=bool)
        array = np.ascontiguousarray(np.asarray(array), dtype=tensor.dtype)
        if array.shape != shape:
            raise ExportError(f"validation input {tensor.name} has shape {array.shape}; the model needs "
                              f"{shape} (batch, {tensor.axis})")
        normalized[tensor.name] = array
    return normalized


def default_providers(precision: str = "fp32") -> list[str]:
    """The onnxruntime execution providers to validate with: CPU, except bf16 prefers CUDA when available.

    Parameters
    ----------
    precision : str
        The graphs' compute dtype.

    Returns
    -------
    list of str
        Provider names, in order of preference.
    """
    if precision == "bf16" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def create_session(path: str | Path, *, providers: list[str] | None = None,
                   threads: int | None = None, precision: str = "fp32",
                   display_name: str | None = None, arena: bool = True) -> ort.InferenceSession:
    """An onnxruntime session with every graph optimisation and one intra-op thread per core.

    Parameters
    ----------
    path : str or pathlib.Path
        An ONNX file.
    providers : list of str or None
        Execution providers; None: CPU (CUDA first for bf16 when available).
    threads : int or None
        Intra-op threads; None: one per core.
    precision : str
        The graph's compute dtype (bf16 on CPU gets its own error message).
    display_name : str or None
        The name of the file in error messages (export validates a staged copy).
    arena : bool
        onnxruntime's CPU memory arena, which keeps its largest run's memory for later runs.

    Returns
    -------
    onnxruntime.InferenceSession
        The loaded session.

    Raises
    ------
    ExportError
        onnxruntime cannot load the file with these providers (bf16 on the CPU provider among them).
    """
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = arena
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    providers = providers or default_providers(precision)
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        if precision == "bf16" and providers == ["CPUExecutionProvider"]:
            raise ExportError(f"{display_name or path}: {BF16_ON_CPU_MESSAGE} ({exc})") from exc
        raise ExportError(f"onnxruntime cannot load {display_name or path} with {providers}: {exc}") from exc


def create_graphs(path: str | Path, *, providers: list[str] | None = None, threads: int | None = None,
                  precision: str = "fp32", display_name: str | None = None, arena: bool = True) -> SplitGraphs:
    """Sessions for an export's encoder (`path`) and decoder (named in `path`'s metadata, beside it).

    Parameters
    ----------
    path : str or pathlib.Path
        The encoder's file.
    providers : list of str or None
        Execution providers; None: `default_providers`.
    threads : int or None
        Intra-op threads per session.
    precision : str
        The graphs' compute dtype.
    display_name : str or None
        The file's name in error messages.
    arena : bool
        onnxruntime's CPU memory arena.

    Returns
    -------
    SplitGraphs
        Both sessions.

    Raises
    ------
    ExportError
        Either graph cannot be loaded, or `path` is not an encoder graph of this format (an old
        single-graph export says so).
    """
    name = display_name or str(path)
    encoder = create_session(path, providers=providers, threads=threads, precision=precision, display_name=name,
                             arena=arena)
    meta = encoder.get_modelmeta().custom_metadata_map  # read from the session: no second parse of the file
    decoder_file = meta.get(META_DECODER_FILE)
    if not decoder_file:
        try:
            check_graph(encoder, ENCODER, name)
        except BackendError as exc:  # names the old single-graph format
            raise ExportError(str(exc)) from exc
        raise ExportError(f"{name} names no decoder graph in its metadata; {REEXPORT_HINT}")
    decoder_path = Path(path).parent / decoder_file
    if not decoder_path.is_file():
        raise ExportError(f"{name} names its decoder graph {decoder_file}, which is not beside it; {REEXPORT_HINT}")
    decoder_name = str(Path(name).parent / decoder_file)
    decoder = create_session(decoder_path, providers=providers, threads=threads, precision=precision,
                             display_name=decoder_name, arena=arena)
    try:
        check_graph(encoder, ENCODER, name)
        check_graph(decoder, DECODER, decoder_name)
    except BackendError as exc:
        raise ExportError(str(exc)) from exc
    return SplitGraphs(encoder, decoder)


@torch.inference_mode()
def torch_predictions(model: TranslatorModel, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The PyTorch model's predictions as float32 numpy, in eval mode, uncollapsed: the reference.

    Runs cell by cell: the reference's memory stays one cell's (a full-size cell's attention features
    are ~0.2 GB per tensor), and the model's output does not depend on the batch.

    Parameters
    ----------
    model : TranslatorModel
        The model.
    inputs : dict of str to numpy.ndarray
        The five client-contract inputs of B cells (masks optional).

    Returns
    -------
    numpy.ndarray
        float32 ``(B, P)``.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows = []
    try:
        for cell in range(inputs["values"].shape[0]):
            tensors = {name: torch.from_numpy(array[cell:cell + 1]).to(device) for name, array in inputs.items()}
            rows.append(model(tensors["values"], tensors["gene_ids"], tensors["protein_ids"],
                              tensors["gene_mask"], tensors["protein_mask"]).float().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(rows, axis=0)


def onnx_predictions(graphs: SplitGraphs, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The two graphs' predictions for client-contract inputs.

    The token layout is collapsed when every cell shares one gene layout, the full layout otherwise.

    Parameters
    ----------
    graphs : SplitGraphs
        The sessions.
    inputs : dict of str to numpy.ndarray
        The five client-contract inputs of B cells (masks optional).

    Returns
    -------
    numpy.ndarray
        float32 ``(B, W * P)``.
    """
    from sctranslator.graph.token_layout import TokenLayout

    layout = TokenLayout.for_batch(inputs["gene_ids"], inputs["gene_mask"], inputs["values"])
    return graphs.predict(layout, inputs["values"], inputs["gene_ids"], inputs["gene_mask"], inputs["protein_ids"],
                          inputs["protein_mask"])


def compare(label: str, precision: str, onnx_out: np.ndarray, torch_out: np.ndarray) -> ValidationResult:
    """The errors of ONNX predictions against PyTorch's on one batch.

    Parameters
    ----------
    label : str
        Names the batch.
    precision : str
        The graphs' compute dtype (sets the tolerance).
    onnx_out : numpy.ndarray
        ONNX predictions, ``(B, P)``.
    torch_out : numpy.ndarray
        PyTorch predictions, ``(B, P)``.

    Returns
    -------
    ValidationResult
        Largest absolute and relative errors (infinite when ONNX gave a non-finite value).
    """
    diff = np.abs(onnx_out.astype(np.float64) - torch_out.astype(np.float64))
    max_abs = float(diff.max()) if diff.size else 0.0
    if not np.all(np.isfinite(onnx_out)):
        max_abs = float("inf")
    scale = float(np.abs(torch_out).max()) if torch_out.size else 0.0
    max_rel = max_abs / max(scale, np.finfo(np.float32).tiny)
    return ValidationResult(label=label, precision=precision, batch_size=int(torch_out.shape[0]),
                            max_abs_error=max_abs, max_rel_error=max_rel, tolerance=TOLERANCES[precision])


def validate_onnx(path: str | Path, model: TranslatorModel, inputs: dict[str, np.ndarray], *,
                  precision: str = "fp32", label: str = "given inputs",
                  graphs: SplitGraphs | None = None,
                  providers: list[str] | None = None, expected: np.ndarray | None = None) -> ValidationResult:
    """Run `inputs` through the export's two graphs and the float32 PyTorch `model`; return the errors.

    The result is not raised on; call its ``check()`` for that.

    Parameters
    ----------
    path : str or pathlib.Path
        The export's encoder file (its decoder beside it).
    model : TranslatorModel
        The model the export was made from.
    inputs : dict of str to numpy.ndarray
        The five client-contract inputs of B cells (see `random_inputs`; masks optional).
    precision : str
        The export's compute dtype; it selects the tolerance.
    label : str
        Names the batch in the result.
    graphs : SplitGraphs or None
        Sessions to reuse across several batches; None loads `path`.
    providers : list of str or None
        onnxruntime execution providers; None: CPU.
    expected : numpy.ndarray or None
        PyTorch's predictions of the same inputs, computed beforehand; None computes them.

    Returns
    -------
    ValidationResult
        The largest absolute and relative errors and the tolerance.

    Raises
    ------
    ExportError
        An unknown precision, or onnxruntime cannot load or run the graphs.
    """
    check_precision(precision)
    feed = normalize_inputs(inputs, model.config)
    graphs = graphs or create_graphs(path, providers=providers, precision=precision)
    try:
        onnx_out = onnx_predictions(graphs, feed)
    except Exception as exc:  # onnxruntime's pybind errors
        raise ExportError(f"onnxruntime failed to run {path} on {label}: {exc}") from exc
    return compare(label, precision, onnx_out, torch_predictions(model, feed) if expected is None else expected)
