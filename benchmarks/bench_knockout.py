"""One knockout forward against one translate forward on the same batch of real cells.

For each model, the same block of real cells (10x PBMC, committed test data) is computed three ways,
interleaved, each repeated; printed are medians of seconds per forward (one batch through the model):
- translate: `engine.pipeline.predict_block` (read, prepare, forward the block batch by batch), divided by
  its batches: the plain reference of this run;
- knockout: `KnockoutJob.compute` on the same block (one unperturbed pass plus one per gene: each gene's
  cells re-prepared and forwarded with that gene's layout), divided by (genes + 1) x batches;
- knockout as before: the same knockout block through a torch backend without the engine's threads rule
  (knockout built its own `TorchBackend` before it moved onto the block pipeline).
The ratio is knockout / translate (1.00 = the same cost per forward).

Models: the bundled demo model (a fixed panel of 3,738 genes, no padding) and a larger random-weight
configuration (dim 32, L = 20,000 published layout with padding collapse, drop semantics shifting the
genes). Run: python benchmarks/bench_knockout.py [--cells 32] [--genes 10] [--repeats 3] [--models both]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(tempfile.gettempdir()) / "sctranslator-numba-cache"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import anndata as ad  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from datafiles import DATASETS  # noqa: E402

import sctranslator  # noqa: E402
from sctranslator.analysis.knockout.gene_columns import default_semantics, knockout_variants  # noqa: E402
from sctranslator.analysis.knockout.knockout_job import KnockoutJob  # noqa: E402
from sctranslator.engine.job_sizing import local_execution  # noqa: E402
from sctranslator.engine.pipeline import BlockJob, predict_block  # noqa: E402
from sctranslator.engine.sources import open_source  # noqa: E402
from sctranslator.model import ModelConfig, TranslatorModel  # noqa: E402
from sctranslator.plan import build_plan  # noqa: E402

PROTEINS = ["CD3", "CD4", "CD8a", "CD14", "CD16", "CD19"]


def models(which: str) -> list[tuple[str, TranslatorModel]]:
    found = []
    if which in ("demo", "both"):
        found.append(("demo (panel, L = 3,738)", sctranslator.load_model("demo")))
    if which in ("larger", "both"):
        torch.manual_seed(0)
        larger = TranslatorModel(ModelConfig.sized(dim=32, enc_depth=2, enc_heads=4, enc_dim_head=16, dec_depth=1,
                                                   dec_heads=4, dec_dim_head=16)).eval()
        found.append(("dim 32, L = 20,000 (collapsed)", larger))
    return found


def measure(name: str, model: TranslatorModel, rna: ad.AnnData, cells: int, n_genes: int, repeats: int) -> str:
    source = open_source(rna)
    normalize = "total_log1p" if model.panel else None
    plan = build_plan(source.var, model, PROTEINS, normalize=normalize)
    genes = [str(rna.var_names[c]) for c in np.flatnonzero(plan.column_slot >= 0)[:n_genes]]
    semantics = default_semantics(plan)
    variants = knockout_variants(source.var, model, plan, genes, semantics)
    execution = local_execution(model, plan, cells, block_cells=cells, passes=len(variants) + 1)
    batch = execution.batch_size
    common = {"source": source, "plan": plan, "backend": execution.spec, "sink": None, "batch_size": batch,
              "allow_empty_cells": True, "flop_per_cell": execution.flop_per_cell}
    translate = BlockJob(**common)
    knockout = KnockoutJob(**common, variants=variants, codes=np.zeros(cells, dtype=np.int64), n_slots=1)
    # Before: a backend without the threads rule, as knockout built its own TorchBackend (Numba's kernels
    # then reset torch's threads to every core).
    before = KnockoutJob(**{**common, "backend": dataclasses.replace(execution.spec, threads=None)},
                         variants=variants, codes=np.zeros(cells, dtype=np.int64), n_slots=1)
    batches = -(-cells // batch)
    passes = len(variants) + 1
    times: dict[str, list[float]] = {"translate": [], "knockout": [], "before": []}
    predict_block(translate, 0, cells)  # warm: backends, collapses, kernels
    knockout.compute(0, cells)
    for _ in range(repeats):
        started = time.perf_counter()
        predict_block(translate, 0, cells)
        times["translate"].append((time.perf_counter() - started) / batches)
        started = time.perf_counter()
        knockout.compute(0, cells)
        times["knockout"].append((time.perf_counter() - started) / (batches * passes))
        started = time.perf_counter()
        before.compute(0, cells)
        times["before"].append((time.perf_counter() - started) / (batches * passes))
    median = {k: statistics.median(v) for k, v in times.items()}
    return (f"| {name} | {semantics}, {len(variants)} genes | {batch} | {median['translate']:.4f} | "
            f"{median['knockout']:.4f} | {median['knockout'] / median['translate']:.2f} | "
            f"{median['before']:.4f} | {median['before'] / median['translate']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=32)
    parser.add_argument("--genes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", choices=("demo", "larger", "both"), default="both")
    args = parser.parse_args()
    rna = ad.read_h5ad(DATASETS / "pbmc10k_cite_10x" / "rna.h5ad")[:args.cells].copy()
    print("| model | knockout | batch | translate s/forward | knockout s/forward | ratio | before s/forward | "
          "before ratio |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, model in models(args.models):
        print(measure(name, model, rna, args.cells, args.genes, args.repeats), flush=True)


if __name__ == "__main__":
    main()
