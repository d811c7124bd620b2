"""The zarr v2 files anndata writes for a small dict of numbers, made from per-type templates.

`ZarrSink.finish` records the run's statistics (a dict of ints, floats and bools, perhaps a dict of
them per worker) in ``uns['sctranslator']['run']``. anndata's ``write_elem`` creates each value as
a new zarr array, a few round trips through zarr's event loop each; on a busy machine that was a
fifth of a second per output store. A scalar's array metadata depends on its type only, so each
type's metadata files (and their consolidated entries) are made once by ``write_elem`` itself, and a
value's chunk is written by zarr into that type's template array: the files are byte for byte what
``write_elem`` writes (zarr decides, as there, that a zero value has no chunk). Anything else
(strings, arrays, numpy scalars, big integers, keys with '/') returns None and goes through
``write_elem``.
"""

from __future__ import annotations

import json
import threading
import warnings
from typing import Any

import numpy as np
import zarr

try:  # anndata >= 0.11
    from anndata.io import write_elem
except ImportError:  # pragma: no cover - anndata 0.10
    from anndata.experimental import write_elem

__all__ = ["scalar_entry_files"]

_INT64 = (-(2**63), 2**63)
_LOCK = threading.Lock()  # the template arrays are shared by every thread of the process
_TEMPLATES: dict[type, tuple[dict[str, bytes], dict[str, Any], Any, dict[str, Any]]] = {}
_SAMPLES: dict[type, Any] = {bool: True, int: 1, float: 1.0, dict: {}}
_CHUNK = "0"  # a 0-d array's one chunk


def _template(kind: type) -> tuple[dict[str, bytes], dict[str, Any], Any, dict[str, Any]]:
    """(metadata files, their consolidated entries, the array to write values into, its store's files)
    of one type."""
    if kind not in _TEMPLATES:
        files: dict[str, Any] = {}
        store = zarr.storage.MemoryStore(files)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # anndata's note about the zarr v2 default
            write_elem(zarr.open_group(store, mode="a", zarr_format=2), "v", _SAMPLES[kind])
            zarr.consolidate_metadata(store)
        entries = json.loads(files[".zmetadata"].to_bytes())["metadata"]
        metadata = {name[2:]: files[name].to_bytes() for name in files
                    if name.startswith("v/") and name[2:] != _CHUNK}
        consolidated = {name[2:]: entry for name, entry in entries.items() if name.startswith("v/")}
        array = None if kind is dict else zarr.open_array(store, path="v", mode="r+", zarr_format=2)
        _TEMPLATES[kind] = (metadata, consolidated, array, files)
    return _TEMPLATES[kind]


def _plain(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and k and "/" not in k and _plain(v) for k, v in value.items())
    if type(value) is int:
        return _INT64[0] <= value < _INT64[1]
    return type(value) in (bool, float)


def scalar_entry_files(value: dict[str, Any]) -> tuple[dict[str, bytes], dict[str, Any]] | None:
    """The files and consolidated-metadata entries ``write_elem(group, key, value)`` makes under ``key/``.

    Parameters
    ----------
    value : dict
        str keys (no '/'), values Python bool, int (64-bit), float, or such dicts.

    Returns
    -------
    tuple of (dict of str to bytes, dict of str to dict) or None
        Names relative to the entry (``.zgroup``, ``seconds/.zarray``, ``seconds/0``, ...) with their
        content, and the consolidated metadata of the metadata files; None for any other value.
    """
    if not isinstance(value, dict) or not _plain(value):
        return None
    files: dict[str, bytes] = {}
    entries: dict[str, Any] = {}
    with _LOCK:
        _add(value, "", files, entries)
    return files, entries


def _add(value: Any, prefix: str, files: dict[str, bytes], entries: dict[str, Any]) -> None:
    kind = dict if isinstance(value, dict) else type(value)
    metadata, consolidated, array, stored = _template(kind)
    files.update({prefix + name: data for name, data in metadata.items()})
    entries.update({prefix + name: entry for name, entry in consolidated.items()})
    if kind is dict:
        for key, item in value.items():
            _add(item, f"{prefix}{key}/", files, entries)
        return
    array[...] = np.array(value)
    chunk = stored.get(f"v/{_CHUNK}")
    if chunk is not None:  # zarr stores no chunk for a value equal to the fill value (zero)
        files[prefix + _CHUNK] = chunk.to_bytes()
