"""Tests for sctranslator.engine.sources: every input kind streams the same rows anndata reads,
sources pickle to other processes, fingerprints identify data, and damaged stores fail loudly."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import pickle
import shutil
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import anndata
import datafiles
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import zarr

from sctranslator.engine.sources import Source, open_source
from sctranslator.errors import InputDataError, StoreError

try:
    from anndata.io import write_elem
except ImportError:  # anndata < 0.11
    from anndata.experimental import write_elem

PBMC = datafiles.PBMC / "rna.h5ad"
BMMC = datafiles.BMMC / "rna.h5ad"
# Block sizes cycled over the rows: single rows, odd sizes, large blocks, and a partial last one.
BLOCK_SIZES = (1, 7, 53, 1000)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


def _require(path: Path) -> Path:
    return datafiles.data_file(path)


# ---------------------------------------------------------------- writing stores


@contextlib.contextmanager
def _zarr_settings(fmt: int, shard: bool = False):
    """anndata settings for writing zarr format `fmt`, sharded or not (anndata >= 0.13 shards by default)."""
    settings = {"zarr_write_format": fmt}
    if hasattr(anndata.settings, "auto_shard_zarr_v3"):
        settings["auto_shard_zarr_v3"] = shard
    elif shard:
        pytest.skip("this anndata cannot write sharded zarr")
    with warnings.catch_warnings(), anndata.settings.override(**settings):
        warnings.simplefilter("ignore")
        yield


def _write_zarr(adata: anndata.AnnData, path: Path, *, fmt: int = 2, shard: bool = False, **kwargs) -> Path:
    with _zarr_settings(fmt, shard):
        adata.write_zarr(path, **kwargs)
    return path


def _rechunk_sparse_x(path: Path, x: sp.csr_matrix, entries: int, fmt: int) -> None:
    """Rewrite X of a zarr store with data/indices/indptr chunks of `entries` elements."""
    group = zarr.open_group(path, mode="r+", use_consolidated=False)
    with _zarr_settings(fmt):
        write_elem(group, "X", x, dataset_kwargs={"chunks": (entries,)})
    zarr.consolidate_metadata(path)


def _chunk_file(store: Path, array: str, index: int) -> Path:
    """The file holding chunk (or shard) `index` of a 1-D array, for zarr format 2 or 3."""
    v3 = store / array / "c" / str(index)
    return v3 if v3.exists() else store / array / str(index)


@pytest.fixture(scope="module")
def bmmc() -> anndata.AnnData:
    return anndata.read_h5ad(_require(BMMC))


@pytest.fixture(scope="module")
def pbmc() -> anndata.AnnData:
    return anndata.read_h5ad(_require(PBMC))


@pytest.fixture(scope="module")
def stores(tmp_path_factory, bmmc, pbmc) -> dict[str, Path]:
    """One store of every on-disk kind, written once for the module."""
    root = tmp_path_factory.mktemp("stores")
    dense = bmmc.copy()
    dense.X = bmmc.X.toarray()
    made = {
        "h5ad": BMMC,
        "h5ad_pbmc": PBMC,
        "zarr2_csr": _write_zarr(bmmc, root / "v2.zarr", fmt=2),
        "zarr3_csr": _write_zarr(bmmc, root / "v3.zarr", fmt=3),
        "zarr3_csr_pbmc": _write_zarr(pbmc, root / "pbmc_v3.zarr", fmt=3),
        "zarr3_sharded": _write_zarr(bmmc, root / "sharded.zarr", fmt=3, shard=True),
        "zarr2_dense": _write_zarr(dense, root / "dense_v2.zarr", fmt=2),
        "zarr3_dense_17rows": _write_zarr(dense, root / "dense17.zarr", fmt=3, chunks=(17, 1000)),
        "zarr3_odd_csr": _write_zarr(bmmc, root / "odd.zarr", fmt=3),
        "h5ad_dense": root / "dense.h5ad",
    }
    _rechunk_sparse_x(made["zarr3_odd_csr"], bmmc.X, 1000, fmt=3)
    dense.write_h5ad(made["h5ad_dense"])
    prot = anndata.AnnData(np.ones((bmmc.n_obs, 3), dtype=np.float32), obs=bmmc.obs[[]])
    prot.var_names = ["CD3", "CD4", "CD8a"]
    import mudata

    mdata = mudata.MuData({"rna": bmmc, "prot": prot})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata.write(root / "both.h5mu")
        mdata.write_zarr(root / "both_mu.zarr")
    made["h5mu"] = root / "both.h5mu"
    made["mudata_zarr"] = root / "both_mu.zarr"
    return made


def _blocks(source: Source, sizes=BLOCK_SIZES):
    start, i = 0, 0
    while start < source.n_obs:
        stop = min(source.n_obs, start + sizes[i % len(sizes)])
        yield start, stop, source.read_block(start, stop)
        start, i = stop, i + 1


def _assert_streams_x(source: Source, expected: anndata.AnnData) -> None:
    """Blocks over arbitrary boundaries, stacked, equal X as anndata reads it; metadata matches too."""
    x = expected.X
    assert (source.n_obs, source.n_vars) == expected.shape
    assert list(source.var.index) == list(expected.var_names)
    assert list(source.obs_names) == list(expected.obs_names)
    parts = []
    for start, stop, block in _blocks(source):
        assert block.shape == (stop - start, source.n_vars)
        if source.matrix_format == "csr":
            assert isinstance(block, sp.csr_matrix)
        else:
            assert isinstance(block, np.ndarray) and block.flags.c_contiguous
        parts.append(block)
    dense_expected = x.toarray() if sp.issparse(x) else np.asarray(x)
    stacked = sp.vstack(parts).toarray() if source.matrix_format == "csr" else np.vstack(parts)
    assert stacked.dtype == dense_expected.dtype
    np.testing.assert_array_equal(stacked, dense_expected)


# ---------------------------------------------------------------- every kind streams X


@pytest.mark.parametrize(
    ("name", "kind", "matrix_format"),
    [
        ("h5ad", "h5ad", "csr"),
        ("h5ad_dense", "h5ad", "dense"),
        ("zarr2_csr", "zarr", "csr"),
        ("zarr3_csr", "zarr", "csr"),
        ("zarr3_sharded", "zarr", "csr"),
        ("zarr3_odd_csr", "zarr", "csr"),
        ("zarr2_dense", "zarr", "dense"),
        ("zarr3_dense_17rows", "zarr", "dense"),
        ("h5mu", "mudata", "csr"),
        ("mudata_zarr", "mudata", "csr"),
    ],
)
def test_stores_stream_x(stores, bmmc, name, kind, matrix_format):
    with open_source(stores[name]) as source:
        assert (source.kind, source.matrix_format) == (kind, matrix_format)
        assert source.path == str(Path(stores[name]).absolute())
        _assert_streams_x(source, bmmc)
        obs = source.read_obs()
        assert list(obs.columns) == list(bmmc.obs.columns)
        assert obs["cell_type"].tolist() == bmmc.obs["cell_type"].tolist()
        assert source.var["gene_ids"].tolist() == bmmc.var["gene_ids"].tolist()


def test_pbmc_h5ad_and_zarr_stream_x(stores, pbmc):
    for name in ("h5ad_pbmc", "zarr3_csr_pbmc"):
        with open_source(stores[name]) as source:
            _assert_streams_x(source, pbmc)


def test_chunk_rows_follow_storage(stores):
    assert open_source(stores["zarr3_dense_17rows"]).chunk_rows == 17
    # CSR data chunks of 1000 entries span ~1000 / (nnz / n_obs) rows.
    odd = open_source(stores["zarr3_odd_csr"])
    assert odd.chunk_rows == round(1000 * odd.n_obs / odd.nnz)


@pytest.mark.parametrize("matrix", ["csr", "csc", "dense", "csr_array"])
def test_in_memory_anndata_streams_x(bmmc, matrix):
    adata = bmmc.copy()
    adata.X = {"csr": sp.csr_matrix, "csc": sp.csc_matrix, "dense": lambda m: m.toarray(),
               "csr_array": sp.csr_array}[matrix](bmmc.X)
    source = open_source(adata)
    assert source.kind == "anndata" and source.path is None
    assert source.matrix_format == ("dense" if matrix == "dense" else "csr")
    _assert_streams_x(source, bmmc)


def test_in_memory_blocks_are_owned_by_caller(bmmc):
    adata = bmmc.copy()
    dense = adata.copy()
    dense.X = bmmc.X.toarray()
    for source in (open_source(adata), open_source(dense)):
        block = source.read_block(0, source.n_obs)  # the full range: scipy would hand back X itself
        before = source.read_block(0, 3)
        (block.data if sp.issparse(block) else block)[:] = -1
        after = source.read_block(0, 3)
        assert (after != before).nnz == 0 if sp.issparse(after) else np.array_equal(after, before)


def test_backed_anndata_and_views_and_layers(bmmc, tmp_path):
    backed = anndata.read_h5ad(_require(BMMC), backed="r")
    source = open_source(backed)
    assert source.kind == "anndata" and source.path == str(BMMC)
    _assert_streams_x(source, bmmc)
    restored = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(restored.read_block(5, 20).toarray(), bmmc.X[5:20].toarray())
    with pytest.raises(InputDataError, match="view of a backed AnnData"):
        open_source(backed[:10])
    backed.file.close()

    view = bmmc[100:250, :]
    _assert_streams_x(open_source(view), view)

    with_layer = bmmc.copy()
    with_layer.layers["counts"] = bmmc.X * 2
    path = tmp_path / "layers.h5ad"
    with_layer.write_h5ad(path)
    for data in (with_layer, path):
        block = open_source(data, layer="counts").read_block(0, 50)
        np.testing.assert_array_equal(block.toarray(), bmmc.X[:50].toarray() * 2)
        with pytest.raises(InputDataError, match="no layer 'spliced'.*counts"):
            open_source(data, layer="spliced")


def test_mudata_in_memory_and_modality(stores, bmmc):
    import mudata

    mdata = mudata.read_h5mu(stores["h5mu"])
    _assert_streams_x(open_source(mdata), bmmc)
    prot = open_source(stores["h5mu"], modality="prot")
    assert prot.n_vars == 3 and list(prot.var.index) == ["CD3", "CD4", "CD8a"]
    with pytest.raises(InputDataError, match="no modality 'atac'.*prot, rna"):
        open_source(stores["h5mu"], modality="atac")


def test_empty_and_out_of_range_blocks(stores):
    source = open_source(stores["zarr3_csr"])
    assert source.read_block(10, 10).shape == (0, source.n_vars)
    with pytest.raises(ValueError, match="outside"):
        source.read_block(590, 601)


@pytest.mark.parametrize("name", ["h5ad_pbmc", "zarr3_csr_pbmc"])
def test_threads_read_one_source_concurrently(stores, pbmc, name):
    source = open_source(stores[name])
    ranges = [(start, min(start + 300, source.n_obs)) for start in range(0, source.n_obs, 300)]
    with ThreadPoolExecutor(8) as pool:
        blocks = list(pool.map(lambda r: source.read_block(*r), ranges))
    assert (sp.vstack(blocks) != pbmc.X).nnz == 0


# ---------------------------------------------------------------- identity and pickling


def test_fingerprint_stable_across_reopen_and_pickle(stores):
    for name in ("h5ad", "zarr3_csr", "zarr2_dense", "h5mu"):
        first = open_source(stores[name])
        fingerprint = first.fingerprint()
        json.dumps(fingerprint)
        assert fingerprint["path"] == str(Path(stores[name]).absolute())
        assert open_source(stores[name]).fingerprint() == fingerprint
        assert pickle.loads(pickle.dumps(first)).fingerprint() == fingerprint
        fresh = pickle.loads(pickle.dumps(open_source(stores[name])))  # pickled before any fingerprint
        assert fresh.fingerprint() == fingerprint


def test_fingerprint_differs_for_different_data(stores, bmmc, tmp_path):
    base = open_source(stores["h5ad"]).fingerprint()
    assert open_source(stores["h5ad_pbmc"]).fingerprint() != base
    renamed = bmmc.copy()
    renamed.obs_names = [*bmmc.obs_names[:-1], "another-cell"]
    moved = tmp_path / "rna.h5ad"
    bmmc.write_h5ad(moved)
    renamed_path = tmp_path / "renamed.h5ad"
    renamed.write_h5ad(renamed_path)
    assert open_source(moved).fingerprint() != base  # same content, other file
    changed = open_source(renamed_path).fingerprint()
    assert changed["obs_names_sha256"] != open_source(moved).fingerprint()["obs_names_sha256"]
    genes = bmmc.copy()
    genes.var_names = [f"g{i}" for i in range(bmmc.n_vars)]
    assert open_source(genes).fingerprint()["var_names_sha256"] != open_source(bmmc).fingerprint()["var_names_sha256"]
    assert open_source(stores["h5ad"], layer=None).fingerprint()["element"] == "X"


def test_pickled_sources_read_in_another_process(stores, bmmc):
    sources = [open_source(stores[name]) for name in ("h5ad", "zarr3_csr", "zarr2_dense")]
    for source in sources:
        source.read_block(0, 5)  # open handles in this process first: they must not travel
        assert len(pickle.dumps(source)) < 10_000  # path and settings only, no data
    # Bound methods pickle their source; the child imports only sctranslator, not this test module.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert pool.submit(os.getpid).result(timeout=120) != os.getpid()
        fingerprints = [pool.submit(s.fingerprint) for s in sources]
        blocks = [pool.submit(s.read_block, 123, 456) for s in sources]
        for source, fingerprint, block in zip(sources, fingerprints, blocks, strict=True):
            assert fingerprint.result(timeout=60) == source.fingerprint()
            got = block.result(timeout=60)
            got = got.toarray() if sp.issparse(got) else got
            np.testing.assert_array_equal(got, bmmc.X[123:456].toarray())


# ---------------------------------------------------------------- reads only the rows asked


def test_reads_only_the_requested_rows(stores, pbmc, monkeypatch):
    ten_rows = int(pbmc.X.indptr[10])
    for name, cls in (("h5ad_pbmc", h5py.Dataset), ("zarr3_csr_pbmc", zarr.Array)):
        source = open_source(stores[name])
        _ = source.var, source.obs_names  # metadata tables are read up front, not per block
        requested: list[tuple[str, int]] = []
        original = cls.__getitem__

        def counting(self, selection, _original=original, _log=requested):
            result = _original(self, selection)
            _log.append((str(getattr(self, "name", None) or self.path), int(np.size(result))))
            return result

        monkeypatch.setattr(cls, "__getitem__", counting)
        block = source.read_block(0, 10)
        monkeypatch.setattr(cls, "__getitem__", original)
        np.testing.assert_array_equal(block.toarray(), pbmc.X[:10].toarray())
        reads: dict[str, list[int]] = {}
        for array, size in requested:
            reads.setdefault(array.rsplit("/", 1)[-1], []).append(size)
        # indptr[0:11] is read by our check and again by anndata's slicing; entries exactly once.
        assert reads == {"indptr": [11, 11], "indices": [ten_rows], "data": [ten_rows]}, (name, requested)


# ---------------------------------------------------------------- damaged and unsupported inputs


def test_missing_path_and_unknown_kinds(tmp_path):
    with pytest.raises(StoreError, match="no such file or directory") as err:
        open_source(tmp_path / "nope.h5ad")
    assert str(tmp_path / "nope.h5ad") in str(err.value)
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="not a zarr store"):
        open_source(tmp_path / "plain")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(StoreError, match="not an HDF5 file"):
        open_source(tmp_path / "notes.txt")
    (tmp_path / "empty.h5ad").touch()
    with pytest.raises(StoreError, match="empty"):
        open_source(tmp_path / "empty.h5ad")
    with pytest.raises(InputDataError, match="cannot read a list"):
        open_source([1, 2])


@pytest.mark.parametrize("kept", [0.5, 0.97])
def test_truncated_h5ad(tmp_path, kept):
    path = tmp_path / "cut.h5ad"
    shutil.copy(_require(PBMC), path)
    with open(path, "r+b") as handle:
        handle.truncate(int(path.stat().st_size * kept))
    with pytest.raises(StoreError, match="truncated") as err:
        source = open_source(path)
        for _ in _blocks(source):
            pass
    assert str(path) in str(err.value)


@pytest.mark.parametrize("fmt", [2, 3])
def test_zarr_deleted_chunk(tmp_path, bmmc, fmt):
    path = _write_zarr(bmmc, tmp_path / "x.zarr", fmt=fmt)
    _rechunk_sparse_x(path, bmmc.X, 20_000, fmt=fmt)
    _chunk_file(path, "X/data", 3).unlink()  # entries 60000..79999
    source = open_source(path)
    first_row = int(np.searchsorted(bmmc.X.indptr, 60_000, side="right")) - 1
    ok = source.read_block(0, first_row - 1)  # rows before the lost chunk still read
    np.testing.assert_array_equal(ok.toarray(), bmmc.X[: first_row - 1].toarray())
    with pytest.raises(StoreError, match=r"X/data is missing chunk.*rows \d+\.\.\d+") as err:
        source.read_block(first_row, first_row + 5)
    assert str(path) in str(err.value) and "silently" in str(err.value)
    _chunk_file(path, "X/indptr", 0).unlink()
    with pytest.raises(StoreError, match="X/indptr is missing chunk"):
        open_source(path).read_block(0, 1)


def test_zarr_deleted_dense_and_shard_chunks(stores, tmp_path, bmmc):
    dense = tmp_path / "dense.zarr"
    shutil.copytree(stores["zarr3_dense_17rows"], dense)
    (dense / "X" / "c" / "2" / "0").unlink()  # rows 34..50
    # By default a missing chunk of a dense X is an error naming the array, chunk, rows and the option ...
    source = open_source(dense)
    np.testing.assert_array_equal(source.read_block(0, 34), bmmc.X[:34].toarray())  # other chunks still read
    with pytest.raises(StoreError, match=r"X is missing chunk\(s\) c/2/0 covering rows 30\.\.39.*"
                                         r"--missing-chunks zeros") as err:
        source.read_block(30, 40)
    assert str(dense) in str(err.value)
    # ... and an explicit "zeros" reads the absent chunk as zeros (and the rest as stored).
    zeros = open_source(dense, missing_chunks="zeros").read_block(30, 55)
    assert not zeros[4:21].any()
    np.testing.assert_array_equal(zeros[:4], bmmc.X[30:34].toarray())
    np.testing.assert_array_equal(zeros[21:], bmmc.X[51:55].toarray())
    with pytest.raises(InputDataError, match="missing_chunks must be one of error, zeros"):
        open_source(dense, missing_chunks="auto")

    sharded = tmp_path / "sharded.zarr"
    shutil.copytree(stores["zarr3_sharded"], sharded)
    _chunk_file(sharded, "X/indices", 1).unlink()
    with pytest.raises(StoreError, match="X/indices is missing chunk"):
        open_source(sharded).read_block(590, 600)


@pytest.mark.parametrize("fmt", [2, 3])
def test_zarr_garbage_chunk(tmp_path, bmmc, fmt):
    path = _write_zarr(bmmc, tmp_path / "x.zarr", fmt=fmt)
    _rechunk_sparse_x(path, bmmc.X, 20_000, fmt=fmt)
    chunk = _chunk_file(path, "X/data", 2)
    chunk.write_bytes(np.random.default_rng(0).bytes(chunk.stat().st_size))
    first_row = int(np.searchsorted(bmmc.X.indptr, 40_000, side="right")) - 1
    with pytest.raises(StoreError, match=rf"X/data\[\d+:\d+\] for rows {first_row}\.\.{first_row + 2}.*corrupted"):
        open_source(path).read_block(first_row, first_row + 3)


def test_h5ad_garbage_chunk(tmp_path, bmmc):
    path = tmp_path / "bad.h5ad"
    shutil.copy(_require(BMMC), path)
    with h5py.File(path, "r") as handle:
        data = handle["X/data"]
        chunk = data.id.get_chunk_info(3)  # a gzip-compressed chunk in the middle of X/data
        first_entry = chunk.chunk_offset[0]
    with open(path, "r+b") as handle:
        handle.seek(chunk.byte_offset)
        handle.write(np.random.default_rng(0).bytes(chunk.size))
    row = int(np.searchsorted(bmmc.X.indptr, first_entry, side="right")) - 1
    with pytest.raises(StoreError, match=rf"X/data\[\d+:\d+\] for rows {row}\.\.{row + 1}.*corrupted") as err:
        open_source(path).read_block(row, row + 2)
    assert str(path) in str(err.value)


def test_csc_on_disk_is_refused_with_a_recipe(tmp_path, bmmc):
    csc = bmmc.copy()
    csc.X = sp.csc_matrix(bmmc.X)
    csc.write_h5ad(tmp_path / "csc.h5ad")
    for path in (tmp_path / "csc.h5ad", _write_zarr(csc, tmp_path / "csc.zarr", fmt=3)):
        with pytest.raises(StoreError, match=r"CSC.*needs CSR or dense.*tocsr\(\)"):
            open_source(path)


def test_corrupt_csr_structure(tmp_path, bmmc):
    path = tmp_path / "bad.h5ad"
    shutil.copy(_require(BMMC), path)
    with h5py.File(path, "r+") as handle:
        handle["X/indptr"][40] = handle["X/indptr"][39] - 1
        handle["X/indices"][int(bmmc.X.indptr[300])] = bmmc.n_vars
    source = open_source(path)
    source.read_block(0, 39)
    with pytest.raises(StoreError, match="X/indptr decreases at row 39"):
        source.read_block(30, 50)
    with pytest.raises(StoreError, match=r"X/indices holds column 1000 for rows 300\.\.309, outside \[0, 1000\)"):
        source.read_block(300, 310)
    source.close()  # HDF5 refuses a writer while a reader holds the file
    with h5py.File(path, "r+") as handle:
        handle["X/indptr"][-1] = bmmc.X.nnz + 5
    with pytest.raises(StoreError, match="outside the 200809 entries"):
        open_source(path).read_block(590, 600)


# ---------------------------------------------------------------- names and values as anndata reads them


def _small_annotated(n_obs: int = 12, n_vars: int = 6) -> anndata.AnnData:
    """A small AnnData with categorical, string, bool, numeric and NaN-holding columns."""
    rng = np.random.default_rng(0)
    x = sp.random(n_obs, n_vars, density=0.5, format="csr", dtype=np.float32, random_state=rng)
    adata = anndata.AnnData(x)
    adata.obs_names = [f"cell-{i}" for i in range(n_obs)]
    adata.var_names = [f"G{i}" for i in range(n_vars)]
    adata.obs["cluster"] = pd.Categorical(rng.choice(["T", "B", "NK"], n_obs))
    adata.obs["depth"] = rng.integers(1, 100, n_obs)
    adata.var["symbol"] = pd.Categorical(["CD3E", "CD4", np.nan, "CD8A", np.nan, "MS4A1"])
    adata.var["note"] = ["a", "", "b", "c", "d", "e"]
    adata.var["highly_variable"] = [True, False, True, True, False, True]
    adata.var["mean"] = np.linspace(0, 1, n_vars)
    return adata


def _legacy_h5ad(path: Path, adata: anndata.AnnData, raw: anndata.AnnData | None = None) -> Path:
    """The pre-0.7 layout: obs/var as structured arrays with byte strings, X as an h5sparse group,
    and `raw` (if given) as top-level raw.X / raw.var."""
    with h5py.File(path, "w") as handle:
        tables = [("obs", adata.obs), ("var", adata.var)]
        for key, matrix in (("X", adata.X), ("raw.X", None if raw is None else raw.X)):
            if matrix is None:
                continue
            x = handle.create_group(key)
            x.attrs["h5sparse_format"] = "csr"
            x.attrs["h5sparse_shape"] = np.array(matrix.shape)
            for name in ("data", "indices", "indptr"):
                x.create_dataset(name, data=getattr(matrix, name))
        if raw is not None:
            tables.append(("raw.var", raw.var))
        for key, frame in tables:
            fields = {"index": np.array(frame.index, dtype="S")}
            for column in frame.columns:
                if frame[column].dtype.kind in "iuf":
                    fields[column] = frame[column].to_numpy()
            dtype = [(name, values.dtype) for name, values in fields.items()]
            table = np.empty(len(frame), dtype=dtype)
            for name, values in fields.items():
                table[name] = values
            handle.create_dataset(key, data=table)
    return path


@pytest.mark.parametrize("layout", ["h5ad", "zarr2", "zarr3", "legacy_h5ad"])
def test_names_and_values_read_as_anndata_reads_them(tmp_path, layout):
    adata = _small_annotated()
    if layout == "h5ad":
        path = tmp_path / "a.h5ad"
        adata.write_h5ad(path)
    elif layout == "legacy_h5ad":
        path = _legacy_h5ad(tmp_path / "old.h5ad", adata)
    else:
        path = _write_zarr(adata, tmp_path / "a.zarr", fmt=int(layout[-1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = anndata.read_zarr(path) if path.is_dir() else anndata.read_h5ad(path)
        source = open_source(path)
        var, obs_names, obs = source.var, source.obs_names, source.read_obs()
    pd.testing.assert_frame_equal(var, expected.var)
    pd.testing.assert_frame_equal(obs, expected.obs)
    pd.testing.assert_index_equal(pd.Index(obs_names), expected.obs_names)
    if layout == "legacy_h5ad":
        assert list(obs_names)[:2] == ["cell-0", "cell-1"]  # byte strings decoded, as anndata does
    else:
        assert var["symbol"].isna().sum() == 2 and isinstance(var["symbol"].dtype, pd.CategoricalDtype)
    np.testing.assert_array_equal(source.read_block(0, 12).toarray(), expected.X.toarray())


def test_legacy_raw_layout_is_read_as_anndata_reads_it(tmp_path):
    adata = _with_raw()
    path = _legacy_h5ad(tmp_path / "old_raw.h5ad", adata, raw=adata.raw.to_adata())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = anndata.read_h5ad(path)
        source = open_source(path, use_raw=True)
        pd.testing.assert_frame_equal(source.var, expected.raw.var)
    assert source.fingerprint()["element"] == "raw.X"
    np.testing.assert_array_equal(source.read_block(0, 30).toarray(), expected.raw.X.toarray())


# ---------------------------------------------------------------- missing gene names are not duplicates


def test_missing_gene_names_are_reported_as_missing_not_duplicates(tmp_path):
    from sctranslator.plan import gene_identifiers

    adata = _small_annotated()
    path = tmp_path / "a.h5ad"
    adata.write_h5ad(path)
    var = open_source(path).var  # the categorical column with NaN, as stored
    with pytest.raises(InputDataError) as err:
        gene_identifiers(var, "symbol")
    message = str(err.value)
    assert "2 of 6 genes have no identifier in var['symbol']" in message
    assert "var rows 2 (G2), 4 (G4)" in message
    assert "make_unique" not in message and "more than once" not in message
    with pytest.raises(InputDataError, match=r"1 of 6 genes have no identifier in var\['note'\].*var rows 1 \(G1\)"):
        gene_identifiers(var, "note")  # an empty string is no name either
    assert list(gene_identifiers(var, "highly_variable")) == [str(v) for v in var["highly_variable"]]

    named = adata.copy()
    named.var.index = pd.CategoricalIndex(["A", np.nan, "C", "D", "E", "F"])  # NaN var_names survive a round trip
    named.write_h5ad(tmp_path / "b.h5ad")
    with pytest.raises(InputDataError, match=r"1 of 6 genes have no identifier in var_names .*var rows 1\b"):
        gene_identifiers(open_source(tmp_path / "b.h5ad").var, None)


# ---------------------------------------------------------------- .raw


def _with_raw() -> anndata.AnnData:
    """Counts in .raw (all genes), a normalised subset of the genes in X, as scanpy leaves it."""
    counts = _small_annotated(n_obs=30, n_vars=6)
    counts.X = counts.X.multiply(10).tocsr().astype(np.float32)
    counts.X.data = np.round(counts.X.data)
    adata = counts.copy()
    adata.raw = counts
    adata = adata[:, [0, 2, 3]].copy()
    adata.X = sp.csr_matrix(np.log1p(adata.X.toarray()))
    return adata


def test_use_raw_reads_raw_x_with_raw_var(tmp_path):
    adata = _with_raw()
    h5ad = tmp_path / "raw.h5ad"
    adata.write_h5ad(h5ad)
    inputs = {"memory": adata, "h5ad": h5ad, "zarr2": _write_zarr(adata, tmp_path / "r2.zarr", fmt=2),
              "zarr3": _write_zarr(adata, tmp_path / "r3.zarr", fmt=3),
              "backed": anndata.read_h5ad(h5ad, backed="r")}
    for name, data in inputs.items():
        source = open_source(data, use_raw=True)
        assert (source.n_obs, source.n_vars) == (30, 6), name
        assert list(source.var.index) == list(adata.raw.var_names), name
        assert list(source.obs_names) == list(adata.obs_names), name
        stacked = sp.vstack([b for _, _, b in _blocks(source, (7, 11))]).toarray()
        np.testing.assert_array_equal(stacked, adata.raw.X.toarray(), err_msg=name)
        assert source.fingerprint()["element"] == "raw/X", name
        plain = open_source(data)
        assert plain.n_vars == 3 and plain.fingerprint() != source.fingerprint(), name
    inputs["backed"].file.close()
    with pytest.raises(InputDataError, match="either a layer .* or the raw matrix"):
        open_source(h5ad, use_raw=True, layer="counts")
    bare = _small_annotated()
    bare.write_h5ad(tmp_path / "bare.h5ad")
    for data in (bare, tmp_path / "bare.h5ad", _write_zarr(bare, tmp_path / "bare.zarr", fmt=3)):
        with pytest.raises(InputDataError, match=r"has no \.raw"):
            open_source(data, use_raw=True)


# ---------------------------------------------------------------- MuData modality


@pytest.mark.parametrize("rna_name", ["rna", "RNA", "gex", "GEX", "Gene Expression"])
def test_mudata_modality_defaults_to_the_rna_like_one(tmp_path, rna_name):
    import mudata

    rna = _small_annotated()
    prot = anndata.AnnData(np.ones((rna.n_obs, 2), dtype=np.float32), obs=rna.obs[[]])
    prot.var_names = ["CD3", "CD4"]
    mdata = mudata.MuData({rna_name: rna, "prot": prot})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata.write(tmp_path / "m.h5mu")
        mdata.write_zarr(tmp_path / "m.zarr")
    for data in (mdata, tmp_path / "m.h5mu", tmp_path / "m.zarr"):
        source = open_source(data)
        assert list(source.var.index) == list(rna.var_names)
        np.testing.assert_array_equal(source.read_block(0, rna.n_obs).toarray(), rna.X.toarray())
        assert open_source(data, modality="prot").n_vars == 2


def test_mudata_modality_ambiguous_or_absent_is_a_clear_error(tmp_path):
    import mudata

    rna = _small_annotated()
    other = rna[:, :3].copy()
    for mods, match in (({"RNA": rna, "gex": other}, r"several RNA-like modalities \(it has: RNA, gex\).*--modality"),
                        ({"atac": rna, "prot": other}, r"no RNA-like modality.*\(it has: atac, prot\).*--modality")):
        mdata = mudata.MuData(mods)
        path = tmp_path / f"{'_'.join(mods)}.h5mu"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mdata.write(path)
        for data in (mdata, path):
            with pytest.raises(InputDataError, match=match):
                open_source(data)
        assert open_source(path, modality=next(iter(mods))).n_vars == rna.n_vars
        with pytest.raises(InputDataError, match=r"no modality 'rna' \(it has: "):
            open_source(path, modality="rna")


# ---------------------------------------------------------------- the CLI options


def test_translate_cli_missing_chunks_modality_and_raw(tmp_path, capsys):
    from sctranslator.cli.entry import main

    model = datafiles.TINY_A
    pbmc = anndata.read_h5ad(_require(PBMC))[:40].copy()
    dense = pbmc.copy()
    dense.X = pbmc.X.toarray()
    store = _write_zarr(dense, tmp_path / "dense.zarr", fmt=3, chunks=(10, dense.n_vars))
    (store / "X" / "c" / "1" / "0").unlink()  # rows 10..19
    common = ["--model", str(_require(model)), "--proteins", "CD3,CD4", "--quiet", "--block-cells", "16"]
    assert main(["translate", str(store), "--out", str(tmp_path / "a.zarr"), *common]) == 2
    message = capsys.readouterr().err
    assert "StoreError" in message and "X is missing chunk(s) c/1/0 covering rows" in message
    assert "--missing-chunks zeros" in message and not (tmp_path / "a.zarr" / "X").exists()
    assert main(["translate", str(store), "--out", str(tmp_path / "b.zarr"), "--missing-chunks", "zeros",
                 "--allow-empty-cells", *common]) == 0
    assert anndata.read_zarr(tmp_path / "b.zarr").n_obs == 40

    import mudata

    with_raw = pbmc.copy()
    with_raw.raw = pbmc
    with_raw.X = sp.csr_matrix(np.log1p(pbmc.X.toarray()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mudata.MuData({"GEX": with_raw}).write(tmp_path / "m.h5mu")
    assert main(["translate", str(tmp_path / "m.h5mu"), "--out", str(tmp_path / "c.zarr"), "--modality", "GEX",
                 "--use-raw", *common]) == 0
    settings = anndata.read_zarr(tmp_path / "c.zarr").uns["sctranslator"]["settings"]
    assert settings["use_raw"] and settings["modality"] == "GEX"
    import sctranslator

    direct = sctranslator.translate(tmp_path / "m.h5mu", model, ["CD3", "CD4"], use_raw=True)
    from_counts = sctranslator.translate(pbmc, model, ["CD3", "CD4"])
    np.testing.assert_allclose(direct.X, from_counts.X, rtol=1e-6)
    np.testing.assert_allclose(anndata.read_zarr(tmp_path / "c.zarr").X, from_counts.X, rtol=1e-6)
