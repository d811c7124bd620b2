"""The ONNX file the onnxruntime backend runs: the user's, or the model exported once and cached."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from sctranslator.engine.backends.base import BackendSpec
from sctranslator.errors import BackendError

if TYPE_CHECKING:
    from sctranslator.model import TranslatorModel

log = logging.getLogger(__name__)


def onnx_file_for(spec: BackendSpec, model: TranslatorModel) -> str:
    """The ONNX export to run: ``spec.onnx_path``, or one exported from `model` and cached.

    The cache lives in ``spec.onnx_cache_dir``, else $SCTRANSLATOR_CACHE, else ~/.cache/sctranslator;
    files are named by the model's fingerprint, the precision and the export format, each export
    two files (model-....onnx and model-....decoder.onnx).

    Parameters
    ----------
    spec : BackendSpec
        Its ``onnx_path``, ``onnx_cache_dir`` and ``precision`` are read.
    model : TranslatorModel
        The model to export when no file is given.

    Returns
    -------
    str
        The path of the encoder graph (the decoder graph lies beside it).

    Raises
    ------
    BackendError
        A given ``onnx_path`` does not exist.
    ExportError
        The on-demand export failed.
    """
    if spec.onnx_path:
        if not Path(spec.onnx_path).is_file():
            raise BackendError(f"ONNX file not found: {spec.onnx_path}")
        return spec.onnx_path
    from sctranslator.export import export_onnx
    from sctranslator.export.onnx_format import FORMAT_VERSION, decoder_file_name
    from sctranslator.model.identity import model_fingerprint

    cache = Path(spec.onnx_cache_dir or os.environ.get("SCTRANSLATOR_CACHE", Path.home() / ".cache" / "sctranslator"))
    cache.mkdir(parents=True, exist_ok=True)
    # The format version in the name: a cache written by a version with another layout is not reused.
    path = cache / f"model-{model_fingerprint(model)[:16]}-{spec.precision}-v{FORMAT_VERSION}.onnx"
    # export_onnx validates, then moves the decoder and then the encoder file into place.
    if not (path.exists() and (cache / decoder_file_name(path)).exists()):
        seconds, gigabytes = export_cost(model)
        log.info("exporting the model to ONNX (%s) once, before the run: roughly %.0f s and %.1f GB of memory "
                    "for its %s parameters; cached at %s for later runs", spec.precision, seconds, gigabytes,
                    f"{model.n_parameters():,}", path)
        # Batch 1 only: the padded and unpadded cases check these weights, while the graphs' batch axis is
        # the same for every model (tested); batch 3 of unpadded full-size cells would pass the 2.5 GB budget.
        export_onnx(model, path, precision=spec.precision, overwrite=path.exists(), validation_batch_sizes=(1,))
    return str(path)


# Measured on 2 busy CPU cores: the full-size published model (117.4 M parameters), both graphs
# validated at batch 1, 26-46 s and a 2.1 GiB peak (VmHWM, the model included); a tiny model still
# about 10 s (tracing and validation cost the same whatever the size).
_FULL_SIZE = (117_411_371, 40.0, 2.3)
_FIXED_SECONDS = 10.0


def export_cost(model: TranslatorModel) -> tuple[float, float]:
    """A rough cost of exporting `model`: a fixed cost plus a share of the full-size measurement.

    Parameters
    ----------
    model : TranslatorModel
        The model.

    Returns
    -------
    seconds : float
        Estimated export time.
    gigabytes : float
        Estimated peak memory.
    """
    parameters, seconds, gigabytes = _FULL_SIZE
    share = model.n_parameters() / parameters
    return _FIXED_SECONDS + (seconds - _FIXED_SECONDS) * share, 0.5 + (gigabytes - 0.5) * share
