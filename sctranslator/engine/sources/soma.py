"""TileDB-SOMA experiments (CELLxGENE Census and local ones made with `tiledbsoma.io.from_h5ad`).

The cells are the obs rows selected by an optional `value_filter` (pushed down to TileDB: only
`soma_joinid` is read for the selection), sorted by `soma_joinid`; a block of rows is a contiguous
slice of that list, read from ``ms[measurement].X[layer]`` by those joinids and assembled into CSR.
Genes are the measurement's var rows in `soma_joinid` order. tiledbsoma is imported lazily (extra
`soma`): a SOMA input without it installed is a MissingExtraError before any work.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sctranslator.engine.sources.base import Block, Source, hash_names
from sctranslator.errors import InputDataError, OptionError, SctranslatorError, StoreError
from sctranslator.util.optional import import_optional

DEFAULT_MEASUREMENT = "RNA"
# Census keeps raw counts in X['raw']; gene symbols in var['feature_name'], Ensembl IDs in var['feature_id'].
DEFAULT_LAYER = "raw"
DEFAULT_GENE_COLUMN = "feature_name"
# The column tiledbsoma.io.from_h5ad writes the obs / var names into (its obs_id_name / var_id_name defaults).
_OBS_NAME_COLUMN = "obs_id"
_VAR_NAME_COLUMN = "var_id"
# var_id is the default gene column only when at least this share of its values map to vocabulary tokens.
_MIN_MAPPED_SHARE = 0.25
# Marker files of a TileDB group directory (an experiment is one): v2 and v1 layouts.
_TILEDB_GROUP_MARKERS = ("__group", "__tiledb_group.tdb")


def _tiledbsoma() -> Any:
    return import_optional("tiledbsoma", "soma", "reading TileDB-SOMA experiments")


def is_soma_experiment_object(data: Any) -> bool:
    """Whether `data` is an open ``tiledbsoma.Experiment`` (checked without importing tiledbsoma).

    Parameters
    ----------
    data : object
        translate's input.

    Returns
    -------
    bool
        True for an open experiment.
    """
    return type(data).__name__ == "Experiment" and type(data).__module__.startswith("tiledbsoma")


def soma_uri(data: Any) -> str | None:
    """The URI to open when `data` names a TileDB-SOMA experiment.

    Parameters
    ----------
    data : object
        translate's input.

    Returns
    -------
    str or None
        A TileDB group directory or tiledb:// URI; None for anything else (left to the other readers).
    """
    if not isinstance(data, str | os.PathLike):
        return None
    text = os.fspath(data)
    if text.startswith("tiledb://"):
        return text
    path = Path(text[len("file://"):] if text.startswith("file://") else text).expanduser()
    if path.is_dir() and any((path / marker).exists() for marker in _TILEDB_GROUP_MARKERS):
        return str(path.absolute())
    return None


def _first_line(exc: BaseException) -> str:
    """The message of a tiledbsoma error without its C++ trace ("At: ...") and type prefix."""
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0].strip()
    line = line.removeprefix("SOMAError:").strip()
    return line.strip("'\"").strip() or type(exc).__name__


class SomaSource(Source):
    """Cells of a TileDB-SOMA experiment: ``ms[measurement].X[layer]`` rows of the obs selection.

    Parameters
    ----------
    experiment : str or tiledbsoma.Experiment
        An experiment URI (a local directory or any URI tiledbsoma opens), or an open experiment
        (e.g. ``cellxgene_census.open_soma()["census_data"]["homo_sapiens"]``).
    measurement : str or None
        The measurement holding the RNA; None: "RNA".
    layer : str or None
        The X layer; None: "raw" when present, else the only layer.
    gene_column : str or None
        The var column naming the genes; None: "feature_name" when present, else the names
        ``from_h5ad`` stored in ``var_id`` when they are gene symbols or Ensembl IDs the vocabulary
        maps, else an InputDataError listing the columns.
    obs_query : str or None
        A SOMA value_filter over obs, e.g. ``"cell_type == 'B cell' and tissue_general == 'blood'"``.

    Raises
    ------
    MissingExtraError
        tiledbsoma is not installed.
    StoreError
        The experiment cannot be opened.
    InputDataError
        A missing measurement, layer or gene column, a non-sparse layer, or a query that cannot be
        evaluated or selects no cell.
    """

    kind = "soma"
    matrix_format = "csr"
    chunk_rows = None
    nnz = None
    # Per-process state, never pickled: workers reopen the experiment by its URI.
    _TRANSIENT = ("_experiment", "_owned", "_layer_array", "_lock", "_var")

    def __init__(self, experiment: Any, *, measurement: str | None = None, layer: str | None = None,
                 gene_column: str | None = None, obs_query: str | None = None) -> None:
        super().__init__()
        soma = _tiledbsoma()
        self._reset_transient()
        if is_soma_experiment_object(experiment):
            self._experiment, self._owned = experiment, False
            uri = str(experiment.uri)
            # Worker processes reopen it by this URI from their own directories: a local path goes absolute.
            self.path = uri if "://" in uri else os.path.abspath(uri)
        else:
            self.path = str(experiment)
            self._experiment = self._open_experiment(soma)
        try:
            self._inspect(soma, measurement, layer, gene_column, obs_query)
        except BaseException:
            self.close()  # an experiment this source opened is not left open by a refused input
            raise

    def _inspect(self, soma: Any, measurement: str | None, layer: str | None, gene_column: str | None,
                 obs_query: str | None) -> None:
        """Find the measurement, layer and genes, and select the cells (metadata and joinids only)."""
        self.measurement = DEFAULT_MEASUREMENT if measurement is None else str(measurement)
        self.obs_query = obs_query
        experiment = self._experiment
        names = sorted(str(k) for k in experiment.ms) if "ms" in experiment else []
        if self.measurement not in names:
            raise InputDataError(f"{self.path}: the SOMA experiment has no measurement '{self.measurement}' "
                                 f"(it has: {', '.join(names) or 'none'}); choose one with --measurement NAME "
                                 "(measurement= in Python)")
        ms = experiment.ms[self.measurement]
        layers = sorted(str(k) for k in ms.X) if "X" in ms else []
        self.layer = _pick_layer(layers, layer, where=f"{self.path}: ms['{self.measurement}'].X")
        array = ms.X[self.layer]
        if not isinstance(array, soma.SparseNDArray):
            raise InputDataError(f"{self.path}: ms['{self.measurement}'].X['{self.layer}'] is a "
                                 f"{type(array).__name__}; cells are streamed from a SparseNDArray layer "
                                 f"(layers: {', '.join(layers)})")
        self.dtype = np.dtype(array.schema.field("soma_data").type.to_pandas_dtype())
        self._layer_nnz = int(array.nnz)
        self.gene_column = self._read_var(ms, gene_column)
        self.joinids = self._select(experiment, obs_query)
        self.n_obs = int(self.joinids.size)
        self.n_vars = int(self._var_joinids.size)
        self._obs_names: pd.Index | None = None

    # --- opening ----------------------------------------------------------------------------------
    def _reset_transient(self) -> None:
        self._experiment: Any = None
        self._owned = True
        self._layer_array: Any = None
        self._lock = threading.RLock()
        self._var: pd.DataFrame | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in self._TRANSIENT}
        state["_var_cache"] = self._var
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        var = state.pop("_var_cache", None)
        self.__dict__.update(state)
        self._reset_transient()
        self._var = var

    def _open_experiment(self, soma: Any) -> Any:
        try:
            return soma.Experiment.open(self.path)
        except Exception as exc:
            raise StoreError(f"{self.path}: cannot be opened as a TileDB-SOMA experiment ({type(exc).__name__}: "
                             f"{_first_line(exc)}); pass the experiment's URI (the folder from_h5ad wrote), "
                             "not one of its members") from exc

    def _array(self) -> Any:
        """The X layer, (re)opened in this process when needed."""
        with self._lock:
            if self._layer_array is None:
                if self._experiment is None:
                    self._experiment, self._owned = self._open_experiment(_tiledbsoma()), True
                self._layer_array = self._experiment.ms[self.measurement].X[self.layer]
            return self._layer_array

    def close(self) -> None:
        """Release open file handles; the source reopens them if it is read again."""
        with self._lock:
            if self._experiment is not None and self._owned:
                self._experiment.close()
                self._experiment = None
            self._layer_array = None

    # --- metadata ---------------------------------------------------------------------------------
    def _read_var(self, ms: Any, gene_column: str | None) -> str:
        """Read var (genes: tens of thousands of rows at most) in soma_joinid order; returns the column
        whose values became the var index."""
        try:
            var = ms.var.read().concat().to_pandas()
        except Exception as exc:
            raise StoreError(f"{self.path}: cannot read ms['{self.measurement}'].var ({_first_line(exc)})") from exc
        var = var.sort_values("soma_joinid", kind="stable")
        columns = [str(c) for c in var.columns if c != "soma_joinid"]
        if gene_column is None:
            if DEFAULT_GENE_COLUMN in columns:
                gene_column = DEFAULT_GENE_COLUMN
            elif _VAR_NAME_COLUMN in columns and _names_genes(var[_VAR_NAME_COLUMN]):
                gene_column = _VAR_NAME_COLUMN
            else:
                shown = ", ".join(map(str, var[_VAR_NAME_COLUMN].iloc[:3])) if _VAR_NAME_COLUMN in columns else ""
                why = (f" and its '{_VAR_NAME_COLUMN}' values ({shown}, ...) are not gene symbols or Ensembl IDs "
                       "the vocabulary maps") if shown else ""
                raise InputDataError(f"{self.path}: ms['{self.measurement}'].var has no '{DEFAULT_GENE_COLUMN}' "
                                     f"column{why}; name the column holding the gene identifiers with --gene-column "
                                     f"(var columns: {', '.join(columns) or 'none'})")
        elif gene_column not in columns:
            raise InputDataError(f"{self.path}: ms['{self.measurement}'].var has no column '{gene_column}' "
                                 f"(var columns: {', '.join(columns) or 'none'}); choose one with --gene-column")
        self._var_joinids = var["soma_joinid"].to_numpy(dtype=np.int64)
        var.index = pd.Index(var[gene_column].astype(str).to_numpy(), name=None)
        self._var = var
        return gene_column

    def _select(self, experiment: Any, obs_query: str | None) -> np.ndarray:
        """Sorted soma_joinids of the cells `obs_query` selects: only that column is read, filtered by TileDB."""
        try:
            table = experiment.obs.read(value_filter=obs_query, column_names=["soma_joinid"]).concat()
        except Exception as exc:
            if obs_query is None:
                raise StoreError(f"{self.path}: cannot read obs ({_first_line(exc)})") from exc
            columns = [f.name for f in experiment.obs.schema if f.name != "soma_joinid"]
            raise InputDataError(f"--obs-query {obs_query!r} is not a valid SOMA value filter on the obs of "
                                 f"{self.path}: {_first_line(exc)} (columns: {', '.join(columns[:20])}"
                                 f"{' ...' if len(columns) > 20 else ''}); e.g. \"cell_type == 'B cell' and "
                                 "n_genes > 500\"") from exc
        joinids = np.unique(table.column("soma_joinid").to_numpy().astype(np.int64, copy=False))
        if obs_query is not None and joinids.size == 0:
            raise InputDataError(f"--obs-query {obs_query!r} selects no cell of {self.path}")
        return joinids

    @property
    def var(self) -> pd.DataFrame:
        """The genes: the var table whose index (or gene column) names them."""
        if self._var is None:
            with self._lock:
                self._array()  # opens the experiment in this process
                self._read_var(self._experiment.ms[self.measurement], self.gene_column)
        return self._var

    @property
    def obs_names(self) -> pd.Index:
        """The cells' names, in row order (read once and kept)."""
        if self._obs_names is None:
            self._obs_names = self.obs_table([]).index
        return self._obs_names

    def read_obs(self) -> pd.DataFrame:
        """The full obs table, for copying into the output.

        Returns
        -------
        pandas.DataFrame
            One row per cell.
        """
        return self.obs_table(None)

    def obs_table(self, columns: Sequence[str] | None) -> pd.DataFrame:
        """obs of the selected cells in soma_joinid order, only `columns` read, plus ``soma_joinid``.

        ``soma_joinid`` is always kept, so results join back; the index is from_h5ad's obs_id when the
        experiment has one, else the soma_joinid as text (Census).

        Parameters
        ----------
        columns : sequence of str or None
            The columns; None: all.

        Returns
        -------
        pandas.DataFrame
            One row per selected cell.

        Raises
        ------
        InputDataError
            Unknown columns.
        """
        with self._lock:
            self._array()
            obs = self._experiment.obs
            present = [f.name for f in obs.schema]
            if columns is not None:
                unknown = [c for c in columns if c not in present]
                if unknown:
                    listed = ", ".join(c for c in present if c != "soma_joinid")
                    raise InputDataError(f"--obs-columns: {', '.join(map(repr, unknown))} not in the obs of "
                                         f"{self.path} (columns: {listed})")
            wanted = list(present) if columns is None else ["soma_joinid", *(c for c in columns if c != "soma_joinid")]
            if _OBS_NAME_COLUMN in present and _OBS_NAME_COLUMN not in wanted:
                wanted.append(_OBS_NAME_COLUMN)
            try:
                frame = obs.read(coords=(self.joinids,), column_names=wanted).concat().to_pandas()
            except Exception as exc:
                raise StoreError(f"{self.path}: cannot read obs ({_first_line(exc)})") from exc
        frame = frame.set_index(frame["soma_joinid"].to_numpy()).reindex(self.joinids)
        if _OBS_NAME_COLUMN in frame:
            names = frame[_OBS_NAME_COLUMN].astype(str).to_numpy()
            if columns is None or _OBS_NAME_COLUMN not in columns:  # it is the index already
                frame = frame.drop(columns=_OBS_NAME_COLUMN)
        else:
            names = self.joinids.astype(str)
        frame.index = pd.Index(names)
        return frame[[c for c in wanted if c in frame.columns]]

    def describe(self) -> str:
        """How to name this input in a message.

        Returns
        -------
        str
            A short description (the path, or the object's kind).
        """
        where = f"the SOMA experiment {self.path} (ms['{self.measurement}'].X['{self.layer}']"
        return where + (f", obs {self.obs_query!r})" if self.obs_query else ")")

    def _element_name(self) -> str:
        return f"ms/{self.measurement}/X/{self.layer}"

    def filtered(self, obs_query: str) -> SomaSource:
        """This source restricted to the cells where a SOMA value filter holds (pushed down to TileDB).

        Parameters
        ----------
        obs_query : str
            The value filter; combined with an earlier one by ``and``.

        Returns
        -------
        SomaSource
            A new source.

        Raises
        ------
        InputDataError
            A filter that cannot be evaluated or selects no cell.
        """
        query = obs_query if not self.obs_query else f"({self.obs_query}) and ({obs_query})"
        with self._lock:
            self._array()
            joinids = self._select(self._experiment, query)
        clone = SomaSource.__new__(SomaSource)
        clone.__dict__.update({k: v for k, v in self.__dict__.items() if k not in ("_lock", "_fingerprint")})
        clone._lock, clone._fingerprint = threading.RLock(), None
        # The clone now closes the experiment this source opened (translate closes only the source it reads).
        self._owned = False
        clone.obs_query, clone.joinids, clone.n_obs, clone._obs_names = query, joinids, int(joinids.size), None
        return clone

    @property
    def selection(self) -> str:
        """The cell selection, as provenance records it ("" for all cells)."""
        return f"{self.n_obs} cells: SOMA obs value_filter {self.obs_query!r}" if self.obs_query else ""

    def fingerprint(self) -> dict[str, Any]:
        """A JSON-able identity, used to refuse resuming a job against different input data.

        Returns
        -------
        dict
            Kind, location, shape and a hash of the names.
        """
        if self._fingerprint is None:
            # The cells by joinid (Census has no cell names) and the query that chose them; the layer's count of
            # stored entries changes when cells are appended to or removed from the experiment.
            self._fingerprint = {
                "kind": self.kind, "path": self.path, "element": self._element_name(), "n_obs": self.n_obs,
                "n_vars": self.n_vars, "matrix_format": self.matrix_format, "dtype": str(self.dtype), "nnz": None,
                "obs_query": self.obs_query or "", "gene_column": self.gene_column, "layer_nnz": self._layer_nnz,
                "var_names_sha256": hash_names(self.var.index),
                "obs_names_sha256": hashlib.sha256(self.joinids.astype("<i8").tobytes()).hexdigest(),
            }
        return dict(self._fingerprint)

    # --- rows -------------------------------------------------------------------------------------
    def _read_rows(self, start: int, stop: int) -> Block:
        rows = self.joinids[start:stop]
        if rows.size == 0:
            return sp.csr_matrix((0, self.n_vars), dtype=self.dtype)
        try:
            with self._lock:
                array = self._array()
            # Only this block's rows; all genes (the var joinids), positions mapped below.
            table = array.read(coords=(rows,)).tables().concat()
        except (InputDataError, StoreError):
            raise
        except Exception as exc:
            raise StoreError(f"{self.path}: reading {self._element_name()} for rows {start}..{stop - 1} (soma_joinid "
                             f"{rows[0]}..{rows[-1]}) failed ({type(exc).__name__}: {_first_line(exc)})") from exc
        dim0 = table.column("soma_dim_0").to_numpy()
        dim1 = table.column("soma_dim_1").to_numpy()
        data = table.column("soma_data").to_numpy()
        row = np.searchsorted(rows, dim0)
        col = self._columns(dim1)
        keep = col >= 0  # entries of genes absent from var (a layer wider than var) are not genes we serve
        block = sp.coo_matrix((data[keep], (row[keep], col[keep])), shape=(rows.size, self.n_vars)).tocsr()
        block.sum_duplicates()
        return block

    def _columns(self, dim1: np.ndarray) -> np.ndarray:
        """Column positions (var order) of var joinids; -1 for joinids not in var."""
        var_ids = self._var_joinids
        if var_ids.size and var_ids[0] == 0 and var_ids[-1] == var_ids.size - 1:  # 0..n-1, the usual layout
            return np.where(dim1 < var_ids.size, dim1, -1)
        at = np.minimum(np.searchsorted(var_ids, dim1), max(var_ids.size - 1, 0))
        return np.where(var_ids[at] == dim1, at, -1) if var_ids.size else np.full(dim1.shape, -1)


