"""Which entries of an output folder its writer put there: a manifest, or a Zarr store's own metadata.

`--overwrite` replaces an output folder whole, so before it does, every entry inside must be one the
writer made (`sctranslator.outputs` refuses otherwise). Two ways to know:

- a folder written whole (a report, a bundle, an attention folder) lists its entries in its identity
  record when it is marked (`manifest`); entries it gains later, such as a checkpoint, are named by
  its writer up front;
- a Zarr store (translate's, which fills its chunks after it is marked) describes itself: its
  consolidated metadata names every group and array (the nodes), each node holds its metadata files
  and an array its chunks. Anything else (a user's notes, another tool's store copied in, an older
  output put inside it) is not ours.

In both, the markers the caller names (identity record, block ledger) and the hidden temporaries of
an interrupted atomic write (`util.atomic`) or of zarr's own chunk writes are ours too.

This module imports nothing of the package, so every layer may use it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

ZARR_GROUP_FILES = frozenset({".zgroup", ".zattrs", ".zmetadata", "zarr.json"})
ZARR_ARRAY_FILES = frozenset({".zarray", ".zattrs", "zarr.json"})
# Hidden temporaries beside a file or folder being written: ours (util.atomic: .NAME.tmp-PID-..., staging
# .NAME.partial-PID-..., .NAME.old-PID-...), a lock of ours, and zarr's (NAME.<uuid hex>.partial).
_OUR_TEMPORARY = re.compile(r"^\.+.+\.((tmp|partial|old)-\d+-.*|sctranslator-lock(\.takeover)?)$")
_ZARR_TEMPORARY = re.compile(r"^.*\.[0-9a-f]{32}\.partial$")
_CHUNK = re.compile(r"^(c|\d+)(\.\d+)*$")  # v2 "0.1" or nested "0/1"; v3 "c/0/1" or "c.0.1"


def is_temporary(name: str) -> bool:
    """Whether `name` is a hidden temporary an interrupted writer of ours (or zarr) may leave.

    Parameters
    ----------
    name : str
        A file or folder name.

    Returns
    -------
    bool
        True for our ``.NAME.tmp-*``, ``.partial-*``, ``.old-*`` and lock files, and zarr's
        ``NAME.<hex>.partial``.
    """
    return bool(_OUR_TEMPORARY.match(name) or _ZARR_TEMPORARY.match(name))


def is_zarr_store(folder: Path) -> bool:
    """Whether `folder` is the root of a Zarr store (v2 or v3).

    Parameters
    ----------
    folder : pathlib.Path
        A directory.

    Returns
    -------
    bool
        True when it holds a root group's metadata.
    """
    return any((folder / name).is_file() for name in (".zgroup", ".zmetadata", "zarr.json"))


def manifest(folder: Path, skip: Iterable[str] = ()) -> list[str]:
    """Every entry (file or folder) under `folder`, as sorted relative POSIX paths.

    Parameters
    ----------
    folder : pathlib.Path
        The folder, complete (staged, before it is renamed into place).
    skip : iterable of str
        Top-level names left out (the identity record itself).

    Returns
    -------
    list of str
        Relative paths.
    """
    skipped = set(skip)
    found = []
    for top, dirs, files in os.walk(folder):
        relative = Path(top).relative_to(folder)
        for name in (*dirs, *files):
            path = (relative / name).as_posix()
            if path not in skipped:
                found.append(path)
    return sorted(found)


def _zarr_nodes(root: Path) -> tuple[set[str], set[str]]:
    """(groups, arrays) of the store at `root`, as relative POSIX paths ("" the root group).

    From the consolidated metadata when there is some (it names exactly what the writer made), else
    from the folders that hold node metadata."""
    groups, arrays = {""}, set()
    try:
        consolidated = json.loads((root / ".zmetadata").read_text())["metadata"]
    except (OSError, ValueError, KeyError, TypeError):
        consolidated = None
    if isinstance(consolidated, dict):  # zarr v2
        for key in consolidated:
            folder, _, name = key.rpartition("/")
            if name == ".zgroup":
                groups.add(folder)
            elif name == ".zarray":
                arrays.add(folder)
        return groups, arrays
    try:
        nodes = json.loads((root / "zarr.json").read_text())["consolidated_metadata"]["metadata"]
    except (OSError, ValueError, KeyError, TypeError):
        nodes = None
    if isinstance(nodes, dict):  # zarr v3
        for key, meta in nodes.items():
            kind = meta.get("node_type") if isinstance(meta, dict) else None
            (arrays if kind == "array" else groups).add(key.strip("/"))
        return groups, arrays
    for top, _, files in os.walk(root):
        relative = Path(top).relative_to(root).as_posix()
        relative = "" if relative == "." else relative
        if ".zarray" in files:
            arrays.add(relative)
        elif ".zgroup" in files:
            groups.add(relative)
        elif "zarr.json" in files:
            try:
                kind = json.loads((Path(top) / "zarr.json").read_text()).get("node_type")
            except (OSError, ValueError, AttributeError):
                kind = None
            (arrays if kind == "array" else groups).add(relative)
    return groups, arrays


def _in_zarr_store(parts: tuple[str, ...], groups: set[str], arrays: set[str]) -> bool:
    """Whether the entry at `parts` (relative to the store) is a node, its metadata or an array's chunk."""
    path = "/".join(parts)
    if path in groups or path in arrays:
        return True
    for cut in range(len(parts) - 1, -1, -1):
        node, rest = "/".join(parts[:cut]), parts[cut:]
        if node in arrays:
            return (len(rest) == 1 and rest[0] in ZARR_ARRAY_FILES) or all(_CHUNK.match(p) for p in rest)
        if node in groups:
            return len(rest) == 1 and rest[0] in ZARR_GROUP_FILES
    return False


def foreign_entry(folder: Path, *, markers: Iterable[str] = (), listed: Iterable[str] | None = None) -> Path | None:
    """The first entry under `folder` that its writer did not make, or None when all are its own.

    Parameters
    ----------
    folder : pathlib.Path
        An output folder.
    markers : iterable of str
        Top-level names that are the writer's, with everything under them (identity record, ledger).
    listed : iterable of str or None
        The relative paths the writer recorded (`manifest`, plus entries it adds later); None for a
        folder that recorded none (written before manifests were kept): then only a Zarr store is
        checked, and any other folder is taken as its writer's.

    Returns
    -------
    pathlib.Path or None
        The first foreign entry found (a folder is reported, not what it holds).
    """
    own = set(markers)
    zarr = is_zarr_store(folder)
    if not zarr and listed is None:
        return None
    groups, arrays = _zarr_nodes(folder) if zarr else (set(), set())
    known = set(listed or ())
    for top, dirs, files in os.walk(folder):
        relative = Path(top).relative_to(folder).parts
        keep = []
        for name in sorted(dirs) + sorted(files):
            parts = (*relative, name)
            if (not relative and name in own) or is_temporary(name):
                continue
            ours = _in_zarr_store(parts, groups, arrays) if zarr else "/".join(parts) in known
            if not ours:
                return folder.joinpath(*parts)
            if name in dirs:
                keep.append(name)
        dirs[:] = keep  # walk only into our own folders (a foreign one is reported, not searched)
    return None
