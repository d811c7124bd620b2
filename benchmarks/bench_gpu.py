"""GPU check: throughput, peak GPU memory and agreement of the full-size model, and a 1M-cell engine run.

Prints one markdown table (and writes it to --out): for the full-size model (ModelConfig()
defaults, random weights) on real cells from tests/data, cells/s and peak GPU memory
(torch.cuda.max_memory_allocated) per backend x precision x batch size x input layout, each row
with its agreement against a plain reference forward (TranslatorModel.forward, eager fp32, no
padding collapse) on the same cells: max relative error and the lowest per-protein Pearson r
across cells. Then the tiny demo model through the real engine (`translate`) on a tiled real
dataset of up to 1M cells, its size bounded by the time budget.

Layouts: ECCITE-seq PBMCs (19.5k genes, 16.2k map: N = 16.2k encoder tokens after the padding
collapse), 10x PBMC 4k HVGs (3.7k map), and the ECCITE cells with the collapse off (all L = 20,000
positions computed, as the original does).

Every part runs against a deadline (--budget-s): a part that would not fit is listed as skipped.
`--dry-run` (or SCT_GPU_CHECK_CPU=1) runs the same code on CPU with a narrow model and small sizes.

Run: python benchmarks/bench_gpu.py [--dry-run] [--budget-s 420] [--out table.md]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(tempfile.gettempdir()) / "sctranslator-numba-cache"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sctranslator.engine.backends.base import BackendSpec, Batch  # noqa: E402
from sctranslator.engine.backends.device_memory import forward_memory  # noqa: E402
from sctranslator.engine.backends.selection import create_backend  # noqa: E402
from sctranslator.engine.backends.torch_backend import TorchBackend  # noqa: E402
from sctranslator.engine.block_runner import BlockRunner  # noqa: E402
from sctranslator.engine.sources import open_source  # noqa: E402
from sctranslator.graph.token_layout import TokenLayout  # noqa: E402
from sctranslator.model import ModelConfig, TranslatorModel  # noqa: E402
from sctranslator.plan import build_plan  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "datasets"
TEN = ["CD3", "CD4", "CD8a", "CD14", "CD16", "CD19", "CD45RA", "PD-1", "TIGIT", "CD127"]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
COLUMNS = ("part", "backend", "precision", "input (encoder tokens)", "batch", "cells/s", "peak GPU GiB",
           "max rel err vs reference", "min per-protein r", "note")


@dataclass
class Inputs:
    """Prepared real cells of one dataset and the plan's layout."""

    name: str
    batch: Batch  # all prepared cells
    output_index: np.ndarray
    tokens: int  # encoder tokens with the collapse
    collapse: bool = True


@dataclass
class Report:
    rows: list[tuple[str, ...]] = field(default_factory=list)
    deadline: float = 0.0

    def add(self, *cells: object) -> None:
        row = tuple("" if c is None else str(c) for c in cells)
        self.rows.append(row + ("",) * (len(COLUMNS) - len(row)))
        print("  " + " | ".join(row), flush=True)

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def table(self) -> str:
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


def environment() -> tuple[str, str]:
    """(one line describing the machine, the device to use: cuda or cpu)."""
    parts = [f"torch {torch.__version__}", f"CUDA available: {torch.cuda.is_available()}"]
    device = "cpu"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        parts.append(f"{torch.cuda.device_count()} x {props.name} ({props.total_memory / 2**30:.0f} GiB)")
        device = "cuda"
    try:
        import onnxruntime as ort

        parts.append(f"onnxruntime {ort.__version__} providers {','.join(ort.get_available_providers())}")
    except ImportError:
        parts.append("onnxruntime not installed")
    return "; ".join(parts), device


def prepared(path: Path, model: TranslatorModel, cells: int | None = None) -> Inputs:
    source = open_source(str(path))
    plan = build_plan(source.var, model, TEN, allow_low_coverage=True)
    stop = source.n_obs if cells is None else min(cells, source.n_obs)
    _, values = BlockRunner(source, plan, allow_empty_cells=True).read_prepared(0, stop)
    batch = Batch(values.copy(), plan.gene_ids, plan.position_real, plan.protein_windows, plan.protein_window_mask)
    tokens = TokenLayout.for_layout(plan.gene_ids, plan.position_real).tokens
    return Inputs(path.parent.name, batch, plan.output_index, tokens)


