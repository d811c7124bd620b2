"""The output store in object storage (s3://, gs://): `ZarrSink`'s guarantees without rename.

An object store has no rename and no directories, but every object is written by one PUT, which
is all-or-nothing. The store is therefore written in an order that a reader (or a resumed job)
can always judge:

1. the identity record (``.sctranslator-output.json``) first: from then on the location is ours,
   so an interrupted creation is recognised and redone, never refused as foreign;
2. the skeleton (obs, var, uns, the unwritten X, consolidated metadata) and carried obsm arrays;
3. the job record (``.sctranslator-job/job.json``, model/input/plan identity) last: a store
   without it is an unfinished creation and is rebuilt on the next run;
4. per block: its chunks of X (and embeddings), each one object and each holding rows of that
   block only (a chunk row is a block), then the block's marker object
   ``.sctranslator-job/blocks/NNNNNNNNN``: a block is committed exactly when its marker exists,
   so a kill between the two only means the block is computed again;
5. at the end: the run statistics in uns, then the job record again with ``complete: true``.

Replacing an earlier store of ours (``overwrite``) deletes its objects except the identity
record, then writes the new one in the order above. The one-writer lock is `storage.RemoteLock`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import zarr

from sctranslator.engine.ledger import BLOCKS_DIR, JOB_FILE, block_ranges
from sctranslator.engine.output_reader import TemporaryStore, open_predictions
from sctranslator.engine.sink import (
    EMBEDDING_KEY,
    JOB_DIR,
    OUTPUT_KIND,
    ZarrSink,
    _copy_obsm,
    _write_uns_entry,
    skeleton,
)
from sctranslator.errors import StoreError
from sctranslator.outputs import IDENTITY_FILE, claim_output, exists, identity_bytes
from sctranslator.util.storage import filesystem, is_url, join, remote_error, zarr_store

log = logging.getLogger(__name__)


def open_sink(path: str | Any, **kwargs: Any) -> ZarrSink:
    """Open the output store: `ZarrSink.open` for a local path, `RemoteZarrSink.open_remote` for a URL.

    Parameters
    ----------
    path : str or pathlib.Path
        A local store, or an s3:// or gs:// URL.
    **kwargs
        As `ZarrSink.open`, plus ``storage_options`` for a URL.

    Returns
    -------
    ZarrSink
        The sink.
    """
    if is_url(path):
        return RemoteZarrSink.open_remote(str(path), **kwargs)
    kwargs.pop("storage_options", None)
    return ZarrSink.open(path, **kwargs)


@dataclass
class RemoteZarrSink(ZarrSink):
    """A `ZarrSink` whose store is a URL in object storage. Picklable: a URL, sizes and options.

    Parameters
    ----------
    path : str
        The store's URL.
    n_obs : int
        Cells.
    n_outputs : int
        Proteins.
    block_rows : int
        Cells per block.
    embedding_dim : int
        Width of the embeddings; 0: none.
    storage_options : dict or None
        fsspec options.
    """

    storage_options: dict[str, Any] | None = None

    # -- locations -----------------------------------------------------------------------------
    @property
    def ledger(self) -> Any:
        """Not available: a store in object storage keeps its ledger as objects.

        Raises
        ------
        StoreError
            Always; use blocks(), committed(), block_done() and write_block().
        """
        # The local Ledger would read and write a folder named like the URL on this machine.
        raise StoreError(f"{self.path}: a store in object storage keeps its ledger as objects; use the sink's "
                         "blocks(), committed(), block_done() and write_block()")

    def _fs(self) -> tuple[Any, str]:
        return filesystem(self.path, self.storage_options, write=True, what="the output")

    def _key(self, *parts: str) -> str:
        return join(self._fs()[1], *parts)

    def _store(self) -> Any:
        return zarr_store(self.path, self.storage_options, read_only=False)

    def _record(self) -> dict[str, Any] | None:
        fs, _ = self._fs()
        key = self._key(JOB_DIR, JOB_FILE)
        try:
            fs.invalidate_cache(key)
            record = json.loads(fs.cat_file(key))
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            return None
        return record if isinstance(record, dict) and "identity" in record else None

    def _put(self, key: str, data: bytes) -> None:
        fs, _ = self._fs()
        try:
            fs.pipe_file(key, data)
        except Exception as exc:  # noqa: BLE001 - permissions, quota, endpoint: one named error
            raise remote_error(self.path, exc, f"writing {key} of") from exc

    # -- creation and resume -------------------------------------------------------------------
    @classmethod
    def open_remote(cls, url: str, *, identity: dict[str, Any], obs: pd.DataFrame, var: pd.DataFrame,
                    uns: dict[str, Any], block_rows: int, overwrite: bool = False, embedding_dim: int = 0,
                    inputs: tuple[Any, ...] = (), obsm: dict[str, Any] | None = None,
                    storage_options: dict[str, Any] | None = None) -> RemoteZarrSink:
        """`ZarrSink.open` for a URL: create the store, or reopen it for resume when the same job made it.

        Parameters
        ----------
        url : str
            The store's URL.
        identity : dict
            What decides the job's results.
        obs : pandas.DataFrame
            The cells' obs.
        var : pandas.DataFrame
            The proteins' var.
        uns : dict
            The provenance.
        block_rows : int
            Cells per block.
        overwrite : bool
            Replace a translate store of another job.
        embedding_dim : int
            Width of the embeddings; 0: none.
        inputs : tuple
            The job's inputs.
        obsm : dict or None
            The input's obsm arrays to carry.
        storage_options : dict or None
            fsspec options.

        Returns
        -------
        RemoteZarrSink
            The sink.

        Raises
        ------
        OutputConflictError
            A location that is not a translate store of ours.
        StoreError
            A store of another job (unless `overwrite`), or a failed object-storage call.
        """
        url = url.rstrip("/")
        ours = claim_output(url, OUTPUT_KIND, inputs=inputs, overwrite=overwrite, resumable=True,
                            storage_options=storage_options)
        sink = cls(url, len(obs), var.shape[0], block_rows, embedding_dim, storage_options)
        if ours:
            recorded = sink._record()
            if recorded is not None and recorded.get("identity") == identity and not overwrite:
                sink.block_rows = int(recorded["block_rows"])
                log.info("resuming %s: %d of %d blocks already committed", url, len(sink.committed()),
                         len(sink.blocks()))
                return sink
            if recorded is not None and not overwrite:
                raise StoreError(f"{url} was written by a different model, input or settings; refusing to mix "
                                 "results. Choose another --out, or pass --overwrite to replace it.")
            # No job record: an earlier creation of ours was interrupted; it is rebuilt.
            sink._clear()
        sink._create(identity, obs, var, uns, obsm or {})
        return sink

    def _clear(self) -> None:
        """Delete every object of the store except its identity record (the location stays ours)."""
        fs, path = self._fs()
        keep = join(path, IDENTITY_FILE)
        fs.invalidate_cache(path)
        doomed = [key for key in fs.find(path) if key != keep]
        if doomed:
            fs.rm(doomed)
        fs.invalidate_cache(path)

    def _create(self, identity: dict[str, Any], obs: pd.DataFrame, var: pd.DataFrame, uns: dict[str, Any],
                obsm: dict[str, Any]) -> None:
        """Write the empty store in the order the module docstring gives (identity first, job record last)."""
        fs, path = self._fs()
        self._put(join(path, IDENTITY_FILE), identity_bytes(OUTPUT_KIND))
        files, written = skeleton(obs, var, uns, self.n_obs, self.n_outputs, self.block_rows, self.embedding_dim)
        try:
            fs.pipe({join(path, key): data for key, data in files.items()})
            carried = {key: array for key, array in obsm.items() if key != EMBEDDING_KEY}
            if carried:
                _copy_obsm(self._store(), carried, self.block_rows)
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise remote_error(self.path, exc, "writing the output store") from exc
        record = {"identity": identity, "block_rows": int(self.block_rows), "n_obs": int(self.n_obs),
                  "n_outputs": self.n_outputs, "complete": False}
        self._put(self._key(JOB_DIR, JOB_FILE), json.dumps(record, indent=2, default=str).encode())
        self._written_uns = written

    # -- blocks --------------------------------------------------------------------------------
    def blocks(self) -> list[tuple[int, int]]:
        """Row range of each block.

        Returns
        -------
        list of tuple of int
            ``[start, stop)`` per block.
        """
        return block_ranges(self.n_obs, self.block_rows)

    def committed(self) -> set[int]:
        """Indices of the committed blocks (their marker objects exist).

        Returns
        -------
        set of int
            Block indices.
        """
        fs, _ = self._fs()
        where = self._key(JOB_DIR, BLOCKS_DIR)
        fs.invalidate_cache(where)
        try:
            names = [key.rsplit("/", 1)[-1] for key in fs.ls(where, detail=False)]
        except FileNotFoundError:
            return set()
        return {int(name) for name in names if name.isdigit()}

    def pending(self) -> list[int]:
        """Indices of the blocks still to compute, in order.

        Returns
        -------
        list of int
            Block indices.
        """
        done = self.committed()
        return [i for i in range(len(self.blocks())) if i not in done]

    def block_done(self, index: int) -> bool:
        """Whether block `index` is committed (a re-run task skips it).

        Parameters
        ----------
        index : int
            The block.

        Returns
        -------
        bool
            True when committed.
        """
        fs, _ = self._fs()
        return exists(fs, self._key(JOB_DIR, BLOCKS_DIR, f"{index:09d}"))

    def write_block(self, index: int, predictions: np.ndarray, embeddings: np.ndarray | None = None) -> None:
        """Upload one block's chunks, then its marker object.

        Parameters
        ----------
        index : int
            The block.
        predictions : numpy.ndarray
            float32 ``(block cells, n_outputs)``.
        embeddings : numpy.ndarray or None
            float32 ``(block cells, embedding_dim)``.

        Raises
        ------
        StoreError
            Mis-shaped arrays, or a failed upload.
        """
        start, stop = self.blocks()[index]
        if predictions.shape != (stop - start, self.n_outputs):
            raise StoreError(f"block {index} has shape {predictions.shape}, expected {(stop - start, self.n_outputs)}")
        if self.embedding_dim and (embeddings is None or embeddings.shape != (stop - start, self.embedding_dim)):
            raise StoreError(f"block {index}: embeddings missing or mis-shaped")
        store = self._store()
        try:
            x = zarr.open_array(store, path="X", mode="r+")
            x[start:stop] = predictions.astype(np.float32, copy=False)
            if self.embedding_dim:
                emb = zarr.open_array(store, path=f"obsm/{EMBEDDING_KEY}", mode="r+")
                emb[start:stop] = embeddings.astype(np.float32, copy=False)
        except Exception as exc:  # noqa: BLE001
            raise remote_error(self.path, exc, f"writing block {index} (rows {start}..{stop - 1}) of") from exc
        # The marker only after every chunk of the block is stored: a kill in between means redo.
        self._put(self._key(JOB_DIR, BLOCKS_DIR, f"{index:09d}"), f"{start} {stop}\n".encode())

    def bytes_pending(self) -> int:
        """Uncompressed bytes of the blocks not yet committed.

        Returns
        -------
        int
            Bytes.
        """
        return 0  # object storage reports no free space to compare with

    def finish(self, extra: dict[str, Any] | None = None, run: dict[str, Any] | None = None) -> None:
        """Mark the store complete and record this run's statistics in it.

        Parameters
        ----------
        extra : dict or None
            Further fields for ``uns['sctranslator']``.
        run : dict or None
            This run's statistics.

        Raises
        ------
        StoreError
            Some block is not committed, or an upload failed.
        """
        missing = self.pending()
        if missing:
            raise StoreError(f"{self.path}: blocks {missing[:10]} are not committed; re-run the same command")
        if run is not None:
            try:
                _write_uns_entry(self._store(), "run", run)
            except Exception as exc:  # noqa: BLE001
                raise remote_error(self.path, exc, "writing the run record of") from exc
            self._wrote_run(run)
        record = self._record()
        if record is None:
            raise StoreError(f"{self.path}: its job record is missing; start the job afresh")
        record.update({"complete": True, **(extra or {})})
        self._put(self._key(JOB_DIR, JOB_FILE), json.dumps(record, indent=2, default=str).encode())

    def read(self, owner: TemporaryStore | None = None) -> Any:
        """The finished store as an AnnData whose X stays in object storage (see `open_predictions`).

        Parameters
        ----------
        owner : TemporaryStore or None
            The object that removes a temporary store; the arrays keep it alive.

        Returns
        -------
        AnnData
            Cells x proteins, X lazy.
        """
        return open_predictions(self.path, owner=owner, storage_options=self.storage_options, uns=self.known_uns())
