"""Export a TranslatorModel as two self-describing ONNX graphs (fp32, fp16 or bf16 compute; float32 IO).

The encoder + translator graph (the file asked for) and the decoder graph (a file beside it,
named in the first one's metadata): see model/graphs.py and graph/contract.py. ONNX Runtime
cannot run one file holding two disjoint graphs without feeding both graphs' inputs on every
call, so they are two files.

Exporter choice (torch 2.13): the dynamo exporter (`torch.onnx.export(..., dynamo=True)`, the
default since 2.9). The TorchScript exporter (`dynamo=False`) is deprecated (DeprecationWarning on
every call), cannot export the bf16 model at all (it fails in shape inference), and emits twice as
many nodes (Shape/Gather/Concat chains for every view, Pow+Erf for GELU). The dynamo graph uses
native LayerNormalization/Gelu and one ReduceMax over both axes for FAVOR+'s key stabiliser, keeps
the batch axis symbolic, and on the full-size model ran as fast in onnxruntime (2.2 vs 2.4 s per
cell on 2 cores) with a 4x faster session start (2.9 vs 11.9 s). Its noise (a torchvision-not-
installed log line, a pytree FutureWarning, a "shares the same shape constraints" note for the
shared batch axis, INFO chatter from the graph optimiser) is harmless and silenced here.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

import sctranslator
from sctranslator.errors import ExportError, ExportValidationError, OutputConflictError
from sctranslator.export.onnx_format import (
    FORMAT_VERSION,
    META_CONFIG,
    META_DECODER_FILE,
    META_ENCODER_FILE,
    META_FINGERPRINT,
    META_FORMAT_VERSION,
    META_GRAPH,
    META_INPUTS,
    META_OUTPUT,
    META_PANEL,
    META_PRECISION,
    META_PREPROCESSING,
    META_VERSION,
    check_precision,
    decoder_file_name,
)
from sctranslator.export.onnx_validate import (
    ValidationResult,
    create_graphs,
    normalize_inputs,
    random_inputs,
    torch_predictions,
    validate_onnx,
)
from sctranslator.graph.contract import DECODER, ENCODER, GraphSpec
from sctranslator.model.config import ModelConfig
from sctranslator.model.graphs import DecoderGraph, EncoderGraph
from sctranslator.model.identity import model_fingerprint
from sctranslator.model.network import TranslatorModel
from sctranslator.outputs import (
    IDENTITY_KEY,
    claim_output,
    foreign_output_error,
    identity_json,
    one_writer,
    read_identity,
)
from sctranslator.util.atomic import install_file, write_errors

log = logging.getLogger(__name__)

OUTPUT_KIND = "export-onnx"

# Above this many weight bytes, weights go to a side file (protobuf caps a single file at 2 GiB).
EXTERNAL_DATA_BYTES = 1_800_000_000
EXPORTER = f"torch.onnx dynamo (torch {torch.__version__})"


@dataclass(frozen=True)
class ExportReport:
    """What `export_onnx` wrote and how well it matched PyTorch.

    Parameters
    ----------
    path : pathlib.Path
        The encoder + translator graph (the file asked for; its metadata names the decoder).
    precision : str
        The compute dtype inside the graphs ("fp32", "fp16", "bf16").
    opset : int
        The ONNX opset.
    exporter : str
        Which exporter wrote it (torch.onnx dynamo and the torch version).
    external_data : bool
        Whether the weights lie in external data files beside the graphs (large models).
    file_bytes : int
        Size of both graphs together, in bytes.
    export_seconds : float
        Wall time of the export, in seconds.
    validations : tuple of ValidationResult
        Each validation batch's errors against PyTorch (empty when not validated).
    decoder_path : pathlib.Path or None
        The decoder graph beside `path`.
    """

    path: Path  # the encoder + translator graph (the file asked for; its metadata names the decoder)
    precision: str
    opset: int
    exporter: str
    external_data: bool
    file_bytes: int  # both graphs together
    export_seconds: float
    validations: tuple[ValidationResult, ...]
    decoder_path: Path | None = None  # the decoder graph beside `path`

    @property
    def files(self) -> tuple[Path, ...]:
        """The graph files written: the encoder, then the decoder."""
        return (self.path,) if self.decoder_path is None else (self.path, self.decoder_path)

    @property
    def max_rel_error(self) -> float | None:
        """The largest relative error of any validation batch; None when not validated."""
        return max((v.max_rel_error for v in self.validations), default=None)

    def __str__(self) -> str:
        decoder = f" + {self.decoder_path.name}" if self.decoder_path is not None else ""
        lines = [f"{self.path}{decoder} ({self.precision}, opset {self.opset}, {self.file_bytes / 1e6:.1f} MB, "
                 f"exported in {self.export_seconds:.1f} s)"]
        lines += [f"  {v}" for v in self.validations] or ["  not validated"]
        return "\n".join(lines)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the dynamo exporter's known-harmless warnings and log lines (see module docstring)."""
    # torchvision-not-installed lines, and per-rewrite INFO chatter from the graph optimiser.
    loggers = {name: logging.getLogger(name) for name in
               ("torch.onnx._internal.exporter._registration", "onnxscript", "onnx_ir")}
    levels = {name: logger.level for name, logger in loggers.items()}
    for logger in loggers.values():
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*will not be used, since it shares the same shape")
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            yield
    finally:
        for name, logger in loggers.items():
            logger.setLevel(levels[name])


