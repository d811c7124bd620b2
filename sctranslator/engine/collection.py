"""Collections: several inputs translated in one job, each exactly as if it were translated alone.

`translate([a, b, ...], model, out=DIR)` (and `sctranslator translate A B ... --out DIR`, a glob,
`--inputs @list.txt`) gives every input its own plan (its own gene layout: inputs are never
joined, the model is positional) and its own output store `DIR/<stem>.zarr`, and keeps
`DIR/collection.json`, rewritten atomically as inputs start and finish: each input, its store, its
cells, its plan fingerprint, its status and, for a failed input, its named error. DIR is a local
directory or an s3:// / gs:// prefix (`engine.collection_place` keeps the guarantees of each).

The model is loaded once; `translate` is called once per input with the loaded model and consults
the `CollectionRun` of this module (a context variable) to share what a collection shares: one
progress bar over all cells, and the intra-op thread count of the first input, so the per-process
backend cache (engine.backends.registry) serves every input with the one backend it built.
The backend takes each input's gene layout with every batch, so one backend serves every plan.

Re-running the same job resumes: finished inputs are skipped, the interrupted one resumes through
its store's ledger, failed ones are tried again. Another input list or other settings are refused
(CollectionMismatchError) unless `overwrite`; the permissions (PERMISSIONS: --min-coverage,
--allow-low-coverage, --allow-empty-cells, --missing-chunks) are not settings of the collection, so
re-running with one retries the inputs it refused and keeps the finished ones.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar, copy_context
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import anndata as ad

from sctranslator.engine.collection_place import LocalPlace, RemotePlace
from sctranslator.engine.sources import open_source
from sctranslator.engine.sources.soma import is_soma_experiment_object
from sctranslator.engine.sources.subset import select_cells
from sctranslator.engine.threads import Parallelism
from sctranslator.errors import (
    BackendError,
    CheckpointError,
    ClusterError,
    CollectionError,
    CollectionMismatchError,
    MissingExtraError,
    OptionError,
    OutputLockedError,
    OutputWriteError,
    SctranslatorError,
    UnsupportedStorageError,
)
from sctranslator.model import TranslatorModel, load_model
from sctranslator.model.identity import model_fingerprint
from sctranslator.options import parse_names
from sctranslator.outputs import hand_over_locks, writing
from sctranslator.util.progress import count_done, progress_bar
from sctranslator.util.storage import (
    WRITABLE,
    check_location,
    check_not_folded,
    is_url,
    name_of,
    parse_storage_options,
    scheme_of,
)

log = logging.getLogger(__name__)

COLLECTION_KIND = "translate-collection"
FORMAT = 1
# Errors that would fail every input alike (a setting, the model, the backend, the cluster, the disk,
# another job): they end the collection at once instead of being recorded against one input.
JOB_ERRORS = (OptionError, BackendError, CheckpointError, MissingExtraError, ClusterError, OutputWriteError,
              OutputLockedError)
# Settings that decide the numbers written: another value is another collection. Engine settings
# (workers, batch size, device, backend, scheduler) change speed, not predictions, as for one input.
IDENTITY_SETTINGS = ("normalize", "target_sum", "gene_column", "id_type", "layer", "use_raw", "modality",
                     "precision", "embeddings", "gene_mapping", "cells", "obs_query", "max_cells")
# Settings that only decide whether an input is refused (low coverage, empty cells, an absent Zarr
# chunk), never the numbers of an input that completes: not part of the identity, so re-running
# with a permission retries the failed inputs and keeps the finished ones. Each entry records the
# values it completed under.
PERMISSIONS = ("min_coverage", "allow_low_coverage", "allow_empty_cells", "missing_chunks")
_GLOB_CHARACTERS = frozenset("*?[")


@dataclass
class CollectionRun:
    """What the inputs of one collection share inside `translate` (see the module docstring).

    Parameters
    ----------
    bar : tqdm
        The one progress bar over every input's cells.
    threads : int or None
        Intra-op threads, fixed by the first input that starts (None until then).
    expected : int
        The cells of the current input already counted in the bar's total.
    plan : str or None
        The current input's plan fingerprint.
    cells : int or None
        The current input's cell count.
    counting : bool
        Whether this run counts its input's cells in the bar now (False while the input is prepared
        ahead of its turn).
    """

    bar: Any
    threads: int | None = None
    expected: int = 0
    plan: str | None = None
    cells: int | None = None
    counting: bool = True  # False while an input is prepared ahead: its turn counts it (`adopt`)

    def started(self, plan: Any, cells: int, spec: Any, rule: Parallelism) -> Parallelism:
        """Record that an input's plan and backend spec are made, before any block runs.

        Parameters
        ----------
        plan : Plan
            The input's plan.
        cells : int
            Its cells.
        spec : BackendSpec
            Its backend spec.
        rule : Parallelism
            Its parallelism.

        Returns
        -------
        Parallelism
            The rule to record (with the collection's thread count).
        """
        if self.threads is None:
            self.threads = spec.threads
        if spec.threads != self.threads:  # the same backend (registry cache key) for every input
            spec.threads = self.threads
            rule = dataclasses.replace(rule, threads=self.threads, why=f"{rule.why}; {self.threads} thread(s) "
                                       "per call as for the collection's first input (one backend serves all)")
        self.plan, self.cells = plan.fingerprint(), int(cells)
        if self.counting:
            self._count()
        return rule

    def _count(self) -> None:
        self.bar.total = (self.bar.total or 0) + int(self.cells or 0) - self.expected
        self.expected = int(self.cells or 0)
        self.bar.refresh()

    def adopt(self, ahead: CollectionRun) -> None:
        """At an input's turn, take what preparing it ahead (under `ahead`) found: its plan and cells.

        Parameters
        ----------
        ahead : CollectionRun
            The run the input was prepared under, in the helper thread.
        """
        self.plan, self.cells = ahead.plan, ahead.cells
        if self.cells is not None:
            self._count()


_ACTIVE: ContextVar[CollectionRun | None] = ContextVar("sctranslator_collection", default=None)


def active_collection() -> CollectionRun | None:
    """The collection whose input `translate` is running in this context.

    Returns
    -------
    CollectionRun or None
        None outside a collection.
    """
    return _ACTIVE.get()


def is_collection(data: Any) -> bool:
    """Whether `data` names several inputs.

    Parameters
    ----------
    data : object
        translate's input.

    Returns
    -------
    bool
        True for a list or tuple, or a path pattern with glob characters that is not itself an existing
        path.
    """
    if isinstance(data, (list, tuple)):
        return True
    if isinstance(data, (str, Path)) and "://" not in str(data):
        return bool(_GLOB_CHARACTERS & set(str(data))) and not Path(data).expanduser().exists()
    if scheme_of(data) in WRITABLE:  # an object-storage pattern: refused by expand_inputs
        return bool({"*", "["} & set(str(data)))
    return False


def read_input_list(spec: str | Path) -> list[str]:
    """The paths listed in a text file (``@list.txt`` or ``list.txt``).

    One per line, blank lines and text after ``#`` ignored; relative paths are relative to the current
    directory.

    Parameters
    ----------
    spec : str or pathlib.Path
        The list file.

    Returns
    -------
    list of str
        The paths.

    Raises
    ------
    OptionError
        A missing, binary or empty list.
    """
    path = Path(str(spec)[1:] if str(spec).startswith("@") else spec).expanduser()
    try:
        raw = path.read_bytes()
        if b"\0" in raw:
            raise UnicodeDecodeError("utf-8", raw[:1], 0, 1, "binary data")
        text = raw.decode("utf-8-sig")
    except FileNotFoundError:
        raise OptionError(f"--inputs {spec}: {path} does not exist; give a text file with one input path per "
                          "line") from None
    except (UnicodeDecodeError, IsADirectoryError):
        raise OptionError(f"--inputs {spec}: {path} is not a text file; give a text file with one input path per "
                          "line ('#' starts a comment)") from None
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    paths = [line for line in lines if line]
    if not paths:
        raise OptionError(f"--inputs {spec}: {path} lists no inputs (one path per line; '#' starts a comment)")
    return paths


def expand_inputs(data: Any) -> list[Any]:
    """The inputs of a collection in order: globs expanded (sorted), paths made absolute, AnnData kept.

    Parameters
    ----------
    data : list, tuple or str
        The inputs, or a glob.

    Returns
    -------
    list
        The inputs.

    Raises
    ------
    OptionError
        An empty list, a glob that matches nothing, a path listed twice, or an AnnCollection.
    """
    items = list(data) if isinstance(data, (list, tuple)) else [data]
    inputs: list[Any] = []
    for item in items:
        if type(item).__name__ == "AnnCollection":
            raise OptionError("an AnnCollection is not translated as one input (its files may have different genes, "
                              "and each needs its own plan); pass the files themselves: translate([path1, path2, "
                              "...], model, out=DIR)")
        check_not_folded(item, what="the input")
        if is_url(item):
            if is_collection(item):
                raise UnsupportedStorageError(
                    f"the input {item}: patterns are not expanded in object storage; list the objects themselves "
                    "(several inputs, or --inputs @list.txt with one URL per line)")
            check_location(item, what="the input")
            inputs.append(str(item).rstrip("/"))  # a URL stays a URL (pathlib would fold its '//')
        elif isinstance(item, (str, Path)) and is_collection(item):
            matches = sorted(glob.glob(str(Path(item).expanduser()), recursive=True))
            if not matches:
                raise OptionError(f"the pattern {str(item)!r} matches no files; check the path (quote it so that "
                                  "sctranslator expands it, or let the shell do it)")
            inputs.extend(Path(os.path.abspath(match)) for match in matches)
        elif isinstance(item, (str, Path)):
            inputs.append(Path(os.path.abspath(Path(item).expanduser())))  # '..' resolved
        else:
            inputs.append(item)
    if not inputs:
        raise OptionError("no inputs given; name one or more files, a glob, or --inputs @list.txt")
    paths = [str(item) for item in inputs if isinstance(item, (str, Path))]
    repeated = sorted({p for p in paths if paths.count(p) > 1})
    if repeated:
        raise OptionError(f"{repeated[0]} is listed more than once; give each input once")
    return inputs


def _stem(item: Any, index: int) -> str:
    uri = getattr(item, "uri", None) if is_soma_experiment_object(item) else None
    if uri:  # an open experiment is named after its URI, as its path would be
        item = Path(str(uri).removeprefix("file://").rstrip("/"))
    if is_url(item):  # named after the URL's last component
        item = Path(name_of(str(item)))
    if not isinstance(item, Path):
        return f"anndata-{index + 1}"
    name = item.name.rstrip("/") or "input"
    for suffix in (".h5ad", ".h5mu", ".zarr", ".h5", ".hdf5", ".loom"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return Path(name).stem or name


def store_names(inputs: Sequence[Any]) -> list[str]:
    """One store name per input, in order: ``<stem>.zarr``, then ``<stem>-2.zarr``, ... for a repeated stem.

    Stems are compared without case, as case-insensitive file systems do.

    Parameters
    ----------
    inputs : sequence
        The inputs.

    Returns
    -------
    list of str
        Store names.
    """
    used: set[str] = set()
    names = []
    for index, item in enumerate(inputs):
        stem = candidate = _stem(item, index)
        number = 2
        while candidate.lower() in used:
            candidate = f"{stem}-{number}"
            number += 1
        used.add(candidate.lower())
        names.append(f"{candidate}.zarr")
    return names


def _label(item: Any, index: int) -> str:
    return str(item) if isinstance(item, (str, Path)) else f"<in-memory {type(item).__name__} #{index + 1}>"


def _identity(inputs: Sequence[Any], model: TranslatorModel, proteins: Sequence[str] | None,
              settings: dict[str, Any]) -> dict[str, Any]:
    chosen = {name: settings.get(name) for name in IDENTITY_SETTINGS}
    record = {"inputs": [_label(item, i) for i, item in enumerate(inputs)], "model": model_fingerprint(model),
              "proteins": None if proteins is None else list(proteins), "settings": chosen}
    return json.loads(json.dumps(record, default=str))  # as it reads back from the record


def _comparable(identity: Any) -> Any:
    """A recorded identity without the permissions (collections recorded before they left the identity)."""
    if not isinstance(identity, dict) or not isinstance(identity.get("settings"), dict):
        return identity
    return {**identity, "settings": {k: v for k, v in identity["settings"].items() if k not in PERMISSIONS}}


def _difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    if old.get("inputs") != new.get("inputs"):
        before, after = old.get("inputs") or [], new["inputs"]
        added = [p for p in after if p not in before]
        dropped = [p for p in before if p not in after]
        parts = [f"{len(found)} {what} (first: {found[0]})" for found, what in ((added, "added"), (dropped, "dropped"))
                 if found]
        if parts:
            return f"its input list differs: {', '.join(parts)}"
        return "its inputs are in another order"
    if old.get("model") != new.get("model"):
        return "it was made with another model"
    if old.get("proteins") != new.get("proteins"):
        return "it was made for other proteins"
    changed = sorted(k for k in new["settings"] if (old.get("settings") or {}).get(k) != new["settings"][k])
    return f"its settings differ ({', '.join(changed) or 'format'})"


@dataclass
class _Collection:
    """DIR (a local directory or an object-storage prefix, see `engine.collection_place`) and its record:
    the entries, rewritten whole after every change."""

    place: LocalPlace | RemotePlace
    identity: dict[str, Any]
    entries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def record_path(self) -> str:
        return self.place.record_location

    def text(self) -> str:
        counts = {status: sum(e["status"] == status for e in self.entries)
                  for status in ("done", "failed", "pending", "running")}
        record = {"format": FORMAT, "kind": COLLECTION_KIND, "identity": self.identity, "counts": counts,
                  "inputs": self.entries}
        return json.dumps(record, indent=2, default=str)

    def save(self) -> None:
        self.place.write_record(self.text())


def collection_place(out: str | Path, storage_options: dict[str, Any] | None = None) -> LocalPlace | RemotePlace:
    """The place of a collection's DIR: a `RemotePlace` for an s3:// / gs:// URL, else a `LocalPlace`.

    Parameters
    ----------
    out
        The collection's directory (a local path) or prefix (a URL).
    storage_options
        fsspec options for a URL (see `sctranslator.util.storage`).

    Returns
    -------
    LocalPlace or RemotePlace
    """
    if is_url(out):
        return RemotePlace(str(out), storage_options)
    return LocalPlace(Path(out).expanduser().absolute())


def read_collection(path: str | Path, storage_options: dict[str, Any] | str | None = None) -> dict[str, Any] | None:
    """The record ``DIR/collection.json`` of a collection.

    Parameters
    ----------
    path : str or pathlib.Path
        The collection's directory, or its s3:// / gs:// prefix.
    storage_options : dict, str or None
        fsspec options (or their JSON) for a prefix in object storage.

    Returns
    -------
    dict or None
        None when there is none (or it is unreadable).
    """
    return collection_place(path, parse_storage_options(storage_options)).read_record()


def _open_collection(place: LocalPlace | RemotePlace, identity: dict[str, Any], names: list[str],
                     labels: list[str], overwrite: bool, inputs: Sequence[Any]) -> _Collection:
    """Claim DIR (a collection of ours, or free) and return its record: resumed, or new."""
    ours = place.claim(COLLECTION_KIND, list(inputs), overwrite)
    fresh = [{"input": label, "store": name, "cells": None, "plan": None, "status": "pending", "error": None}
             for label, name in zip(labels, names, strict=True)]
    if not ours:
        collection = _Collection(place, identity, fresh)
        place.create(COLLECTION_KIND, collection.text())  # local: appears whole; remote: identity first
        return collection
    record = place.read_record()
    if record is not None and _comparable(record.get("identity")) == identity and not overwrite:
        log.info("resuming the collection in %s", place)
        return _Collection(place, identity, list(record["inputs"]))
    if record is not None and not overwrite:
        raise CollectionMismatchError(
            f"{place} holds a collection of another job: {_difference(record.get('identity') or {}, identity)}. "
            "Re-run the command that made it to resume it, choose another --out, or pass --overwrite to replace it")
    # --overwrite: stores of the old record that the new one does not name are removed (each is a
    # translate store of ours, checked by its identity record); the others are replaced by translate.
    # (No record: a creation of ours interrupted before its record was written; it starts afresh.)
    for entry in (record or {}).get("inputs", []):
        name = str(entry.get("store", ""))
        if name and "/" not in name and name not in names:
            place.remove_own_store(name)
    collection = _Collection(place, identity, fresh)
    collection.save()
    return collection


def _estimate(item: Any, options: dict[str, Any], selection: dict[str, Any]) -> int:
    """An input's cells for the progress bar's total, before its plan is made: the size of its selection
    (`cells`, `obs_query`, `max_cells`; a SOMA query counted through its pushed-down value filter), so
    the total and the ETA are exact from the start (0 when unreadable: translate then reports why)."""
    try:
        source = open_source(item, **options)
    except SctranslatorError:
        return 0
    try:
        return int(select_cells(source, **selection).n_obs)
    except SctranslatorError:
        return 0
    finally:
        source.close()


def translate_collection(translate_one: Callable[..., Any], data: Any, model: Any,
                         proteins: Sequence[str] | None = None, *, out: str | Path | None = None,
                         overwrite: bool = False, quiet: bool = False, write_h5ad: str | Path | None = None,
                         write_mudata: str | Path | None = None, inplace: bool = False, key: str | None = None,
                         replace_key: bool = False, **settings: Any) -> list[ad.AnnData]:
    """Translate every input of a collection into its own store in `out` (see the module docstring).

    Parameters
    ----------
    translate_one
        `engine.translate.prepare_input` (passed in, so that this module does not import it): prepares one
        input from `translate`'s keywords; its `run()` computes it.
    data
        A list of inputs (paths, globs, AnnData objects) or one glob pattern.
    model, proteins, overwrite, quiet, **settings
        As for `translate`; the settings apply to every input as if it were translated alone.
    out
        The collection's directory (required): a local path, or an s3:// / gs:// prefix.
    write_h5ad, write_mudata, inplace, key, replace_key
        Not for collections (OptionError): translate each input on its own to write it back.

    Returns
    -------
    list of AnnData
        One per input, in order, read lazily from its store.

    Raises
    ------
    OptionError
        No `out`, a write-back asked for, no inputs, a glob matching nothing, an input listed twice.
    CollectionMismatchError
        `out` holds a collection of other inputs or settings (without `overwrite`).
    CollectionError
        At the end, when some inputs failed; the others are complete (`error.entries` lists all).
    """
    if write_h5ad or write_mudata or inplace or key or replace_key:
        raise OptionError("--write-h5ad, --write-mudata, --key and inplace=True write one input back; with several "
                          "inputs, translate into --out DIR (one store per input) or run each input on its own to "
                          "write it back")
    inputs = expand_inputs(data)  # bad inputs (a URL pattern, a folded URL) are named before --out
    if out is None:
        raise OptionError("several inputs need --out DIR (out=DIR): a directory that gets one store per input and "
                          "collection.json")
    check_not_folded(out, what="--out")
    storage_options = parse_storage_options(settings.get("storage_options"))
    if is_url(out):
        check_location(out, write=True, what="--out")  # a supported scheme and its extra, before any work
    place = collection_place(out, storage_options)
    suffix = PurePosixPath(str(place)).suffix
    if suffix.lower() in (".h5ad", ".h5mu", ".zarr", ".h5"):
        raise OptionError(f"--out {place}: several inputs are written to a directory of stores, one per input; give a "
                          f"directory name without a file suffix, e.g. --out {str(place)[: -len(suffix)]}")
    # One scope for the collection's claims (DIR, then each store): released when the job ends.
    with writing(settings.get("wait")):
        loaded = model if isinstance(model, TranslatorModel) else load_model(model)  # loaded once for every input
        names, labels = store_names(inputs), [_label(item, i) for i, item in enumerate(inputs)]
        collection = _open_collection(place, _identity(inputs, loaded, proteins, settings), names, labels, overwrite,
                                      inputs)
        source_options = {k: settings[k] for k in ("layer", "use_raw", "modality", "missing_chunks", "measurement",
                                                   "gene_column") if settings.get(k) is not None}
        source_options["storage_options"] = storage_options
        selection = {k: settings.get(k) for k in ("cells", "obs_query", "max_cells")}
        if isinstance(selection["cells"], str):  # '@file' or 'a,b' as the command line gives it
            selection["cells"] = parse_names(selection["cells"])
        skip = [entry["status"] == "done" and isinstance(item, (str, Path)) and place.finished(entry["store"]) and
                not overwrite for entry, item in zip(collection.entries, inputs, strict=True)]
        estimates = [int(entry["cells"] or 0) if done else _estimate(item, source_options, selection)
                     for entry, item, done in zip(collection.entries, inputs, skip, strict=True)]
        bar = progress_bar(total=sum(estimates), unit="cells", desc=f"translate {len(inputs)} inputs", disable=quiet,
                           dynamic_ncols=True, smoothing=0.1)
        run = CollectionRun(bar)
        results: list[ad.AnnData | None] = [None] * len(inputs)  # translate's own results, not read twice
        ahead = _Ahead(translate_one, collection, inputs, loaded, proteins, overwrite, settings)
        try:
            for index, entry in enumerate(collection.entries):
                if skip[index]:
                    count_done(bar, estimates[index])
                    continue
                following = next((i for i in range(index + 1, len(inputs)) if not skip[i]), None)
                results[index] = _translate_entry(ahead, index, following, collection, entry, run, estimates[index])
        finally:
            ahead.close()
            bar.close()
        failed = [entry for entry in collection.entries if entry["status"] == "failed"]
        if failed:
            first = failed[0]
            raise CollectionError(
                f"{len(failed)} of {len(inputs)} inputs failed (the others are complete in {place}); first: "
                f"{first['input']}: {first['error']['type']}: {first['error']['message']} -- every error is in "
                f"{collection.record_path}; fix the inputs (or drop them from the list) and re-run the same command",
                entries=collection.entries, record=collection.record_path)
        return [place.open_store(entry["store"]) if result is None else result
                for entry, result in zip(collection.entries, results, strict=True)]


class _Ahead:
    """Prepares the next input (claim its store, open it, plan, build its store) in one background thread
    while the current one computes. Its claims go to the collection's scope; its failure is raised at
    that input's turn, exactly as if it were prepared then."""

    def __init__(self, prepare: Callable[..., Any], collection: _Collection, inputs: Sequence[Any], model: Any,
                 proteins: Sequence[str] | None, overwrite: bool, settings: dict[str, Any]) -> None:
        self._prepare, self._collection, self._inputs = prepare, collection, inputs
        self._model, self._proteins, self._overwrite, self.settings = model, proteins, overwrite, settings
        self._pool: ThreadPoolExecutor | None = None
        self._pending: tuple[int, CollectionRun, Future] | None = None
        self._thread: int | None = None  # the helper thread, whose output locks pass to the caller

    def prepare(self, index: int) -> Any:
        """Prepare input `index` now (in this thread and context)."""
        entry = self._collection.entries[index]
        return self._prepare(self._inputs[index], self._model, self._proteins,
                             out=self._collection.place.store(entry["store"]), overwrite=self._overwrite,
                             **self.settings)

    def start(self, index: int, run: CollectionRun) -> None:
        """Begin preparing input `index` in the background (its bar counting waits for its turn)."""
        shadow = CollectionRun(run.bar, threads=run.threads, counting=False)
        context = copy_context()  # the collection's output scope; this input's own collection view

        def work() -> Any:
            self._thread = threading.get_ident()
            _ACTIVE.set(shadow)
            return self.prepare(index)

        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="sctranslator-prepare")
        self._pending = (index, shadow, self._pool.submit(context.run, work))

    def take(self, index: int, run: CollectionRun) -> Any:
        """Input `index` prepared: the background result (or its error), else prepared now."""
        if self._pending is None or self._pending[0] != index:
            return self.prepare(index)
        _, shadow, future = self._pending
        self._pending = None
        try:
            return future.result()
        finally:
            if self._thread is not None:
                hand_over_locks(self._thread)
            run.adopt(shadow)

    def close(self) -> None:
        """Wait for an input prepared ahead and never reached (the collection stopped) and close it."""
        if self._pending is not None:
            future = self._pending[2]
            self._pending = None
            try:
                future.result().close()
            except BaseException:  # noqa: BLE001 - its turn never comes; nothing to report it against
                log.debug("an input prepared ahead was not reached", exc_info=True)
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def _translate_entry(ahead: _Ahead, index: int, following: int | None, collection: _Collection,
                     entry: dict[str, Any], run: CollectionRun, estimate: int) -> ad.AnnData | None:
    """Translate one input into its store, recording its outcome; job-wide errors pass through.
    Once it is prepared, the `following` input is prepared in the background while it computes.
    Returns translate's result (None for a failed input)."""
    entry.update(status="running", error=None)
    collection.save()
    run.expected, run.plan, run.cells = estimate, None, None
    progressed = run.bar.n
    token = _ACTIVE.set(run)
    try:
        prepared = ahead.take(index, run)
        if following is not None:
            ahead.start(following, run)
        result = prepared.run()
    except JOB_ERRORS:
        entry.update(status="pending", plan=run.plan, cells=run.cells)
        collection.save()
        raise
    except SctranslatorError as error:
        _failed(collection, entry, run, error, progressed)
        return None
    else:
        settings = ahead.settings
        permitted = json.loads(json.dumps({k: settings.get(k) for k in PERMISSIONS if k in settings}, default=str))
        entry.update(status="done", cells=int(result.n_obs), plan=run.plan, permissions=permitted)
        collection.save()
        return result
    finally:
        _ACTIVE.reset(token)


