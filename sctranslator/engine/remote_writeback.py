"""Object-storage hooks of `translate`: locations checked before any work, write-backs uploaded whole.

A write-back file (``--write-h5ad`` / ``--write-mudata`` at an s3:// or gs:// URL) is written to
a local temporary file, marked with its identity record, and uploaded by one `put_file`: the
object appears complete (with its record) or not at all, as a local rename would give.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sctranslator.util.atomic import require_space
from sctranslator.util.storage import (
    check_location,
    check_not_folded,
    filesystem,
    is_url,
    parse_storage_options,
    remote_error,
)


def check_locations(data: Any, out: Any, write_h5ad: Any, write_mudata: Any,
                    storage_options: dict[str, Any] | str | None) -> dict[str, Any] | None:
    """Refuse unsupported URLs and missing extras among translate's input and outputs, before any work.

    Parameters
    ----------
    data : object
        translate's input.
    out : object
        The output store.
    write_h5ad : object
        The h5ad write-back.
    write_mudata : object
        The MuData write-back.
    storage_options : dict, str or None
        fsspec options, or their JSON.

    Returns
    -------
    dict or None
        The parsed storage options.

    Raises
    ------
    UnsupportedStorageError
        A scheme that cannot be read or written.
    MissingExtraError
        The scheme's file system package is not installed.
    OptionError
        Bad storage options.
    """
    options = parse_storage_options(storage_options)
    check_not_folded(data, what="the input")
    check_location(data, what="the input")
    for flag, path in (("--out", out), ("--write-h5ad", write_h5ad), ("--write-mudata", write_mudata)):
        check_not_folded(path, what=flag)
        check_location(path, write=True, what=flag)
    return options


def upload_write_back(url: str, write: Callable[[Path], Any], needed: int | None,
                      storage_options: dict[str, Any] | None) -> None:
    """Write a write-back file locally, then upload it to `url` as one object.

    Parameters
    ----------
    url : str
        The object's URL.
    write : callable
        ``write(tmp)`` writes the file.
    needed : int or None
        Bytes it needs locally.
    storage_options : dict or None
        fsspec options.

    Raises
    ------
    StoreError
        The upload failed.
    OutputWriteError
        The local temporary cannot be written.
    """
    assert is_url(url)
    fs, path = filesystem(url, storage_options, write=True, what="the output")
    folder = Path(tempfile.mkdtemp(prefix="sctranslator-upload-"))
    try:
        local = folder / Path(path).name
        require_space(folder, needed)
        write(local)
        try:
            fs.put_file(str(local), path)
        except Exception as exc:  # noqa: BLE001 - permissions, quota, endpoint: one named error
            raise remote_error(url, exc, "uploading the write-back file to") from exc
        with contextlib.suppress(Exception):
            fs.invalidate_cache(path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
