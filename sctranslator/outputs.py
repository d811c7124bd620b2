"""Never delete what is not ours: which output paths a command may write, and how it marks its own.

The rule, for every command that writes (translate, knockout, attention, evaluate, finetune,
export onnx/triton, demo, convert):

1. The output may not be an input, lie inside an input, or contain an input (real paths compared,
   symbolic links resolved). Refused before anything is touched, `overwrite` or not.
2. A free path is written.
3. A path that holds an output of the same kind, marked by our identity record, is replaced only
   with `overwrite` (or resumed, for resumable jobs whose job record matches).
4. Anything else is refused and left untouched, `overwrite` or not: a path holding something
   sctranslator did not write, a symbolic link, or a sctranslator output of another kind.
5. No output inside another: a path that lies inside a sctranslator output (or a job ledger beside
   one) is refused, since replacing or removing that output would take it along. The one exception
   is a translate collection folder, which holds its own per-input translate stores.
6. Replacing a folder of ours (`overwrite`, or knockout / attention, which rebuild their output on
   every run) first checks that everything inside it is ours: the entries its identity record lists
   (`util.folder_contents.manifest`), or for a Zarr store the groups and arrays its metadata names and
   their chunks, plus our markers and hidden temporaries. A file someone put inside is refused,
   named, and nothing is deleted.
Rules 5 and 6 are checked for local paths only (in object storage each parent or object would cost a
round trip).

The identity record of an output:
- a directory (Zarr store, bundle, report folder, Triton model directory): the file
  `.sctranslator-output.json` inside it, `{"format": "sctranslator-output", "kind": ..., ...}`;
- an HDF5 file (.h5ad, .h5mu): the same JSON text in the root attribute `sctranslator-output`;
- an ONNX file: the same JSON text in the model's metadata_props under `sctranslator-output`.
Records are written into the staged output before it is renamed into place, so an output carries
its record from the moment it exists (see `sctranslator.util.atomic`). A folder's record also lists
what the folder holds at that moment ("contents"), plus the entries its writer adds later; a Zarr
store lists nothing, its metadata describes it.

One writer per output: `claim_output` first locks the output (`sctranslator.util.output_lock`: a hidden
`.NAME.sctranslator-lock` file beside it), then checks it, so no two jobs can both find a path free
or both resume the same store. The lock is held until the enclosing `writing()` scope ends (every
public API function that writes is wrapped by `one_writer`, and the command line wraps each
sub-command), and another job on the same output refuses with OutputLockedError or, with
`wait=True` / `--wait`, waits for it and then checks the output afresh. Under the lock, hidden
temporaries that an earlier, killed writer of the same output left beside it are removed.

This module sits just above `errors`: every layer may use it.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import inspect
import json
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sctranslator.errors import OutputConflictError, OutputLockedError, StoreError, UnsupportedStorageError
from sctranslator.util.atomic import remove_leftovers, write_errors
from sctranslator.util.folder_contents import foreign_entry, is_zarr_store, manifest
from sctranslator.util.output_lock import OutputLock
from sctranslator.util.storage import RemoteLock, filesystem, is_url, join, remote_error

IDENTITY_FILE = ".sctranslator-output.json"
IDENTITY_KEY = "sctranslator-output"  # HDF5 root attribute / ONNX metadata key
FORMAT = "sctranslator-output"
HDF5_SUFFIXES = (".h5ad", ".h5mu", ".h5")
LEDGER_DIR = ".sctranslator-job"  # a translate store's block ledger, inside the store
COLLECTION_KIND = "translate-collection"
# Outputs rebuilt whole at the end of every run, a resumed one included (their ledgers live beside them).
REBUILT_KINDS = ("knockout", "attention")
# A folder kept across --overwrite (its record is rewritten, its own stores replaced one by one).
KEPT_KINDS = (COLLECTION_KIND,)
# The ledger of a knockout / attention output: .<name>.<kind>-job beside it (engine.block_results).
_SIDE_LEDGER = re.compile(r"^\..+\.(knockout|attention)-job$")
ONNX_SUFFIXES = (".onnx",)

# Kind -> what it is, for messages.
KINDS: dict[str, str] = {
    "translate": "translate prediction store",
    "translate-writeback": "translate write-back file (--write-h5ad / --write-mudata)",
    "knockout": "knockout output",
    "attention": "attention output folder",
    "evaluate": "evaluate report folder",
    "finetune": "finetune model bundle",
    "finetune-work": "finetune checkpoint folder",
    "export-onnx": "exported ONNX file",
    "export-triton": "exported Triton model directory",
    "demo": "demo output folder",
    "bundle": "converted model bundle",
    COLLECTION_KIND: "translate collection folder (several inputs, one store each)",
}


def _article(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def identity_record(kind: str, **extra: Any) -> dict[str, Any]:
    """The record that marks an output of `kind` as ours.

    Parameters
    ----------
    kind : str
        The kind of output (one of KINDS: translate, knockout, export, ...).
    **extra
        Further JSON fields.

    Returns
    -------
    dict
        format, kind, version and the extra fields.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}; one of {sorted(KINDS)}")
    from sctranslator import __version__

    return {"format": FORMAT, "kind": kind, "sctranslator": __version__, **extra}


