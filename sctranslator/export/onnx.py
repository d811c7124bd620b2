"""Export a TranslatorModel to a self-describing ONNX file (fp32, fp16 or bf16 compute; float32 IO).

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
import json
import logging
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
from sctranslator._atomic import install_file
from sctranslator.errors import ExportError, ExportValidationError, OutputConflictError
from sctranslator.export.contract import BATCH_AXIS, INPUT_NAMES, INPUTS, OUTPUT, OUTPUT_NAME
from sctranslator.export.onnx_format import (
    FORMAT_VERSION,
    META_CONFIG,
    META_FINGERPRINT,
    META_FORMAT_VERSION,
    META_INPUTS,
    META_OUTPUT,
    META_PANEL,
    META_PRECISION,
    META_PREPROCESSING,
    META_VERSION,
    check_precision,
)
from sctranslator.export.onnx_validate import (
    ValidationResult,
    create_session,
    normalize_inputs,
    random_inputs,
    validate_onnx,
)
from sctranslator.model.identity import model_fingerprint
from sctranslator.model.network import TranslatorModel
from sctranslator.outputs import IDENTITY_KEY, claim_output, identity_json

log = logging.getLogger(__name__)

OUTPUT_KIND = "export-onnx"

# Above this many weight bytes, weights go to a side file (protobuf caps a single file at 2 GiB).
EXTERNAL_DATA_BYTES = 1_800_000_000
EXPORTER = f"torch.onnx dynamo (torch {torch.__version__})"


@dataclass(frozen=True)
class ExportReport:
    """What export_onnx wrote and how well it matched PyTorch."""

    path: Path
    precision: str
    opset: int
    exporter: str
    external_data: bool
    file_bytes: int
    export_seconds: float
    validations: tuple[ValidationResult, ...]

    @property
    def max_rel_error(self) -> float | None:
        return max((v.max_rel_error for v in self.validations), default=None)

    def __str__(self) -> str:
        lines = [f"{self.path} ({self.precision}, opset {self.opset}, {self.file_bytes / 1e6:.1f} MB, "
                 f"exported in {self.export_seconds:.1f} s)"]
        lines += [f"  {v}" for v in self.validations] or ["  not validated"]
        return "\n".join(lines)


class OnnxAdapter(nn.Module):
    """The graph's calling convention: the five inputs positionally, float32 predictions out.

    The model casts `values` to its own weight dtype on entry, so only the output needs a cast
    back for fp16/bf16 (a no-op for fp32).
    """

    def __init__(self, model: TranslatorModel):
        super().__init__()
        self.model = model

    def forward(self, values: torch.Tensor, gene_ids: torch.Tensor, gene_mask: torch.Tensor,
                protein_ids: torch.Tensor, protein_mask: torch.Tensor) -> torch.Tensor:
        return self.model(values, gene_ids, protein_ids, gene_mask, protein_mask).float()


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


def onnx_metadata(model: TranslatorModel, precision: str) -> dict[str, str]:
    """The metadata_props an export writes (read back by read_onnx_metadata)."""
    return {
        META_CONFIG: _json(model.config.to_dict()),
        META_PANEL: _json(model.panel),
        META_PREPROCESSING: _json(getattr(model, "preprocessing", None)),
        META_VERSION: sctranslator.__version__,
        META_PRECISION: precision,
        META_FORMAT_VERSION: FORMAT_VERSION,
        META_INPUTS: _json(list(INPUT_NAMES)),
        META_OUTPUT: OUTPUT_NAME,
        META_FINGERPRINT: model_fingerprint(model),
    }


def _export_program(model: TranslatorModel, dtype: torch.dtype, opset: int | None) -> torch.onnx.ONNXProgram:
    # Lower precisions export a converted copy so the caller's float32 weights stay untouched.
    compute_model = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
    adapter = OnnxAdapter(compute_model).eval()
    device = next(model.parameters()).device
    example = random_inputs(model.config, batch_size=2, seed=1234)
    args = tuple(torch.from_numpy(example[name]).to(device) for name in INPUT_NAMES)
    # The batch axis is the only dynamic one: L and P are fixed by the translator's weights.
    dynamic_shapes = tuple({0: BATCH_AXIS} for _ in INPUT_NAMES)
    with _quiet_exporter():
        program = torch.onnx.export(adapter, args, input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                                    opset_version=opset, dynamo=True, dynamic_shapes=dynamic_shapes,
                                    verbose=False, optimize=True)
    if program is None:  # only the TorchScript path returns None
        raise ExportError("torch.onnx.export returned no ONNX program")
    return program


def _check_graph_signature(program: torch.onnx.ONNXProgram, model: TranslatorModel) -> None:
    """The graph contract (export/contract.py): names, dtypes, (batch, L) / (batch, P), batch symbolic."""
    L, P = model.config.max_genes, model.config.max_proteins
    graph = program.model.graph
    found = [(v.name, v.dtype.name if v.dtype is not None else None,
              [d if isinstance(d, int) else str(d) for d in (v.shape or [])])
             for v in [*graph.inputs, *graph.outputs]]
    wanted = [(t.name, t.onnx_type, [BATCH_AXIS, t.width(L, P)]) for t in (*INPUTS, OUTPUT)]
    if found != wanted:
        raise ExportError(f"exported graph signature is {found}, expected {wanted}; the model's forward may "
                          "have changed in a way the exporter cannot keep batch-dynamic")


def _save_program(program: torch.onnx.ONNXProgram, destination: Path, external_data: bool) -> None:
    program.save(destination, external_data=external_data)


def _validate(path: Path, model: TranslatorModel, precision: str, batch_sizes: Sequence[int],
              validation_inputs: dict[str, np.ndarray] | None,
              providers: list[str] | None, display_name: str) -> tuple[ValidationResult, ...]:
    session = create_session(path, providers=providers, precision=precision, display_name=display_name)
    batches = [(f"random inputs seed {i}", random_inputs(model.config, size, seed=i))
               for i, size in enumerate(batch_sizes)]
    if validation_inputs is not None:
        batches.append(("given inputs", normalize_inputs(validation_inputs, model.config)))
    results = []
    for label, inputs in batches:
        result = validate_onnx(path, model, inputs, precision=precision, label=label, session=session)
        log.debug("ONNX validation: %s", result)  # the command prints the report
        results.append(result)
    return tuple(results)


def export_onnx(model: TranslatorModel, path: str | Path, *, precision: str = "fp32", opset: int | None = None,
                validate: bool = True, validation_inputs: dict[str, np.ndarray] | None = None,
                validation_batch_sizes: Sequence[int] = (1, 3),
                providers: list[str] | None = None, overwrite: bool = False) -> ExportReport:
    """Write `model` as an ONNX file at `path` and (by default) check it against PyTorch.

    Graph (export/contract.py): values f32 (batch, L), gene_ids i64, gene_mask bool, protein_ids i64 (batch, P),
    protein_mask bool -> predictions f32 (batch, P). `precision` ("fp32", "fp16", "bf16") sets the
    internal compute dtype. `opset`: the ONNX opset (default: the exporter's). Validation runs random
    batches of `validation_batch_sizes` cells and `validation_inputs` (a dict of those arrays; masks
    optional) through onnxruntime (`providers`, default: CPU) and the float32 model; above the
    precision's tolerance it raises ExportValidationError and writes nothing. bf16 cannot run on
    onnxruntime's CPU provider: validate it on a GPU provider or pass validate=False.
    Returns an ExportReport (path, size, seconds, each validation's max absolute / relative error).

    Raises:
        ExportError: not a TranslatorModel, an unknown precision, or torch.onnx failing to export.
        ExportValidationError: the exported graph differs from PyTorch beyond the tolerance.
    The file carries its output identity in its metadata; `overwrite` replaces an earlier export
    at `path`, and nothing else is ever replaced (OutputConflictError, see `sctranslator.outputs`).
    """
    if not isinstance(model, TranslatorModel):
        raise ExportError(f"export_onnx needs a TranslatorModel, got {type(model).__name__}")
    dtype = check_precision(precision)
    path = Path(path)
    ours = claim_output(path, OUTPUT_KIND, inputs=(model,), overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    was_training = model.training
    try:
        program = _export_program(model, dtype, opset)
    except ExportError:
        raise
    except Exception as exc:  # the exporter raises many internal error types
        raise ExportError(f"torch.onnx could not export the model ({precision}, opset {opset}): {exc}") from exc
    finally:
        model.train(was_training)
    _check_graph_signature(program, model)
    program.model.metadata_props.update(onnx_metadata(model, precision))
    program.model.metadata_props[IDENTITY_KEY] = identity_json(OUTPUT_KIND)
    external_data = model.n_parameters() * dtype.itemsize > EXTERNAL_DATA_BYTES
    opset_written = int(program.model.opset_imports.get("", 0))

    # Write into a private folder next to `path`, then move into place: a failed export never
    # leaves a half-written or unvalidated file where the engine would pick it up.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as staging:
        staged = Path(staging) / path.name
        _save_program(program, staged, external_data)
        del program
        try:
            onnx.checker.check_model(str(staged))  # by path: works with external data and > 2 GB
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"the exported graph fails onnx.checker: {exc}") from exc
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
        items = sorted(Path(staging).iterdir(), key=lambda item: item.name == path.name)  # the .onnx last
        for item in items:  # any external-data file beside the .onnx: ours only if the .onnx was
            target = path.parent / item.name
            if item.name != path.name and not ours and (target.exists() or target.is_symlink()):
                raise OutputConflictError(f"{target} exists and was not written by an earlier export to {path}; "
                                          "it is left untouched. Choose another output path, or remove it yourself")
            install_file(item, target)
    report = ExportReport(path=path, precision=precision, opset=opset_written, exporter=EXPORTER,
                          external_data=external_data, file_bytes=file_bytes,
                          export_seconds=time.perf_counter() - started, validations=validations)
    log.debug("ONNX export: %s", report)
    return report
