"""Inputs in object storage or on a web server (s3://, gs://, http(s)://), read through fsspec.

A Zarr store is read through zarr's `FsspecStore` (chunk by chunk, missing chunks checked as for
local stores); an h5ad/h5mu file through an fsspec file object that h5py reads in blocks
(`BLOCK_BYTES` per request, the most recent blocks cached), so a block of cells costs the byte
ranges its rows occupy, never the whole file.
"""

from __future__ import annotations

import contextlib
from typing import Any

import h5py

from sctranslator.engine.sources.hdf5 import _CHUNK_CACHE_BYTES, H5Source
from sctranslator.engine.sources.zarr_store import ZarrSource
from sctranslator.errors import StoreError
from sctranslator.util.storage import filesystem, join, remote_error, zarr_store

BLOCK_BYTES = 4 << 20  # bytes per ranged read of a remote HDF5 file
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class RemoteZarrSource(ZarrSource):
    """An AnnData (or MuData) Zarr store at a URL.

    Parameters
    ----------
    url : str
        The store's s3://, gs:// or http(s):// URL.
    storage_options : dict or None
        fsspec options (credentials, endpoint_url, anon, ...).
    **kwargs
        layer, modality, use_raw, missing_chunks: as for a local file.
    """

    def __init__(self, url: str, *, storage_options: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.storage_options = storage_options
        super().__init__(url, **kwargs)

    def _open(self) -> Any:
        import zarr

        try:
            return zarr.open_group(zarr_store(self.path, self.storage_options), mode="r")
        except Exception as exc:
            raise StoreError(f"{self.path}: cannot be opened as a zarr group ({type(exc).__name__}: {exc}); the "
                             "store is incomplete, corrupted, or not readable with these credentials") from exc


class RemoteH5Source(H5Source):
    """An .h5ad / .h5mu file at a URL, read by h5py through an fsspec file object in blocks.

    Parameters
    ----------
    url : str
        The file's URL.
    storage_options : dict or None
        fsspec options (credentials, endpoint_url, anon, ...).
    **kwargs
        layer, modality, use_raw, missing_chunks: as for a local file.
    """

    _TRANSIENT = (*H5Source._TRANSIENT, "_file")

    def __init__(self, url: str, *, storage_options: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.storage_options = storage_options
        super().__init__(url, **kwargs)

    def _reset_transient(self) -> None:
        super()._reset_transient()
        self._file = None

    def _open(self) -> h5py.File:
        fs, path = filesystem(self.path, self.storage_options)
        try:
            self._file = fs.open(path, "rb", block_size=BLOCK_BYTES, cache_type="blockcache")
            return h5py.File(self._file, "r", rdcc_nbytes=_CHUNK_CACHE_BYTES)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot be opened as HDF5 ({exc}); the file is truncated, corrupted, "
                             "or not an h5ad/h5mu file") from exc

    def _close_handle(self, handle: Any) -> None:
        super()._close_handle(handle)
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None


def _has_hdf5_signature(handle: Any, size: int | None) -> bool:
    """Whether the file holds an HDF5 superblock where HDF5 looks for one: at byte 0, or after a
    userblock at 512, 1024, 2048, ... (mudata writes a 512-byte userblock into every .h5mu)."""
    offset = 0
    while size is None or offset + len(_HDF5_SIGNATURE) <= size:
        handle.seek(offset)
        head = handle.read(len(_HDF5_SIGNATURE))
        if head == _HDF5_SIGNATURE:
            return True
        if len(head) < len(_HDF5_SIGNATURE):
            return False
        offset = 512 if offset == 0 else offset * 2
    return False


def open_remote(url: str, *, storage_options: dict[str, Any] | None = None,
                **kwargs: Any) -> RemoteZarrSource | RemoteH5Source:
    """The source for a URL: a Zarr store (zarr.json / .zgroup at its top) or an HDF5 file.

    Parameters
    ----------
    url : str
        The location.
    storage_options : dict or None
        fsspec options (credentials, endpoint_url, anon, ...).
    **kwargs
        layer, modality, use_raw, missing_chunks: as for a local file.

    Returns
    -------
    RemoteZarrSource or RemoteH5Source
        The source.

    Raises
    ------
    UnsupportedStorageError
        A scheme that cannot be read.
    MissingExtraError
        The scheme's file system package is not installed.
    StoreError
        A location that holds neither, cannot be found, or cannot be read.
    """
    url = str(url).rstrip("/")
    fs, path = filesystem(url, storage_options)
    try:
        markers = [m for m in ("zarr.json", ".zgroup") if fs.exists(join(path, m))]
        if markers:
            return RemoteZarrSource(url, storage_options=storage_options, **kwargs)
        if not fs.isfile(path):
            raise StoreError(f"{url}: no such object (nor a Zarr store with zarr.json or .zgroup at its top); "
                             "expected an .h5ad/.h5mu object or an AnnData Zarr store")
        with fs.open(path, "rb") as handle:
            hdf5 = _has_hdf5_signature(handle, fs.size(path))
    except StoreError:
        raise
    except Exception as exc:  # noqa: BLE001 - credentials, endpoint, permissions
        raise remote_error(url, exc, "reading the input") from exc
    if not hdf5:
        raise StoreError(f"{url}: not an HDF5 file nor a Zarr store (corrupted, or of an unsupported kind)")
    kwargs.pop("missing_chunks", None)
    return RemoteH5Source(url, storage_options=storage_options, **kwargs)
