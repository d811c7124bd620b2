"""Full-size model: every backend x precision side by side with plain reference forwards, on the same real cells.

Two references run in the same process on the same prepared cells, both eager fp32 at batch 1 with
padding computed like any other token and the whole model once per protein window:
- "plain reference": the reference model's formulas written out plainly as the original code
  computes them (benchmarks/plain_reference.py), our stand-in for the original implementation;
- "eager model": our own TranslatorModel.forward, the same maths with in-place feature steps.
Against them, each backend x precision. Printed (markdown): marginal seconds per cell (median over
cells, model loaded once), the speed-up against both references, the error against the eager
model (max and median relative error, and the minimum per-protein Pearson r
across the --cells cells); then the cost of 5,000 proteins against 10 per backend; then peak RSS.

Inputs (pass --shared): ECCITE-seq PBMCs (19.5k genes, 16.1k map), 10x PBMC 4k HVGs (3.7k map:
16.3k of the 20k positions are padding).

Run: python benchmarks/bench_fullsize.py [--cells 12] [--scaling-cells 3] [--shared ../shared]
     [--backends torch,onnxruntime] [--precisions fp32,bf16,fp16] [--triton]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(tempfile.gettempdir()) / "sctranslator-numba-cache"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from plain_reference import plain_forward  # noqa: E402

from sctranslator.engine.backends import Batch, TorchBackend  # noqa: E402
from sctranslator.engine.backends.base import BackendSpec  # noqa: E402
from sctranslator.engine.backends.selection import create_backend  # noqa: E402
from sctranslator.engine.block_runner import BlockRunner  # noqa: E402
from sctranslator.engine.sources import open_source  # noqa: E402
from sctranslator.errors import BackendError  # noqa: E402
from sctranslator.model import ModelConfig, TranslatorModel  # noqa: E402
from sctranslator.plan import build_plan  # noqa: E402
from sctranslator.vocab import map_proteins, token_symbols  # noqa: E402

TEN = ["CD3", "CD4", "CD8a", "CD14", "CD16", "CD19", "CD45RA", "PD-1", "TIGIT", "CD127"]
Runner = Callable[[Batch], np.ndarray]


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def many_proteins(count: int) -> list[str]:
    candidates = [str(s) for s in token_symbols(np.arange(1, 8000)) if s]
    mapped = map_proteins(candidates, strict=False)
    return [n for n, status in zip(candidates, mapped.status, strict=True) if status == "mapped"][:count]


def prepared(path: Path, model: TranslatorModel, proteins: list[str], cells: int) -> tuple[Batch, int]:
    source = open_source(str(path))
    plan = build_plan(source.var, model, proteins, allow_low_coverage=True)
    _, values = BlockRunner(source, plan, allow_empty_cells=True).read_prepared(0, cells)
    batch = Batch(values, plan.gene_ids, plan.position_real, plan.protein_windows, plan.protein_window_mask)
    return batch, int(plan.position_real.sum())


def cell(batch: Batch, i: int) -> Batch:
    return Batch(batch.values[i:i + 1], batch.gene_ids, batch.gene_mask, batch.protein_ids, batch.protein_mask)


def per_window(forward: Callable[..., torch.Tensor], model: TranslatorModel) -> Runner:
    """The original's way: the whole forward per protein window, full width, no collapse."""
    @torch.inference_mode()
    def run(batch: Batch) -> np.ndarray:
        size = batch.values.shape[0]
        values = torch.from_numpy(batch.values)
        genes = torch.from_numpy(batch.gene_ids).expand(size, -1)
        mask = torch.from_numpy(batch.gene_mask).expand(size, -1)
        out = [forward(model, values, genes, torch.from_numpy(batch.protein_ids[w]).expand(size, -1), mask,
                       torch.from_numpy(batch.protein_mask[w]).expand(size, -1))
               for w in range(batch.protein_ids.shape[0])]
        return torch.cat(out, dim=1).numpy()
    return run


def timed(run: Runner, batch: Batch, cells: int) -> tuple[float, np.ndarray]:
    run(cell(batch, 0))  # warm-up (allocators, kernels, per-layout preparation)
    times, outputs = [], []
    for i in range(cells):
        start = time.perf_counter()
        outputs.append(run(cell(batch, i)))
        times.append(time.perf_counter() - start)
    return statistics.median(times), np.concatenate(outputs)


def pearson_min(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(axis=0), b - b.mean(axis=0)
    return float(((a * b).sum(axis=0) / np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))).min())


