"""All-or-nothing writes: one helper for files, one for directories.

Every output sctranslator writes goes through here, so a reader (or a resumed job) sees either
the previous complete version or the new complete one, never a half-written file, even after
kill -9. Files are written under a hidden temporary name in the same directory (same file system,
so the final `os.replace` is atomic) and flushed to disk before the rename.

This module is a leaf: it imports nothing of ours, so every layer (model, export, engine,
analysis, train) may use it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

FILE_MODE = 0o644  # mkstemp creates 0600; outputs are meant to be shared


def temporary_sibling(path: str | Path, tag: str = "tmp") -> Path:
    """A hidden name beside `path` (`.<name>.<tag>-<pid>-<random><suffix>`) that nothing else uses.

    The suffix is kept because some writers choose the format from it (anndata, numpy).
    """
    path = Path(path)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{tag}-{os.getpid()}-",
                                    suffix=path.suffix)
    os.close(handle)
    os.unlink(name)  # only the unique name is wanted; the writer creates the file or directory
    return Path(name)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def atomic_write_path(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Like `atomic_write`, for writers that want a file name (safetensors, anndata, h5py).

    `write(tmp)` must create the file `tmp` (same suffix as `path`).
    """
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        write(tmp)
        _fsync_file(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write `path` through `write(handle)` on a binary file handle, then rename it into place.

    A handle (not a name) is given so that writers such as numpy add no suffix of their own.
    On any exception the temporary file is removed and `path` is left as it was.
    """
    def by_name(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            write(handle)

    return atomic_write_path(path, by_name)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a text file (UTF-8) atomically."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def install_dir(staging: str | Path, final: str | Path) -> Path:
    """Move the complete directory `staging` to `final`, replacing what `final` held.

    The old `final` is first renamed aside and deleted only once the new one is in place, so a
    crash leaves either version whole (plus, at worst, a hidden `.<name>.old-*` to delete). The
    caller decides beforehand that `final` may be replaced (see `sctranslator.outputs`).
    """
    staging, final = Path(staging), Path(final)
    old = None
    if final.exists() or final.is_symlink():
        old = temporary_sibling(final, "old")
        os.replace(final, old)
    os.replace(staging, final)
    if old is not None:
        remove_path(old)
    return final


def install_file(staging: str | Path, final: str | Path) -> Path:
    """Move a complete file `staging` to `final` (atomic rename over any previous file)."""
    os.replace(staging, final)
    return Path(final)


@contextlib.contextmanager
def staging_dir(final: str | Path) -> Iterator[Path]:
    """A fresh hidden directory beside `final` to build an output in; removed if the block fails.

    The caller installs it with `install_dir(staging, final)` before leaving the block.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_sibling(final, "partial")
    staging.mkdir()
    try:
        yield staging
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def remove_path(path: str | Path) -> None:
    """Delete a file, link or directory tree that this package wrote (never call it on anything else)."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
