"""The output store: an AnnData-layout Zarr store whose X is filled block by block.

Each block is written into its own chunk rows and then committed in the store's ledger
(`.sctranslator-job/`, see `engine.ledger`), so a re-run after any interruption (kill -9 included)
skips committed blocks, recomputes only the rest, and never writes a row twice. The store itself
is created under a temporary name and renamed into place, so it exists complete with its job
record and its output identity (`sctranslator.outputs`) or not at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import zarr

from sctranslator.engine.h5copy import slab_rows, slabs
from sctranslator.engine.ledger import Ledger, block_ranges, read_record
from sctranslator.engine.obs_tables import RENAMED_KEY, writable_obs
from sctranslator.engine.output_reader import TemporaryStore, open_predictions
from sctranslator.engine.scalar_entries import scalar_entry_files
from sctranslator.engine.stored_uns import NotStorable, as_stored
from sctranslator.errors import StoreError
from sctranslator.outputs import LEDGER_DIR, claim_output, write_identity
from sctranslator.util.atomic import atomic_write_text, install_dir, remove_path, staging_dir, write_errors

log = logging.getLogger(__name__)

JOB_DIR = LEDGER_DIR  # ours inside the store: kept through the content check of --overwrite
EMBEDDING_KEY = "X_sctranslator"
OUTPUT_KIND = "translate"

__all__ = ["EMBEDDING_KEY", "JOB_DIR", "OUTPUT_KIND", "ZarrSink", "block_ranges", "skeleton", "skeleton_files"]


@dataclass
class ZarrSink:
    """Where predictions go: an AnnData-layout Zarr store written block by block. Picklable.

    Parameters
    ----------
    path : str
        The store.
    n_obs : int
        Cells.
    n_outputs : int
        Proteins.
    block_rows : int
        Cells per block (one chunk row of X per block).
    embedding_dim : int
        Width of obsm['X_sctranslator']; 0: no embeddings.
    """

    path: str
    n_obs: int
    n_outputs: int
    block_rows: int
    embedding_dim: int = 0  # > 0: obsm['X_sctranslator'] is written block by block beside X

    @property
    def job_dir(self) -> Path:
        """The store's job directory (record and committed-block markers)."""
        return Path(self.path) / JOB_DIR

    @property
    def ledger(self) -> Ledger:
        """The store's block ledger (job record + committed-block markers)."""
        return Ledger(self.job_dir, self.n_obs, self.block_rows)

    # -- creation and resume -------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, *, identity: dict[str, Any], obs: pd.DataFrame, var: pd.DataFrame,
             uns: dict[str, Any], block_rows: int, overwrite: bool = False, embedding_dim: int = 0,
             inputs: tuple[Any, ...] = (), obsm: dict[str, Any] | None = None) -> ZarrSink:
        """Create the store, or reopen it for resume when it was made by the same job.

        A store in object storage: `sctranslator.engine.remote_sink.open_sink`.

        Parameters
        ----------
        path : str or pathlib.Path
            The store.
        identity : dict
            What decides the job's results; a store of another identity is not resumed.
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
            The job's input paths; the store may not be one, lie inside one or contain one.
        obsm : dict or None
            The input's obsm arrays to carry into the store (row-sliceable, one row per cell), copied in
            row slabs; ``X_sctranslator`` is ours and never carried.

        Returns
        -------
        ZarrSink
            The sink, its skeleton written.

        Raises
        ------
        OutputConflictError
            A path that is not a translate store of ours.
        StoreError
            A store of another job, unless `overwrite`.
        """
        path = Path(path)
        ours = claim_output(path, OUTPUT_KIND, inputs=inputs, overwrite=overwrite, resumable=True)
        if ours:
            recorded = read_record(path / JOB_DIR)
            if recorded is not None and recorded.get("identity") == identity and not overwrite:
                sink = cls(str(path), len(obs), var.shape[0], int(recorded["block_rows"]), embedding_dim)
                log.info("resuming %s: %d of %d blocks already committed", path, len(sink.committed()),
                         len(sink.blocks()))
                return sink
            if not overwrite:
                raise StoreError(f"{path} was written by a different model, input or settings; refusing to mix "
                                 "results. Choose another --out, or pass --overwrite to replace it.")
        sink = cls(str(path), len(obs), var.shape[0], block_rows, embedding_dim)
        sink._create(identity, obs, var, uns, obsm or {})
        return sink

    def _create(self, identity: dict[str, Any], obs: pd.DataFrame, var: pd.DataFrame, uns: dict[str, Any],
                obsm: dict[str, Any]) -> None:
        """Build the whole empty store aside, then rename it over `path` (which the caller may replace)."""
        files, written = skeleton(obs, var, uns, self.n_obs, self.n_outputs, self.block_rows, self.embedding_dim)
        with staging_dir(self.path) as staging:
            write_files(staging, files)
            carried = {key: array for key, array in obsm.items() if key != EMBEDDING_KEY}
            if carried:
                _copy_obsm(staging, carried, self.block_rows)
            Ledger.create(staging / JOB_DIR, identity=identity, n_obs=self.n_obs, block_rows=self.block_rows,
                          extra={"n_outputs": self.n_outputs, "complete": False})
            write_identity(staging, OUTPUT_KIND)
            install_dir(staging, self.path)
        self._written_uns = written

    # -- blocks --------------------------------------------------------------------------------
    def blocks(self) -> list[tuple[int, int]]:
        """Row range of each block.

        Returns
        -------
        list of tuple of int
            ``[start, stop)`` per block.
        """
        return self.ledger.blocks()

    def committed(self) -> set[int]:
        """Indices of the committed blocks.

        Returns
        -------
        set of int
            Block indices.
        """
        return self.ledger.committed()

    def pending(self) -> list[int]:
        """Indices of the blocks still to compute, in order.

        Returns
        -------
        list of int
            Block indices.
        """
        return self.ledger.pending()

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
        return self.ledger.block_file(index).exists()

    def write_block(self, index: int, predictions: np.ndarray, embeddings: np.ndarray | None = None) -> None:
        """Write one block's predictions (and embeddings) into the store, then commit it.

        Parameters
        ----------
        index : int
            The block.
        predictions : numpy.ndarray
            float32 ``(block cells, n_outputs)``.
        embeddings : numpy.ndarray or None
            float32 ``(block cells, embedding_dim)``, required when the store has embeddings.

        Raises
        ------
        StoreError
            Mis-shaped predictions or embeddings.
        OutputWriteError
            The write failed (full disk, no permission).
        """
        start, stop = self.blocks()[index]
        if predictions.shape != (stop - start, self.n_outputs):
            raise StoreError(f"block {index} has shape {predictions.shape}, expected {(stop - start, self.n_outputs)}")
        if self.embedding_dim and (embeddings is None or embeddings.shape != (stop - start, self.embedding_dim)):
            raise StoreError(f"block {index}: embeddings missing or mis-shaped")
        # zarr writes each chunk to a temporary file and renames it, so a failed write leaves the
        # chunk as it was; the marker is created only after the rows are written (a kill means redo).
        with write_errors(self.path, self.bytes_pending):
            x = zarr.open_array(str(Path(self.path) / "X"), mode="r+")
            x[start:stop] = predictions.astype(np.float32, copy=False)
            if self.embedding_dim:
                emb = zarr.open_array(str(Path(self.path) / "obsm" / EMBEDDING_KEY), mode="r+")
                emb[start:stop] = embeddings.astype(np.float32, copy=False)
            self.ledger.commit(index)

    def bytes_pending(self) -> int:
        """Uncompressed bytes of the blocks not yet committed (an upper bound of the space they need).

        Returns
        -------
        int
            Bytes.
        """
        row_bytes = 4 * (self.n_outputs + self.embedding_dim)
        blocks = self.blocks()
        return sum((blocks[i][1] - blocks[i][0]) * row_bytes for i in self.pending())

    def finish(self, extra: dict[str, Any] | None = None, run: dict[str, Any] | None = None) -> None:
        """Mark the store complete and record this run's statistics in it.

        Parameters
        ----------
        extra : dict or None
            Further fields for ``uns['sctranslator']``.
        run : dict or None
            This run's statistics (blocks, cells, empty cells, speed); they go into
            ``uns['sctranslator']['run']`` so that they travel with the predictions.

        Raises
        ------
        StoreError
            Some block is not committed.
        """
        ledger = self.ledger
        ledger.require_complete(str(self.path))
        with write_errors(self.path, 1 << 20):
            if run is not None:
                _write_local_uns_entry(Path(self.path), "run", run)
                self._wrote_run(run)
            ledger.update_record({"complete": True, **(extra or {})})

    def _wrote_run(self, run: dict[str, Any]) -> None:
        """Keep the written uns in step with the store: its run record is now there too."""
        written = getattr(self, "_written_uns", None)
        record = written.get("sctranslator") if isinstance(written, dict) else None
        if isinstance(record, dict):
            self._written_uns = {**written, "sctranslator": {**record, "run": run}}

    def known_uns(self) -> dict[str, Any] | None:
        """The store's uns as a fresh read returns it, from what this sink wrote (no read).

        Returns
        -------
        dict or None
            None when this sink did not create the store (a resumed one holds an earlier run's
            provenance) or holds a value whose stored form `as_stored` does not derive: read it then.
        """
        written = getattr(self, "_written_uns", None)
        if written is None:
            return None
        try:
            return as_stored(written)
        except NotStorable as why:
            log.debug("reading uns back from %s: %s", self.path, why)
            return None

    def __getstate__(self) -> dict[str, Any]:
        # Workers get the sink without the provenance: only the process that created the store reads it.
        state = dict(self.__dict__)
        state.pop("_written_uns", None)
        return state

    def read(self, owner: TemporaryStore | None = None) -> ad.AnnData:
        """The finished store as an AnnData whose X stays on disk (see `open_predictions`).

        Parameters
        ----------
        owner : TemporaryStore or None
            For a temporary store, the object that removes it.

        Returns
        -------
        AnnData
            Cells x proteins, X lazy.
        """
        return open_predictions(self.path, owner=owner, uns=self.known_uns())


