"""Object storage (S3, Google Cloud Storage, HTTP) for inputs and outputs, through fsspec.

Which locations are accepted, and how:

- ``s3://bucket/key`` (extra ``s3``: s3fs) and ``gs://bucket/key`` / ``gcs://`` (extra ``gcs``:
  gcsfs): read and write;
- ``http://`` and ``https://`` (fsspec's HTTP file system, aiohttp): read only;
- any other ``scheme://`` is refused with `UnsupportedStorageError`, and a location whose extra
  is not installed with `MissingExtraError`, both before any work (`check_location`).

Credentials and the endpoint come from the standard environment of each file system
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``;
``GOOGLE_APPLICATION_CREDENTIALS``, ...) or from `storage_options` (``--storage-options JSON``),
passed to fsspec as given.

Object stores have no rename, so outputs there keep their guarantees another way (docs/guide/atlas.md,
"Object storage"): every object is written by one PUT, which is all-or-nothing; a store's identity
record is its first object and its job record its last at creation; a block's chunks are written
before the block's marker object; the one-writer lock is an object created with a conditional put
(``If-None-Match: *``), which fails when the object exists (`RemoteLock`).

This module imports only `errors`, `util.optional` and `util.output_lock` (for the lock record and staleness
rule), so every layer may use it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from pathlib import PurePosixPath
from typing import Any

from sctranslator.errors import OptionError, OutputLockedError, StoreError, UnsupportedStorageError
from sctranslator.util.optional import import_optional
from sctranslator.util.output_lock import HEARTBEAT_S, POLL_S, TAKEOVER_STALE_S, _record, describe, why_stale

log = logging.getLogger(__name__)

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# scheme -> (module, pip extra); writable schemes first
WRITABLE = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs")}
READ_ONLY = {"http": ("aiohttp", "http"), "https": ("aiohttp", "http")}
SUPPORTED_TEXT = "s3:// and gs:// (read and write), http(s):// (read only), or a local path"


def scheme_of(location: Any) -> str | None:
    """The lower-case URL scheme of `location` ('s3', 'gs', ...).

    Parameters
    ----------
    location : object
        A path, URL or object.

    Returns
    -------
    str or None
        None for a local path or an object.
    """
    if not isinstance(location, str | os.PathLike):
        return None
    found = _URL.match(os.fspath(location)) if isinstance(os.fspath(location), str) else None
    return found.group(1).lower() if found else None


def is_url(location: Any) -> bool:
    """Whether `location` is a ``scheme://...`` string (object storage or any other URL).

    Parameters
    ----------
    location : object
        A path, URL or object.

    Returns
    -------
    bool
        True for a URL.
    """
    return scheme_of(location) is not None


# Schemes whose URLs pathlib folds unnoticed: Path("s3://b/k") is Path("s3:/b/k"), a local folder "s3:".
_FOLDABLE = ("s3", "s3a", "gs", "gcs", "http", "https")


def folded_url(location: Any) -> str | None:
    """The URL a `pathlib.Path` was made from (``Path("s3://b/k")`` is the local ``s3:/b/k``).

    Parameters
    ----------
    location : object
        A path, URL or object.

    Returns
    -------
    str or None
        The URL, or None when `location` is no such path.
    """
    if not isinstance(location, os.PathLike) or isinstance(location, str):
        return None
    parts = PurePosixPath(os.fspath(location)).parts
    if parts and parts[0].endswith(":") and parts[0][:-1].lower() in _FOLDABLE:
        return f"{parts[0]}//{'/'.join(parts[1:])}"
    return None


def check_not_folded(location: Any, *, what: str = "the input") -> None:
    """Refuse a `pathlib.Path` made from a URL, which would name a local folder ``s3:``.

    Parameters
    ----------
    location : object
        A path, URL or object.
    what : str
        Names it in the message.

    Raises
    ------
    UnsupportedStorageError
        A folded URL (the message says to pass the URL as a str).
    """
    url = folded_url(location)
    if url is not None:
        raise UnsupportedStorageError(
            f"{what} {location}: a pathlib.Path folds the URL's '//' (it would name a local folder "
            f"'{url.split('//')[0]}'); pass the URL as a str: {url!r} (nothing was read or written)")


def refuse_remote(command: str, *, reason: str | None = None, **locations: Any) -> None:
    """Refuse, before any work, URLs given to a command that reads and writes local files only.

    Parameters
    ----------
    command : str
        The command, for the message.
    reason : str or None
        What the message says instead of the default (local files only).
    **locations
        Flag name (``pred``, ``truth``, ...) -> its value or a list of values.

    Raises
    ------
    UnsupportedStorageError
        A URL (or pathlib-folded URL), naming the flag and what to do.
    """
    why = reason or (f"{command} reads and writes local files only (object storage is supported by translate); "
                     "copy it to a local path first")
    for name, given in locations.items():
        flag = "--" + name.replace("_", "-")
        for location in given if isinstance(given, list | tuple) else [given]:
            url = folded_url(location) or (str(location) if is_url(location) else None)
            if url is not None:
                raise UnsupportedStorageError(f"{flag} {url}: {why} (nothing was read or written)")


def check_location(location: Any, *, write: bool = False, what: str = "the input") -> None:
    """Refuse, before any work, a URL this package cannot serve; a no-op for local paths.

    Parameters
    ----------
    location : object
        A path, URL or object.
    write : bool
        It will be written (http(s) is read-only).
    what : str
        Names it in the message.

    Raises
    ------
    UnsupportedStorageError
        Another scheme, or writing to http(s).
    MissingExtraError
        The scheme's file system package (a pip extra) is not installed.
    OptionError
        A bucket root given as an output.
    """
    scheme = scheme_of(location)
    if scheme is None:
        return
    known = {**WRITABLE, **READ_ONLY}
    given = os.fspath(location).split("://", 1)
    if scheme in known and given[0] != scheme:
        # fsspec looks schemes up as written; one spelling keeps locks and records on one object.
        raise UnsupportedStorageError(
            f"{what} {location}: write the scheme in lower case: {scheme}://{given[1]}")
    if write and scheme in WRITABLE and "/" not in given[1].strip("/"):
        raise OptionError(f"{what} {location}: a bucket root is not an output; name a key inside the bucket, e.g. "
                          f"{scheme}://{given[1].strip('/') or 'BUCKET'}/predictions.zarr")
    if scheme not in known:
        raise UnsupportedStorageError(
            f"{what} {location}: the scheme '{scheme}://' is not supported; use {SUPPORTED_TEXT}")
    if write and scheme not in WRITABLE:
        raise UnsupportedStorageError(
            f"{what} {location}: {scheme}:// is read-only here; write to s3://, gs:// or a local path")
    module, extra = known[scheme]
    import_optional(module, extra, f"{scheme}:// locations")


def parse_storage_options(text: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``--storage-options`` JSON as a dict for fsspec.

    Parameters
    ----------
    text : str, dict or None
        JSON text, or a dict already.

    Returns
    -------
    dict or None
        The options; None for None.

    Raises
    ------
    OptionError
        Invalid JSON, or JSON that is not an object.
    """
    if text is None or isinstance(text, dict):
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OptionError(f"--storage-options {text!r} is not valid JSON ({exc.msg}); give a JSON object such as "
                          "'{\"anon\": true}' or "
                          "'{\"client_kwargs\": {\"endpoint_url\": \"http://host:9000\"}}'") from None
    if not isinstance(value, dict):
        raise OptionError(f"--storage-options must be a JSON object ({{...}}), not {type(value).__name__}")
    return value


