"""Paired RNA + protein training data: where the two matrices come from and which cells pair up.

The RNA stays behind an engine `Source` (read in row blocks, never sliced per cell). A protein
table stored as a matrix of its own (a separate .h5ad/zarr, or a MuData modality on disk) stays
behind a `Source` too and is read in the same blocks; one kept in obsm or given in memory is held
(cells x proteins, small next to the RNA). Cell names are read in blocks to pair the cells and are
not kept (`sctranslator.train.cellnames`): a pairing holds integer rows only.

Every source `translate` reads serves paired cells: local files and stores, the same at an
s3://, gs:// or http(s):// URL (`storage_options` go to fsspec), and a TileDB-SOMA experiment,
whose proteins are a second measurement of the same experiment or a file of their own.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sctranslator.engine.sources import Source, open_source
from sctranslator.engine.sources.remote import BLOCK_BYTES
from sctranslator.engine.sources.soma import SomaSource, soma_uri
from sctranslator.errors import InputDataError, StoreError
from sctranslator.modalities import is_protein_modality, pick_protein_modality
from sctranslator.model.cells import name_hashes
from sctranslator.train import cellnames
from sctranslator.train.cellnames import hashes_at, name_blocks, names_at, same_names, source_hashes
from sctranslator.util.optional import import_optional
from sctranslator.util.storage import filesystem, is_url, join, remote_error, zarr_store

DEFAULT_PROTEIN_KEY = "protein_expression"

Data = str | os.PathLike | ad.AnnData | Any  # Any: a MuData (no mudata import needed to accept one)


@dataclass
class PairedData:
    """Cells measured in both modalities, in RNA row order (`load_paired` makes it).

    Parameters
    ----------
    source : Source
        The RNA matrix, served in row blocks.
    rows : numpy.ndarray
        int64 ``(n_cells,)``: the RNA source row of each paired cell, increasing.
    protein_table : numpy.ndarray or None
        float64 ``(n_cells, n_proteins)`` measured counts held in memory, or None when they are read
        from `protein_source`.
    protein_names : list of str
        The protein columns.
    origin : dict
        Where each part came from and how many cells paired (for the model card).
    protein_source : Source or None
        The protein matrix, read in row blocks.
    protein_rows : numpy.ndarray or None
        int64 ``(n_cells,)``: the `protein_source` row of each paired cell.
    """

    source: Source  # the RNA matrix, served in row blocks
    rows: np.ndarray  # int64 (n_cells,): RNA source row of each paired cell, increasing
    protein_table: np.ndarray | None  # float64 (n_cells, n_proteins) held in memory, or None (read from below)
    protein_names: list[str]
    origin: dict[str, Any] = field(default_factory=dict)  # where each part came from (for the card)
    protein_source: Source | None = None  # the protein matrix, read in row blocks
    protein_rows: np.ndarray | None = None  # int64 (n_cells,): protein_source row of each paired cell

    @property
    def n_cells(self) -> int:
        """Number of paired cells."""
        return int(self.rows.shape[0])

    @property
    def obs(self) -> pd.DataFrame:
        """obs of the paired cells (index = cell names), read from the source on each call (not kept)."""
        obs = self.source.read_obs().iloc[self.rows]
        obs.index = pd.Index(names_at(self.source, self.rows))
        return obs

    def split_table(self, column: str | None) -> pd.DataFrame:
        """What `split_cells` needs: the paired cells' obs without their names.

        Parameters
        ----------
        column : str or None
            The column the split reads; None gives a table with no columns (no obs is read).

        Returns
        -------
        pandas.DataFrame
            One row per paired cell, a RangeIndex.
        """
        if column is None:
            return pd.DataFrame(index=pd.RangeIndex(self.n_cells))
        # The whole table is read once (stored obs are read whole) and its names dropped at once.
        return self.source.read_obs().iloc[self.rows].reset_index(drop=True)

    def cell_names(self, positions: np.ndarray) -> np.ndarray:
        """Names of the paired cells at `positions`, read by row.

        Parameters
        ----------
        positions : numpy.ndarray
            int64 positions among the paired cells, increasing, ``(n,)``.

        Returns
        -------
        numpy.ndarray
            Object array of obs names, ``(n,)``.
        """
        return names_at(self.source, self.rows[positions])

    def cell_hashes(self, positions: np.ndarray) -> np.ndarray:
        """Name hashes of the paired cells at `positions`, read block by block.

        Parameters
        ----------
        positions : numpy.ndarray
            int64 positions among the paired cells, increasing, ``(n,)``.

        Returns
        -------
        numpy.ndarray
            uint64 hashes, ``(n,)``.
        """
        out = np.empty(positions.size, dtype=np.uint64)
        step = cellnames.NAME_BLOCK
        for lo in range(0, positions.size, step):  # rows mapped a block at a time: no per-cell temporary
            out[lo:lo + step] = hashes_at(self.source, self.rows[positions[lo:lo + step]])
        return out

    @property
    def proteins(self) -> np.ndarray:
        """All paired cells' measured protein counts (float64, n_cells x n_proteins): reads them whole."""
        return self.read_proteins(np.arange(self.n_cells, dtype=np.int64))

    def read_proteins(self, positions: np.ndarray) -> np.ndarray:
        """Measured protein counts of the paired cells at `positions`.

        Parameters
        ----------
        positions : numpy.ndarray
            int64 positions among the paired cells, increasing, ``(n,)``.

        Returns
        -------
        numpy.ndarray
            float64 raw counts, ``(n, n_proteins)``.
        """
        if self.protein_table is not None:
            return self.protein_table[positions]
        assert self.protein_source is not None and self.protein_rows is not None
        return _gather_rows(self.protein_source, self.protein_rows[positions])