def skeleton_files(obs: pd.DataFrame, var: pd.DataFrame, uns: dict[str, Any], n_obs: int, n_outputs: int,
                   block_rows: int, embedding_dim: int = 0) -> dict[str, bytes]:
    """The empty output store as {key: bytes}: `skeleton`'s files.

    Parameters
    ----------
    obs : pandas.DataFrame
        The cells' obs.
    var : pandas.DataFrame
        The proteins' var.
    uns : dict
        The provenance.
    n_obs : int
        Cells.
    n_outputs : int
        Proteins.
    block_rows : int
        Cells per block.
    embedding_dim : int
        Width of the embeddings; 0: none.

    Returns
    -------
    dict of str to bytes
        Store key -> content.
    """
    return skeleton(obs, var, uns, n_obs, n_outputs, block_rows, embedding_dim)[0]


def skeleton(obs: pd.DataFrame, var: pd.DataFrame, uns: dict[str, Any], n_obs: int, n_outputs: int,
             block_rows: int, embedding_dim: int = 0) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The empty output store as {key: bytes}, with consolidated metadata, and the uns it holds.

    obs, var, uns, an unwritten X (NaN fill, one chunk row per block) and obsm['X_sctranslator'] when
    `embedding_dim`. Built in memory: zarr's per-element round trips to disk (or an object store) made
    creating the small skeleton cost about a second per translate call.

    Parameters
    ----------
    obs : pandas.DataFrame
        The cells' obs.
    var : pandas.DataFrame
        The proteins' var.
    uns : dict
        The provenance.
    n_obs : int
        Cells.
    n_outputs : int
        Proteins.
    block_rows : int
        Cells per block.
    embedding_dim : int
        Width of the embeddings; 0: none.

    Returns
    -------
    files : dict of str to bytes
        Store key -> content.
    uns : dict
        The uns written (`uns`, with the record of renamed obs columns when there are any).
    """
    obs, renamed = writable_obs(obs)
    if renamed:
        uns = {**uns, "sctranslator": {**uns["sctranslator"], RENAMED_KEY: renamed}}
    provenance = uns.get("sctranslator")
    cached = isinstance(provenance, dict) and all(isinstance(key, str) for key in provenance)
    skeleton = ad.AnnData(obs=obs, var=var, uns={**uns, "sctranslator": {}} if cached else uns)
    skeleton.strings_to_categoricals()  # what writing does anyway, without anndata's note about it
    files: dict[str, Any] = {}
    store = zarr.storage.MemoryStore(files)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # anndata's note about the zarr v2 default
        skeleton.write_zarr(store)
        if cached:
            for key, value in provenance.items():
                for name, data in _encoded_entry(key, value).items():
                    files[f"uns/sctranslator/{key}/{name}"] = data
    root = zarr.open_group(store, mode="a")
    x = root.create_array("X", shape=(n_obs, n_outputs), chunks=(block_rows, n_outputs), dtype="float32",
                          fill_value=np.nan)
    x.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
    if embedding_dim:
        emb = root["obsm"].create_array(EMBEDDING_KEY, shape=(n_obs, embedding_dim),
                                        chunks=(block_rows, embedding_dim), dtype="float32", fill_value=np.nan)
        emb.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
    zarr.consolidate_metadata(store)
    return {key: data.to_bytes() for key, data in files.items()}, uns


_ENCODED: OrderedDict[tuple[Any, ...], dict[str, Any]] = OrderedDict()
_ENCODED_LIMIT = 64


def _encoded_entry(key: str, value: Any) -> dict[str, Any]:
    """The zarr files (keys relative to the entry, zarr buffers) anndata writes for `uns[...][key] = value`,
    from a per-process cache keyed by the value's pickle (the same value encodes to the same files)."""
    try:
        digest = hashlib.sha256(pickle.dumps(value, protocol=5)).hexdigest()
    except Exception:  # noqa: BLE001 - a value pickle cannot hold is encoded every time
        digest = None
    fmt = ad.settings.zarr_write_format
    cache_key = (key, digest, fmt)
    if digest is not None and cache_key in _ENCODED:
        _ENCODED.move_to_end(cache_key)
        return _ENCODED[cache_key]
    try:
        from anndata.io import write_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import write_elem

    files: dict[str, Any] = {}
    write_elem(zarr.open_group(zarr.storage.MemoryStore(files), mode="a", zarr_format=fmt), key, value)
    prefix = f"{key}/"
    encoded = {name[len(prefix):]: data for name, data in files.items() if name.startswith(prefix)}
    if digest is not None:
        _ENCODED[cache_key] = encoded
        while len(_ENCODED) > _ENCODED_LIMIT:
            _ENCODED.popitem(last=False)
    return encoded