def identity_json(kind: str, **extra: Any) -> str:
    """The identity record as JSON text (for ONNX metadata_props and HDF5 attributes).

    Parameters
    ----------
    kind : str
        The kind of output (one of KINDS: translate, knockout, export, ...).
    **extra
        Further JSON fields.

    Returns
    -------
    str
        JSON.
    """
    return json.dumps(identity_record(kind, **extra), default=str)


def write_identity(path: str | Path, kind: str, *, later: Iterable[str] = (), **extra: Any) -> None:
    """Mark the (staged) output at `path` as a sctranslator output of `kind`.

    Directories get ``.sctranslator-output.json``, listing what they hold now ("contents"; not for a
    Zarr store, whose metadata says it); HDF5 files a root attribute. ONNX files carry the record in
    their metadata: exporters add ``{IDENTITY_KEY: identity_json(kind)}`` themselves.

    Parameters
    ----------
    path : str or pathlib.Path
        The output.
    kind : str
        The kind of output (one of KINDS: translate, knockout, export, ...).
    later : iterable of str
        Entries (relative paths) a directory's writer adds after marking it, e.g. a checkpoint; they
        are its own when it is replaced.
    **extra
        Further JSON fields.
    """
    from sctranslator.util.atomic import atomic_write_text

    path = Path(path)
    if path.is_dir():
        if not is_zarr_store(path):
            extra["contents"] = sorted({*manifest(path, skip=(IDENTITY_FILE,)), *later})
        atomic_write_text(path / IDENTITY_FILE, json.dumps(identity_record(kind, **extra), indent=2, default=str))
    elif path.suffix in HDF5_SUFFIXES:
        import h5py

        with h5py.File(path, "a") as handle:
            handle.attrs[IDENTITY_KEY] = identity_json(kind, **extra)
    else:
        raise ValueError(f"cannot mark {path}: not a directory, HDF5 or ONNX file")