_GATHER_SPAN = 65_536  # rows read in one range when gathering scattered rows


def _gather_rows(source: Source, rows: np.ndarray) -> np.ndarray:
    """Rows `rows` (any order) of `source` as float64 dense, read in ranges of bounded span."""
    out = np.empty((rows.shape[0], source.n_vars), dtype=np.float64)
    if rows.size == 0:
        return out
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    lo = 0
    while lo < ordered.size:
        # One read per run of rows within _GATHER_SPAN of its first: paired tables in another
        # order never make one read span the whole table.
        hi = int(np.searchsorted(ordered, ordered[lo] + _GATHER_SPAN))
        first, last = int(ordered[lo]), int(ordered[hi - 1]) + 1
        block = source.read_block(first, last)
        picked = block[ordered[lo:hi] - first]
        out[order[lo:hi]] = _as_dense(picked)
        lo = hi
    return out


def _check_protein_source(source: Source, where: str) -> None:
    """Finite, non-negative counts throughout, checked block by block (never whole in memory)."""
    for start in range(0, source.n_obs, _GATHER_SPAN):
        block = source.read_block(start, min(start + _GATHER_SPAN, source.n_obs))
        values = block.data if sp.issparse(block) else block
        if not np.isfinite(values).all() or (values < 0).any():
            raise InputDataError(f"protein counts from {where} must be finite and non-negative")


def _is_mudata(data: Any) -> bool:
    return type(data).__name__ == "MuData" and hasattr(data, "mod")


def _describe(data: Any) -> str:
    """Where `data` came from, for the card: a path, a URL without credentials or query (a presigned
    URL's signature stays out of the bundle), or the in-memory object's type."""
    if is_url(data):
        from urllib.parse import urlsplit

        parts = urlsplit(str(data))
        return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"
    return str(data) if isinstance(data, str | os.PathLike) else f"in-memory {type(data).__name__}"