def build_runners(model: TranslatorModel, backends: list[str], precisions: list[str], threads: int,
                  cache: str) -> tuple[dict[str, Runner], dict[str, str]]:
    runners: dict[str, Runner] = {}
    skipped: dict[str, str] = {}
    for kind in backends:
        for precision in precisions:
            name = f"{kind} {precision}"
            try:
                if kind == "torch":
                    runners[name] = TorchBackend(model, precision=precision).predict
                else:
                    spec = BackendSpec(kind=kind, model=model, precision=precision, threads=threads,
                                       onnx_cache_dir=cache)
                    started = time.perf_counter()
                    runners[name] = create_backend(spec).predict
                    print(f"{name}: export and session start {time.perf_counter() - started:.0f} s, "
                          f"peak RSS so far {peak_rss_gb():.2f} GB", flush=True)
            except (BackendError, Exception) as exc:  # report every path that cannot run here, then go on
                skipped[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    return runners, skipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=12, help="cells timed and compared, one per call")
    parser.add_argument("--scaling-cells", type=int, default=3, help="cells for the 10 vs 5,000 proteins table")
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    parser.add_argument("--backends", default="torch,onnxruntime")
    parser.add_argument("--precisions", default="fp32,bf16,fp16")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--triton", action="store_true", help="also time a local tritonserver (needs one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = TranslatorModel(ModelConfig()).eval()
    data = args.shared / "data"
    cases = [("ECCITE PBMC, 10 proteins", data / "pbmc_eccite_mimitou2019" / "rna.h5ad"),
             ("10x PBMC 4k HVGs, 10 proteins", data / "pbmc10k_cite_10x" / "rna.h5ad")]
    with tempfile.TemporaryDirectory() as cache:
        runners, skipped = build_runners(model, args.backends.split(","), args.precisions.split(","),
                                         args.threads, cache)
    references = {"plain reference": per_window(plain_forward, model),
                  "eager model": per_window(lambda m, *a: m(*a), model)}
    print(f"\nfull-size model ({model.n_parameters():,} parameters), {args.threads} threads, median of "
          f"{args.cells} cells, marginal seconds per cell; errors against the eager model on the same cells"
          f" (r: min per-protein Pearson across them)\n")
    print("| input | mapped genes | path | s/cell | x plain reference | x eager model | max rel. err | "
          "median rel. err | min r |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, path in cases:
        batch, mapped = prepared(path, model, TEN, args.cells)
        seconds = {name: timed(run, batch, args.cells) for name, run in references.items()}
        plain_s, (eager_s, exact) = seconds["plain reference"][0], seconds["eager model"]
        scale = np.abs(exact).max()
        for name, (s, _) in seconds.items():
            print(f"| {label} | {mapped:,} | {name} | {s:.2f} | {plain_s / s:.1f}x | {eager_s / s:.1f}x | | | |")
        for name, run in runners.items():
            s, out = timed(run, batch, args.cells)  # one cell per call: memory stays that of one cell
            rel = np.abs(out - exact) / scale
            r = f"{pearson_min(exact, out):.5f}" if args.cells > 2 else ""
            print(f"| {label} | {mapped:,} | {name} | {s:.2f} | {plain_s / s:.1f}x | {eager_s / s:.1f}x | "
                  f"{rel.max():.1e} | {np.median(rel):.1e} | {r} |", flush=True)
    for name, why in skipped.items():
        print(f"\nnot run: {name}: {why}")

    print("\ncost of 5,000 proteins against 10 (ECCITE PBMC, median s/cell)\n")
    print("| path | 10 proteins | 5,000 proteins | ratio |")
    print("| --- | --- | --- | --- |")
    few, _ = prepared(data / "pbmc_eccite_mimitou2019" / "rna.h5ad", model, TEN, args.scaling_cells)
    lots, _ = prepared(data / "pbmc_eccite_mimitou2019" / "rna.h5ad", model, many_proteins(5000), args.scaling_cells)
    fp32 = {name: run for name, run in runners.items() if name.endswith("fp32")}
    for name, run in {"plain reference": references["plain reference"], **fp32}.items():
        a, _ = timed(run, few, args.scaling_cells)
        b, _ = timed(run, lots, args.scaling_cells)
        print(f"| {name} | {a:.2f} | {b:.2f} | {b / a:.2f}x |", flush=True)
    if args.triton:
        triton_scaling(model, few, lots, args)
    print(f"\npeak RSS of the whole run: {peak_rss_gb():.2f} GB")


def triton_scaling(model: TranslatorModel, few: Batch, lots: Batch, args: argparse.Namespace) -> None:
    """The same rows through a local tritonserver (Python backend running the two graphs with
    onnxruntime, and the BLS model calling them: the encoder once per request)."""
    from sctranslator.engine.backends import TritonBackend
    from sctranslator.export.triton import export_triton
    from sctranslator.export.triton_config import ServingSettings
    from sctranslator.export.triton_server import TritonServer

    with tempfile.TemporaryDirectory() as folder:
        repo = Path(folder) / "repo"
        export_triton(model, repo, ServingSettings(name="full", backend="python", intra_op_threads=args.threads),
                      validate=False)
        with TritonServer(repo) as server:
            spec = BackendSpec(kind="triton", model=model, options={"url": server.grpc_url, "model_name": "full"})
            remote = TritonBackend.from_spec(spec)
            a, _ = timed(remote.predict, few, args.scaling_cells)
            b, _ = timed(remote.predict, lots, args.scaling_cells)
            print(f"| triton (local server, python backend) fp32 | {a:.2f} | {b:.2f} | {b / a:.2f}x |", flush=True)
            remote.close()


if __name__ == "__main__":
    main()