def _names_genes(values: pd.Series) -> bool:
    """Whether `values` (from_h5ad's var_id: the h5ad's var names) are gene symbols or Ensembl IDs:
    not plain numbers (a default integer index), and at least _MIN_MAPPED_SHARE of them map to tokens."""
    from sctranslator.vocab.genes import map_genes

    try:
        mapping = map_genes(values.astype(str).to_numpy(), "auto", "extended")
    except SctranslatorError:  # nothing to detect (empty names)
        return False
    return mapping.id_type != "entrez" and float(np.mean(mapping.token_ids > 0)) >= _MIN_MAPPED_SHARE


def _pick_layer(layers: list[str], requested: str | None, *, where: str) -> str:
    listed = ", ".join(layers) or "none"
    if requested is not None:
        if requested not in layers:
            raise InputDataError(f"{where} has no layer '{requested}' (layers: {listed}); choose one with --layer")
        return requested
    if DEFAULT_LAYER in layers:
        return DEFAULT_LAYER
    if len(layers) == 1:
        return layers[0]
    raise InputDataError(f"{where} has {'no layer' if not layers else 'several layers and none named raw'} "
                         f"(layers: {listed}); choose the raw counts with --layer NAME (layer= in Python)")


def open_soma(data: Any, *, measurement: str | None, layer: str | None, gene_column: str | None,
              obs_query: str | None, use_raw: bool, modality: str | None) -> SomaSource:
    """A SomaSource for `data` (a URI or an open Experiment), refusing the options of AnnData files.

    Parameters
    ----------
    data : str or tiledbsoma.Experiment
        The experiment.
    measurement : str or None
        The measurement holding the RNA.
    layer : str or None
        The X layer.
    gene_column : str or None
        The var column naming the genes.
    obs_query : str or None
        A value filter over obs.
    use_raw : bool
        Refused: an experiment has no ``.raw``.
    modality : str or None
        Refused: an experiment has measurements, not MuData modalities.

    Returns
    -------
    SomaSource
        The source.

    Raises
    ------
    OptionError
        `use_raw` or `modality` given.
    """
    if use_raw:
        raise OptionError("--use-raw reads AnnData's .raw; a SOMA experiment has none: choose the X layer with "
                          "--layer (default raw)")
    if modality is not None:
        raise OptionError("--modality names a MuData modality; in a SOMA experiment choose the measurement with "
                          "--measurement (default RNA)")
    return SomaSource(data, measurement=measurement, layer=layer, gene_column=gene_column, obs_query=obs_query)


def refuse_writeback(source: Source, *, write_h5ad: Any, write_mudata: Any) -> None:
    """Refuse a write-back (a copy of the input with the predictions) of a SOMA input.

    There is no AnnData file to copy; the output store's obs keeps soma_joinid to join back instead.

    Parameters
    ----------
    source : Source
        The opened input.
    write_h5ad : object
        The h5ad write-back asked for (None: none).
    write_mudata : object
        The MuData write-back asked for (None: none).

    Raises
    ------
    OptionError
        A write-back of a SOMA input.
    """
    base = getattr(source, "base", source)
    if isinstance(base, SomaSource) and (write_h5ad is not None or write_mudata is not None):
        flag = "--write-h5ad" if write_h5ad is not None else "--write-mudata"
        raise OptionError(f"{flag} copies an AnnData/MuData input with the predictions added; "
                          f"{base.describe()} is a SOMA experiment: write the predictions with --out STORE.zarr, "
                          "whose obs keeps soma_joinid to join them back")