def _store_like(store: Any) -> Any:
    """What zarr opens: a local path as a string, a store object (object storage) as it is."""
    return str(store) if isinstance(store, str | Path) else store


def _copy_obsm(store: Path | Any, arrays: dict[str, Any], block_rows: int) -> None:
    """The input's obsm arrays into the (staged) store's obsm, in row slabs, chunked like X."""
    try:
        root = zarr.open_group(_store_like(store), mode="r+", use_consolidated=False)
    except TypeError:  # zarr 2: consolidated metadata is only used when asked for
        root = zarr.open_group(_store_like(store), mode="r+")
    for key, source in arrays.items():
        shape = tuple(int(n) for n in source.shape)
        dtype = np.dtype(source.dtype)
        target = root["obsm"].create_array(key, shape=shape, chunks=(max(1, block_rows), *shape[1:]), dtype=dtype)
        target.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        rows = slab_rows(shape, dtype.itemsize, max(1, block_rows))
        for start, stop in slabs(shape[0], rows):
            target[start:stop] = np.asarray(source[start:stop], dtype=dtype)
    zarr.consolidate_metadata(_store_like(store))
    log.debug("carried obsm %s into %s", sorted(arrays), store)


def write_files(root: Path, files: dict[str, bytes]) -> None:
    """Write a store's small metadata and scalar files under `root`: the folders first, then the files.

    The files go out from a few threads: each is a round trip to the file system, which on a busy disk
    costs more than the bytes.

    Parameters
    ----------
    root : pathlib.Path
        The store.
    files : dict of str to bytes
        Key relative to `root` -> content.
    """
    for folder in sorted({(root / key).parent for key in files}):
        folder.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=8) as pool:
        for written in pool.map(lambda item: (root / item[0]).write_bytes(item[1]), files.items()):
            del written