def tiled(batch: Batch, cells: int, offset: int = 0) -> Batch:
    """`cells` cells: the real ones repeated (their order shifted by `offset`) up to the size asked."""
    rows = (np.arange(cells) + offset) % batch.values.shape[0]
    return Batch(np.ascontiguousarray(batch.values[rows]), batch.gene_ids, batch.gene_mask, batch.protein_ids,
                 batch.protein_mask)


def chunks(batch: Batch, size: int) -> list[Batch]:
    return [Batch(batch.values[lo:lo + size], batch.gene_ids, batch.gene_mask, batch.protein_ids, batch.protein_mask)
            for lo in range(0, batch.values.shape[0], size)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.inference_mode()
def reference_forward(model: TranslatorModel, batch: Batch, device: str, chunk: int) -> np.ndarray:
    """The plain reference: TranslatorModel.forward, eager fp32, every position computed, per window."""
    model = model.to(device)
    out = []
    for lo in range(0, batch.values.shape[0], chunk):
        values = torch.from_numpy(batch.values[lo:lo + chunk]).to(device)
        size = values.shape[0]
        genes = torch.from_numpy(batch.gene_ids).to(device).expand(size, -1)
        mask = torch.from_numpy(batch.gene_mask).to(device).expand(size, -1)
        windows = [model(values, genes, torch.from_numpy(batch.protein_ids[w]).to(device).expand(size, -1), mask,
                         torch.from_numpy(batch.protein_mask[w]).to(device).expand(size, -1)).float().cpu()
                   for w in range(batch.protein_ids.shape[0])]
        out.append(torch.cat(windows, dim=1).numpy())
    return np.concatenate(out)


def agreement(got: np.ndarray, reference: np.ndarray) -> tuple[str, str]:
    """(max relative error, lowest per-protein Pearson r across cells) as table cells. The r cell also
    gives the reference's smallest across-cell spread (std / |mean|) of a protein: with random weights
    predictions barely vary across cells, and r then measures rounding against a tiny signal."""
    error = float(np.abs(got - reference).max() / max(np.abs(reference).max(), 1e-30))
    columns = [j for j in range(reference.shape[1]) if reference[:, j].std() > 0]
    if not columns:
        return f"{error:.1e}", "n/a"
    r = min(np.corrcoef(got[:, j], reference[:, j])[0, 1] for j in columns)
    spread = min(reference[:, j].std() / max(abs(reference[:, j].mean()), 1e-30) for j in columns)
    return f"{error:.1e}", f"{r:.5f} (spread {spread:.0e})"


def torch_backend(model: TranslatorModel, device: str, precision: str, collapse: bool) -> tuple[TorchBackend, str]:
    """The torch backend at `precision` (sctranslator.model.precision). Returns (backend, note)."""
    spec = BackendSpec(kind="torch", model=model, device=device, precision=precision,
                       options={"collapse_padding": collapse})
    return create_backend(spec), ""


def throughput(backend: TorchBackend, inputs: Inputs, size: int, device: str, seconds: float
               ) -> tuple[float, float]:
    """(cells/s, peak GPU GiB) through the engine's path (predict_batches: staged, pipelined) with
    batches of `size` cells, timed for about `seconds` after a warm-up batch."""
    warm = tiled(inputs.batch, size)
    list(backend.predict_batches([warm]))
    sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    batches = [tiled(inputs.batch, size, offset=i) for i in range(4)]
    cells, started = 0, time.perf_counter()
    while True:
        for _ in backend.predict_batches(batches):
            cells += size
        sync(device)
        elapsed = time.perf_counter() - started
        if elapsed >= seconds or cells >= 50_000:
            break
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    return cells / elapsed, peak


def full_size_part(report: Report, model: TranslatorModel, layouts: list[Inputs], device: str, sizes: list[int],
                   precisions: list[str], seconds: float, agree_cells: int) -> None:
    for inputs in layouts:
        label = f"{inputs.name} ({inputs.tokens if inputs.collapse else model.config.max_genes})"
        cells = tiled(inputs.batch, min(agree_cells, inputs.batch.values.shape[0]))
        if report.left() < 30:
            report.add("full-size", "torch", "all", label, "", "", "", "", "", "skipped: time budget")
            continue
        reference = reference_forward(model, cells, device, chunk=4)[:, inputs.output_index]
        for precision in precisions:
            if report.left() < 20:
                report.add("full-size", "torch", precision, label, "", "", "", "", "", "skipped: time budget")
                continue
            try:
                backend, note = torch_backend(model, device, precision, inputs.collapse)
                got = np.concatenate([p for p, _ in backend.predict_batches(chunks(cells, 8))])[:, inputs.output_index]
                error, pearson = agreement(got, reference)
                auto = backend.cells_per_call(tiled(inputs.batch, 1))
                modelled = forward_memory(model.config, inputs.tokens if inputs.collapse else model.config.max_genes,
                                          precision).per_cell
                for size in sizes + ([auto] if auto and auto not in sizes else []):
                    tag = f"{size} (auto)" if size == auto else str(size)
                    if auto is not None and size > auto:
                        report.add("full-size", "torch", precision, label, tag, "", "", error, pearson,
                                   f"not run: over the free-memory size ({auto})")
                        continue
                    if report.left() < seconds + 10:
                        report.add("full-size", "torch", precision, label, tag, "", "", error, pearson,
                                   "skipped: time budget")
                        continue
                    try:
                        rate, peak = throughput(backend, inputs, size, device, seconds)
                        model_gib = modelled * size / 2**30
                        report.add("full-size", "torch", precision, label, tag, f"{rate:,.0f}", f"{peak:.2f}",
                                   error, pearson, "; ".join(filter(None, [note, f"modelled {model_gib:.2f} GiB"])))
                    except torch.cuda.OutOfMemoryError:
                        torch.cuda.empty_cache()
                        report.add("full-size", "torch", precision, label, tag, "", "", error, pearson, "OOM")
                backend.close()
                del backend
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
            except Exception as error:  # one failed configuration must not lose the others' rows
                traceback.print_exc()
                report.add("full-size", "torch", precision, label, "", "", "", "", "",
                           f"failed: {type(error).__name__}: {str(error)[:120]}")


def onnxruntime_part(report: Report, model: TranslatorModel, inputs: Inputs, device: str, precisions: list[str],
                     sizes: list[int], seconds: float, agree_cells: int, cache: Path) -> None:
    try:
        import onnxruntime as ort
    except ImportError:
        report.add("full-size", "onnxruntime", "all", "", "", "", "", "", "", "skipped: onnxruntime not installed")
        return
    providers = ort.get_available_providers()
    reference_device = device
    label = f"{inputs.name} ({inputs.tokens})"
    where = "CUDA provider" if device.startswith("cuda") else "CPU provider"
    if device.startswith("cuda") and "CUDAExecutionProvider" not in providers:
        report.add("full-size", "onnxruntime", "all", label, "", "", "", "", "",
                   f"CUDA skipped: onnxruntime {ort.__version__} has no CUDAExecutionProvider "
                   f"({', '.join(providers)}); install onnxruntime-gpu. Agreement below on its CPU provider")
        device, where, precisions, sizes = "cpu", "CPU provider, agreement only", ["fp32"], []
    cells = tiled(inputs.batch, min(agree_cells, inputs.batch.values.shape[0]))
    reference = reference_forward(model, cells, reference_device, chunk=4)[:, inputs.output_index]
    for precision in precisions:
        if report.left() < 90:  # exporting the full-size graph takes tens of seconds
            report.add("full-size", "onnxruntime", precision, label, "", "", "", "", "", "skipped: time budget")
            continue
        try:
            started = time.perf_counter()
            spec = BackendSpec(kind="onnxruntime", model=model.cpu(), device=device, precision=precision,
                               onnx_cache_dir=str(cache))
            backend = create_backend(spec)
            built = time.perf_counter() - started
            got = backend.predict(cells)[:, inputs.output_index]
            error, pearson = agreement(got, reference)
            if not sizes:
                report.add("full-size", "onnxruntime", precision, label, len(cells.values), "", "", error, pearson,
                           f"{where}; export + session {built:.0f} s")
            for size in sizes:
                if report.left() < seconds + 10:
                    report.add("full-size", "onnxruntime", precision, label, size, "", "", error, pearson,
                               "skipped: time budget")
                    continue
                batch = tiled(inputs.batch, size)
                backend.predict(batch)
                count, begun = 0, time.perf_counter()
                while time.perf_counter() - begun < seconds:
                    backend.predict(batch)
                    count += size
                rate = count / (time.perf_counter() - begun)
                report.add("full-size", "onnxruntime", precision, label, size, f"{rate:,.0f}",
                           "n/a (onnxruntime arena)", error, pearson, f"{where}; export + session {built:.0f} s")
            backend.close()
        except Exception as error:
            traceback.print_exc()
            report.add("full-size", "onnxruntime", precision, label, "", "", "", "", "",
                       f"failed: {type(error).__name__}: {str(error)[:120]}")


def engine_part(report: Report, device: str, target: int, seconds: float) -> None:
    """The demo model through `translate` on the 10x PBMC cells tiled to `target` cells (fewer when the
    rate measured on a first run says the budget would not hold them)."""
    import anndata as ad
    import scipy.sparse as sp

    import sctranslator

    if report.left() < 30:
        report.add("engine", "torch", "fp32", "", "", "", "", "", "", "skipped: time budget")
        return
    base = ad.read_h5ad(DATA / "pbmc10k_cite_10x" / "rna.h5ad")

    def run(cells: int) -> tuple[float, float, dict]:
        copies = -(-cells // base.n_obs)
        x = sp.vstack([base.X] * copies, format="csr")[:cells]
        data = ad.AnnData(x, var=base.var)
        data.obs_names = [f"c{i}" for i in range(cells)]
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            result = sctranslator.translate(data, "demo", device=device, out=Path(tmp) / "p.zarr", quiet=True,
                                            allow_empty_cells=True)
            elapsed = time.perf_counter() - started
            run_stats = dict(result.uns["sctranslator"]["run"])
            settings = dict(result.uns["sctranslator"]["settings"])
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
        return cells / elapsed, peak, {**run_stats, "batch_size": settings["batch_size"]}

    probe = min(target, 20_000)
    rate, _, _ = run(probe)
    cells = int(min(target, max(probe, rate * min(seconds, report.left() - 20))))
    rate, peak, stats = run(cells)
    note = f"translate() end to end, blocks {stats['blocks_computed']}, batch {stats['batch_size']}"
    if cells < target:
        note += f"; {cells:,} of {target:,} cells (time budget)"
    report.add("engine (1M cells)", "torch", "fp32", f"demo model, 10x PBMC tiled to {cells:,} cells", "auto",
               f"{rate:,.0f}", f"{peak:.2f}", "", "", note)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", default=os.environ.get("SCT_GPU_CHECK_CPU") == "1",
                        help="CPU, a narrow model, small sizes: the same code paths (also SCT_GPU_CHECK_CPU=1)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="deadline for the whole run")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per throughput row")
    parser.add_argument("--engine-cells", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    report = Report(deadline=time.perf_counter() + args.budget_s)
    line, device = environment()
    print(line, flush=True)
    if args.dry_run:
        device = "cpu"
        config = ModelConfig.sized(dim=16, enc_heads=2, enc_dim_head=8, dec_heads=2, dec_dim_head=8)
        sizes, seconds, engine_cells, agree = [2, 4], min(args.seconds, 0.5), min(args.engine_cells, 4000), 6
    else:
        if device != "cuda":
            print("no CUDA device visible to PyTorch: nothing to measure (use --dry-run for the CPU path)")
            return 2
        config = ModelConfig()
        sizes, seconds, engine_cells, agree = [16, 64, 256], args.seconds, args.engine_cells, 20
    torch.manual_seed(0)
    model = TranslatorModel(config).eval()
    started = time.perf_counter()
    eccite = prepared(DATA / "pbmc_eccite_mimitou2019" / "rna.h5ad", model)
    hvg = prepared(DATA / "pbmc10k_cite_10x" / "rna.h5ad", model, cells=200)
    full = Inputs(eccite.name + " uncollapsed", eccite.batch, eccite.output_index, eccite.tokens, collapse=False)
    print(f"inputs prepared in {time.perf_counter() - started:.1f} s: {eccite.name} {eccite.tokens} tokens, "
          f"{hvg.name} {hvg.tokens} tokens", flush=True)
    precisions = ["fp32", "fp16", "bf16"]
    full_size_part(report, model, [eccite, hvg, full], device, sizes, precisions, seconds, agree)
    with tempfile.TemporaryDirectory() as cache:
        onnxruntime_part(report, model, eccite, device, ["fp32", "fp16"], sizes[:2], seconds, agree, Path(cache))
    try:
        engine_part(report, device, engine_cells, seconds=60 if not args.dry_run else 5)
    except Exception as error:
        traceback.print_exc()
        report.add("engine (1M cells)", "torch", "fp32", "", "", "", "", "", "",
                   f"failed: {type(error).__name__}: {str(error)[:120]}")
    table = report.table()
    print()
    print(f"GPU check ({'CPU dry run, narrow model' if args.dry_run else 'full-size model, random weights'}); {line}")
    print()
    print(table)
    if args.out:
        args.out.write_text(f"{line}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
