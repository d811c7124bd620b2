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

A third table (`--sources-cells`, 0 skips it) is cells/s of `translate` with the tiny model on the same
cells from every kind of source: an h5ad, an AnnData Zarr store, the Zarr store and the h5ad on a
local S3 API server (moto_server on 127.0.0.1), a local TileDB-SOMA experiment and a collection of 4
files. Sources whose support is not on this branch print "n/a" with the reason. `--sources
zarr,collection` times only those rows (local Zarr, the reference of the ratios, always).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
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
import sctranslator.errors  # noqa: E402
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


def _moto_server() -> tuple[subprocess.Popen, str]:
    """A local S3 API server (moto_server, the dev extra) on a free loopback port: (process, endpoint)."""
    import socket
    import sys
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    program = Path(sys.executable).parent / "moto_server"
    process = subprocess.Popen([str(program), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            with urllib.request.urlopen(endpoint + "/moto-api/", timeout=2):
                break
        except OSError:
            time.sleep(0.2)
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1")
    return process, endpoint


# --sources names the rows to time: short key -> the table's row
SOURCE_KEYS = {"h5ad": "h5ad (local)", "zarr": "AnnData Zarr (local)", "soma": "TileDB-SOMA experiment (local)",
               "collection": "collection of 4 h5ad files", "s3-zarr": "Zarr on S3 (local moto_server)",
               "s3-h5ad": "h5ad on S3 (local moto_server)"}


def _sources_table(data: Path, root: Path, n_cells: int, repeats: int, only: list[str] | None = None) -> None:
    """cells/s of translate (tiny_a, all cells) from every kind of source holding the same cells
    (`only`: these rows of SOURCE_KEYS; local Zarr is always timed, the ratios' reference)."""
    wanted = {SOURCE_KEYS[key] for key in (only or SOURCE_KEYS)} | {SOURCE_KEYS["zarr"]}
    remote = any(name.endswith("(local moto_server)") for name in wanted)
    model = data.parent / "fixtures" / "reference_model" / "tiny_a_official.pt"
    base = ad.read_h5ad(data / "pbmc10k_cite_10x" / "rna.h5ad")
    cells = ad.AnnData(sp.vstack([base.X] * -(-n_cells // base.n_obs)).tocsr()[:n_cells], var=base.var)
    cells.obs_names = [f"c{i}" for i in range(n_cells)]
    h5ad, store = root / "cells.h5ad", root / "cells.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cells.write_h5ad(h5ad)
        cells.write_zarr(store)
    quarter = -(-n_cells // 4)
    parts = []
    for i in range(4):
        part = root / f"part{i}.h5ad"
        cells[i * quarter:(i + 1) * quarter].write_h5ad(part)
        parts.append(part)
    loaded = sctranslator.load_model(model)
    proteins = ["CD3", "CD4", "CD8a", "CD14", "CD19"]
    options = {"normalize": "total_log1p", "allow_empty_cells": True, "quiet": True}
    server = _moto_server()[0] if remote else None
    try:
        if remote:
            import s3fs

            fs = s3fs.S3FileSystem(skip_instance_cache=True)
            fs.mkdir("bench")
            fs.put(str(store), "bench/cells.zarr", recursive=True)
            fs.put_file(str(h5ad), "bench/cells.h5ad")

        def soma() -> str:
            import tiledbsoma.io

            uri = str(root / "cells.soma")
            if not Path(uri).exists():
                tiledbsoma.io.from_h5ad(uri, str(h5ad), measurement_name="RNA")
            return uri

        sources = {"h5ad (local)": lambda: str(h5ad), "AnnData Zarr (local)": lambda: str(store),
                   "TileDB-SOMA experiment (local)": soma,
                   "collection of 4 h5ad files": lambda: [str(p) for p in parts],
                   "Zarr on S3 (local moto_server)": lambda: "s3://bench/cells.zarr",
                   "h5ad on S3 (local moto_server)": lambda: "s3://bench/cells.h5ad"}
        sources = {name: make for name, make in sources.items() if name in wanted}
        rates: dict[str, float | str] = {}
        times: dict[str, list[float]] = {name: [] for name in sources}
        reference = None
        # One untimed run first (kernel caches, thread pools, the model's first calls), then the sources
        # in turn within each repeat, so that a change of machine load falls on every source alike.
        sctranslator.translate(str(store), loaded, proteins, out=root / "warm-up", **options)
        shutil.rmtree(root / "warm-up", ignore_errors=True)
        for repeat in range(repeats):
            for index, (name, make) in enumerate(sources.items()):
                if isinstance(rates.get(name), str):
                    continue
                out = root / f"out-{index}-{repeat}"
                try:
                    t0 = time.perf_counter()
                    result = sctranslator.translate(make(), loaded, proteins, out=out, **options)
                    times[name].append(time.perf_counter() - t0)
                    # Every source gives the same predictions (read before the store is removed).
                    if isinstance(result, ad.AnnData) and reference is None:
                        reference = np.asarray(result.X)
                    elif isinstance(result, ad.AnnData) and result.n_obs == n_cells:
                        np.testing.assert_array_equal(np.asarray(result.X), reference)
                except (ImportError, TypeError, sctranslator.errors.SctranslatorError) as exc:
                    rates[name] = f"n/a ({type(exc).__name__}: {str(exc)[:60]})"
                finally:
                    shutil.rmtree(out, ignore_errors=True)
        for name, taken in times.items():
            if not isinstance(rates.get(name), str):
                rates[name] = n_cells / statistics.median(taken)
    finally:
        if server is not None:
            server.terminate()
            server.wait()
    zarr_rate = rates["AnnData Zarr (local)"]
    print(f"\n| source ({n_cells:,} cells, tiny_a, {repeats} runs, median) | cells/s | time / local Zarr's |")
    print("| --- | ---: | ---: |")
    for name, rate in rates.items():
        if isinstance(rate, str):
            print(f"| {name} | {rate} | |")
        else:
            ratio = f"{zarr_rate / rate:.2f}" if isinstance(zarr_rate, float) else ""
            print(f"| {name} | {rate:,.0f} | {ratio} |")


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
    parser.add_argument("--sources-cells", type=int, default=20_000,
                        help="cells for the table of every source kind (0: skip)")
    parser.add_argument("--only-sources", action="store_true", help="print only the table of every source kind")
    parser.add_argument("--sources", type=lambda text: [key.strip() for key in text.split(",") if key.strip()],
                        default=None, help=f"comma-separated rows of that table ({', '.join(SOURCE_KEYS)}; "
                                           "default: all); local Zarr, the reference, is always timed")
    args = parser.parse_args()
    unknown = sorted(set(args.sources or ()) - set(SOURCE_KEYS))
    if unknown:
        parser.error(f"--sources: unknown {unknown}; choose from {', '.join(SOURCE_KEYS)}")
    if args.only_sources:
        with tempfile.TemporaryDirectory() as tmp:
            _sources_table(args.data, Path(tmp), args.sources_cells, args.repeats, args.sources)
        return
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
        if args.sources_cells:
            _sources_table(args.data, Path(tmp), args.sources_cells, args.repeats, args.sources)
    print(f"\n{args.passes} passes over every block, anndata {ad.__version__}, scipy {sp_version}, "
          f"zarr {zarr.__version__}, h5py {h5py.__version__}")


if __name__ == "__main__":
    main()