def filesystem(location: str, storage_options: dict[str, Any] | None = None, *, write: bool = False,
               what: str = "the input") -> tuple[Any, str]:
    """The fsspec file system and the path inside it for a URL, after `check_location`.

    Parameters
    ----------
    location : str
        An s3://, gs:// or http(s):// URL.
    storage_options : dict or None
        fsspec options (credentials, endpoint_url, anon, ...).
    write : bool
        It will be written.
    what : str
        Names it in messages.

    Returns
    -------
    fs : fsspec.AbstractFileSystem
        The file system.
    path : str
        The path inside it.

    Raises
    ------
    UnsupportedStorageError
        As `check_location`.
    OptionError
        The file system refused the storage options.
    """
    check_location(location, write=write, what=what)
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(str(location), **(storage_options or {}))
    except (TypeError, ValueError) as exc:
        raise OptionError(f"{what} {location}: the storage options were refused ({exc})") from exc
    return fs, path.rstrip("/")


def join(location: str, *parts: str) -> str:
    """`location`/part/part; URLs always use '/'.

    Parameters
    ----------
    location : str
        A URL or path.
    *parts : str
        Path elements.

    Returns
    -------
    str
        The joined location.
    """
    return "/".join([str(location).rstrip("/"), *(p.strip("/") for p in parts)])