def _failed(collection: _Collection, entry: dict[str, Any], run: CollectionRun, error: SctranslatorError,
            progressed: int) -> None:
    entry.update(status="failed", plan=run.plan, cells=run.cells,
                 error={"type": type(error).__name__, "message": str(error)})
    collection.save()
    # The input's cells that will not be computed leave the bar's total, so the ETA stays honest.
    remaining = run.expected - (run.bar.n - progressed)
    run.bar.total = max(run.bar.n, (run.bar.total or 0) - max(0, remaining))
    run.bar.refresh()
    log.error("%s: %s: %s (the other inputs go on)", entry["input"], type(error).__name__, error)


def summary_lines(entries: Iterable[dict[str, Any]]) -> list[str]:
    """One line per input for the command line: status, cells, store (and the error of a failed one).

    Parameters
    ----------
    entries : iterable of dict
        The inputs' records.

    Returns
    -------
    list of str
        The lines.
    """
    lines = []
    for entry in entries:
        cells = "?" if entry.get("cells") is None else str(entry["cells"])
        line = f"  {entry['status']:<7} {cells:>9} cells  {entry['store']}  <- {entry['input']}"
        if entry.get("error"):
            line += f"\n          {entry['error']['type']}: {entry['error']['message']}"
        lines.append(line)
    return lines