def _decoded(text: Any) -> dict[str, Any] | None:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    try:
        record = json.loads(text)
    except (TypeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("format") == FORMAT else None


def read_identity(path: str | Path) -> dict[str, Any] | None:
    """Our identity record of the output at `path`.

    Parameters
    ----------
    path : str or pathlib.Path
        A directory, HDF5 file or ONNX file.

    Returns
    -------
    dict or None
        The record, or None when it has none (it is not ours).
    """
    path = Path(path)
    if path.is_symlink() or not path.exists():
        return None
    if path.is_dir():
        try:
            return _decoded((path / IDENTITY_FILE).read_text())
        except (OSError, UnicodeDecodeError):
            return None
    if path.suffix in HDF5_SUFFIXES:
        try:
            import h5py

            with h5py.File(path, "r") as handle:
                return _decoded(handle.attrs.get(IDENTITY_KEY))
        except OSError:  # not an HDF5 file
            return None
    if path.suffix in ONNX_SUFFIXES:
        try:
            import onnx

            proto = onnx.load(str(path), load_external_data=False)
        except Exception:  # noqa: BLE001 - onnx raises many types for files that are not ONNX
            return None
        return _decoded({p.key: p.value for p in proto.metadata_props}.get(IDENTITY_KEY))
    return None


# Kinds of output that may live in object storage (s3://, gs://); see `sctranslator.util.storage`.
REMOTE_KINDS = ("translate", "translate-writeback", "translate-collection")
# A URL that went through pathlib ("s3://b/k" -> "s3:/b/k"): written as given it would become a local
# folder named "s3:"; refused like any URL a command cannot write.
_MANGLED_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+:/(?!/)")


def _real(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def _overlap(output: Path, candidate: Path) -> str | None:
    if output == candidate:
        return "is"
    if candidate in output.parents:
        return "lies inside"
    if output in candidate.parents:
        return "contains"
    return None


def check_not_input(path: str | Path, inputs: Iterable[Any]) -> None:
    """Refuse an output path that is, lies inside, or contains one of the command's inputs.

    Parameters
    ----------
    path : str or pathlib.Path
        The output.
    inputs : iterable
        Input paths, or objects with a ``source`` path (a loaded TranslatorModel); others are ignored.

    Raises
    ------
    OutputConflictError
        `path` overlaps an input.
    """
    remote = is_url(path)
    output = Path(str(path).rstrip("/")) if remote else _real(path)
    for item in inputs:
        if not isinstance(item, (str, Path)):
            item = getattr(item, "source", None)  # a loaded model remembers the file it came from
        if not isinstance(item, (str, Path)) or str(item) in ("", "in-memory"):
            continue  # in-memory data or models have no path to protect
        if is_url(item) != remote:
            continue  # a URL and a local path never overlap
        relation = _overlap(output, Path(str(item).rstrip("/")) if remote else _real(item))
        if relation is not None:
            raise OutputConflictError(
                f"the output {path} {relation} the input {item}; writing there could destroy the input. "
                "Choose an output path outside every input (nothing was changed)")


def check_not_nested(path: str | Path, kind: str) -> None:
    """Refuse an output that lies inside a sctranslator output or beside-ledger (rule 5).

    Walks the path's parents looking for identity records, so it costs a few file checks. A translate
    store directly inside a translate collection folder is the collection's own.

    Parameters
    ----------
    path : str or pathlib.Path
        A local output path.
    kind : str
        The kind of output to be written there.

    Raises
    ------
    OutputConflictError
        A parent is a sctranslator output (or a knockout / attention job ledger).
    """
    output = _real(path)
    for parent in output.parents:
        ledger = _SIDE_LEDGER.match(parent.name)
        if ledger and (parent / "job.json").is_file():
            raise OutputConflictError(
                f"the output {path} lies inside {parent}, the job ledger of a sctranslator {ledger.group(1)} "
                "output; it would be deleted with that job. Choose an output path outside it (nothing was changed)")
        record = read_identity(parent)
        if record is None:
            continue
        found = str(record.get("kind"))
        if kind == "translate" and found == COLLECTION_KIND and parent == output.parent:
            continue  # a collection's own per-input stores
        raise OutputConflictError(
            f"the output {path} lies inside {parent}, {_article('sctranslator ' + KINDS.get(found, found))}; "
            "replacing or removing that output would delete this one with it. Choose an output path outside every "
            "sctranslator output (nothing was changed)")


def check_only_ours(path: Path, record: dict[str, Any]) -> None:
    """Refuse to replace the output folder `path` when it holds something sctranslator did not write (rule 6).

    Parameters
    ----------
    path : pathlib.Path
        An output folder of ours.
    record : dict
        Its identity record (its "contents" list what it held when it was written).

    Raises
    ------
    OutputConflictError
        Naming the first foreign entry; nothing is deleted.
    """
    listed = record.get("contents")
    entry = foreign_entry(path, markers=(IDENTITY_FILE, LEDGER_DIR),
                          listed=[str(p) for p in listed] if isinstance(listed, list) else None)
    if entry is None:
        return
    other = read_identity(entry)
    if other is not None:
        found = str(other.get("kind"))
        what = f"{_article('sctranslator ' + KINDS.get(found, found))} of another job"
    else:
        what = f"{'a folder' if entry.is_dir() else 'a file'} sctranslator did not write there"
    raise OutputConflictError(
        f"{path} holds {entry.relative_to(path)}, {what}; replacing {path} would delete it, so nothing was "
        f"changed. Move {entry.name} out of {path} (or remove {path} yourself), then run the command again, "
        "or choose another output path")


def foreign_output_error(path: Path, why: str) -> OutputConflictError:
    """The error for an output path that holds something sctranslator did not write.

    Parameters
    ----------
    path : pathlib.Path
        The path.
    why : str
        What is there, for the message.

    Returns
    -------
    OutputConflictError
        To raise.
    """
    return OutputConflictError(
        f"{path} {why}: it holds something sctranslator did not write, so it is left untouched. "
        "Choose another output path, or remove it yourself if you no longer need it")


def claim_output(path: str | Path, kind: str, *, inputs: Iterable[Any] = (), overwrite: bool = False,
                 resumable: bool = False, siblings: Iterable[str | Path] = (),
                 storage_options: dict[str, Any] | None = None) -> bool:
    """Check that a command may write its output of `kind` at `path`; touches nothing.

    Parameters
    ----------
    path : str or pathlib.Path
        The output.
    kind : str
        The kind of output (one of KINDS: translate, knockout, export, ...).
    inputs : iterable
        The command's input paths (non-path items, e.g. an in-memory AnnData, are skipped).
    overwrite : bool
        The user asked to replace an earlier output of the same kind.
    resumable : bool
        The command resumes its own earlier output when its job record matches, so an existing output
        of this kind is allowed without `overwrite` (the job checks the rest).
    siblings : iterable of str or pathlib.Path
        Further files the command writes beside `path` (e.g. knockout's CSV tables); they belong to the
        output when it is ours, and must not exist when `path` does not.
    storage_options : dict or None
        fsspec options for an object-storage output (s3://, gs://; translate's outputs only).

    Returns
    -------
    bool
        True when an output of ours is there (to resume or replace), False when the path is free.

    Raises
    ------
    OutputConflictError
        In every other case: an input, something we did not write, an output of another kind, or one
        of ours without `overwrite` (when not resumable).
    UnsupportedStorageError
        A URL this kind of output cannot be written to.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}; one of {sorted(KINDS)}")
    for target in (path, *siblings):
        if is_url(target) or _MANGLED_URL.match(str(target)):
            if kind not in REMOTE_KINDS or not is_url(target):
                raise UnsupportedStorageError(
                    f"{target}: {_article(KINDS[kind])} is written to a local path only; object storage (s3://, "
                    "gs://) is supported for translate's --out, --write-h5ad and --write-mudata. Write it locally "
                    "and copy it (nothing was written)")
            # Rules 5 and 6 are checked for local paths only: in object storage, reading every parent prefix's
            # record and listing every object of a store would cost round trips; URL outputs skip them.
            return claim_remote_output(str(path), kind, inputs=inputs, overwrite=overwrite, resumable=resumable,
                                       storage_options=storage_options)
    path = Path(path)
    siblings = [Path(s) for s in siblings]
    for target in (path, *siblings):
        check_not_input(target, inputs)
    check_not_nested(path, kind)  # siblings lie in the same folder
    lock_output(path)  # before looking: what is seen stays true until this job's scope ends
    if path.is_symlink():
        raise foreign_output_error(path, "is a symbolic link")
    if not path.exists():
        present = [s for s in siblings if s.exists() or s.is_symlink()]
        if present:
            raise foreign_output_error(present[0], f"exists, but {path} (the output it would belong to) does not")
        return False
    record = read_identity(path)
    if record is None:
        raise foreign_output_error(path, "exists and carries no sctranslator identity record")
    found = str(record.get("kind"))
    if found != kind:
        raise OutputConflictError(
            f"{path} is a sctranslator {KINDS.get(found, found)}, not {_article(KINDS[kind])}; it is left untouched. "
            "Choose another output path")
    if not (overwrite or resumable):
        raise OutputConflictError(
            f"{path} already holds {_article(KINDS[kind])} from an earlier run. Pass --overwrite (overwrite=True) "
            "to replace it, or choose another output path")
    if kind not in KEPT_KINDS and (overwrite or kind in REBUILT_KINDS):
        for target in (path, *siblings):  # what will be replaced whole (knockout's per-cell store too)
            if target.is_dir() and not target.is_symlink():
                check_only_ours(target, read_identity(target) or {})
    return True


# -- one writer per output ---------------------------------------------------------------------
@dataclass
class _Scope:
    wait: bool
    locks: list[OutputLock] = field(default_factory=list)


_SCOPE: ContextVar[_Scope | None] = ContextVar("sctranslator_output_scope", default=None)
# Locks this process holds, by output path: a second claim of the same output by the same thread
# (translate claims its store, then the sink claims it again) reuses the lock.
_HELD: dict[Any, tuple[Any, int]] = {}  # Path (local) or URL str -> (OutputLock or RemoteLock, thread)
_HELD_GUARD = threading.Lock()
_AMBIENT = _Scope(wait=False)  # claims made outside any scope: held until the process ends


@contextlib.contextmanager
def writing(wait: bool | None = None) -> Iterator[None]:
    """A job's scope: the outputs it claims (`claim_output`) stay locked until the scope ends.

    Parameters
    ----------
    wait : bool or None
        When another job holds an output, wait for it (True) or refuse with OutputLockedError
        (False); None inherits the enclosing scope's choice (False at the top).

    Yields
    ------
    None
        Inside the scope.

    Raises
    ------
    OutputLockedError
        At the end, when a lock was taken over meanwhile (this job's holder was judged dead), so that
        the job does not report success for an output another one changed.
    """
    outer = _SCOPE.get()
    scope = _Scope(wait=bool(outer.wait if (wait is None and outer is not None) else wait))
    token = _SCOPE.set(scope)
    failed = True
    try:
        yield
        failed = False
    finally:
        _SCOPE.reset(token)
        lost = _release(scope.locks)
        if lost is not None and not failed:
            raise lost


def _release(locks: list[OutputLock]) -> Exception | None:
    lost = None
    for lock in reversed(locks):
        with _HELD_GUARD:
            _HELD.pop(lock.output, None)
        try:
            lock.release()
        except OutputLockedError as error:
            lost = lost or error
    locks.clear()
    return lost


def lock_output(path: str | Path, storage_options: dict[str, Any] | None = None) -> None:
    """Lock `path` for the current scope (see `writing`); a no-op when this thread holds it already.

    Parameters
    ----------
    path : str or pathlib.Path
        The output.
    storage_options : dict or None
        fsspec options for an object-storage output.

    Raises
    ------
    OutputLockedError
        Another live job writes it (and the scope does not wait).
    OutputWriteError
        The lock file cannot be created: read-only file system, no permission, full disk.
    """
    if os.environ.get("RANK", "0") not in ("", "0"):
        # A torch.distributed process other than rank 0 is part of rank 0's job, which holds the
        # lock; only rank 0 writes the outputs.
        return
    scope = _SCOPE.get() or _AMBIENT
    remote = is_url(path)
    output: Any = str(path).rstrip("/") if remote else Path(os.path.abspath(Path(path).expanduser()))
    with _HELD_GUARD:
        held = _HELD.get(output)
    if held is not None and held[1] == threading.get_ident() and held[0].still_held():
        return
    if remote:
        lock: Any = RemoteLock.acquire(output, wait=scope.wait, storage_options=storage_options)
        with _HELD_GUARD:
            _HELD[output] = (lock, threading.get_ident())
        scope.locks.append(lock)
        return  # an object store has no hidden temporaries: every object is written by one PUT
    with write_errors(output.parent):
        lock = OutputLock.acquire(output, wait=scope.wait)
    with _HELD_GUARD:
        _HELD[output] = (lock, threading.get_ident())
    scope.locks.append(lock)
    remove_leftovers(output)  # only the lock holder may: no live writer of ours is using them


def hand_over_locks(thread: int) -> None:
    """Hand the output locks that thread `thread` holds to the calling thread.

    The caller goes on writing what `thread` prepared (engine.collection prepares the next input in a
    helper thread).

    Parameters
    ----------
    thread
        The `threading.get_ident()` of the thread that took the locks.
    """
    me = threading.get_ident()
    with _HELD_GUARD:
        for output, (lock, owner) in list(_HELD.items()):
            if owner == thread:
                _HELD[output] = (lock, me)


def _release_ambient() -> None:
    _release(_AMBIENT.locks)


atexit.register(_release_ambient)

F = TypeVar("F", bound=Callable[..., Any])


def one_writer(func: F) -> F:
    """Give an API function that writes outputs a keyword `wait` and run it in its own `writing` scope.

    The added keyword `wait`: when another job is writing the same output, wait for it to finish
    (True) and then check the output afresh, or refuse at once with OutputLockedError (False).

    Parameters
    ----------
    func : callable
        The API function.

    Returns
    -------
    callable
        The wrapped function, its signature showing `wait`.
    """
    signature = inspect.signature(func)
    has_wait = "wait" in signature.parameters

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        wait = kwargs.get("wait") if has_wait else kwargs.pop("wait", None)
        with writing(wait):
            return func(*args, **kwargs)

    if not has_wait:
        parameters = list(signature.parameters.values())
        extra = inspect.Parameter("wait", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=bool)
        at = next((i for i, p in enumerate(parameters) if p.kind is inspect.Parameter.VAR_KEYWORD), len(parameters))
        parameters.insert(at, extra)
        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


# -- outputs in object storage (s3://, gs://) ----------------------------------------------------
# The same four rules, checked on objects: a store's identity record is the object
# URL/.sctranslator-output.json, a write-back file's its HDF5 root attribute read through fsspec;
# the location is locked first (`storage.RemoteLock`). See docs/guide/atlas.md, "Object storage".

def exists(fs: Any, path: str) -> bool:
    """Whether an object, or any object under the prefix `path`, exists (listing caches dropped first).

    Parameters
    ----------
    fs : fsspec.AbstractFileSystem
        The file system.
    path : str
        The object or prefix.

    Returns
    -------
    bool
        True when something is there.
    """
    fs.invalidate_cache(path)
    return bool(fs.exists(path))


def read_remote_identity(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Our identity record of the object-storage output at `url`.

    Parameters
    ----------
    url : str
        An s3:// or gs:// location.
    storage_options : dict or None
        fsspec options.

    Returns
    -------
    dict or None
        The record, or None when it carries none.
    """
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
    """`claim_output` for a URL.

    Parameters
    ----------
    url : str
        An s3:// or gs:// location.
    kind : str
        The kind of output (one of KINDS: translate, knockout, export, ...).
    inputs : iterable
        The command's inputs.
    overwrite : bool
        Replace an earlier output of the same kind.
    resumable : bool
        An existing output of this kind may be resumed.
    storage_options : dict or None
        fsspec options.

    Returns
    -------
    bool
        True when an output of ours is there, False when the location is free.

    Raises
    ------
    OutputConflictError
        As `claim_output`.
    """
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
    """The identity record object of a store of `kind`, as bytes to upload.

    Parameters
    ----------
    kind : str
        The kind of output (one of KINDS: translate, knockout, export, ...).

    Returns
    -------
    bytes
        JSON text, UTF-8.
    """
    return json.dumps(identity_record(kind), indent=2, default=str).encode()