def name_of(location: str) -> str:
    """The last path element of a URL.

    Parameters
    ----------
    location : str
        A URL.

    Returns
    -------
    str
        Its last element.
    """
    return PurePosixPath(str(location).rstrip("/")).name


def zarr_store(location: str, storage_options: dict[str, Any] | None = None, *, read_only: bool = True) -> Any:
    """zarr's FsspecStore over a URL (asynchronous file systems: s3fs, gcsfs, http).

    Parameters
    ----------
    location : str
        The store's URL.
    storage_options : dict or None
        fsspec options.
    read_only : bool
        Open it read-only.

    Returns
    -------
    zarr.storage.FsspecStore
        The store.

    Raises
    ------
    StoreError
        It cannot be opened as a Zarr store.
    """
    check_location(location, write=not read_only)
    from zarr.storage import FsspecStore

    options = dict(storage_options or {})
    options.setdefault("asynchronous", True)
    # fsspec keeps one file system per set of options in each process; its cached listings would show
    # a store as it was before another call of ours replaced it (--overwrite): list afresh every time.
    options.setdefault("use_listings_cache", False)
    try:
        return FsspecStore.from_url(str(location), storage_options=options, read_only=read_only)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{location}: cannot be opened as a Zarr store ({type(exc).__name__}: {exc})") from exc


def remote_error(location: str, exc: BaseException, doing: str) -> StoreError:
    """One named error for a failed object-storage call (permissions, missing bucket, unreachable endpoint).

    Parameters
    ----------
    location : str
        The URL.
    exc : BaseException
        What the call raised.
    doing : str
        What was being done, for the message.

    Returns
    -------
    StoreError
        To raise.
    """
    endpoint = os.environ.get("AWS_ENDPOINT_URL") if scheme_of(location) in ("s3", "s3a") else None
    where = f" (endpoint {endpoint})" if endpoint else ""
    return StoreError(f"{doing} {location}{where} failed: {type(exc).__name__}: {exc}. Check the bucket exists, the "
                      "credentials (environment or --storage-options) and that the endpoint is reachable")


# -- one writer per output, on an object store ----------------------------------------------------
class RemoteLock:
    """The lock on one object-storage output: the object ``PARENT/.NAME.sctranslator-lock``.

    Created with a conditional put (``If-None-Match: *``: S3, and GCS's ``ifGenerationMatch=0``), so of
    two jobs exactly one creates it. Its record and staleness rule are those of local locks
    (`sctranslator.util.output_lock`): the holder rewrites it every HEARTBEAT_S seconds, and a lock not
    rewritten for ``stale_after_s()`` (or whose same-host PID is gone) is taken over through a second
    conditionally-created object, ``...sctranslator-lock.takeover``. Same interface as `OutputLock`.

    Parameters
    ----------
    output : str
        The locked output's URL.
    fs : fsspec.AbstractFileSystem
        Its file system.
    path : str
        The lock object's path in `fs`.
    record : dict
        This lock's record.
    """

    def __init__(self, output: str, fs: Any, path: str, record: dict[str, Any]) -> None:
        self.output = output
        self.fs = fs
        self.path = path
        self.record = record
        self.lost: str | None = None
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name=f"lock {name_of(output)}", daemon=True)
        self._beat.start()

    @staticmethod
    def lock_location(output: str) -> str:
        """The lock object's URL for an output.

        Parameters
        ----------
        output : str
            The output's URL.

        Returns
        -------
        str
            ``PARENT/.NAME.sctranslator-lock``.
        """
        parent, _, name = str(output).rstrip("/").rpartition("/")
        return f"{parent}/.{name}.sctranslator-lock"

    @classmethod
    def acquire(cls, output: str, *, wait: bool = False, timeout_s: float | None = None,
                storage_options: dict[str, Any] | None = None) -> RemoteLock:
        """Lock `output` for this process (see the class), taking over a stale lock.

        Parameters
        ----------
        output : str
            The output's URL.
        wait : bool
            Poll while another live job holds it.
        timeout_s : float or None
            Give up waiting after this many seconds; None: no limit.
        storage_options : dict or None
            fsspec options.

        Returns
        -------
        RemoteLock
            The held lock (its heartbeat runs in a thread).

        Raises
        ------
        OutputLockedError
            Another live job holds it.
        StoreError
            The lock object cannot be created (permissions, missing bucket).
        """
        url = cls.lock_location(output)
        fs, path = filesystem(url, storage_options, write=True, what="the output")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        said = False
        while True:
            record = _record()
            if _create(fs, path, record, url):
                return cls(str(output), fs, path, record)
            held, mtime = _read(fs, path)
            if mtime is None:
                continue  # released meanwhile: try again
            reason = why_stale(held, mtime)
            if reason is not None:
                _take_over(fs, path, held, reason)
                continue
            if not wait or (deadline is not None and time.monotonic() > deadline):
                raise OutputLockedError(
                    f"{output} is being written by another sctranslator job ({describe(held)}); lock object "
                    f"{url}. Wait for it with --wait (wait=True), or choose another output. A lock whose job has "
                    "died is taken over automatically")
            if not said:
                log.warning("waiting for %s: it is being written by %s", output, describe(held))
                said = True
            time.sleep(POLL_S)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            held, _ = _read(self.fs, self.path)
            if held is not None and held.get("token") != self.record["token"]:
                self.lost = describe(held)
                return
            if held is not None:
                # Rewriting refreshes LastModified, the age other hosts judge. Between the read and the
                # write another job could only take over a lock 120 s without heartbeat, so this is safe
                # unless this process stalls for that long between the two calls.
                with contextlib.suppress(Exception):
                    self.fs.pipe_file(self.path, json.dumps(self.record).encode())

    def still_held(self) -> bool:
        """Whether the lock object still carries this lock's token.

        Returns
        -------
        bool
            False once another job took the lock over.
        """
        held, _ = _read(self.fs, self.path)
        return held is not None and held.get("token") == self.record["token"]

    def release(self) -> None:
        """Stop the heartbeat and delete the lock object if it is still ours (else OutputLockedError)."""
        self._stop.set()
        held, mtime = _read(self.fs, self.path)
        if held is not None and held.get("token") == self.record["token"]:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self.path)
            return
        if self.lost is None and mtime is None:
            return
        raise OutputLockedError(
            f"the lock on {self.output} was taken over by another job ({self.lost or describe(held)}) while this "
            "one wrote it; its results may be mixed with that job's. Re-run once that job has finished")