def _json(data: Any) -> str:
    # Panels may hold numpy arrays or integers; write them as plain lists and numbers.
    return json.dumps(data, sort_keys=True, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


def onnx_metadata(model: TranslatorModel, precision: str, graph: GraphSpec | None = None,
                  other_file: str | None = None) -> dict[str, str]:
    """The metadata_props an export writes into a graph (read back by `read_onnx_metadata`).

    Parameters
    ----------
    model : TranslatorModel
        The exported model.
    precision : str
        The graph's compute dtype.
    graph : GraphSpec or None
        ENCODER or DECODER; None: ENCODER.
    other_file : str or None
        The other graph's file name beside it.

    Returns
    -------
    dict of str to str
        Key -> JSON or text value, keys prefixed ``sctranslator.``.
    """
    graph = graph or ENCODER
    metadata = {
        META_CONFIG: _json(model.config.to_dict()),
        META_PANEL: _json(model.panel),
        META_PREPROCESSING: _json(getattr(model, "preprocessing", None)),
        META_VERSION: sctranslator.__version__,
        META_PRECISION: precision,
        META_FORMAT_VERSION: FORMAT_VERSION,
        META_INPUTS: _json(list(graph.input_names)),
        META_OUTPUT: graph.output_names[0],
        META_FINGERPRINT: model_fingerprint(model),
        META_GRAPH: graph.role,
    }
    if other_file is not None:
        metadata[META_DECODER_FILE if graph is ENCODER else META_ENCODER_FILE] = other_file
    return metadata


def _example_args(spec: GraphSpec, config: ModelConfig, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Tracing inputs for one graph: batch 2 and 7 tokens (sizes 0 and 1 would be specialised)."""
    batch, tokens = 2, min(7, config.max_genes)
    generator = torch.Generator().manual_seed(1234)
    if spec is ENCODER:
        positions = torch.randperm(config.max_genes, generator=generator)[:tokens].sort().values
        args = (torch.rand(batch, tokens, generator=generator),
                torch.randint(1, config.vocab_size, (batch, tokens), generator=generator),
                torch.ones(batch, tokens, dtype=torch.bool), torch.ones(tokens), positions)
    else:
        args = (torch.randn(batch, config.max_proteins, config.dim, generator=generator),
                torch.randint(1, config.vocab_size, (batch, config.max_proteins), generator=generator),
                torch.ones(batch, config.max_proteins, dtype=torch.bool))
    return tuple(arg.to(device) for arg in args)


def _export_graph(module: nn.Module, spec: GraphSpec, config: ModelConfig,
                  opset: int | None) -> torch.onnx.ONNXProgram:
    device = next(module.parameters()).device
    args = _example_args(spec, config, device)
    dynamic_shapes = tuple(tensor.dynamic_axes() for tensor in spec.inputs)
    with _quiet_exporter(), torch.inference_mode(False), torch.no_grad():
        program = torch.onnx.export(module.eval(), args, input_names=list(spec.input_names),
                                    output_names=list(spec.output_names), opset_version=opset, dynamo=True,
                                    dynamic_shapes=dynamic_shapes, verbose=False, optimize=True)
    if program is None:  # only the TorchScript path returns None
        raise ExportError("torch.onnx.export returned no ONNX program")
    return program


def _check_graph_signature(program: torch.onnx.ONNXProgram, spec: GraphSpec, model: TranslatorModel) -> None:
    """The graph contract (graph/contract.py ENCODER / DECODER): names, dtypes, shapes, dynamic axes named."""
    graph = program.model.graph
    found = [(v.name, v.dtype.name if v.dtype is not None else None,
              [d if isinstance(d, int) else str(d) for d in (v.shape or [])])
             for v in [*graph.inputs, *graph.outputs]]
    wanted = [(t.name, t.onnx_type, t.dims(model.config.max_proteins, model.config.dim))
              for t in (*spec.inputs, *spec.outputs)]
    if found != wanted:
        raise ExportError(f"exported {spec.role} graph signature is {found}, expected {wanted}; the model's forward "
                          "may have changed in a way the exporter cannot keep batch- and token-dynamic")


def _save_program(program: torch.onnx.ONNXProgram, destination: Path, external_data: bool) -> None:
    program.save(destination, external_data=external_data)


def validation_cases(config: ModelConfig, batch_sizes: Sequence[int]) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Random validation batches for each size: padded, unpadded and partly padded.

    Padded: one shared layout with half of L padding (the collapsed path); unpadded: every position
    real; partly padded: cells padded differently (the full layout).

    Parameters
    ----------
    config : ModelConfig
        The model's sizes.
    batch_sizes : sequence of int
        Cells per batch.

    Returns
    -------
    list of tuple of (str, dict)
        (label, the five client-contract inputs) per batch.
    """
    cases = []
    for seed, size in enumerate(batch_sizes):
        mixed = random_inputs(config, size, seed=seed)  # its first cell is unpadded, the others not
        shared = random_inputs(config, 1, seed=seed + 100)  # one unpadded cell: the layout every cell shares
        unpadded = {name: np.repeat(array, size, axis=0) for name, array in shared.items()}
        unpadded["values"] = np.random.default_rng(seed + 200).uniform(
            1e-8, 1.0, unpadded["values"].shape).astype(np.float32)
        padded = dict(unpadded)
        kept = np.arange(config.max_genes) < max(1, config.max_genes // 2)
        padded["gene_mask"] = np.broadcast_to(kept, (size, config.max_genes)).copy()
        padded["gene_ids"] = np.where(kept, unpadded["gene_ids"], 0)
        padded["values"] = np.where(kept, unpadded["values"], np.float32(0))
        cases += [(f"padded seed {seed}", padded), (f"unpadded seed {seed}", unpadded)]
        if size > 1:  # one cell alone is unpadded: the case above
            cases.append((f"partly padded seed {seed}", mixed))
    return cases


def _validate(path: Path, model: TranslatorModel, precision: str, batch_sizes: Sequence[int],
              validation_inputs: dict[str, np.ndarray] | None,
              providers: list[str] | None, display_name: str) -> tuple[ValidationResult, ...]:
    batches = validation_cases(model.config, batch_sizes)
    if validation_inputs is not None:
        batches.append(("given inputs", normalize_inputs(validation_inputs, model.config)))
    # Memory (the full-size model): the PyTorch references first, cell by cell, before the sessions
    # load; the sessions without onnxruntime's memory arena, so each run gives its memory back.
    expected = [torch_predictions(model, inputs) for _, inputs in batches]
    gc.collect()
    graphs = create_graphs(path, providers=providers, precision=precision, display_name=display_name, arena=False)
    results = []
    for (label, inputs), reference in zip(batches, expected, strict=True):
        result = validate_onnx(path, model, inputs, precision=precision, label=label, graphs=graphs,
                               expected=reference)
        log.debug("ONNX validation: %s", result)  # the command prints the report
        results.append(result)
    return tuple(results)


def _compute_model(model: TranslatorModel, dtype: torch.dtype) -> TranslatorModel:
    # Lower precisions export a converted copy so the caller's float32 weights stay untouched.
    return model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)


@one_writer
def export_onnx(model: TranslatorModel, path: str | Path, *, precision: str = "fp32", opset: int | None = None,
                validate: bool = True, validation_inputs: dict[str, np.ndarray] | None = None,
                validation_batch_sizes: Sequence[int] = (1, 3),
                providers: list[str] | None = None, overwrite: bool = False) -> ExportReport:
    """Write `model` as two ONNX graphs, `path` and a decoder beside it, and (by default) check them.

    `path` holds the encoder + translator over a collapsed token layout, giving the translated
    ``(B, P, dim)``; the decoder graph, written beside it (model.onnx -> model.decoder.onnx) and
    named in `path`'s metadata, maps translated, protein ids and mask to predictions ``(B, P)``.
    Runtimes run the encoder once per batch and the decoder once per window of P proteins. Inputs
    and outputs are float32 whatever the compute precision. Both files carry their output identity
    in their metadata; nothing but an earlier export at `path` is ever replaced.

    Parameters
    ----------
    model : TranslatorModel
        The model to export.
    path : str or pathlib.Path
        The encoder graph's file (e.g. model.onnx); not a name ending in .decoder.onnx.
    precision : {'fp32', 'fp16', 'bf16'}
        The compute dtype inside the graphs.
    opset : int or None
        The ONNX opset; None: the exporter's.
    validate : bool
        Run the two graphs composed, in onnxruntime, against the float32 PyTorch model, and write
        nothing when they differ beyond the precision's tolerance. bf16 cannot run on
        onnxruntime's CPU provider: validate it on a GPU provider or pass False.
    validation_inputs : dict of str to numpy.ndarray or None
        A batch of the five client-contract arrays (masks optional) validated as well.
    validation_batch_sizes : sequence of int
        Cells per random validation batch (padded, unpadded and partly padded batches of each).
    providers : list of str or None
        onnxruntime execution providers for the validation; None: CPU.
    overwrite : bool
        Replace an earlier export at `path` (both of its files).
    wait : bool
        When another job is writing `path`, wait for it instead of refusing.

    Returns
    -------
    ExportReport
        The files, their size, the export time and each validation's errors.

    Raises
    ------
    ExportError
        Not a TranslatorModel, an unknown precision, a .decoder.onnx name, or torch.onnx failing.
    ExportValidationError
        The exported graphs differ from PyTorch beyond the tolerance (nothing is written).
    OutputConflictError
        `path` holds something that is not an earlier export (or `overwrite` is not given).
    OutputLockedError
        Another job is writing `path` and `wait` is False.
    """
    if not isinstance(model, TranslatorModel):
        raise ExportError(f"export_onnx needs a TranslatorModel, got {type(model).__name__}")
    dtype = check_precision(precision)
    path = Path(path)
    if path.name.endswith(".decoder" + (path.suffix or ".onnx")):
        # That is the name of another export's second file: writing an export there would replace
        # that export's decoder graph with an encoder graph and break the pair.
        raise ExportError(f"{path.name}: names ending in .decoder.onnx are where an export writes its decoder graph; "
                          "give the encoder's file name (for example model.onnx)")
    decoder_name = decoder_file_name(path)
    decoder_path = path.parent / decoder_name
    ours = claim_output(path, OUTPUT_KIND, inputs=(model,), overwrite=overwrite, siblings=(decoder_path,))
    if ours and (decoder_path.exists() or decoder_path.is_symlink()):
        record = read_identity(decoder_path)  # the sibling must be our decoder too, not a user's file
        if record is None or record.get("kind") != OUTPUT_KIND:
            raise foreign_output_error(decoder_path, f"is where the export to {path.name} writes its decoder graph, "
                                                     "but it was not written by an export")
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    was_training = model.training
    external_data = model.n_parameters() * dtype.itemsize > EXTERNAL_DATA_BYTES
    # Write into a private folder next to `path`, then move into place: a failed export never
    # leaves a half-written or unvalidated file where the engine would pick it up.
    # Named as `sctranslator.util.atomic` names temporaries, so a run after a kill -9 removes the leftover;
    # a full or read-only disk is a named error with the size of the graphs as the space needed.
    needed = 2 * model.n_parameters() * dtype.itemsize
    with write_errors(path, needed), tempfile.TemporaryDirectory(
            dir=path.parent, prefix=f".{path.name}.partial-{os.getpid()}-") as staging:
        staged = Path(staging) / path.name
        opset_written = _export_both(model, dtype, precision, opset, staged, Path(staging) / decoder_name,
                                     external_data)
        model.train(was_training)
        validations: tuple[ValidationResult, ...] = ()
        if validate:
            validations = _validate(staged, model, precision, validation_batch_sizes, validation_inputs, providers,
                                    display_name=str(path))
            failed = [v for v in validations if not v.passed]
            if failed:
                details = "\n  ".join(str(v) for v in validations)
                raise ExportValidationError(f"ONNX export of {path.name} does not reproduce PyTorch "
                                            f"(nothing written):\n  {details}")
        file_bytes = sum(f.stat().st_size for f in Path(staging).iterdir())
        # The encoder file (the one the user named, the one that names the rest) goes last.
        items = sorted(Path(staging).iterdir(), key=lambda item: item.name == path.name)
        for item in items:  # the decoder and any external-data file: ours only if the .onnx was
            target = path.parent / item.name
            if item.name not in (path.name, decoder_name) and not ours and (target.exists() or target.is_symlink()):
                raise OutputConflictError(f"{target} exists and was not written by an earlier export to {path}; "
                                          "it is left untouched. Choose another output path, or remove it yourself")
            install_file(item, target)
    report = ExportReport(path=path, precision=precision, opset=opset_written, exporter=EXPORTER,
                          external_data=external_data, file_bytes=file_bytes,
                          export_seconds=time.perf_counter() - started, validations=validations,
                          decoder_path=decoder_path)
    log.debug("ONNX export: %s", report)
    return report


def _export_both(model: TranslatorModel, dtype: torch.dtype, precision: str, opset: int | None,
                 encoder_path: Path, decoder_path: Path, external_data: bool) -> int:
    """Export, check and save the encoder then the decoder graph, one at a time (one program in memory)."""
    compute_model = _compute_model(model, dtype)
    files = [encoder_path.name, decoder_path.name]
    opset_written = 0
    for spec, build, destination, other, identity in (
            (ENCODER, EncoderGraph, encoder_path, decoder_path.name, {"files": files}),
            (DECODER, DecoderGraph, decoder_path, encoder_path.name, {"graph": "decoder", "files": files})):
        try:
            program = _export_graph(build(compute_model), spec, model.config, opset)
        except ExportError:
            raise
        except Exception as exc:  # the exporter raises many internal error types
            raise ExportError(f"torch.onnx could not export the model's {spec.role} graph ({precision}, opset "
                              f"{opset}): {exc}") from exc
        _check_graph_signature(program, spec, model)
        program.model.metadata_props.update(onnx_metadata(model, precision, spec, other))
        program.model.metadata_props[IDENTITY_KEY] = identity_json(OUTPUT_KIND, **identity)
        opset_written = int(program.model.opset_imports.get("", 0))
        _save_program(program, destination, external_data)
        del program
        gc.collect()  # the program's graph and tracing state before the next graph is traced
        try:
            onnx.checker.check_model(str(destination))  # by path: works with external data and > 2 GB
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"the exported {spec.role} graph fails onnx.checker: {exc}") from exc
    return opset_written
