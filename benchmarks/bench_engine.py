"""Engine throughput: read -> prepare -> predict -> write, end to end through `translate`.

Prints markdown tables (medians over repeats). Two parts:
  1. the pipeline's own overhead with the tiny fixture model (the model costs almost nothing),
     against a plain in-process baseline that does the same work with anndata + numpy + torch;
  2. the full-size (published configuration) model's cells/s on CPU per backend.

Run: python benchmarks/bench_engine.py [--cells 50000] [--full-cells 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(tempfile.gettempdir()) / "sctranslator-numba-cache"))

import anndata as ad  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import torch  # noqa: E402

import sctranslator  # noqa: E402
from sctranslator.model import ModelConfig, TranslatorModel  # noqa: E402
from sctranslator.vocab import map_genes, map_proteins  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
PROTEINS = ["CD3", "CD4", "CD8a", "CD14", "CD16", "CD19", "CD45RA", "CD45RO", "PD-1", "TIGIT", "CD127", "CD25",
            "CD56", "CD15"]


def tiled_dataset(n_cells: int, path: Path) -> Path:
    base = ad.read_h5ad(SHARED / "data" / "pbmc10k_cite_10x" / "rna.h5ad")
    reps = -(-n_cells // base.n_obs)
    x = sp.vstack([base.X] * reps).tocsr()[:n_cells]
    tiled = ad.AnnData(x, var=base.var)
    tiled.obs_names = [f"cell{i}" for i in range(n_cells)]
    tiled.write_h5ad(path)
    return path


def naive_translate(path: Path, model: TranslatorModel, batch: int) -> np.ndarray:
    """What a user would write by hand: load everything, densify per batch, scale, predict."""
    adata = ad.read_h5ad(path)
    tokens = map_genes(adata.var_names).token_ids
    keep = np.flatnonzero(tokens > 0)
    length = model.config.max_genes
    n = min(length, keep.size)
    genes = np.zeros(length, np.int64)
    genes[:n] = tokens[keep][:n]
    width = model.config.max_proteins
    proteins = np.zeros(width, np.int64)
    proteins[: len(PROTEINS)] = map_proteins(PROTEINS).token_ids
    out = np.empty((adata.n_obs, len(PROTEINS)), np.float32)
    with torch.inference_mode():
        for lo in range(0, adata.n_obs, batch):
            x = adata.X[lo:lo + batch][:, keep].toarray().astype(np.float64)
            mn, mx = x.min(1, keepdims=True), x.max(1, keepdims=True)
            scaled = 1e-8 + (x - mn) / np.where(mx > mn, mx - mn, 1) * (1 - 1e-8)
            values = np.zeros((x.shape[0], length), np.float32)
            values[:, :n] = scaled[:, :n]
            b = x.shape[0]
            pred = model(torch.from_numpy(values), torch.from_numpy(genes).expand(b, -1),
                         torch.from_numpy(proteins).expand(b, -1),
                         torch.from_numpy(genes > 0).expand(b, -1),
                         torch.from_numpy(proteins > 0).expand(b, -1))
            out[lo:lo + b] = pred.numpy()[:, : len(PROTEINS)]
    return out


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def engine_overhead(cells: int, repeats: int, workdir: Path) -> None:
    path = tiled_dataset(cells, workdir / "tiled.h5ad")
    model = sctranslator.load_model(SHARED / "fixtures" / "reference_model" / "tiny_a_official.pt")
    sctranslator.translate(path, model, PROTEINS, block_cells=4096)  # warm-up: numba, imports
    rows = []
    naive = timed(lambda: naive_translate(path, model, 256), repeats)
    rows.append(("hand-written anndata + numpy + torch (batch 256)", naive))
    for batch, block in ((64, 4096), (256, 8192), (1024, 16384)):
        def run(batch: int = batch, block: int = block) -> None:
            sctranslator.translate(path, model, PROTEINS, block_cells=block, batch_size=batch,
                                   out=workdir / f"out-{batch}.zarr", overwrite=True)
        rows.append((f"sctranslator translate (batch {batch}, block {block}, zarr sink)", timed(run, repeats)))
    print(f"\n### Engine throughput, tiny_a model (L=64, P=16), {cells:,} cells, {os.cpu_count()} cores\n")
    print("| pipeline | median s | cells/s | vs hand-written |")
    print("| --- | ---: | ---: | ---: |")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} | {cells / seconds:,.0f} | {naive / seconds:.2f}x |")


def full_size(cells: int, repeats: int, workdir: Path) -> None:
    torch.manual_seed(0)
    model = TranslatorModel(ModelConfig())
    source = ad.read_h5ad(SHARED / "data" / "pbmc_eccite_mimitou2019" / "rna.h5ad")[:cells].copy()
    rows = []
    for backend, batch in (("torch", 1), ("torch", 4), ("onnxruntime", 1)):
        def run(backend: str = backend, batch: int = batch) -> None:
            sctranslator.translate(source, model, PROTEINS, backend=backend, batch_size=batch, workers=1,
                                   onnx_path=None, backend_options={})
        run()  # warm-up (for onnxruntime this includes the export, cached afterwards)
        rows.append((backend, batch, timed(run, repeats)))
    print(f"\n### Full-size model (117.4 M parameters, L=20,000, P=1,000) on CPU, {cells} cells, "
          f"{os.cpu_count()} cores\n")
    print("| backend | batch | median s | cells/s | s/cell |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for backend, batch, seconds in rows:
        print(f"| {backend} | {batch} | {seconds:.1f} | {cells / seconds:.3f} | {seconds / cells:.2f} |")


def backend_only(repeats: int) -> None:
    """Pure inference per cell of the full-size model: one prepared batch through each backend."""
    from sctranslator.engine.backends import BackendSpec, Batch, OnnxRuntimeBackend, TorchBackend, onnx_file_for

    torch.manual_seed(0)
    model = TranslatorModel(ModelConfig())
    length, width = model.config.max_genes, model.config.max_proteins
    rng = np.random.default_rng(0)
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    backends = {"torch": TorchBackend(model),
                "onnxruntime": OnnxRuntimeBackend(onnx_file_for(BackendSpec(kind="onnxruntime"), model),
                                                  threads=threads)}
    print(f"\n### Full-size model, inference only (prepared batch -> predictions), {threads} cores\n")
    print("| backend | batch | median s/cell |")
    print("| --- | ---: | ---: |")
    for name, backend in backends.items():
        for size in (1, 2):
            batch = Batch(rng.random((size, length), dtype=np.float32), rng.integers(1, 75_000, length),
                          np.ones(length, bool), rng.integers(1, 75_000, (1, width)), np.ones((1, width), bool))
            backend.predict(batch)
            seconds = timed(lambda backend=backend, batch=batch: backend.predict(batch), repeats)
            print(f"| {name} | {size} | {seconds / size:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cells", type=int, default=50_000)
    parser.add_argument("--full-cells", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-full", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine_overhead(args.cells, args.repeats, Path(tmp))
        if not args.skip_full:
            full_size(args.full_cells, max(1, args.repeats - 1), Path(tmp))
            backend_only(args.repeats)


if __name__ == "__main__":
    main()
