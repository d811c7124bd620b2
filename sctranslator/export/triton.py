"""Write a Triton model repository for a TranslatorModel: four models (see triton_config.py, triton_counts.py).

    <repo>/<name>/config.pbtxt, 1/model.py, 1/token_layout.py,
                                  1/graph_model.py              the client-facing BLS model
    <repo>/<name>_encoder/config.pbtxt, 1/model.onnx (+ model.py)  the encoder + translator graph
    <repo>/<name>_decoder/config.pbtxt, 1/model.onnx (+ model.py)  the decoder graph
    <repo>/<name>_counts/config.pbtxt, 1/model.py, 1/model_facts.json,
                                  1/sctranslator/           the names-in model (triton_counts.py)

Backends for the two graphs: `onnxruntime` (Triton's ONNX Runtime backend), `tensorrt` (the same
backend with its TensorRT GPU execution accelerator) and `python` (Triton's Python backend running
the same ONNX file with onnxruntime, for Triton builds without the ONNX Runtime backend). The
client-facing model is always a Python-backend model (numpy and two BLS calls).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from sctranslator.errors import ExportError
from sctranslator.export.onnx import ExportReport, export_onnx
from sctranslator.export.onnx_format import graph_files, read_onnx_metadata
from sctranslator.export.triton_config import (
    LAYOUT_FILE,
    ONNX_FILE,
    PYTHON_FILE,
    ServingSettings,
    client_config,
    graph_config,
    graph_model_names,
    model_parameters,
    render_config,
)
from sctranslator.export.triton_counts import MODEL_SOURCE as COUNTS_MODEL_SOURCE
from sctranslator.export.triton_counts import counts_config, counts_model_name, write_counts_files
from sctranslator.graph.contract import DECODER, ENCODER
from sctranslator.model.network import TranslatorModel
from sctranslator.outputs import (
    check_only_ours,
    claim_output,
    foreign_output_error,
    one_writer,
    read_identity,
    write_identity,
)
from sctranslator.util.atomic import install_dir, staging_dir

MODEL_VERSION = "1"
OUTPUT_KIND = "export-triton"
PYTHON_MODEL_SOURCE = Path(__file__).with_name("triton_python_model.py")  # one graph in onnxruntime
BLS_MODEL_SOURCE = Path(__file__).with_name("triton_bls_model.py")  # the client-facing model
LAYOUT_SOURCE = Path(__file__).resolve().parents[1] / "graph" / "token_layout.py"
BLS_HELPERS_FILE = "graph_model.py"  # triton_python_model.py beside the BLS model: its stub-boundary helpers
# The Python files of each model directory (file name in <dir>/1 -> the package file it is a copy of):
CLIENT_FILES = {PYTHON_FILE: BLS_MODEL_SOURCE, LAYOUT_FILE: LAYOUT_SOURCE, BLS_HELPERS_FILE: PYTHON_MODEL_SOURCE}
PYTHON_GRAPH_FILES = {PYTHON_FILE: PYTHON_MODEL_SOURCE}  # the encoder and decoder models with --backend python
COUNTS_FILES = {PYTHON_FILE: COUNTS_MODEL_SOURCE}  # the names-in model (with its package copy and facts)


def model_dir_names(name: str) -> dict[str, str]:
    """The export's model directories by role, for the Triton model `name`.

    Parameters
    ----------
    name : str
        The client-facing model's name.

    Returns
    -------
    dict of str to str
        Role (client, encoder, decoder, counts) -> model name.
    """
    graphs = graph_model_names(name)
    return {"client": name, "encoder": graphs["encoder"], "decoder": graphs["decoder"],
            "counts": counts_model_name(name)}


@dataclass(frozen=True)
class TritonExport:
    """What `export_triton` wrote.

    Parameters
    ----------
    model_dir : pathlib.Path
        The client-facing model's directory.
    config_path : pathlib.Path
        Its config.pbtxt.
    onnx_path : pathlib.Path
        The encoder model's model.onnx.
    settings : ServingSettings
        How the models are served.
    onnx_report : ExportReport or None
        The ONNX export's report; None when an existing export was reused.
    encoder_dir : pathlib.Path or None
        The encoder graph model's directory.
    decoder_dir : pathlib.Path or None
        The decoder graph model's directory.
    counts_dir : pathlib.Path or None
        The names-in model's directory (raw counts and gene names in).
    """

    model_dir: Path  # the client-facing model's directory
    config_path: Path
    onnx_path: Path  # the encoder model's model.onnx
    settings: ServingSettings
    onnx_report: ExportReport | None  # None when an existing ONNX export was reused
    encoder_dir: Path | None = None
    decoder_dir: Path | None = None
    counts_dir: Path | None = None  # the names-in model <name>_counts

    @property
    def model_dirs(self) -> tuple[Path, ...]:
        """Every model directory written, the client-facing one first."""
        return tuple(d for d in (self.model_dir, self.encoder_dir, self.decoder_dir, self.counts_dir)
                     if d is not None)

    def files(self) -> list[Path]:
        """Every file the export wrote, sorted (the names-in model's package copy included).

        Returns
        -------
        list of Path
            The files under the model directories, hidden bookkeeping files left out.
        """
        return sorted(path for directory in self.model_dirs for path in directory.rglob("*") if path.is_file()
                      and not path.name.startswith("."))

    def summary(self) -> str:
        """One line: the model names, their backend and the repository, without the file list.

        Returns
        -------
        str
            E.g. "Triton model 'sctranslator' (python backend): a BLS model calling ... in REPO".
        """
        graphs = " and ".join(repr(d.name) for d in self.model_dirs[1:3])
        counts = f", and the names-in model {self.counts_dir.name!r}" if self.counts_dir else ""
        return (f"Triton model {self.settings.name!r} ({self.settings.backend} backend): a BLS model calling {graphs}"
                f"{counts}, in {self.model_dir.parent}")

    def __str__(self) -> str:
        listing = "\n".join(f"  {path}" for path in self.files())
        return f"{self.summary()}:\n{listing}"


def _can_validate(precision: str) -> bool:
    # onnxruntime's CPU provider has no bf16 kernels: a bf16 graph is checked only where CUDA is.
    from sctranslator.util.optional import import_optional

    ort = import_optional("onnxruntime", "cpu", "validating ONNX exports (or sctranslator[gpu] on CUDA)")

    return precision != "bf16" or "CUDAExecutionProvider" in ort.get_available_providers()


def _write(config_dir: Path, text: str, files: dict[str, Path]) -> Path:
    version_dir = config_dir / MODEL_VERSION
    version_dir.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        if source.resolve() != (version_dir / name).resolve():
            shutil.copyfile(source, version_dir / name)
    config_path = config_dir / "config.pbtxt"
    config_path.write_text(text)
    return config_path


def write_model_dirs(staging: dict[str, Path], onnx_file: Path, settings: ServingSettings) -> Path:
    """Fill the staged model directories from an export at `onnx_file`.

    The client-facing model, its encoder and decoder models, and the names-in model ``<name>_counts``
    when `staging` has its directory.

    Parameters
    ----------
    staging : dict of str to pathlib.Path
        Model name -> staged directory.
    onnx_file : pathlib.Path
        The export's encoder file.
    settings : ServingSettings
        How the models are served.

    Returns
    -------
    pathlib.Path
        The client-facing model's config.pbtxt.
    """
    encoder_file, decoder_file = graph_files(onnx_file)
    metadata = read_onnx_metadata(decoder_file)  # the small file: the same model facts as the encoder's
    if metadata["precision"] != settings.precision:
        raise ExportError(f"{onnx_file} was exported at {metadata['precision']}, the settings ask for "
                          f"{settings.precision}")
    config = metadata["config"]
    genes, proteins, dim = int(config["max_genes"]), int(config["max_proteins"]), int(config["dim"])
    parameters = model_parameters(metadata)
    names = graph_model_names(settings.name)
    client = client_config(settings, genes, proteins, parameters)
    path = _write(staging[settings.name], render_config(client), CLIENT_FILES)
    for spec, source in ((ENCODER, encoder_file), (DECODER, decoder_file)):
        files = {ONNX_FILE: source, **(PYTHON_GRAPH_FILES if settings.backend == "python" else {})}
        _write(staging[names[spec.role]], render_config(graph_config(settings, spec, proteins, dim, parameters)),
               files)
    counts_dir = staging.get(counts_model_name(settings.name))
    if counts_dir is not None:
        write_counts_files(counts_dir / MODEL_VERSION, metadata)
        _write(counts_dir, render_config(counts_config(settings, parameters)), {})
    return path


@one_writer
def export_triton(model: TranslatorModel, repo: str | Path, settings: ServingSettings | None = None, *,
                  onnx_path: str | Path | None = None, validate: bool = True,
                  overwrite: bool = False) -> TritonExport:
    """Export `model` into a Triton model repository, ready for ``tritonserver --model-repository``.

    Writes the client-facing model ``settings.name`` (which calls the graph models
    ``<name>_encoder`` and ``<name>_decoder``) and the names-in model ``<name>_counts``. Each model
    directory is written aside and moved into place whole; the repository's other models are never
    touched.

    Parameters
    ----------
    model : TranslatorModel
        The model to serve.
    repo : str or pathlib.Path
        The model repository (created when absent).
    settings : ServingSettings or None
        Model name, serving backend, max batch size (cells), instances, instance kind, dynamic
        batching, precision; None: ``ServingSettings()``.
    onnx_path : str or pathlib.Path or None
        Reuse an export from `export_onnx` (its encoder file, the decoder beside it) instead of
        exporting again.
    validate : bool
        Check a fresh export against PyTorch (see `export_onnx`).
    overwrite : bool
        Replace an earlier export of the same name (all its directories).
    wait : bool
        When another job is writing the repository's models, wait for it instead of refusing.

    Returns
    -------
    TritonExport
        The model directories, the client model's config.pbtxt, the encoder's model.onnx and the
        ONNX report.

    Raises
    ------
    ExportError
        Inconsistent settings (checked before exporting), or an export failure.
    ExportValidationError
        The fresh ONNX graphs differ from PyTorch beyond the tolerance.
    OutputConflictError
        A directory of those names that sctranslator did not write.
    """
    settings = settings or ServingSettings()
    settings.check()
    repo = Path(repo)
    names = list(model_dir_names(settings.name).values())  # client, encoder, decoder, counts
    dirs = {name: repo / name for name in names}
    claim_output(dirs[settings.name], OUTPUT_KIND, inputs=(model, onnx_path), overwrite=overwrite,
                 siblings=[dirs[name] for name in names[1:]])
    for name in names[1:]:  # the graph models' directories: absent, or ours as well
        if dirs[name].exists() or dirs[name].is_symlink():
            record = read_identity(dirs[name])
            if record is None or record.get("kind") != OUTPUT_KIND:
                raise foreign_output_error(dirs[name], f"is where the export of Triton model {settings.name!r} puts "
                                                       "a graph model, but it was not written by an export")
            check_only_ours(dirs[name], record)  # replaced whole below: only when all it holds is ours
    repo.mkdir(parents=True, exist_ok=True)
    with staging_dir(dirs[names[0]]) as first, staging_dir(dirs[names[1]]) as second, \
            staging_dir(dirs[names[2]]) as third, staging_dir(dirs[names[3]]) as fourth:
        staging = dict(zip(names, (first, second, third, fourth), strict=True))
        report = None
        if onnx_path is None:
            export_dir = first / ".onnx"  # removed before the directory is installed
            export_dir.mkdir()
            report = export_onnx(model, export_dir / ONNX_FILE, precision=settings.precision,
                                 validate=validate and _can_validate(settings.precision))
            source = export_dir / ONNX_FILE
        else:
            source = Path(onnx_path)
        config_path = write_model_dirs(staging, source, settings)
        if onnx_path is None:
            shutil.rmtree(first / ".onnx")
        for name in names:
            write_identity(staging[name], OUTPUT_KIND)
        for name in (names[1], names[2], names[3], names[0]):  # the graphs first: the others call them
            install_dir(staging[name], dirs[name])
    names_by_role = graph_model_names(settings.name)
    return TritonExport(model_dir=dirs[settings.name], config_path=dirs[settings.name] / config_path.name,
                        onnx_path=dirs[names_by_role["encoder"]] / MODEL_VERSION / ONNX_FILE, settings=settings,
                        onnx_report=report, encoder_dir=dirs[names_by_role["encoder"]],
                        decoder_dir=dirs[names_by_role["decoder"]], counts_dir=dirs[names[3]])