def _create(fs: Any, path: str, record: dict[str, Any], url: str) -> bool:
    """Create the object `path` holding `record` only if it does not exist; False if it does."""
    try:
        fs.pipe_file(path, json.dumps(record).encode(), mode="create")
    except FileExistsError:
        return False
    except Exception as exc:  # noqa: BLE001 - every file system reports its own errors
        if "precondition" in str(exc).lower():
            return False
        raise remote_error(url, exc, "creating the lock object") from exc
    return True


def _read(fs: Any, path: str) -> tuple[dict[str, Any] | None, float | None]:
    """(record, modification time) of a lock object; (None, None) when there is none."""
    try:
        fs.invalidate_cache(path)
        info = fs.info(path)
        text = fs.cat_file(path)
    except FileNotFoundError:
        return None, None
    modified = info.get("LastModified") or info.get("mtime") or info.get("updated")
    mtime = modified.timestamp() if hasattr(modified, "timestamp") else time.time()
    if isinstance(modified, str):
        import datetime as _dt

        with contextlib.suppress(ValueError):
            mtime = _dt.datetime.fromisoformat(modified.replace("Z", "+00:00")).timestamp()
    try:
        record = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None, mtime
    return (record if isinstance(record, dict) and "token" in record else None), mtime


def _take_over(fs: Any, path: str, judged: dict[str, Any] | None, reason: str) -> None:
    guard = path + ".takeover"
    try:
        fs.pipe_file(guard, b"{}", mode="create")
    except Exception:  # noqa: BLE001 - exists (or a transient failure): retry from the top
        _, mtime = _read(fs, guard)
        if mtime is not None and time.time() - mtime > TAKEOVER_STALE_S:
            with contextlib.suppress(Exception):
                fs.rm_file(guard)
        time.sleep(POLL_S / 4)
        return
    try:
        current, mtime = _read(fs, path)
        same = (current is None and judged is None) or (
            current is not None and judged is not None and current.get("token") == judged.get("token"))
        if same and mtime is not None:
            log.warning("taking over the lock %s: %s (%s)", path, reason, describe(judged))
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(path)
    finally:
        with contextlib.suppress(Exception):
            fs.rm_file(guard)
