"""All-or-nothing writes: one helper for files, one for directories.

Every output sctranslator writes goes through here, so a reader (or a resumed job) sees either
the previous complete version or the new complete one, never a half-written file, even after
kill -9. Files are written under a hidden temporary name in the same directory (same file system,
so the final `os.replace` is atomic) and flushed to disk before the rename.

Write errors the operating system reports (full disk or quota, read-only file system, no
permission) become one named error, `OutputWriteError` / `DiskFullError`, naming the path, the
free space there and, where the writer can estimate it, the space still needed (`write_errors`).

This module imports only `errors`, so every layer (model, export, engine, analysis, train) may use it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from sctranslator.errors import DiskFullError, OutputWriteError

FILE_MODE = 0o644  # mkstemp creates 0600; outputs are meant to be shared
TEMPORARY_TAGS = ("tmp", "partial", "old")  # the tags of `temporary_sibling` names
FULL = (errno.ENOSPC, errno.EDQUOT)
REFUSED = (errno.EROFS, errno.EACCES, errno.EPERM)
Needed = int | Callable[[], int] | None


def format_bytes(n: float) -> str:
    """A byte count for people: 1536 -> '1.5 KiB'.

    Parameters
    ----------
    n : float
        Bytes.

    Returns
    -------
    str
        With a binary unit (B, KiB, MiB, GiB, TiB).
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _errno_of(exc: BaseException) -> int | None:
    """The errno of an OS write failure, also when a library wrapped it (h5py's 'errno = 28' text)."""
    seen = 0
    while exc is not None and seen < 8:
        code = getattr(exc, "errno", None)
        if isinstance(code, int) and code in (*FULL, *REFUSED):
            return code
        found = re.search(r"errno = (\d+)", str(exc))
        if found and int(found.group(1)) in (*FULL, *REFUSED):
            return int(found.group(1))
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the file system of `path` (its nearest existing parent).

    Parameters
    ----------
    path : str or pathlib.Path
        Any path, existing or not.

    Returns
    -------
    int or None
        Bytes available to this user, or None if unknown.
    """
    path = Path(os.path.abspath(path))
    for candidate in (path, *path.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def write_error(exc: BaseException, path: str | Path, needed: Needed = None) -> OutputWriteError | None:
    """The named error for an OS write failure while writing `path`.

    Parameters
    ----------
    exc : BaseException
        What the write raised.
    path : str or pathlib.Path
        What was being written.
    needed : int, callable or None
        Bytes the write still needs (or a function giving them), for the full-disk message.

    Returns
    -------
    OutputWriteError or None
        DiskFullError for ENOSPC / EDQUOT, OutputWriteError for a read-only file system or no
        permission, None for other errors.
    """
    code = _errno_of(exc)
    if code is None:
        return None
    if code in FULL:
        try:
            estimate = needed() if callable(needed) else needed
        except Exception:  # noqa: BLE001 - an estimate must never hide the real error
            estimate = None
        free = free_bytes(path)
        what = "no space left on the device" if code == errno.ENOSPC else "the disk quota is exhausted"
        room = f"{format_bytes(free)} free there" if free is not None else "free space unknown"
        more = f", about {format_bytes(estimate)} more needed" if estimate else ""
        return DiskFullError(
            f"{what} while writing {path} ({room}{more}). Temporary files were removed and nothing incomplete "
            "was committed: free space (or choose an output on another disk) and run the same command again; "
            "what was completed is kept and the rest resumes")
    reason = "the file system is read-only" if code == errno.EROFS else "permission denied"
    return OutputWriteError(
        f"cannot write {path}: {reason} ({os.strerror(code)}). Choose an output path you can write to, or fix "
        "its permissions, and run the same command again; nothing incomplete was committed")


def require_space(path: str | Path, needed: int | None, margin: float = 0.1) -> None:
    """Refuse to start writing `path` when its file system lacks the space.

    For writers that cannot fail cleanly part-way: the HDF5 library can crash the process when the disk
    fills up during an object copy.

    Parameters
    ----------
    path : str or pathlib.Path
        What will be written.
    needed : int or None
        Bytes it needs; None: no check.
    margin : float
        Extra space asked for, as a fraction of `needed` (at least 1 MiB).

    Raises
    ------
    DiskFullError
        Less free space than `needed` plus the margin.
    """
    if not needed:
        return
    free = free_bytes(path)
    wanted = int(needed * (1 + margin)) + (1 << 20)
    if free is not None and free < wanted:
        raise DiskFullError(
            f"not enough free space to write {path}: {format_bytes(free)} free there, about {format_bytes(wanted)} "
            "needed. Nothing was written: free space (or choose an output on another disk) and run the same command "
            "again; what was completed is kept")


@contextlib.contextmanager
def write_errors(path: str | Path, needed: Needed = None) -> Iterator[None]:
    """Turn OS write failures inside the block into OutputWriteError / DiskFullError naming `path`.

    Parameters
    ----------
    path : str or pathlib.Path
        What the block writes.
    needed : int, callable or None
        Bytes it needs, for the full-disk message.

    Yields
    ------
    None
        Inside the block.

    Raises
    ------
    OutputWriteError
        The block failed to write (DiskFullError for a full disk or quota).
    """
    try:
        yield
    except DiskFullError as exc:
        if needed is None or exc.__cause__ is None:
            raise
        # An inner writer (a ledger marker, a temporary file) failed: name what this one writes and needs.
        raise write_error(exc.__cause__, path, needed) or exc from exc.__cause__
    except (OSError, RuntimeError) as exc:  # h5py reports some write failures as RuntimeError
        error = write_error(exc, path, needed)
        if error is None:
            raise
        raise error from exc


def remove_leftovers(path: str | Path) -> list[Path]:
    """Remove the hidden temporaries that a killed writer of `path` left beside it.

    Those are ``.NAME.tmp-*``, ``.NAME.partial-*``, ``.NAME.old-*``, and those of writers that stage
    inside a temporary (``..NAME.tmp-*...``). Only the holder of `path`'s lock may call this (no live
    writer then uses them).

    Parameters
    ----------
    path : str or pathlib.Path
        The output.

    Returns
    -------
    list of pathlib.Path
        What was removed.
    """
    path = Path(os.path.abspath(path))
    pattern = re.compile(r"^\.+" + re.escape(path.name) + r"\.(" + "|".join(TEMPORARY_TAGS) + r")-\d+-?")
    removed = []
    try:
        names = os.listdir(path.parent)
    except OSError:
        return removed
    for name in names:
        if pattern.match(name):
            leftover = path.parent / name
            with contextlib.suppress(OSError):
                remove_path(leftover)
                removed.append(leftover)
    return removed


def temporary_sibling(path: str | Path, tag: str = "tmp") -> Path:
    """A hidden name beside `path` that nothing else uses: ``.<name>.<tag>-<pid>-<random><suffix>``.

    The suffix is kept because some writers choose the format from it (anndata, numpy).

    Parameters
    ----------
    path : str or pathlib.Path
        The final file or directory.
    tag : str
        What the temporary is for (tmp, partial, old).

    Returns
    -------
    pathlib.Path
        The name; nothing is created.
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


