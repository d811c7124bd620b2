"""Tables `evaluate` reads from object storage and TileDB-SOMA experiments, read whole (they are
cells x proteins: small next to the RNA).

- a URL (s3://, gs://, http(s)://, read with `storage_options` through fsspec): an .h5ad / .h5mu
  file or an AnnData / MuData Zarr store (translate's output store included), read with anndata's
  own element reader from the remote group;
- a TileDB-SOMA experiment: its protein measurement (`measurement`, else the one named like
  proteins) as an AnnData, cell names from obs_id (as `tiledbsoma.io.from_h5ad` stores them).
"""

from __future__ import annotations

import contextlib
from typing import Any

from sctranslator.engine.sources.remote import BLOCK_BYTES
from sctranslator.errors import InputDataError, StoreError
from sctranslator.modalities import is_protein_modality, pick_protein_modality
from sctranslator.util.optional import import_optional
from sctranslator.util.storage import filesystem, join, remote_error, zarr_store

_ZARR_MARKERS = ("zarr.json", ".zgroup")
_OBS_ID = "obs_id"  # tiledbsoma.io.from_h5ad's obs_id_name / var_id_name defaults
_VAR_ID = "var_id"


def read_url_table(url: str, what: str, storage_options: dict[str, Any] | None = None) -> Any:
    """The AnnData or MuData stored at `url`, read whole.

    Parameters
    ----------
    url
        An s3://, gs://, http(s):// URL of an .h5ad / .h5mu file or an AnnData / MuData Zarr store.
    what
        What the table is, for messages ("protein truth", "predictions", ...).
    storage_options
        fsspec options (credentials, endpoint_url, anon, ...); None: the standard environment.

    Returns
    -------
    anndata.AnnData or mudata.MuData

    Raises
    ------
    UnsupportedStorageError, MissingExtraError
        A scheme this package cannot read, or its extra not installed.
    StoreError
        Nothing readable at `url` (missing, unreachable, not an AnnData / MuData).
    """
    url = str(url).rstrip("/")
    fs, path = filesystem(url, storage_options, what=what)
    try:
        if any(fs.exists(join(path, marker)) for marker in _ZARR_MARKERS):
            import zarr

            return _read_root(zarr.open_group(zarr_store(url, storage_options), mode="r"), url, what)
        if not fs.isfile(path):
            raise StoreError(f"{what} {url} does not exist (no object, nor a Zarr store with zarr.json or .zgroup)")
        handle = fs.open(path, "rb", block_size=BLOCK_BYTES, cache_type="blockcache")
    except (StoreError, InputDataError):
        raise
    except Exception as exc:  # noqa: BLE001 - credentials, endpoint, permissions
        raise remote_error(url, exc, f"reading the {what}") from exc
    import h5py

    try:
        with h5py.File(handle, "r") as group:
            return _read_root(group, url, what)
    except OSError as exc:
        raise StoreError(f"cannot read {what} {url}: not an HDF5 file nor a Zarr store ({exc})") from exc
    finally:
        with contextlib.suppress(Exception):
            handle.close()


def _read_root(group: Any, url: str, what: str) -> Any:
    """An AnnData (or a MuData assembled from its modalities, obs and uns) from an open root group."""
    from anndata.io import read_elem

    try:
        kind = group.attrs.get("encoding-type")
        if kind == "MuData" or ("mod" in group and "X" not in group):
            import mudata

            modalities = {str(name): read_elem(group["mod"][name]) for name in group["mod"]}
            with mudata.set_options(pull_on_update=False):
                table = mudata.MuData(modalities)
            if "uns" in group:
                table.uns.update(read_elem(group["uns"]))
            return table
        return read_elem(group)
    except Exception as exc:  # anndata/zarr/h5py raise many types for a malformed store
        raise StoreError(f"cannot read {what} {url} as AnnData / MuData: {type(exc).__name__}: {exc}") from exc


def read_soma_proteins(uri: str, what: str, measurement: str | None = None) -> Any:
    """The protein measurement of the TileDB-SOMA experiment `uri` as an AnnData (cells x proteins).

    Parameters
    ----------
    uri
        The experiment's URI (a local folder or a tiledb:// URI).
    what
        What the table is, for messages.
    measurement
        The measurement holding the proteins; None: the one named like proteins (prot, protein,
        ADT, ...).

    Returns
    -------
    anndata.AnnData
        X from the measurement's raw layer when present (else its only layer); obs names from
        obs_id, protein names from var_id, when the experiment has those columns.

    Raises
    ------
    MissingExtraError
        tiledbsoma (the `soma` extra) is not installed.
    StoreError
        The experiment cannot be opened.
    InputDataError
        No protein measurement, or one with several layers and no raw one.
    """
    soma = import_optional("tiledbsoma", "soma", "reading TileDB-SOMA experiments")
    import tiledbsoma.io as soma_io

    try:
        experiment = soma.Experiment.open(uri)
    except Exception as exc:
        raise StoreError(f"{what} {uri}: cannot be opened as a TileDB-SOMA experiment ({type(exc).__name__})") from exc
    with experiment:
        names = sorted(str(name) for name in experiment.ms)
        if measurement is None and not any(is_protein_modality(name) for name in names):
            raise InputDataError(f"{what} {uri}: the SOMA experiment has no protein measurement (it has "
                                 f"{names or 'none'}); name it with --truth-modality (truth_modality=)")
        name = pick_protein_modality(names, measurement, f"{what} {uri} (a SOMA experiment)",
                                     "--truth-modality (truth_modality=) naming the measurement")
        layers = sorted(str(key) for key in experiment.ms[name].X)
        layer = "raw" if "raw" in layers else (layers[0] if len(layers) == 1 else None)
        if layer is None:
            raise InputDataError(f"{what} {uri}: ms['{name}'].X has layers {layers} and none named 'raw'; keep the "
                                 "raw protein counts in X['raw']")
        obs_columns = experiment.obs.schema.names
        var_columns = experiment.ms[name].var.schema.names
        table = soma_io.to_anndata(experiment, name, X_layer_name=layer,
                                   obs_id_name=_OBS_ID if _OBS_ID in obs_columns else None,
                                   var_id_name=_VAR_ID if _VAR_ID in var_columns else None)
    return table
