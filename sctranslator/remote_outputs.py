"""The output rule of `sctranslator.outputs` for outputs in object storage (s3://, gs://).

The same four rules hold (never an input, a free location is written, our own output of the same
kind is resumed or replaced with `overwrite`, anything else is refused), checked on objects:
a store's identity record is the object ``URL/.sctranslator-output.json``, a write-back file's is
its HDF5 root attribute, read through fsspec. The location is locked first (`storage.RemoteLock`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from typing import Any

from sctranslator.errors import OutputConflictError, StoreError
from sctranslator.outputs import (
    HDF5_SUFFIXES,
    IDENTITY_FILE,
    IDENTITY_KEY,
    KINDS,
    _article,
    _decoded,
    check_not_input,
    foreign_output_error,
    lock_output,
)
from sctranslator.storage import filesystem, join, remote_error


def exists(fs: Any, path: str) -> bool:
    """Whether an object, or any object under the prefix `path`, exists (listing caches dropped first)."""
    fs.invalidate_cache(path)
    return bool(fs.exists(path))


def read_remote_identity(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Our identity record of the object-storage output at `url`, or None when it carries none."""
    fs, path = filesystem(url, storage_options, what="the output")
    try:
        if fs.isfile(path):
            if not path.endswith(HDF5_SUFFIXES):
                return None
            import h5py

            with fs.open(path, "rb") as handle, contextlib.suppress(OSError), h5py.File(handle, "r") as h5:
                return _decoded(h5.attrs.get(IDENTITY_KEY))
            return None
        record = join(path, IDENTITY_FILE)
        return _decoded(fs.cat_file(record)) if exists(fs, record) else None
    except FileNotFoundError:
        return None


def claim_remote_output(url: str, kind: str, *, inputs: Iterable[Any] = (), overwrite: bool = False,
                        resumable: bool = False, storage_options: dict[str, Any] | None = None) -> bool:
    """`claim_output` for a URL: True when an output of ours is there, False when the location is free."""
    check_not_input(url, inputs)
    fs, path = filesystem(url, storage_options, write=True, what="the output")
    bucket = path.split("/", 1)[0]
    try:
        found_bucket = exists(fs, bucket)
    except Exception as exc:  # noqa: BLE001 - credentials, endpoint: reported as one named error
        raise remote_error(url, exc, "checking the bucket of") from exc
    if not found_bucket:
        raise StoreError(f"the output {url}: the bucket '{bucket}' does not exist (or these credentials cannot see "
                         "it); create it first, or check AWS_ENDPOINT_URL / --storage-options. Nothing was written")
    lock_output(url, storage_options)  # before looking: what is seen stays true until the job's scope ends
    try:
        present = exists(fs, path)
    except Exception as exc:  # noqa: BLE001
        raise remote_error(url, exc, "checking the output") from exc
    if not present:
        return False
    record = read_remote_identity(url, storage_options)
    if record is None:
        raise foreign_output_error(url, "exists and carries no sctranslator identity record")  # type: ignore[arg-type]
    found = str(record.get("kind"))
    if found != kind:
        raise OutputConflictError(
            f"{url} is a sctranslator {KINDS.get(found, found)}, not {_article(KINDS[kind])}; it is left untouched. "
            "Choose another output path")
    if not (overwrite or resumable):
        raise OutputConflictError(
            f"{url} already holds {_article(KINDS[kind])} from an earlier run. Pass --overwrite (overwrite=True) "
            "to replace it, or choose another output path")
    return True


def identity_bytes(kind: str) -> bytes:
    """The identity record object of a store of `kind`."""
    from sctranslator.outputs import identity_record

    return json.dumps(identity_record(kind), indent=2, default=str).encode()