def atomic_write_path(path: str | Path, write: Callable[[Path], None], needed: Needed = None) -> Path:
    """Write `path` through a writer that wants a file name, then rename it into place.

    For safetensors, anndata, h5py and the like; the temporary file is removed either way.

    Parameters
    ----------
    path : str or pathlib.Path
        The final file.
    write : callable
        ``write(tmp)`` creates the file `tmp` (same suffix as `path`).
    needed : int, callable or None
        Bytes the whole file needs, for a full-disk message.

    Returns
    -------
    pathlib.Path
        `path`.

    Raises
    ------
    OutputWriteError
        An OS write failure (full disk, read-only file system, no permission), naming `path`.
    """
    path = Path(path)
    tmp = None
    try:
        with write_errors(path, needed):
            tmp = temporary_sibling(path)
            write(tmp)
            _fsync_file(tmp)
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, path)
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                remove_path(tmp)  # a writer may have left a file, or a directory of its own
    return path


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write `path` through ``write(handle)`` on a binary file handle, then rename it into place.

    A handle (not a name) is given so that writers such as numpy add no suffix of their own. On any
    exception the temporary file is removed and `path` is left as it was.

    Parameters
    ----------
    path : str or pathlib.Path
        The final file.
    write : callable
        Writes the content to the handle it is given.

    Returns
    -------
    pathlib.Path
        `path`.

    Raises
    ------
    OutputWriteError
        An OS write failure, naming `path`.
    """
    def by_name(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            write(handle)

    return atomic_write_path(path, by_name)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a text file (UTF-8) atomically.

    Parameters
    ----------
    path : str or pathlib.Path
        The final file.
    text : str
        The content.

    Returns
    -------
    pathlib.Path
        `path`.

    Raises
    ------
    OutputWriteError
        An OS write failure, naming `path`.
    """
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def install_dir(staging: str | Path, final: str | Path) -> Path:
    """Move the complete directory `staging` to `final`, replacing what `final` held.

    The old `final` is first renamed aside and deleted only once the new one is in place, so a crash
    leaves either version whole (plus, at worst, a hidden ``.<name>.old-*`` to delete). The caller
    decides beforehand that `final` may be replaced (see `sctranslator.outputs`).

    Parameters
    ----------
    staging : str or pathlib.Path
        The finished directory.
    final : str or pathlib.Path
        Where it goes.

    Returns
    -------
    pathlib.Path
        `final`.
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
    """Move a complete file `staging` to `final` (an atomic rename over any previous file).

    Parameters
    ----------
    staging : str or pathlib.Path
        The finished file.
    final : str or pathlib.Path
        Where it goes.

    Returns
    -------
    pathlib.Path
        `final`.
    """
    os.replace(staging, final)
    return Path(final)


@contextlib.contextmanager
def staging_dir(final: str | Path) -> Iterator[Path]:
    """A fresh hidden directory beside `final` to build an output in; removed if the block fails.

    The caller installs it with ``install_dir(staging, final)`` before leaving the block.

    Parameters
    ----------
    final : str or pathlib.Path
        Where the output will go.

    Yields
    ------
    pathlib.Path
        The staging directory.
    """
    final = Path(final)
    staging = None
    try:
        with write_errors(final):
            final.parent.mkdir(parents=True, exist_ok=True)
            staging = temporary_sibling(final, "partial")
            staging.mkdir()
            yield staging
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def remove_path(path: str | Path) -> None:
    """Delete a file, link or directory tree that this package wrote (never call it on anything else).

    Parameters
    ----------
    path : str or pathlib.Path
        What to delete; absent paths are fine.
    """
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
