"""What users run: the default `translate` against the original's forward, full-size model, real cells.

Rows per input (ECCITE PBMC, 16.1k mapped genes; 10x PBMC 4k HVGs, 3.7k mapped genes), all on the
same first --cells cells:
- "reference forward": the reference model's formulas written out as the original code computes
  them (benchmarks/plain_reference.py), eager fp32, batch 1, padding computed like any other token,
  the whole model once per protein window: our stand-in for the original implementation;
- "`translate(...)`, no options": the Python API exactly as a user calls it, model loaded once;
- "`translate(..., workers=1)`": the tuned path beside it (one block at a time, all threads);
- "before issue 22's oneDNN products": `translate` with `torch.backends.mkldnn` off, so every
  matrix product runs on `torch.mm` (MKL) as before model/packed_linear.py;
- "before issue 22's streams": `translate` with backend_options cpu_streams=False and
  selected_outputs=False, i.e. one call at a time on every thread and the whole decoder, as the
  default ran before (the same run, so its ratio shows what the change bought under this load;
  its products run through oneDNN like the default's);
- "CLI `sctranslator translate`, no options": the command as a whole process (interpreter start,
  model bundle load, plan, output store), wall seconds over the cells; and the same command once
  started (the compute seconds its run record holds, over the cells), which is what a long job sees.
Seconds per cell are marginal for the API rows: (time of n cells - time of 2 cells) / (n - 2), so
the fixed cost of a call (about 0.7 s: output store, plan, fingerprint) does not count as
per-cell work. Every repetition times the reference and each candidate back to back, and the
speed-ups are medians of the per-repetition ratios, so load from other processes on a shared
machine hits both sides of a ratio alike. Threads and workers are what each run recorded in its
provenance (`uns['sctranslator']['settings']`). Errors are the largest |difference| against the
reference forward's predictions over the largest |prediction|. "cpu s/cell" is the process's CPU
seconds per cell (all threads, marginal like the wall time): on a machine shared with other work it
shows spinning and waiting threads that wall time alone hides. The load average is printed before and
after. With CUDA present the same rows run again with `device="cuda"` (reference forward on the GPU too).

Run: python benchmarks/bench_defaults.py [--cells 6] [--repeats 3] [--shared ../shared] [--no-cli] [--inputs 16k,4k]
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(tempfile.gettempdir()) / "sctranslator-numba-cache"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import anndata as ad  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_fullsize import TEN, cell, per_window, prepared  # noqa: E402
from plain_reference import plain_forward  # noqa: E402

import sctranslator  # noqa: E402
from sctranslator.model import ModelConfig, TranslatorModel  # noqa: E402
from sctranslator.model.bundle import save_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RUNS = itertools.count()  # a fresh output store per run


def settings_of(result: ad.AnnData) -> dict:
    return dict(result.uns.get("sctranslator", {}).get("settings", {}))


def chosen(settings: dict) -> str:
    """threads / streams / workers / batch size as the run recorded them ("?" where it recorded none)."""
    chosen_by_rule = dict(settings.get("parallelism") or {})  # the defaults rule's record (engine/threads.py)
    keys = ("threads", "streams", "workers", "batch_size")
    return " / ".join(str(chosen_by_rule.get(key, settings.get(key, "?"))) for key in keys)


def api_runner(model: TranslatorModel, path: Path, folder: Path, device: str,
               options: dict, onednn: bool = True) -> Callable[[], tuple[float, float, np.ndarray, dict]]:
    """The whole call `translate(path, model, TEN, **options)`: seconds, CPU seconds, predictions, settings.

    `onednn=False`: with `torch.backends.mkldnn` turned off, so every product runs on `torch.mm` (MKL)
    as before issue 22's packed linear layers (model/packed_linear.py)."""
    def run() -> tuple[float, float, np.ndarray, dict]:
        out = folder / f"api{next(RUNS)}.zarr"
        extra = {} if device == "cpu" else {"device": device}
        start, cpu = time.perf_counter(), time.process_time()
        torch.backends.mkldnn.enabled = onednn
        try:
            result = sctranslator.translate(str(path), model, TEN, out=out, **extra, **options)
        finally:
            torch.backends.mkldnn.enabled = True
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        return seconds, cpu, np.asarray(result.X.compute()), settings_of(result)
    return run


