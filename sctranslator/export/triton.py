"""Write a Triton model repository for a TranslatorModel: `<repo>/<name>/config.pbtxt` + `1/model.onnx`.

Backends: `onnxruntime` (Triton's ONNX Runtime backend), `tensorrt` (the same backend with its
TensorRT GPU execution accelerator) and `python` (Triton's Python backend running the same
ONNX file with onnxruntime, for Triton builds without the ONNX Runtime backend).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from sctranslator._atomic import install_dir, staging_dir
from sctranslator.errors import ExportError
from sctranslator.export.onnx import ExportReport, export_onnx
from sctranslator.export.onnx_format import read_onnx_metadata
from sctranslator.export.triton_config import (
    ONNX_FILE,
    PYTHON_FILE,
    ServingSettings,
    build_config,
    model_parameters,
    render_config,
)
from sctranslator.model.network import TranslatorModel
from sctranslator.outputs import claim_output, write_identity

MODEL_VERSION = "1"
OUTPUT_KIND = "export-triton"
PYTHON_MODEL_SOURCE = Path(__file__).with_name("triton_python_model.py")


@dataclass(frozen=True)
class TritonExport:
    """What export_triton wrote."""

    model_dir: Path
    config_path: Path
    onnx_path: Path
    settings: ServingSettings
    onnx_report: ExportReport | None  # None when an existing ONNX file was reused

    def __str__(self) -> str:
        files = [self.config_path, self.onnx_path]
        if self.settings.backend == "python":
            files.append(self.onnx_path.with_name(PYTHON_FILE))
        listing = "\n".join(f"  {path}" for path in files)
        return f"Triton model {self.settings.name!r} ({self.settings.backend} backend) in {self.model_dir}:\n{listing}"


def _can_validate(precision: str) -> bool:
    # onnxruntime's CPU provider has no bf16 kernels: a bf16 graph is checked only where CUDA is.
    from sctranslator._optional import import_optional

    ort = import_optional("onnxruntime", "cpu", "validating ONNX exports (or sctranslator[gpu] on CUDA)")

    return precision != "bf16" or "CUDAExecutionProvider" in ort.get_available_providers()


def write_model_dir(model_dir: Path, onnx_file: Path, settings: ServingSettings) -> Path:
    """Fill `model_dir` from an exported ONNX file: config.pbtxt, 1/model.onnx (and 1/model.py)."""
    metadata = read_onnx_metadata(onnx_file)
    if metadata["precision"] != settings.precision:
        raise ExportError(f"{onnx_file} was exported at {metadata['precision']}, the settings ask for "
                          f"{settings.precision}")
    config = metadata["config"]
    message = build_config(settings, int(config["max_genes"]), int(config["max_proteins"]),
                           model_parameters(metadata))
    version_dir = model_dir / MODEL_VERSION
    version_dir.mkdir(parents=True, exist_ok=True)
    if onnx_file.resolve() != (version_dir / ONNX_FILE).resolve():
        shutil.copyfile(onnx_file, version_dir / ONNX_FILE)
    if settings.backend == "python":
        shutil.copyfile(PYTHON_MODEL_SOURCE, version_dir / PYTHON_FILE)
    config_path = model_dir / "config.pbtxt"
    config_path.write_text(render_config(message))
    return config_path


def export_triton(model: TranslatorModel, repo: str | Path, settings: ServingSettings | None = None, *,
                  onnx_path: str | Path | None = None, validate: bool = True,
                  overwrite: bool = False) -> TritonExport:
    """Export `model` as a Triton model `settings.name` inside repository `repo`.

    The model's directory is written aside and moved into place whole. `overwrite` replaces an
    earlier export of the same name; the repository's other models are never touched, and a
    directory of that name that sctranslator did not write is refused (OutputConflictError, see
    `sctranslator.outputs`). `onnx_path` reuses an ONNX file from `export_onnx` instead of
    exporting again. `validate` checks the fresh ONNX file against PyTorch (see export_onnx).
    settings: name, backend (onnxruntime | tensorrt | python), max_batch_size (cells), instances,
        kind (gpu | cpu), dynamic batching, precision (default: ServingSettings()).
    Returns a TritonExport (model directory, config.pbtxt and model.onnx paths, the ONNX report).

    Raises:
        ExportError: inconsistent settings (checked before exporting), or an export failure.
        ExportValidationError: the fresh ONNX graph differs from PyTorch beyond the tolerance.
    """
    settings = settings or ServingSettings()
    settings.check()
    repo = Path(repo)
    model_dir = repo / settings.name
    claim_output(model_dir, OUTPUT_KIND, inputs=(model, onnx_path), overwrite=overwrite)
    repo.mkdir(parents=True, exist_ok=True)
    with staging_dir(model_dir) as staging:
        report = None
        version_dir = staging / MODEL_VERSION
        version_dir.mkdir(parents=True)
        if onnx_path is None:
            report = export_onnx(model, version_dir / ONNX_FILE, precision=settings.precision,
                                 validate=validate and _can_validate(settings.precision))
            source = version_dir / ONNX_FILE
        else:
            source = Path(onnx_path)
        write_model_dir(staging, source, settings)
        write_identity(staging, OUTPUT_KIND)
        install_dir(staging, model_dir)
    return TritonExport(model_dir=model_dir, config_path=model_dir / "config.pbtxt",
                        onnx_path=model_dir / MODEL_VERSION / ONNX_FILE, settings=settings, onnx_report=report)
