"""Where a collection lives: a local directory, or a prefix in object storage (s3://, gs://).

A collection's folder holds its identity record, `collection.json` and one translate store per
input. `LocalPlace` keeps the local guarantees with renames: the folder appears whole (identity and
record staged, then renamed into place) and the record is replaced atomically. `RemotePlace` keeps
them without rename, since an object store has none but writes every object with one
all-or-nothing PUT:

1. the identity record (``DIR/.sctranslator-output.json``) is the first object: from then on the
   prefix is ours, so a creation interrupted before the record exists is recognised and finished
   on the next run, never refused as foreign;
2. ``DIR/collection.json`` is rewritten whole by one PUT after every change, so a reader sees the
   previous version or the new one;
3. each store under ``DIR/`` is a remote translate store with its own ordering (identity first,
   job record last, a block's chunks before its marker; `engine.remote_sink`), so an interrupted
   input resumes through its own ledger.

Both places have the same methods; `engine.collection` uses only those.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anndata as ad

from sctranslator.engine.ledger import JOB_FILE, read_record
from sctranslator.engine.output_reader import open_predictions
from sctranslator.engine.sink import JOB_DIR, OUTPUT_KIND
from sctranslator.outputs import (
    IDENTITY_FILE,
    check_only_ours,
    claim_output,
    identity_bytes,
    read_identity,
    read_remote_identity,
)
from sctranslator.outputs import write_identity as write_local_identity
from sctranslator.util.atomic import atomic_write_text, install_dir, remove_path, staging_dir
from sctranslator.util.storage import filesystem, join, remote_error

RECORD_NAME = "collection.json"


class LocalPlace:
    """A collection in a local directory.

    Parameters
    ----------
    path : pathlib.Path
        The collection's directory.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def __str__(self) -> str:
        return str(self.path)

    @property
    def record_location(self) -> str:
        """Where collection.json is, for messages."""
        return str(self.path / RECORD_NAME)

    def claim(self, kind: str, inputs: list[Any], overwrite: bool) -> bool:
        """Whether a collection of ours is there or the directory is free (see `claim_output`).

        Parameters
        ----------
        kind : str
            The output kind of a collection.
        inputs : list
            The collection's inputs (paths are checked against the folder).
        overwrite : bool
            Replace a collection of ours of other inputs or settings.

        Returns
        -------
        bool
            True when a collection of ours is there, False when the location is free.

        Raises
        ------
        OutputConflictError
            Something that is not a collection of ours, or one that overlaps an input.
        """
        return claim_output(self.path, kind, inputs=[i for i in inputs if isinstance(i, Path)], overwrite=overwrite,
                            resumable=True)

    def create(self, kind: str, record: str) -> None:
        """Create the directory with its identity and its record, appearing whole or not at all.

        Parameters
        ----------
        kind : str
            The output kind of a collection.
        record : str
            collection.json's text.
        """
        with staging_dir(self.path) as staging:
            write_local_identity(staging, kind)
            atomic_write_text(staging / RECORD_NAME, record)
            install_dir(staging, self.path)

    def read_record(self) -> dict[str, Any] | None:
        """The collection's collection.json.

        Returns
        -------
        dict or None
            None when there is none or it is unreadable.
        """
        try:
            return json.loads((self.path / RECORD_NAME).read_text())
        except (OSError, ValueError):
            return None

    def write_record(self, record: str) -> None:
        """Replace collection.json atomically.

        Parameters
        ----------
        record : str
            collection.json's text.
        """
        atomic_write_text(self.path / RECORD_NAME, record)

    def store(self, name: str) -> Path:
        """The location of a store of the collection (what translate gets as `out`).

        Parameters
        ----------
        name : str
            The store's name inside the collection.

        Returns
        -------
        pathlib.Path
            The store's path.
        """
        return self.path / name

    def finished(self, name: str) -> bool:
        """Whether a store holds a complete translate job.

        Parameters
        ----------
        name : str
            The store's name inside the collection.

        Returns
        -------
        bool
            True when its job record says complete.
        """
        record = read_record(self.path / name / JOB_DIR)
        return bool(record and record.get("complete"))

    def remove_own_store(self, name: str) -> None:
        """Delete a store when it is a translate store of ours (checked by its identity record).

        Parameters
        ----------
        name : str
            The store's name inside the collection.

        Raises
        ------
        OutputConflictError
            The store holds something sctranslator did not write (nothing is deleted).
        """
        store = self.path / name
        record = read_identity(store) or {}
        if store.parent == self.path and record.get("kind") == OUTPUT_KIND:
            check_only_ours(store, record)  # a file someone put inside is refused, not deleted
            remove_path(store)

    def open_store(self, name: str) -> ad.AnnData:
        """A finished store, read lazily (`open_predictions`).

        Parameters
        ----------
        name : str
            The store's name inside the collection.

        Returns
        -------
        AnnData
            Cells x proteins, X lazy.
        """
        return open_predictions(self.path / name)


