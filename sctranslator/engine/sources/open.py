"""`open_source`: pick the reader for a path or an in-memory object."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import anndata
import h5py

from sctranslator.engine.sources.base import Source, block_dtype
from sctranslator.engine.sources.hdf5 import H5Source
from sctranslator.engine.sources.memory import AnnDataSource
from sctranslator.engine.sources.modality import pick_modality
from sctranslator.engine.sources.soma import is_soma_experiment_object, open_soma, soma_uri
from sctranslator.engine.sources.zarr_store import MISSING_CHUNK_POLICIES, ZarrSource
from sctranslator.errors import InputDataError, OptionError, StoreError
from sctranslator.util.storage import is_url

SUPPORTED = ("an .h5ad file, an .h5mu file (MuData), an AnnData or MuData zarr store directory (zarr format 2 or "
             "3), a TileDB-SOMA experiment (its URI or an open tiledbsoma.Experiment), or an in-memory "
             "AnnData/MuData")
_ZARR_MARKERS = (".zgroup", "zarr.json")

log = logging.getLogger(__name__)


def open_source(data: Any, *, layer: str | None = None, modality: str | None = None, use_raw: bool = False,
                missing_chunks: str = "error", measurement: str | None = None,
                gene_column: str | None = None, storage_options: dict[str, Any] | None = None) -> Source:
    """Open `data` for streaming its rows (cells).

    Parameters
    ----------
    data : str, pathlib.Path, AnnData, MuData, tiledbsoma.Experiment or Source
        A path or URL (.h5ad, .h5mu, AnnData / MuData Zarr store, TileDB-SOMA experiment), an AnnData
        or MuData, or a Source (returned as is).
    layer : str or None
        Serve ``layers[layer]`` instead of X (a SOMA experiment: the X layer; None: raw when present,
        else the only one).
    modality : str or None
        The MuData modality (ignored for AnnData inputs); None picks "rna", else the one RNA-like
        modality.
    use_raw : bool
        Serve ``.raw.X`` with ``.raw.var`` (obs stays the AnnData's).
    missing_chunks : {'error', 'zeros'}
        What an absent chunk of a dense Zarr X means: refuse (naming the array, chunk and rows), or
        zeros (zarr omits all-zero chunks written with write_empty_chunks=False). A missing chunk of a
        CSR component is always an error.
    measurement : str or None
        A SOMA experiment's measurement; None: "RNA".
    gene_column : str or None
        A SOMA experiment's var column naming the genes; None: feature_name when present.
    storage_options : dict or None
        fsspec options for a URL input (s3://, gs://, http(s)://).

    Returns
    -------
    Source
        A picklable source of cells x genes.

    Raises
    ------
    StoreError
        An unreadable or damaged input.
    InputDataError
        A missing layer, raw or modality, or an input of an unknown kind.
    """
    uri = data if is_soma_experiment_object(data) else soma_uri(data)
    if uri is not None:
        source: Source = open_soma(uri, measurement=measurement, layer=layer, gene_column=gene_column,
                                   obs_query=None, use_raw=use_raw, modality=modality)
    elif measurement is not None:
        raise OptionError(f"--measurement {measurement!r} chooses the measurement of a TileDB-SOMA experiment; "
                          f"{data if isinstance(data, str | os.PathLike) else 'this input'} is not one "
                          "(for a MuData use --modality)")
    elif is_url(data):
        from sctranslator.engine.sources.remote import open_remote

        source = open_remote(str(data), storage_options=storage_options, layer=layer, modality=modality,
                             use_raw=use_raw, missing_chunks=missing_chunks)
    else:
        source = _open(data, layer=layer, modality=modality, use_raw=use_raw, missing_chunks=missing_chunks)
    if source.n_vars == 0:
        raise InputDataError(f"{source.describe()}: its matrix ({source._element_name()}) has no genes (var is "
                             "empty); give the RNA with its genes (a layer, .raw or another modality?)")
    log.debug("input: %r (blocks served as %s)", source, block_dtype(source.dtype))
    return source


def _open(data: Any, *, layer: str | None, modality: str | None, use_raw: bool, missing_chunks: str) -> Source:
    if missing_chunks not in MISSING_CHUNK_POLICIES:
        raise InputDataError(f"missing_chunks must be one of {', '.join(MISSING_CHUNK_POLICIES)}, "
                             f"not {missing_chunks!r}")
    if isinstance(data, Source):
        return data
    if isinstance(data, anndata.AnnData):
        return AnnDataSource(data, layer=layer, use_raw=use_raw)
    if type(data).__name__ == "MuData" and hasattr(data, "mod"):  # no mudata import just to check
        chosen = pick_modality(data.mod.keys(), modality, where="the MuData")
        source = AnnDataSource(data.mod[chosen], layer=layer, use_raw=use_raw)
        source.modality = chosen  # what the write-backs copy, as for stored MuData
        return source
    if not isinstance(data, str | os.PathLike):
        raise InputDataError(f"cannot read a {type(data).__name__}: pass {SUPPORTED}")
    path = Path(data).expanduser().absolute()
    if not path.exists():
        raise StoreError(f"{path}: no such file or directory (expected {SUPPORTED})")
    if path.is_dir():
        if not any((path / marker).exists() for marker in _ZARR_MARKERS):
            raise StoreError(f"{path}: a directory but not a zarr store (no .zgroup or zarr.json at its top); "
                             f"expected {SUPPORTED}")
        return ZarrSource(str(path), layer=layer, modality=modality, use_raw=use_raw, missing_chunks=missing_chunks)
    if path.stat().st_size == 0:
        raise StoreError(f"{path}: the file is empty (truncated?)")
    try:
        is_hdf5 = h5py.is_hdf5(path)
    except OSError as exc:
        raise StoreError(f"{path}: cannot be read ({exc})") from exc
    if not is_hdf5:
        if path.suffix.lower() == ".zip":
            raise StoreError(f"{path}: zipped zarr stores are not supported; unzip it to a directory first")
        raise StoreError(f"{path}: not an HDF5 file (corrupted, or of an unsupported kind); expected {SUPPORTED}")
    return H5Source(str(path), layer=layer, modality=modality, use_raw=use_raw)
