"""Bounded memory to the end: translate's peak RSS does not grow with the number of cells.

A synthetic CSR Zarr store (very sparse, few genes) of 100,000 and of 1,000,000 cells goes through
`translate` with a tiny random model in a fresh process each; the 1M-cell run may use more memory
only for what is documented to scale with cells (the obs table), far less than its predictions.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from memory_probe import gene_symbols

try:  # anndata >= 0.11
    from anndata.io import write_elem
except ImportError:  # pragma: no cover - anndata 0.10
    from anndata.experimental import write_elem

PROBE = Path(__file__).with_name("memory_probe.py")
N_GENES = 32
N_PROTEINS = 128  # 1M cells x 128 proteins = 512 MB of predictions: loading them would show
NNZ_PER_CELL = 3
CHUNK_CELLS = 65_536
# What may scale with cells: the obs names (a short Python string is ~70 bytes; the source, the
# store's creation and the returned AnnData each hold a copy) and the indptr: 220-260 bytes a cell
# measured, 300 allowed, plus allocator noise. Loading the predictions would add 512 more.
PER_CELL_ALLOWANCE = 300
NOISE = 64 << 20


def write_sparse_store(path: Path, n_cells: int, genes: list[str], seed: int = 0) -> None:
    """An AnnData Zarr store with a chunked CSR X, written chunk by chunk (never whole in memory)."""
    rng = np.random.default_rng(seed)
    root = zarr.open_group(str(path), mode="w")
    root.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
    names = np.char.add("cell", np.arange(n_cells).astype(str)).astype(object)
    write_elem(root, "obs", pd.DataFrame(index=pd.Index(names)))
    write_elem(root, "var", pd.DataFrame(index=pd.Index(genes)))
    x = root.create_group("X")
    x.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": [n_cells, len(genes)]})
    nnz = n_cells * NNZ_PER_CELL
    indptr = x.create_array("indptr", shape=(n_cells + 1,), chunks=(CHUNK_CELLS,), dtype="int64")
    data = x.create_array("data", shape=(nnz,), chunks=(CHUNK_CELLS * NNZ_PER_CELL,), dtype="float32")
    indices = x.create_array("indices", shape=(nnz,), chunks=(CHUNK_CELLS * NNZ_PER_CELL,), dtype="int32")
    indptr[:] = np.arange(0, nnz + 1, NNZ_PER_CELL, dtype=np.int64)
    for start in range(0, n_cells, CHUNK_CELLS):
        rows = min(CHUNK_CELLS, n_cells - start)
        first = rng.integers(0, len(genes) - NNZ_PER_CELL + 1, rows)  # sorted, distinct columns per row
        columns = (first[:, None] + np.arange(NNZ_PER_CELL)).astype(np.int32).ravel()
        values = rng.integers(1, 20, rows * NNZ_PER_CELL).astype(np.float32)
        lo, hi = start * NNZ_PER_CELL, (start + rows) * NNZ_PER_CELL
        indices[lo:hi] = columns
        data[lo:hi] = values


def probe(store: Path, out: Path, **extra: str) -> dict:
    command = [sys.executable, str(PROBE), str(store), str(out), str(N_PROTEINS), "--n-genes", str(N_GENES)]
    for key, value in extra.items():
        command += [f"--{key.replace('_', '-')}", value]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_number_of_cells(tmp_path: Path) -> None:
    genes = gene_symbols(N_GENES)
    runs = {}
    for n_cells in (100_000, 1_000_000):
        store = tmp_path / f"rna_{n_cells}.zarr"
        write_sparse_store(store, n_cells, genes)
        runs[n_cells] = probe(store, tmp_path / f"pred_{n_cells}.zarr")
    small, large = runs[100_000], runs[1_000_000]
    print(json.dumps(runs, indent=1))  # the numbers README quotes (pytest -s shows them)
    assert large["shape"] == [1_000_000, N_PROTEINS] and large["finite"]
    assert large["x_type"].startswith("dask.") and small["x_type"] == large["x_type"]
    growth = large["peak"] - small["peak"]
    allowed = 900_000 * PER_CELL_ALLOWANCE + NOISE
    assert growth < allowed, (f"peak RSS grew by {growth / 2**20:.0f} MiB from 100k to 1M cells "
                              f"(allowed {allowed / 2**20:.0f} MiB; the predictions are "
                              f"{large['matrix_bytes'] / 2**20:.0f} MiB)")
    # The allowance must be able to catch the regression it guards against: loading X whole.
    assert allowed < large["matrix_bytes"] - small["matrix_bytes"]