def cli_runner(bundle: Path, path: Path, folder: Path, device: str
               ) -> Callable[[], tuple[float, float, np.ndarray, dict, float]]:
    def run() -> tuple[float, float, np.ndarray, dict, float]:
        out = folder / f"cli{next(RUNS)}.zarr"
        command = [sys.executable, "-m", "sctranslator", "translate", str(path), "--model", str(bundle),
                   "--proteins", ",".join(TEN), "--out", str(out)]
        if device != "cpu":
            command += ["--device", device]
        start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        if done.returncode:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
        seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        result = ad.read_zarr(out)
        computing = float(result.uns["sctranslator"]["run"]["seconds"])
        return seconds, cpu, np.asarray(result.X), settings_of(result), computing
    return run


def subset(source: Path, cells: int, target: Path) -> Path:
    data = ad.read_h5ad(source)[:cells].copy()
    data.write_h5ad(target)
    return target


CLI_WHOLE = "CLI `sctranslator translate`, no options (whole process)"
CLI_STARTED = "CLI `sctranslator translate`, no options (once started: its run record's compute seconds)"


def bench_input(label: str, source: Path, model: TranslatorModel, bundle: Path, folder: Path, args: argparse.Namespace,
                device: str) -> list[str]:
    n = args.cells
    many = subset(source, n, folder / f"{label[:5]}-{n}.h5ad")
    # Two cells, not one: a lone cell runs as one call on every thread, two already run as streams, so
    # the difference counts the same kind of work on both sides.
    one = subset(source, 2, folder / f"{label[:5]}-2.h5ad")
    batch, mapped = prepared(many, model, TEN, n)
    reference_model = model if device == "cpu" else _on(model, device)
    reference = per_window(plain_forward, reference_model) if device == "cpu" else _device_reference(reference_model,
                                                                                                    device)
    candidates: dict[str, tuple[Callable, Callable | None]] = {
        "`translate(...)`, no options": (api_runner(model, many, folder, device, {}),
                                         api_runner(model, one, folder, device, {})),
        "`translate(..., workers=1)`": (api_runner(model, many, folder, device, {"workers": 1}),
                                        api_runner(model, one, folder, device, {"workers": 1})),
    }
    if device == "cpu":
        candidates["`translate(...)` before issue 22's oneDNN products (every product on MKL)"] = (
            api_runner(model, many, folder, device, {}, onednn=False),
            api_runner(model, one, folder, device, {}, onednn=False))
        before = {"backend_options": {"cpu_streams": False, "selected_outputs": False}}
        candidates["`translate(...)` before issue 22's streams (one call on all threads, whole decoder)"] = (
            api_runner(model, many, folder, device, before), api_runner(model, one, folder, device, before))
    if args.cli:
        whole, last = cli_runner(bundle, many, folder, device), []

        def whole_run() -> tuple[float, float, np.ndarray, dict]:
            last[:] = [whole()]
            return last[0][:4]

        def started() -> tuple[float, float, np.ndarray, dict]:
            # The same command's own compute time (its run record), so start-up is left out: a difference
            # of two whole commands drowns a few cells' work in start-up jitter. No CPU figure of its own.
            _, _, values, settings, computing = last[0]
            return computing, float("nan"), values, settings

        candidates[CLI_WHOLE] = (whole_run, None)
        candidates[CLI_STARTED] = (started, None)
    reference(cell(batch, 0))  # warm-up
    for run, _ in candidates.values():
        run()
    ref_times: list[float] = []
    ref_cpu: list[float] = []
    per_cell: dict[str, list[float]] = {name: [] for name in candidates}
    cpu_per_cell: dict[str, list[float]] = {name: [] for name in candidates}
    ratios: dict[str, list[float]] = {name: [] for name in candidates}
    outputs: dict[str, np.ndarray] = {}
    recorded: dict[str, dict] = {}
    exact = None
    for _ in range(args.repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        exact = np.concatenate([reference(cell(batch, i)) for i in range(n)])
        ref = (time.perf_counter() - start) / n
        ref_times.append(ref)
        ref_cpu.append((time.process_time() - cpu_start) / n)
        for name, (run_many, run_one) in candidates.items():
            seconds, cpu, outputs[name], recorded[name] = run_many()
            if run_one is not None:
                one_seconds, one_cpu, *_ = run_one()
                seconds, cpu = (seconds - one_seconds) / (n - 2), (cpu - one_cpu) / (n - 2)
            else:
                seconds, cpu = seconds / n, cpu / n
            if seconds > 0:  # a marginal time at or below zero is load noise (another process): not a sample
                per_cell[name].append(seconds)
                cpu_per_cell[name].append(cpu)
                ratios[name].append(ref / seconds)
    assert exact is not None
    exact = exact[:, batch.protein_mask.reshape(-1)]  # the real proteins, as translate writes them
    scale = np.abs(exact).max()
    where = "CUDA" if device != "cpu" else f"{os.cpu_count()} CPU"
    threads = torch.get_num_threads() if device == "cpu" else "-"
    rows = [f"| {label} | {mapped:,} | {where} | reference forward (original's formulas, batch 1, eager) | "
            f"{statistics.median(ref_times):.3f} | {statistics.median(ref_cpu):.3f} | 1.0x | {threads} / 1 / - / 1 | |"]
    for name in candidates:
        error = np.abs(outputs[name] - exact).max() / scale
        timing = (f"{statistics.median(per_cell[name]):.3f} | {statistics.median(cpu_per_cell[name]):.3f} | "
                  f"{statistics.median(ratios[name]):.1f}x" if per_cell[name] else "noise | noise | noise")
        rows.append(f"| {label} | {mapped:,} | {where} | {name} | {timing} | {chosen(recorded[name])} | {error:.1e} |")
    return rows


def _on(model: TranslatorModel, device: str) -> TranslatorModel:
    import copy
    return copy.deepcopy(model).to(device).eval()


def _device_reference(model: TranslatorModel, device: str) -> Callable:
    @torch.inference_mode()
    def run(batch: sctranslator.engine.backends.Batch) -> np.ndarray:
        values = torch.from_numpy(batch.values).to(device)
        genes = torch.from_numpy(batch.gene_ids).to(device).expand(values.shape[0], -1)
        mask = torch.from_numpy(batch.gene_mask).to(device).expand(values.shape[0], -1)
        out = [plain_forward(model, values, genes, torch.from_numpy(batch.protein_ids[w]).to(device)[None],
                             mask, torch.from_numpy(batch.protein_mask[w]).to(device)[None])
               for w in range(batch.protein_ids.shape[0])]
        result = torch.cat(out, dim=1).cpu().numpy()
        torch.cuda.synchronize()
        return result
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=6, help="cells per run (at least 3: marginal s/cell)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions; medians reported")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--no-cli", dest="cli", action="store_false", help="skip the whole-process CLI row")
    parser.add_argument("--inputs", default="16k,4k", help="which inputs: 16k (ECCITE PBMC), 4k (10x PBMC HVGs)")
    args = parser.parse_args()
    if args.cells < 3:
        parser.error("--cells must be at least 3")
    torch.manual_seed(0)
    model = TranslatorModel(ModelConfig()).eval()
    data = args.shared / "data"
    known = {"16k": ("ECCITE PBMC", data / "pbmc_eccite_mimitou2019" / "rna.h5ad"),
             "4k": ("10x PBMC 4k HVGs", data / "pbmc10k_cite_10x" / "rna.h5ad")}
    wanted = [name.strip() for name in args.inputs.split(",") if name.strip()]
    if not wanted or set(wanted) - set(known):
        parser.error(f"--inputs takes a comma-separated subset of {', '.join(known)}")
    cases = [known[name] for name in wanted]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"full-size model ({model.n_parameters():,} parameters, random weights), 10 proteins, first {args.cells} "
          f"cells of each input, {args.repeats} interleaved repetitions; s/cell: median marginal seconds per cell "
          f"(API: model loaded once; CLI: the whole process over the cells); x reference: median of per-repetition "
          f"ratios; threads / streams / workers / batch: as recorded in provenance; load average at the start "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
    print("| input | mapped genes | device | path | s/cell | cpu s/cell | x reference "
          "| threads / streams / workers / batch | max rel. err |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as folder:
        bundle = Path(folder) / "bundle"
        save_model(model, bundle)
        for device in devices:
            for label, path in cases:
                for row in bench_input(label, path, model, bundle, Path(folder), args, device):
                    print(row, flush=True)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
