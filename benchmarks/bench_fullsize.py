"""Full-size model, side by side with a plain reference forward, on the same real cells in one process.

The reference is what the original code does per cell: the whole model's forward in eager fp32 at
batch 1, padding computed like any other token (`TranslatorModel.forward`). Against it, each of our
backends on the same prepared cells. Printed: marginal seconds per cell (median over cells, the
model loaded once), the ratio to the reference, the max relative error against it, and peak RSS.

Inputs (from the project's shared data; pass --shared): ECCITE-seq PBMCs (19.5k genes, 16.2k map),
10x PBMC 4k HVGs (3.7k map: 16.3k of the 20k positions are padding), with 10 proteins; and ECCITE
with 2,500 proteins (three decoder windows).

Run: python benchmarks/bench_fullsize.py [--cells 3] [--shared ../shared] [--backends torch,onnxruntime]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(tempfile.gettempdir()) / "sctranslator-numba-cache"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sctranslator.engine.backends import Batch, OnnxRuntimeBackend, TorchBackend  # noqa: E402
from sctranslator.engine.backends.base import BackendSpec  # noqa: E402
from sctranslator.engine.backends.onnx_cache import onnx_file_for  # noqa: E402
from sctranslator.engine.blocks import BlockRunner  # noqa: E402
from sctranslator.engine.sources import open_source  # noqa: E402
from sctranslator.model import ModelConfig, TranslatorModel  # noqa: E402
from sctranslator.plan import build_plan  # noqa: E402
from sctranslator.vocab import map_proteins, token_symbols  # noqa: E402

TEN = ["CD3", "CD4", "CD8a", "CD14", "CD16", "CD19", "CD45RA", "PD-1", "TIGIT", "CD127"]


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def prepared(path: Path, model: TranslatorModel, proteins: list[str], cells: int) -> tuple[Batch, int]:
    source = open_source(str(path))
    plan = build_plan(source.var, model, proteins, allow_low_coverage=True)
    _, values = BlockRunner(source, plan, allow_empty_cells=True).read_prepared(0, cells)
    batch = Batch(values, plan.gene_ids, plan.position_real, plan.protein_windows, plan.protein_window_mask)
    return batch, int(plan.position_real.sum())


def one_cell(batch: Batch, i: int) -> Batch:
    return Batch(batch.values[i:i + 1], batch.gene_ids, batch.gene_mask, batch.protein_ids, batch.protein_mask)


@torch.inference_mode()
def reference(model: TranslatorModel, batch: Batch) -> np.ndarray:
    """The original's way: the whole forward per window, batch 1, no collapse."""
    values = torch.from_numpy(batch.values)
    genes = torch.from_numpy(batch.gene_ids)[None]
    mask = torch.from_numpy(batch.gene_mask)[None]
    out = [model(values, genes, torch.from_numpy(batch.protein_ids[w])[None], mask,
                 torch.from_numpy(batch.protein_mask[w])[None]) for w in range(batch.protein_ids.shape[0])]
    return torch.cat(out, dim=1).numpy()


def timed(run, batch: Batch, cells: int) -> tuple[float, np.ndarray]:
    run(one_cell(batch, 0))  # warm-up (allocators, kernels)
    times, outputs = [], []
    for i in range(cells):
        start = time.perf_counter()
        outputs.append(run(one_cell(batch, i)))
        times.append(time.perf_counter() - start)
    return statistics.median(times), np.concatenate(outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=3)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    parser.add_argument("--backends", default="torch,onnxruntime")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = TranslatorModel(ModelConfig()).eval()
    data = args.shared / "data"
    candidates = [str(s) for s in token_symbols(np.arange(1, 4000)) if s]
    mapped = map_proteins(candidates, strict=False)
    all_proteins = [n for n, status in zip(candidates, mapped.status, strict=True) if status == "mapped"][:2500]
    cases = [("ECCITE PBMC, 10 proteins", data / "pbmc_eccite_mimitou2019" / "rna.h5ad", TEN),
             ("10x PBMC 4k HVGs, 10 proteins", data / "pbmc10k_cite_10x" / "rna.h5ad", TEN),
             ("ECCITE PBMC, 2,500 proteins", data / "pbmc_eccite_mimitou2019" / "rna.h5ad", all_proteins)]
    backends = args.backends.split(",")
    runners = {}
    if "torch" in backends:
        runners["torch fp32 (collapse)"] = TorchBackend(model).predict
    if "onnxruntime" in backends:
        with tempfile.TemporaryDirectory() as cache:
            onnx = onnx_file_for(BackendSpec(kind="onnxruntime", model=model, onnx_cache_dir=cache), model)
            session = OnnxRuntimeBackend(onnx, threads=args.threads)
            # The session holds the graph in memory; the file may go.
        runners["onnxruntime fp32"] = session.predict
    print(f"full-size model ({model.n_parameters():,} parameters), {args.threads} threads, "
          f"median of {args.cells} cells, marginal seconds per cell\n")
    print("| input | mapped genes | reference s/cell | " + " | ".join(f"{name} s/cell (x)" for name in runners)
          + " | max rel. error |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in runners) + " | --- |")
    for label, path, proteins in cases:
        batch, mapped = prepared(path, model, proteins, args.cells)
        ref_time, ref_out = timed(lambda b: reference(model, b), batch, args.cells)
        cells, worst = [], 0.0
        for run in runners.values():
            seconds, out = timed(run, batch, args.cells)
            worst = max(worst, float(np.abs(out - ref_out).max() / np.abs(ref_out).max()))
            cells.append(f"{seconds:.2f} ({ref_time / seconds:.1f}x)")
        print(f"| {label} | {mapped:,} | {ref_time:.2f} | " + " | ".join(cells) + f" | {worst:.1e} |")
    print(f"\npeak RSS of the whole run: {peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