class RemotePlace:
    """A collection under an object-storage prefix (s3:// or gs://); see the module docstring.

    Parameters
    ----------
    url : str
        The prefix.
    storage_options : dict or None
        fsspec options.
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None) -> None:
        self.url = url.rstrip("/")
        self.storage_options = storage_options

    def __str__(self) -> str:
        return self.url

    def _fs(self) -> tuple[Any, str]:
        return filesystem(self.url, self.storage_options, write=True, what="--out")

    @property
    def record_location(self) -> str:
        """Where collection.json is, for messages."""
        return join(self.url, RECORD_NAME)

    def claim(self, kind: str, inputs: list[Any], overwrite: bool) -> bool:
        """As `LocalPlace.claim`, for the prefix (its bucket must exist).

        Parameters
        ----------
        kind : str
            The output kind of a collection.
        inputs : list
            The collection's inputs (paths are checked against the folder).
        overwrite : bool
            Replace a collection of ours of other inputs or settings.

        Returns
        -------
        bool
            True when a collection of ours is there, False when the location is free.

        Raises
        ------
        OutputConflictError
            Something that is not a collection of ours, or one that overlaps an input.
        """
        return claim_output(self.url, kind, inputs=[i for i in inputs if isinstance(i, str | Path)],
                            overwrite=overwrite, resumable=True, storage_options=self.storage_options)

    def _put(self, name: str, data: bytes) -> None:
        fs, path = self._fs()
        try:
            fs.pipe_file(join(path, name), data)
        except Exception as exc:  # noqa: BLE001 - permissions, quota, endpoint: one named error
            raise remote_error(self.url, exc, f"writing {name} of") from exc

    def create(self, kind: str, record: str) -> None:
        """Write the identity record first (the prefix is ours from then on), then collection.json.

        Parameters
        ----------
        kind : str
            The output kind of a collection.
        record : str
            collection.json's text.

        Raises
        ------
        StoreError
            A write failed (permissions, quota, endpoint).
        """
        self._put(IDENTITY_FILE, identity_bytes(kind))
        self.write_record(record)

    def read_record(self) -> dict[str, Any] | None:
        """The collection's collection.json (absent after an interrupted creation).

        Returns
        -------
        dict or None
            None when there is none or it is unreadable.
        """
        fs, path = self._fs()
        key = join(path, RECORD_NAME)
        try:
            fs.invalidate_cache(key)
            return json.loads(fs.cat_file(key))
        except (FileNotFoundError, ValueError, UnicodeDecodeError):
            return None

    def write_record(self, record: str) -> None:
        """Replace collection.json by one PUT (all or nothing).

        Parameters
        ----------
        record : str
            collection.json's text.

        Raises
        ------
        StoreError
            The write failed.
        """
        self._put(RECORD_NAME, record.encode())

    def store(self, name: str) -> str:
        """The URL of a store of the collection (what translate gets as `out`).

        Parameters
        ----------
        name : str
            The store's name inside the collection.

        Returns
        -------
        str
            The store's URL.
        """
        return join(self.url, name)

    def finished(self, name: str) -> bool:
        """Whether a store holds a complete translate job (its job record says so).

        Parameters
        ----------
        name : str
            The store's name inside the collection.

        Returns
        -------
        bool
            True when its job record says complete.
        """
        fs, path = self._fs()
        key = join(path, name, JOB_DIR, JOB_FILE)
        try:
            fs.invalidate_cache(key)
            record = json.loads(fs.cat_file(key))
        except (FileNotFoundError, ValueError, UnicodeDecodeError):
            return False
        return bool(isinstance(record, dict) and record.get("complete"))

    def remove_own_store(self, name: str) -> None:
        """Delete the objects of a store when it is a translate store of ours.

        Parameters
        ----------
        name : str
            The store's name inside the collection.

        Raises
        ------
        StoreError
            The removal failed.
        """
        if (read_remote_identity(self.store(name), self.storage_options) or {}).get("kind") != OUTPUT_KIND:
            return
        fs, path = self._fs()
        try:
            fs.rm(join(path, name), recursive=True)
        except FileNotFoundError:
            pass
        except Exception as exc:  # noqa: BLE001
            raise remote_error(self.url, exc, f"removing {name} of") from exc
        fs.invalidate_cache(path)

    def open_store(self, name: str) -> ad.AnnData:
        """A finished store, read lazily from object storage (`open_predictions`).

        Parameters
        ----------
        name : str
            The store's name inside the collection.

        Returns
        -------
        AnnData
            Cells x proteins, X lazy.
        """
        return open_predictions(self.store(name), storage_options=self.storage_options)
