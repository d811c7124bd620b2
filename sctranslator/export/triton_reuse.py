"""Whether an exported Triton repository can be served again as it is (`serve` starts without exporting).

It can when every model directory of the export is there, written by an export, its ONNX graphs
come from the same weights (fingerprint) at the same precision and package version, every
config.pbtxt is the one these settings would write now, and the Python files beside the configs
are this package's. Anything else is named, and `serve` exports again.
"""

from __future__ import annotations

import filecmp
from pathlib import Path

from sctranslator import __version__
from sctranslator.export.onnx_format import read_onnx_metadata
from sctranslator.export.triton import (
    CLIENT_FILES,
    COUNTS_FILES,
    MODEL_VERSION,
    OUTPUT_KIND,
    PYTHON_GRAPH_FILES,
    model_dir_names,
)
from sctranslator.export.triton_config import (
    ONNX_FILE,
    ServingSettings,
    client_config,
    graph_config,
    model_parameters,
    render_config,
)
from sctranslator.export.triton_counts import PACKAGE_DIR, PACKAGE_SOURCE, counts_config
from sctranslator.graph.contract import DECODER, ENCODER
from sctranslator.model.identity import model_fingerprint
from sctranslator.model.network import TranslatorModel
from sctranslator.outputs import read_identity


def export_mismatch(model: TranslatorModel, repo: str | Path, settings: ServingSettings) -> str | None:
    """Why a repository's export cannot be served as it is for `model` and `settings`.

    Parameters
    ----------
    model : TranslatorModel
        The model to serve.
    repo : str or pathlib.Path
        The model repository.
    settings : ServingSettings
        How it should be served.

    Returns
    -------
    str or None
        None when the repository holds an export of `model` with `settings`, else the reason.
    """
    repo = Path(repo)
    dirs = {role: repo / name for role, name in model_dir_names(settings.name).items()}
    for directory in dirs.values():
        if not (directory / "config.pbtxt").is_file():
            return f"{directory} has no config.pbtxt (no earlier export)"
        record = read_identity(directory)
        if record is None or record.get("kind") != OUTPUT_KIND:
            return f"{directory} was not written by an export"
    decoder_file = dirs["decoder"] / MODEL_VERSION / ONNX_FILE  # the small graph: the same model facts
    try:
        metadata = read_onnx_metadata(decoder_file)
    except Exception as exc:  # a missing or unreadable graph: export again
        return f"{decoder_file} cannot be read ({exc})"
    if not (dirs["encoder"] / MODEL_VERSION / ONNX_FILE).is_file():
        return f"{dirs['encoder'] / MODEL_VERSION / ONNX_FILE} is missing"
    fingerprint = model_fingerprint(model)
    if metadata.get("fingerprint") != fingerprint:
        return (f"the exported graphs come from other weights (fingerprint {str(metadata.get('fingerprint'))[:12]}, "
                f"the model has {fingerprint[:12]})")
    if metadata["precision"] != settings.precision:
        return f"the export computes in {metadata['precision']}, {settings.precision} is asked for"
    if metadata["version"] != __version__:
        return f"the export was written by sctranslator {metadata['version']}, this is {__version__}"
    config = metadata["config"]
    parameters = model_parameters(metadata)
    genes, proteins, dim = int(config["max_genes"]), int(config["max_proteins"]), int(config["dim"])
    expected = {"client": client_config(settings, genes, proteins, parameters),
                "encoder": graph_config(settings, ENCODER, proteins, dim, parameters),
                "decoder": graph_config(settings, DECODER, proteins, dim, parameters),
                "counts": counts_config(settings, parameters)}
    for role, wanted in expected.items():
        if (dirs[role] / "config.pbtxt").read_text() != render_config(wanted):
            return f"{dirs[role] / 'config.pbtxt'} differs from what these serving options write"
    sources = {dirs["client"]: CLIENT_FILES, dirs["counts"]: COUNTS_FILES}
    if settings.backend == "python":
        sources[dirs["encoder"]] = sources[dirs["decoder"]] = PYTHON_GRAPH_FILES
    for directory, files in sources.items():
        for name, source in files.items():
            copy = directory / MODEL_VERSION / name
            if not copy.is_file() or not filecmp.cmp(copy, source, shallow=False):
                return f"{copy} differs from this package's {source.name}"
    package = dirs["counts"] / MODEL_VERSION / PACKAGE_DIR  # the names-in model's copy of this package
    for source in PACKAGE_SOURCE.rglob("*.py"):
        copy = package / source.relative_to(PACKAGE_SOURCE)
        if "demo" not in source.relative_to(PACKAGE_SOURCE).parts and (
                not copy.is_file() or not filecmp.cmp(copy, source, shallow=False)):
            return f"{copy} differs from this package's {source.relative_to(PACKAGE_SOURCE.parent)}"
    return None