def _write_local_uns_entry(path: Path, key: str, value: dict[str, Any]) -> None:
    """`_write_uns_entry` for a local store with zarr v2 consolidated metadata (`.zmetadata`, what
    anndata writes by default): the entry is encoded in memory, its files written, and its metadata
    merged into `.zmetadata` instead of re-reading every node of the store; other stores go through
    `_write_uns_entry`."""
    consolidated = path / ".zmetadata"
    if not consolidated.is_file() or not (path / "uns" / "sctranslator" / ".zgroup").is_file():
        _write_uns_entry(path, key, value)
        return
    clean = {name: (float(v) if isinstance(v, float | np.floating) else v) for name, v in value.items()}
    prefix = f"uns/sctranslator/{key}/"
    files, added = _entry_files(prefix, clean)
    record = json.loads(consolidated.read_text())
    remove_path(path / prefix)  # an entry of an earlier attempt is replaced, as write_elem replaces it
    write_files(path, files)
    merged = {**{k: v for k, v in record["metadata"].items() if not k.startswith(prefix)}, **added}
    # In key order: zarr groups a node's children with itertools.groupby, so siblings must be adjacent.
    record["metadata"] = dict(sorted(merged.items()))
    atomic_write_text(consolidated, json.dumps(record))


def _entry_files(prefix: str, value: dict[str, Any]) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The zarr v2 files of ``write_elem`` for the uns entry at `prefix` (``uns/sctranslator/KEY/``) and
    their consolidated-metadata entries: from per-type templates for a dict of numbers (the run record,
    see `engine.scalar_entries`), else by ``write_elem`` into memory."""
    made = scalar_entry_files(value)
    if made is not None:
        return ({prefix + name: data for name, data in made[0].items()},
                {prefix + name: entry for name, entry in made[1].items()})
    files: dict[str, Any] = {}
    memory = zarr.storage.MemoryStore(files)
    parent_path, key = prefix.rstrip("/").rsplit("/", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # anndata's note about the zarr v2 default
        parent = zarr.open_group(memory, mode="a", zarr_format=2)
        for part in parent_path.split("/"):
            parent = parent.require_group(part)
        try:
            from anndata.io import write_elem
        except ImportError:  # anndata < 0.11
            from anndata.experimental import write_elem
        write_elem(parent, key, value)
        zarr.consolidate_metadata(memory)
    added = {name: entry for name, entry in json.loads(files[".zmetadata"].to_bytes())["metadata"].items()
             if name.startswith(prefix)}
    return {name: data.to_bytes() for name, data in files.items() if name.startswith(prefix)}, added


def _write_uns_entry(path: str | Path | Any, key: str, value: dict[str, Any]) -> None:
    """uns['sctranslator'][key] = value in the store, written as anndata writes it (metadata re-consolidated)."""
    try:
        from anndata.io import write_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import write_elem

    try:  # anndata refuses to edit through consolidated metadata; it is rebuilt below
        root = zarr.open_group(_store_like(path), mode="r+", use_consolidated=False)
    except TypeError:  # zarr 2: consolidated metadata is only used when asked for
        root = zarr.open_group(_store_like(path), mode="r+")
    record = root["uns"]["sctranslator"]
    clean = {name: (float(v) if isinstance(v, float | np.floating) else v) for name, v in value.items()}
    with warnings.catch_warnings():
        # anndata's note about the zarr v2 default; zarr's about our own files beside the arrays
        # (the identity record, the job ledger), which are not zarr nodes on purpose.
        warnings.simplefilter("ignore", UserWarning)
        write_elem(record, key, clean)
        zarr.consolidate_metadata(_store_like(path))
