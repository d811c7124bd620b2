"""Block reads through `open_source` (anndata's sparse row slicing + our checks) vs a plain reference read.

    python benchmarks/bench_sources.py [--data /work/shared/data] [--rows 256] [--passes 5]

The reference ("plain") is the least work a reader can do on the same store in the same process:
h5py / zarr slicing of indptr, indices and data and one `scipy.sparse.csr_matrix` (dense: one array
slice), with no checks. "sctranslator" is `open_source(path).read_block(a, b)`: the indptr slice read
and checked, the storage under it checked for missing chunks (zarr), the rows sliced by
`anndata.io.sparse_dataset`, the block checked. Both read every block of the file, `--passes` times,
alternating; the table gives the median seconds per block and the ratio.

A second table puts the difference in context: `translate` end to end (tiny fixture model, tiled
pbmc10k h5ad, default blocks) reading through `open_source` vs through a Source that uses the plain
reader. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("NUMBA_CACHE_DIR", "/tmp/nc")

import anndata as ad  # noqa: E402
import h5py  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import zarr  # noqa: E402
from scipy import __version__ as sp_version  # noqa: E402

import sctranslator  # noqa: E402
from sctranslator.engine.sources import Source, open_source  # noqa: E402
from sctranslator.engine.sources.anndata_io import read_elem  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _plain_reader(path: Path):
    """A reader that slices the stored arrays directly (the reference)."""
    root = zarr.open_group(path, mode="r") if path.is_dir() else h5py.File(path, "r")
    x = root["X"]
    if not isinstance(x, h5py.Group | zarr.Group):  # dense
        return lambda a, b: np.asarray(x[a:b])
    data, indices, indptr = x["data"], x["indices"], x["indptr"]
    n_vars = int(x.attrs["shape"][1])

    def read(a: int, b: int) -> sp.csr_matrix:
        ptr = np.asarray(indptr[a:b + 1])
        lo, hi = int(ptr[0]), int(ptr[-1])
        return sp.csr_matrix((np.asarray(data[lo:hi]), np.asarray(indices[lo:hi]), ptr - lo), shape=(b - a, n_vars))

    return read


class PlainSource(Source):
    """A Source over an h5ad's CSR X read by the plain reader: no checks, no anndata slicing."""

    kind = "h5ad"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = str(path)
        self._handle = h5py.File(path, "r")
        self._read = _plain_reader(path)
        self.n_obs, self.n_vars = (int(n) for n in self._handle["X"].attrs["shape"])
        self.matrix_format, self.chunk_rows = "csr", None
        self.dtype = np.dtype(self._handle["X/data"].dtype)
        self.nnz = int(self._handle["X/data"].shape[0])
        self._var = read_elem(self._handle["var"])
        self._obs = read_elem(self._handle["obs"])

    @property
    def var(self):  # noqa: ANN201
        return self._var

    @property
    def obs_names(self):  # noqa: ANN201
        return self._obs.index

    def read_obs(self):  # noqa: ANN201
        return self._obs.copy()

    def _element_name(self) -> str:
        return "X"

    def _read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        return self._read(start, stop)


