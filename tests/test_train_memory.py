"""Training memory is bounded: finetune's peak RSS does not grow with the number of paired cells.

A synthetic MuData Zarr store (chunked CSR RNA, dense protein modality) of 100,000 and of
1,000,000 paired cells trains a tiny model from scratch for a few steps in a fresh process each.
Training streams and keeps no cell names (pairing, the split and the bundle's cell record work from
names read in blocks and their 64-bit hashes), so per cell it holds only compact integer arrays: the
paired rows and the training positions (8 bytes each). The 900,000 extra cells may therefore add
900,000 x 16 bytes = 14 MiB, plus the bundle's cell record written at the end (the training cells'
hashes, sorted: 2 x 7 MiB for a moment) and allocator noise: a fixed 48 MiB. Holding one list of the
extra cells' names would add 900,000 x 67 bytes = 58 MiB (a short str plus its pointer) and holding
the prepared cells 900,000 x 512 genes x 4 bytes = 1.7 GiB; the test checks that both exceed the bound.
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

PROBE = Path(__file__).with_name("train_memory_probe.py")
N_GENES = 512
N_PROTEINS = 8
NNZ_PER_CELL = 4
CHUNK_CELLS = 65_536
# A bound independent of the cell count (see the module docstring for what it covers).
ALLOWED_GROWTH = 48 << 20
STEPS = 2


def _anndata_group(root: zarr.Group, name: str, names: np.ndarray, var: list[str]) -> zarr.Group:
    group = root.create_group(name)
    group.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
    # Names chunked like the matrix: training reads them a chunk at a time, so the chunk (not the
    # cell count) bounds what a read decodes.
    write_elem(group, "obs", pd.DataFrame(index=pd.Index(names)), dataset_kwargs={"chunks": (CHUNK_CELLS,)})
    write_elem(group, "var", pd.DataFrame(index=pd.Index(var)))
    return group


def write_paired_store(path: Path, n_cells: int, genes: list[str], proteins: list[str], seed: int = 0) -> None:
    """A MuData Zarr store ('rna': chunked CSR X; 'prot': chunked dense X), written chunk by chunk."""
    rng = np.random.default_rng(seed)
    root = zarr.open_group(str(path), mode="w")
    root.attrs.update({"encoding-type": "MuData", "encoding-version": "0.1.0"})
    names = np.char.add("cell", np.arange(n_cells).astype(str)).astype(object)
    write_elem(root, "obs", pd.DataFrame(index=pd.Index(names)))
    write_elem(root, "var", pd.DataFrame(index=pd.Index([*genes, *proteins])))
    mod = root.create_group("mod")
    rna = _anndata_group(mod, "rna", names, genes)
    prot = _anndata_group(mod, "prot", names, proteins)
    x = rna.create_group("X")
    x.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": [n_cells, len(genes)]})
    nnz = n_cells * NNZ_PER_CELL
    indptr = x.create_array("indptr", shape=(n_cells + 1,), chunks=(CHUNK_CELLS,), dtype="int64")
    data = x.create_array("data", shape=(nnz,), chunks=(CHUNK_CELLS * NNZ_PER_CELL,), dtype="float32")
    indices = x.create_array("indices", shape=(nnz,), chunks=(CHUNK_CELLS * NNZ_PER_CELL,), dtype="int32")
    dense = prot.create_array("X", shape=(n_cells, len(proteins)), chunks=(CHUNK_CELLS, len(proteins)),
                              dtype="float32")
    dense.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
    indptr[:] = np.arange(0, nnz + 1, NNZ_PER_CELL, dtype=np.int64)
    for start in range(0, n_cells, CHUNK_CELLS):
        rows = min(CHUNK_CELLS, n_cells - start)
        first = rng.integers(0, len(genes) - NNZ_PER_CELL + 1, rows)  # sorted, distinct columns per row
        lo, hi = start * NNZ_PER_CELL, (start + rows) * NNZ_PER_CELL
        indices[lo:hi] = (first[:, None] + np.arange(NNZ_PER_CELL)).astype(np.int32).ravel()
        data[lo:hi] = rng.integers(1, 20, rows * NNZ_PER_CELL).astype(np.float32)
        dense[start:start + rows] = rng.integers(0, 500, (rows, len(proteins))).astype(np.float32)


def probe(store: Path, out: Path) -> dict:
    command = [sys.executable, str(PROBE), str(store), str(out), "--n-genes", str(N_GENES),
               "--n-proteins", str(N_PROTEINS), "--steps", str(STEPS)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_training_peak_memory_does_not_grow_with_the_number_of_cells(tmp_path: Path) -> None:
    genes = gene_symbols(N_GENES)
    proteins = gene_symbols(N_PROTEINS, skip=1000)
    runs = {}
    for n_cells in (100_000, 1_000_000):
        store = tmp_path / f"paired_{n_cells}.zarr"
        write_paired_store(store, n_cells, genes, proteins)
        runs[n_cells] = probe(store, tmp_path / f"bundle_{n_cells}")
    small, large = runs[100_000], runs[1_000_000]
    print(json.dumps(runs, indent=1))  # the numbers README quotes (pytest -s shows them)
    assert large["steps"] == small["steps"] == STEPS and large["val_cells"] == 256
    assert large["n_genes"] == N_GENES and large["n_proteins"] == N_PROTEINS
    growth = large["peak"] - small["peak"]
    names = 900_000 * (sys.getsizeof("cell999999") + 8)  # one list of the extra cells' names
    held = 900_000 * N_GENES * 4  # what holding the prepared values of the extra cells would add
    assert growth < ALLOWED_GROWTH, (
        f"peak RSS grew by {growth / 2**20:.0f} MiB from 100k to 1M cells (allowed {ALLOWED_GROWTH / 2**20:.0f} "
        f"MiB; one list of names needs {names / 2**20:.0f} MiB, holding the cells {held / 2**20:.0f} MiB)")
    # The bound must be able to catch the regressions it guards against: names kept, cells held.
    assert ALLOWED_GROWTH < names < held