@contextlib.contextmanager
def _root_group(location: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> Iterator[Any]:
    """The root group of an HDF5 file (h5ad/h5mu) or a Zarr store, local or at a URL, opened read-only."""
    if is_url(location):
        url = str(location).rstrip("/")
        fs, path = filesystem(url, storage_options)
        try:
            is_zarr = any(fs.exists(join(path, marker)) for marker in ("zarr.json", ".zgroup"))
            handle = None if is_zarr else fs.open(path, "rb", block_size=BLOCK_BYTES, cache_type="blockcache")
        except Exception as exc:  # noqa: BLE001 - credentials, endpoint, permissions
            raise remote_error(url, exc, "reading the input") from exc
        if handle is None:
            import zarr

            yield zarr.open_group(zarr_store(url, storage_options), mode="r")
            return
        try:
            with h5py.File(handle, "r") as group:
                yield group
        finally:
            handle.close()
        return
    path = Path(location)
    if path.is_dir():
        import zarr

        yield zarr.open_group(str(path), mode="r")
        return
    if not path.exists():
        raise StoreError(f"{path}: no such file or directory")
    with h5py.File(path, "r") as group:
        yield group


def _read_elem(group: Any, key: str) -> Any:
    from anndata.io import read_elem

    return read_elem(group[key])


def _as_dense(matrix: Any) -> np.ndarray:
    array = matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
    return np.asarray(array, dtype=np.float64)


def _table_from_anndata(adata: ad.AnnData) -> tuple[np.ndarray, list[str], pd.Index]:
    return _as_dense(adata.X), [str(n) for n in adata.var_names], pd.Index(adata.obs_names.astype(str))


def _table_from_obsm(value: Any, uns: dict[str, Any], key: str,
                     obs_names: pd.Index) -> tuple[np.ndarray, list[str], pd.Index]:
    """A protein table kept in obsm: a DataFrame (columns = names) or an array + names in uns."""
    if isinstance(value, pd.DataFrame):
        return _as_dense(value.to_numpy()), [str(c) for c in value.columns], obs_names
    names = uns.get(f"{key}_names", uns.get("protein_names"))
    if names is None:
        raise InputDataError(f"obsm[{key!r}] is an array without protein names: store them in "
                             f"uns['{key}_names'] (or make obsm[{key!r}] a DataFrame)")
    matrix = _as_dense(value)
    if len(names) != matrix.shape[1]:
        raise InputDataError(f"obsm[{key!r}] has {matrix.shape[1]} columns but uns names {len(names)} proteins")
    return matrix, [str(n) for n in names], obs_names


def _protein_modality(names: list[str], key: str, what: str) -> str:
    """The modality of a MuData holding the proteins: the one `--protein-key` names, else the one
    named like proteins (prot, protein, ADT, Antibody Capture..., any case; sctranslator.modalities)."""
    return pick_protein_modality(names, key if key in names else None, what,
                                 "--protein-key (protein_key=) naming the modality")


def _embedded_protein(rna: Data, source: Source, key: str, storage_options: dict[str, Any] | None = None
                      ) -> tuple[np.ndarray, list[str], pd.Index, str]:
    """The protein table stored with the RNA: a MuData modality, or an AnnData obsm entry."""
    if _is_mudata(rna):
        name = _protein_modality(list(rna.mod), key, "the MuData")
        return (*_table_from_anndata(rna.mod[name]), f"MuData modality {name!r}")
    if isinstance(rna, ad.AnnData):
        if key not in rna.obsm:
            raise InputDataError(f"no protein table given: pass protein=..., or keep it in obsm[{key!r}] "
                                 f"(this AnnData's obsm has {list(rna.obsm)})")
        return (*_table_from_obsm(rna.obsm[key], dict(rna.uns), key, source.obs_names), f"obsm[{key!r}]")
    where = _describe(rna)
    with _root_group(rna, storage_options) as group:
        if "mod" in group:
            name = _protein_modality(list(group["mod"]), key, where)
            return (*_table_from_anndata(_read_elem(group, f"mod/{name}")), f"modality {name!r} of {where}")
        if "obsm" in group and key in group["obsm"]:
            uns = _read_elem(group, "uns") if "uns" in group else {}
            table = _table_from_obsm(_read_elem(group, f"obsm/{key}"), uns, key, source.obs_names)
            return (*table, f"obsm[{key!r}] of {where}")
    raise InputDataError(f"no protein table given and {where} holds none: pass protein=PATH, or keep the "
                         f"proteins in obsm[{key!r}] or a MuData 'prot' modality")


def _stored_protein_modality(rna: Data, source: Source, key: str, missing_chunks: str,
                             storage_options: dict[str, Any] | None = None) -> tuple[Source | None, str]:
    """The protein modality of a MuData file or store (local or at a URL), or the protein measurement
    of a TileDB-SOMA experiment, opened for block reads (None: neither)."""
    if isinstance(source, SomaSource):
        return _soma_protein_measurement(source.path, key, exclude=source.measurement)
    if not isinstance(rna, str | os.PathLike):
        return None, ""
    return _mudata_protein_modality(rna, key, missing_chunks, storage_options)


def _mudata_protein_modality(location: str | os.PathLike, key: str, missing_chunks: str,
                             storage_options: dict[str, Any] | None = None) -> tuple[Source | None, str]:
    """The protein modality of the MuData file or store at `location`, opened for block reads
    (None: not a MuData). The modality is the one `key` names, else the one named like proteins
    (the rule translate and evaluate use); InputDataError naming the modalities when none or
    several qualify."""
    with _root_group(location, storage_options) as group:
        if "mod" not in group:
            return None, ""
        name = _protein_modality(list(group["mod"]), key, _describe(location))
    opened = open_source(location if is_url(location) else Path(location), modality=name,
                         missing_chunks=missing_chunks, storage_options=storage_options)
    return opened, f"modality {name!r} of {_describe(location)}"


def _soma_protein_measurement(uri: str, key: str, exclude: str | None) -> tuple[Source, str]:
    """The measurement of the SOMA experiment `uri` holding the proteins: `key` when it names one,
    else the one named like proteins (prot, protein, ADT, ...); `exclude` is the RNA's measurement.
    An experiment's measurements share its obs, so they pair cell by cell."""
    soma = import_optional("tiledbsoma", "soma", "reading TileDB-SOMA experiments")
    try:
        with soma.Experiment.open(uri) as experiment:
            names = sorted(str(name) for name in experiment.ms if str(name) != exclude)
    except Exception as exc:
        raise StoreError(f"{uri}: cannot be opened as a TileDB-SOMA experiment ({type(exc).__name__})") from exc
    if key not in names and not any(is_protein_modality(name) for name in names):
        raise InputDataError(f"the SOMA experiment {uri} has no protein measurement (measurements"
                             f"{' besides ' + repr(exclude) if exclude else ''}: {names or 'none'}); pass the "
                             "proteins with --protein PATH (protein=...), or name the measurement with --protein-key")
    name = pick_protein_modality(names, key if key in names else None, f"the SOMA experiment {uri}",
                                 "--protein-key (protein_key=) naming the measurement")
    return open_source(uri, measurement=name), f"measurement {name!r} of {uri}"


def _names(source: Source | None, table_names: pd.Index | None, rows: np.ndarray) -> np.ndarray:
    """Names at `rows` (any order) of the protein source, or of the in-memory protein table."""
    if source is None:
        assert table_names is not None
        return np.asarray(table_names[rows].astype(str), dtype=object)
    order = np.argsort(rows, kind="stable")
    out = np.empty(rows.size, dtype=object)
    out[order] = names_at(source, rows[order])
    return out


def _repeated(hashes: np.ndarray, names_of: Any, what: str) -> None:
    """The named error for repeated cell names (found by hash, confirmed on the names themselves)."""
    order = np.argsort(hashes, kind="stable")
    ordered = hashes[order]
    same = np.flatnonzero(ordered[1:] == ordered[:-1])
    if same.size == 0:
        return
    rows = np.unique(np.concatenate([order[same], order[same + 1]]))
    names = pd.Index(names_of(rows))
    if not names.has_duplicates:
        return  # a 64-bit hash collision between different names: nothing repeats
    repeated = names[names.duplicated()].unique()
    raise InputDataError(
        f"the {what} cell names (obs_names) repeat {len(repeated)} name(s) (e.g. {repeated[:5].tolist()}), "
        "so cells cannot be matched by name; give every cell a unique name the same way in both tables "
        "(e.g. prefix each sample's barcodes with its sample): obs_names_make_unique on one table alone "
        "would pair different cells")


def _match_cells(source: Source, protein_source: Source | None,
                 protein_obs: pd.Index | None) -> tuple[np.ndarray, np.ndarray]:
    """(RNA rows, protein rows) of the shared cells, in RNA order.

    Names are read in blocks and matched by their 64-bit hashes (sort + searchsorted); the matched
    candidates are then compared name by name, so a hash collision never pairs different cells.
    Same-order tables are recognised by comparing names block by block. No name list is kept.
    """
    n_rna = int(source.n_obs)
    n_protein = int(protein_source.n_obs) if protein_source is not None else len(protein_obs)
    if protein_source is not None:
        if same_names(source, protein_source):
            rows = np.arange(n_rna, dtype=np.int64)
            return rows, rows
        protein_hashes = source_hashes(protein_source)
    else:
        assert protein_obs is not None
        protein_obs = pd.Index(protein_obs.astype(str))
        if n_protein == n_rna and all(np.array_equal(names, np.asarray(protein_obs[start:start + names.size],
                                                                        dtype=object))
                                      for start, names in name_blocks(source)):
            rows = np.arange(n_rna, dtype=np.int64)
            return rows, rows
        protein_hashes = name_hashes(protein_obs)
    rna_hashes = source_hashes(source)
    _repeated(rna_hashes, lambda rows: names_at(source, rows), "RNA")
    _repeated(protein_hashes, lambda rows: _names(protein_source, protein_obs, rows), "protein")
    order = np.argsort(protein_hashes, kind="stable")
    ordered = protein_hashes[order]
    del protein_hashes
    found = np.minimum(np.searchsorted(ordered, rna_hashes), max(n_protein - 1, 0))
    hit = ordered[found] == rna_hashes if n_protein else np.zeros(n_rna, dtype=bool)
    del rna_hashes, ordered
    rna_rows = np.flatnonzero(hit).astype(np.int64)
    protein_rows = order[found[rna_rows]].astype(np.int64)
    del order, found, hit
    # Exact comparison of the candidates, a block of RNA rows at a time.
    keep = np.ones(rna_rows.size, dtype=bool)
    for lo in range(0, rna_rows.size, cellnames.NAME_BLOCK):
        hi = min(lo + cellnames.NAME_BLOCK, rna_rows.size)
        keep[lo:hi] = names_at(source, rna_rows[lo:hi]) == _names(protein_source, protein_obs, protein_rows[lo:hi])
    rna_rows, protein_rows = rna_rows[keep], protein_rows[keep]
    if rna_rows.size == 0:
        raise InputDataError(
            f"the RNA ({n_rna} cells, e.g. {names_at(source, np.arange(min(3, n_rna))).tolist()}) and protein "
            f"({n_protein} cells, e.g. {_names(protein_source, protein_obs, np.arange(min(3, n_protein))).tolist()}) "
            "tables share no cell names: pair the same cells "
            "(same obs_names, or the same cells in the same order with identical obs_names)"
        )
    smaller = min(n_rna, n_protein)
    if rna_rows.size < 0.5 * smaller:
        # As in evaluate: barcodes of two different datasets repeat by chance.
        raise InputDataError(
            f"only {rna_rows.size} cell names are shared between the {n_rna} RNA and the "
            f"{n_protein} protein cells, fewer than half of the smaller table: these look like different "
            "datasets whose barcodes repeat by chance. Pair the measurements of the same cells (select the shared "
            "cells first if this is meant)")
    return rna_rows, protein_rows


def load_paired(rna: Data, protein: Data | None = None, *, protein_key: str = DEFAULT_PROTEIN_KEY,
                layer: str | None = None, use_raw: bool = False, modality: str | None = None,
                missing_chunks: str = "error", measurement: str | None = None,
                storage_options: dict[str, Any] | None = None) -> PairedData:
    """Pair RNA with protein measurements.

    Parameters
    ----------
    rna
        An .h5ad/.h5mu path, an AnnData or MuData Zarr store, any of these at an s3://, gs:// or
        http(s):// URL, a TileDB-SOMA experiment (its URI), or an in-memory AnnData/MuData.
    protein
        A second .h5ad/Zarr path or URL, a MuData .h5mu/Zarr (read through its protein modality, as
        when it is `rna`: `protein_key`, else the one named like proteins), a SOMA experiment, or an
        AnnData with the same cells; None (or "-") when the proteins travel with the RNA (MuData
        'prot' modality, a SOMA experiment's protein measurement, or obsm[`protein_key`] as a
        DataFrame or an array with names in uns[f'{protein_key}_names']).
    protein_key
        The obsm key, MuData modality or SOMA measurement holding the proteins (default: the one
        named like proteins).
    layer, use_raw, modality, missing_chunks, measurement
        Choose the RNA matrix as for `translate` (`measurement`: a SOMA experiment's RNA measurement).
    storage_options
        fsspec options for URL inputs (credentials, endpoint_url, anon, ...).

    Returns
    -------
    PairedData
        Cells paired by obs_names (identical lists pair row by row); cells measured in only one
        table are left out.

    Raises
    ------
    StoreError
        An input that cannot be found or read.
    InputDataError
        No protein table, bad protein counts, repeated or unshared cell names.
    """
    if isinstance(protein, str) and protein == "-":
        protein = None
    source = open_source(rna, layer=layer, use_raw=use_raw, modality=modality, missing_chunks=missing_chunks,
                         measurement=measurement, storage_options=storage_options)
    protein_source: Source | None = None
    matrix: np.ndarray | None = None
    if protein is None:
        protein_source, where = _stored_protein_modality(rna, source, protein_key, missing_chunks, storage_options)
        if protein_source is None:
            matrix, names, protein_obs, where = _embedded_protein(rna, source, protein_key, storage_options)
    elif isinstance(protein, ad.AnnData):
        matrix, names, protein_obs = _table_from_anndata(protein)
        where = "in-memory AnnData"
    elif isinstance(protein, str | os.PathLike):
        if soma_uri(protein) is not None:
            protein_source, where = _soma_protein_measurement(soma_uri(protein), protein_key, exclude=None)
        else:
            if not is_url(protein) and not Path(protein).exists():
                raise StoreError(f"{protein}: no such protein file")
            # A MuData given as the protein input is read through its protein modality.
            protein_source, where = _mudata_protein_modality(protein, protein_key, missing_chunks, storage_options)
            if protein_source is None:
                protein_source = open_source(protein, missing_chunks=missing_chunks,
                                             storage_options=storage_options)
                where = _describe(protein)
    else:
        raise InputDataError(f"cannot read proteins from a {type(protein).__name__}: pass a path or an AnnData")
    if protein_source is not None:
        names = [str(n) for n in protein_source.var.index]
        protein_obs = None
        _check_protein_source(protein_source, where)
        n_protein_cells = int(protein_source.n_obs)
    else:
        assert matrix is not None
        if not np.isfinite(matrix).all() or (matrix < 0).any():
            raise InputDataError(f"protein counts from {where} must be finite and non-negative")
        n_protein_cells = int(matrix.shape[0])
    rna_rows, protein_rows = _match_cells(source, protein_source, None if protein_source is not None else protein_obs)
    # Pairing is done: keep no name index (stored sources cache theirs when asked for obs_names).
    source.release_obs_names()
    if protein_source is not None:
        protein_source.release_obs_names()
    origin = {"rna": _describe(rna), "protein": where, "rna_cells": int(source.n_obs),
              "protein_cells": n_protein_cells, "paired_cells": int(rna_rows.size),
              "genes": int(source.n_vars), "proteins": len(names)}
    if protein_source is not None:
        return PairedData(source=source, rows=rna_rows, protein_table=None, protein_names=names,
                          origin=origin, protein_source=protein_source, protein_rows=protein_rows)
    return PairedData(source=source, rows=rna_rows, protein_table=matrix[protein_rows],
                      protein_names=names, origin=origin)
