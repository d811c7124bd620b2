"""The fixed cost of one `translate` call: plan, output store, scheduler start-up, provenance, finish.

Measured as the median wall time of translating a handful of cells with the model already loaded
(the demo model, whose forward pass costs milliseconds), minus the model's own time on those cells,
against the issue's budget of 1 s. Writes into a fresh --out each call (the temporary store of an
out-less call is cleaned up in the background and would be counted by the next call).

Run: python benchmarks/bench_call_overhead.py [--cells 10] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(tempfile.gettempdir()) / "sctranslator-numba-cache"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import anndata as ad  # noqa: E402
from datafiles import DATASETS  # noqa: E402

import sctranslator  # noqa: E402
from sctranslator.engine.backends import Batch, TorchBackend  # noqa: E402
from sctranslator.engine.block_runner import BlockRunner  # noqa: E402
from sctranslator.engine.sources import open_source  # noqa: E402
from sctranslator.plan import build_plan  # noqa: E402

PROTEINS = ["CD3", "CD4", "CD8a", "CD14", "CD16", "CD19"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = sctranslator.load_model("demo")
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "cells.h5ad"
        ad.read_h5ad(DATASETS / "pbmc10k_cite_10x" / "rna.h5ad")[:args.cells].copy().write_h5ad(data)
        options = {"allow_empty_cells": True, "quiet": True, "normalize": "total_log1p"}
        sctranslator.translate(data, model, PROTEINS, out=Path(folder) / "warm.zarr", **options)
        totals = []
        for i in range(args.repeats):
            started = time.perf_counter()
            sctranslator.translate(data, model, PROTEINS, out=Path(folder) / f"run{i}.zarr", **options)
            totals.append(time.perf_counter() - started)
        source = open_source(str(data))
        plan = build_plan(source.var, model, PROTEINS, normalize="total_log1p")
        _, values = BlockRunner(source, plan, allow_empty_cells=True).read_prepared(0, args.cells)
        batch = Batch(values, plan.gene_ids, plan.position_real, plan.protein_windows, plan.protein_window_mask)
        backend = TorchBackend(model)
        backend.predict(batch)
        forwards = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            backend.predict(batch)
            forwards.append(time.perf_counter() - started)
    total, forward = statistics.median(totals), statistics.median(forwards)
    print(f"| `translate`, {args.cells} cells, demo model, model loaded once | median s |")
    print("| --- | ---: |")
    print(f"| whole call | {total:.3f} |")
    print(f"| the model's forward on those cells | {forward:.3f} |")
    print(f"| fixed cost per call (budget 1 s) | {total - forward:.3f} |")


if __name__ == "__main__":
    main()