def _end_to_end(data: Path, root: Path, n_cells: int, repeats: int) -> None:
    model = data.parent / "fixtures" / "reference_model" / "tiny_a_official.pt"
    base = ad.read_h5ad(data / "pbmc10k_cite_10x" / "rna.h5ad")
    tiled = ad.AnnData(sp.vstack([base.X] * -(-n_cells // base.n_obs)).tocsr()[:n_cells], var=base.var)
    tiled.obs_names = [f"c{i}" for i in range(n_cells)]
    path = root / "tiled.h5ad"
    tiled.write_h5ad(path)
    proteins = ["CD3", "CD4", "CD8a", "CD14", "CD19"]
    loaded = sctranslator.load_model(model)
    times: dict[str, list[float]] = {"plain": [], "sctranslator": []}
    results = {}
    for _ in range(repeats):
        for name, make in (("plain", lambda: PlainSource(path)), ("sctranslator", lambda: open_source(path))):
            t0 = time.perf_counter()
            results[name] = sctranslator.translate(make(), loaded, proteins, workers=2, normalize="total_log1p").X
            times[name].append(time.perf_counter() - t0)
    np.testing.assert_array_equal(np.asarray(results["plain"]), np.asarray(results["sctranslator"]))
    print(f"\n| `translate`, {n_cells:,} cells (pbmc10k tiled), tiny_a model | median s | cells/s |")
    print("| --- | ---: | ---: |")
    for name, label in (("plain", "plain reader (no checks)"), ("sctranslator", "open_source (anndata + checks)")):
        median = statistics.median(times[name])
        print(f"| {label} | {median:.2f} | {n_cells / median:,.0f} |")


def _time_blocks(read, n_obs: int, rows: int) -> list[float]:
    times = []
    for start in range(0, n_obs, rows):
        t0 = time.perf_counter()
        read(start, min(n_obs, start + rows))
        times.append(time.perf_counter() - t0)
    return times


def _stores(data: Path, root: Path) -> dict[str, Path]:
    adata = ad.read_h5ad(data / "pbmc10k_cite_10x" / "rna.h5ad")
    dense = adata.copy()
    dense.X = adata.X.toarray()
    stores = {"h5ad csr (pbmc10k)": data / "pbmc10k_cite_10x" / "rna.h5ad"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fmt in (2, 3):
            with ad.settings.override(zarr_write_format=fmt):
                adata.write_zarr(root / f"v{fmt}.zarr")
            stores[f"zarr v{fmt} csr"] = root / f"v{fmt}.zarr"
        if hasattr(ad.settings, "auto_shard_zarr_v3"):
            with ad.settings.override(zarr_write_format=3, auto_shard_zarr_v3=True):
                adata.write_zarr(root / "sharded.zarr")
            stores["zarr v3 csr sharded"] = root / "sharded.zarr"
        dense.write_h5ad(root / "dense.h5ad")
        stores["h5ad dense"] = root / "dense.h5ad"
        with ad.settings.override(zarr_write_format=3):
            dense.write_zarr(root / "dense.zarr", chunks=(256, dense.n_vars))
        stores["zarr v3 dense"] = root / "dense.zarr"
    return stores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--rows", type=int, nargs="+", default=[209, 2048],
                        help="rows per block (209: the full-size model's default block)")
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--cells", type=int, default=50_000, help="cells for the end-to-end table (0: skip)")
    parser.add_argument("--repeats", type=int, default=3, help="end-to-end repeats")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stores = _stores(args.data, Path(tmp))
        print("| store | cells x genes | rows/block | median s/block plain | median s/block sctranslator | ratio |")
        print("| --- | --- | --- | --- | --- | --- |")
        for name, path in stores.items():
            source = open_source(path)
            plain = _plain_reader(path)
            ours = source.read_block
            for rows in args.rows:
                expected, got = plain(0, rows), ours(0, rows)  # same values, and warm both
                same = (expected != got).nnz == 0 if sp.issparse(expected) else np.array_equal(expected, got)
                assert same, name
                t_plain: list[float] = []
                t_ours: list[float] = []
                for _ in range(args.passes):
                    t_plain += _time_blocks(plain, source.n_obs, rows)
                    t_ours += _time_blocks(ours, source.n_obs, rows)
                a, b = statistics.median(t_plain), statistics.median(t_ours)
                print(f"| {name} | {source.n_obs:,} x {source.n_vars:,} | {rows} | {a:.5f} | {b:.5f} | {b / a:.2f} |")
            source.close()
        if args.cells:
            _end_to_end(args.data, Path(tmp), args.cells, args.repeats)
    print(f"\n{args.passes} passes over every block, anndata {ad.__version__}, scipy {sp_version}, "
          f"zarr {zarr.__version__}, h5py {h5py.__version__}")


if __name__ == "__main__":
    main()
