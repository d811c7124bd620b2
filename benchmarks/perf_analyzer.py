"""Triton's perf_analyzer on an exported sctranslator repository, beside in-process onnxruntime, same run.

benchmarks/perf_analyzer.sh MODEL installs perf_analyzer (scripts/install_perf_analyzer.sh) and
runs this. MODEL is `demo` or a checkpoint / bundle path. Steps:
  1. prepare --cells real cells of --data (tests/data, PBMC 10x) for the model, as `translate` does;
  2. export the Triton repository (Python backend running the ONNX graphs, dynamic batching), and
     write perf_analyzer `--input-data` JSON for the prepared-input model and, when the repository
     has one, the names-in model `<name>_counts`;
  3. start a local tritonserver, check one request against in-process onnxruntime (<= 1e-5);
  4. for each concurrency (1, 2, 4, 8): perf_analyzer at --cells-per-request cells per request
     (the prepared-input model with `-b N`, a batch of N cells; the names-in model with `-b 1`, one
     request holding N cells, its requests/s times N reported as cells/s),
     and in-process onnxruntime (OnnxRuntimeBackend from as many threads, the same cells and cells
     per request, half its time before and half after the Triton runs, as the machine's load
     drifts); print throughput (cells/s), p50 and p99 per request, Triton's share of the
     in-process throughput and the server's cells / executions, with the load average before and after.

Run: benchmarks/perf_analyzer.sh demo [--cells-per-request 8] [--concurrency 1 2 4 8] [--threads N]
     benchmarks/perf_analyzer.sh fullsize-random --cells-per-request 2 --requests 4
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(tempfile.gettempdir()) / "sctranslator-numba-cache"))

import numpy as np  # noqa: E402

import sctranslator  # noqa: E402
from sctranslator.engine.backends import Batch, OnnxRuntimeBackend  # noqa: E402
from sctranslator.export.onnx import export_onnx  # noqa: E402
from sctranslator.export.perf_data import (  # noqa: E402
    PreparedCells,
    client_input_data,
    counts_input_data,
    prepare_cells,
    write_input_data,
)
from sctranslator.export.triton import export_triton  # noqa: E402
from sctranslator.export.triton_config import ServingSettings  # noqa: E402
from sctranslator.export.triton_server import TritonServer  # noqa: E402
from sctranslator.model import ModelConfig, TranslatorModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PBMC_PROTEINS = ["CD3", "CD4", "CD8a", "CD14", "CD15", "CD16", "CD19", "CD25", "CD45RA", "CD45RO", "CD56", "CD127",
                 "PD-1", "TIGIT"]
DEFAULT_DATA = ROOT / "tests" / "data" / "datasets" / "pbmc10k_cite_10x" / "rna.h5ad"


def perf_analyzer_binary() -> Path:
    """The wrapper install_perf_analyzer.sh writes: $PERF_ANALYZER_DIR, else <venv>/perf_analyzer."""
    folder = Path(os.environ.get("PERF_ANALYZER_DIR") or Path(sys.prefix) / "perf_analyzer")
    return folder / "bin" / "perf_analyzer"


@dataclass
class Row:
    model: str
    path: str  # "triton grpc (perf_analyzer)" or "onnxruntime in-process"
    concurrency: int
    cells_per_s: float
    p50_ms: float
    p99_ms: float
    executions: str = ""  # Triton: requests / executions of the model, from perf_analyzer's server stats


def run_perf_analyzer(binary: Path, model: str, url: str, input_json: Path, cells_per_request: int,
                      concurrency: int, interval_ms: int, requests: int, workdir: Path,
                      names_in: bool = False) -> Row:
    """One perf_analyzer measurement; its CSV (-f) read back. Raises RuntimeError with its output.
    The prepared-input model batches cells (`-b cells_per_request`); the names-in model takes a request
    as one batch item holding its cells (`-b 1`, the JSON's entries hold cells_per_request cells)."""
    report = workdir / f"{model}-c{concurrency}.csv"
    per_item = cells_per_request if names_in else 1  # cells per batch item
    command = [str(binary), "-m", model, "-u", url, "-i", "grpc", "-b", "1" if names_in else str(cells_per_request),
               "--input-data", str(input_json), "--concurrency-range", f"{concurrency}:{concurrency}",
               "--stability-percentage", "100", "--max-trials", "8", "-f", str(report), "--verbose-csv"]
    if requests:  # slow models: windows of a request count rather than of a time
        command += ["--measurement-mode", "count_windows", "--measurement-request-count", str(requests)]
    else:
        command += ["--measurement-interval", str(interval_ms)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not report.exists():
        raise RuntimeError(f"perf_analyzer failed ({done.returncode}): {' '.join(command)}\n"
                           f"{(done.stdout + done.stderr)[-3000:]}")
    with report.open() as handle:
        (row,) = list(csv.DictReader(handle))[:1]
    server = next((line.strip() for line in done.stdout.splitlines() if "Execution count" in line), "")
    inference = next((line.strip() for line in done.stdout.splitlines() if "Inference count" in line), "")
    unit = "requests" if names_in else "cells"
    stats = f"{inference.split(':')[-1].strip()} {unit} / {server.split(':')[-1].strip()} exec" if server else ""
    return Row(model, "triton grpc (perf_analyzer)", concurrency, float(row["Inferences/Second"]) * per_item,
               float(row["p50 latency"]) / 1e3, float(row["p99 latency"]) / 1e3, stats)


def in_process(backend: OnnxRuntimeBackend, prepared: PreparedCells, cells_per_request: int, concurrency: int,
               seconds: float) -> tuple[list[float], float]:
    """In-process onnxruntime from `concurrency` threads, each request the next `cells_per_request` cells:
    (latencies in seconds, wall seconds)."""
    batch = prepared.batch
    starts = list(range(0, prepared.cells - cells_per_request + 1, cells_per_request)) or [0]

    def request(i: int) -> Batch:
        lo = starts[i % len(starts)]
        return Batch(batch.values[lo:lo + cells_per_request], batch.gene_ids, batch.gene_mask, batch.protein_ids,
                     batch.protein_mask)

    backend.predict(request(0))  # warm-up
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def loop(offset: int) -> None:
        mine, i = [], offset
        while time.perf_counter() < stop_at or not mine:
            started = time.perf_counter()
            backend.predict(request(i))
            mine.append(time.perf_counter() - started)
            i += concurrency
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, time.perf_counter() - started


def in_process_row(runs: list[tuple[list[float], float]], cells_per_request: int, concurrency: int,
                   label: str) -> Row:
    """One row from in-process runs made before and after the Triton runs (the load drifts meanwhile)."""
    latencies = [latency for run, _ in runs for latency in run]
    wall = sum(seconds for _, seconds in runs)
    ms = np.array(latencies) * 1e3
    return Row("(same graphs)", f"onnxruntime in-process ({label})", concurrency,
               len(latencies) * cells_per_request / wall,
               float(np.percentile(ms, 50)), float(np.percentile(ms, 99)))


def check_served(server: TritonServer, name: str, prepared: PreparedCells, local: OnnxRuntimeBackend,
                 cells: int) -> float:
    """Relative error of one request through the served model against in-process onnxruntime."""
    import tritonclient.http as http_client

    from sctranslator.graph.contract import INPUTS

    inputs = {key: np.ascontiguousarray(value[:cells]) for key, value in prepared.client_inputs().items()}
    client = http_client.InferenceServerClient(server.http_url)
    try:
        tensors = []
        for tensor in INPUTS:
            array = inputs[tensor.name]
            item = http_client.InferInput(tensor.name, list(array.shape), tensor.triton_type)
            item.set_data_from_numpy(array, binary_data=True)
            tensors.append(item)
        served = client.infer(name, tensors).as_numpy("predictions")
    finally:
        client.close()
    batch = prepared.batch
    expected = local.predict(Batch(batch.values[:cells], batch.gene_ids, batch.gene_mask, batch.protein_ids,
                                   batch.protein_mask))
    return float(np.abs(served - expected).max() / max(np.abs(expected).max(), 1e-30))


def load(name: str) -> TranslatorModel:
    """`demo`, a checkpoint / bundle path, or `fullsize-random`: the published architecture (117M parameters)
    with random weights (its throughput is the published checkpoint's; its predictions mean nothing)."""
    if name == "fullsize-random":
        import torch

        torch.manual_seed(0)
        return TranslatorModel(ModelConfig()).eval()
    return sctranslator.load_model(name)


def table(rows: list[Row]) -> str:
    lines = ["| model | path | concurrency | cells/s | p50 ms | p99 ms | % of in-process (default / no spinning) "
             "| server cells / executions |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    # Triton's share of each in-process variant at the same concurrency: default / no spinning.
    local: dict[int, list[float]] = {}
    for r in rows:
        if r.path.startswith("onnxruntime"):
            local.setdefault(r.concurrency, []).append(r.cells_per_s)
    for r in rows:
        share = "" if r.path.startswith("onnxruntime") else " / ".join(
            f"{100 * r.cells_per_s / rate:.0f}%" for rate in local.get(r.concurrency, []))
        rate = f"{r.cells_per_s:,.0f}" if r.cells_per_s >= 100 else f"{r.cells_per_s:.3g}"
        lines.append(f"| {r.model} | {r.path} | {r.concurrency} | {rate} | {r.p50_ms:.1f} | "
                     f"{r.p99_ms:.1f} | {share} | {r.executions} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="demo, a checkpoint / bundle path, or fullsize-random")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="AnnData of real cells (default: tests/data PBMC)")
    parser.add_argument("--proteins", nargs="+", help="proteins to predict (default: the model's panel; for "
                        "fullsize-random the 14 PBMC antibodies)")
    parser.add_argument("--cells", type=int, default=64, help="cells prepared (requests cycle through them)")
    parser.add_argument("--cells-per-request", type=int, default=8)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="onnxruntime intra-op threads, in process and in each Triton graph model")
    parser.add_argument("--queue-delay-us", type=int, default=2000, help="Triton dynamic batcher delay")
    parser.add_argument("--interval-ms", type=int, default=3000, help="perf_analyzer measurement window")
    parser.add_argument("--requests", type=int, default=0,
                        help="perf_analyzer windows of this many requests instead of --interval-ms (slow models)")
    parser.add_argument("--seconds", type=float, default=6.0,
                        help="in-process measuring time per concurrency (half before, half after the Triton runs)")
    parser.add_argument("--name", default="sctranslator", help="the Triton model name")
    parser.add_argument("--workdir", help="keep the repository and JSON here (default: a temporary folder)")
    args = parser.parse_args()

    binary = perf_analyzer_binary()
    if not binary.exists():
        sys.exit(f"no perf_analyzer at {binary}: run scripts/install_perf_analyzer.sh (benchmarks/perf_analyzer.sh "
                 "does) or set PERF_ANALYZER_DIR")
    model = load(args.model)
    print(f"{args.model}: L={model.config.max_genes}, P={model.config.max_proteins}, "
          f"{model.n_parameters():,} parameters; load average before {os.getloadavg()}", flush=True)
    proteins = args.proteins or (PBMC_PROTEINS if args.model == "fullsize-random" else None)
    prepared = prepare_cells(args.data, model, args.cells, proteins)
    workdir_context = tempfile.TemporaryDirectory(prefix="perf-analyzer-") if not args.workdir else None
    workdir = Path(args.workdir or workdir_context.name)  # type: ignore[union-attr]
    workdir.mkdir(parents=True, exist_ok=True)
    repo = workdir / "repo"
    settings = ServingSettings(name=args.name, backend="python",
                               max_batch_size=args.cells_per_request * max(args.concurrency),
                               dynamic_batching=True, max_queue_delay_us=args.queue_delay_us,
                               intra_op_threads=args.threads)
    onnx_file = workdir / "model.onnx"  # in-process and served graphs: the same export
    if not onnx_file.exists():
        export_onnx(model, onnx_file, validation_batch_sizes=(1,))
    export_triton(model, repo, settings, onnx_path=onnx_file, overwrite=True)
    inputs = {args.name: write_input_data(workdir / "prepared.json", client_input_data(prepared))}
    counts_dir = repo / f"{args.name}_counts"
    local = OnnxRuntimeBackend(str(onnx_file), threads=args.threads)
    # The same graphs with idle intra-op threads not spinning, as the server's graph models run them.
    quiet = OnnxRuntimeBackend(str(onnx_file), threads=args.threads, spinning=False)
    rows: list[Row] = []
    try:
        with TritonServer(repo) as server:
            if counts_dir.is_dir():  # the names-in model, when this export writes one
                from google.protobuf import json_format

                from sctranslator.export.triton_config import parse_config

                config = json.loads(json_format.MessageToJson(parse_config((counts_dir / "config.pbtxt").read_text()),
                                                              preserving_proto_field_name=True))
                inputs[counts_dir.name] = write_input_data(workdir / "counts.json",
                                                           counts_input_data(prepared, config,
                                                                             args.cells_per_request))
            error = check_served(server, args.name, prepared, local, args.cells_per_request)
            print(f"served predictions against in-process onnxruntime: {error:.1e} relative", flush=True)
            if error > 1e-5:
                sys.exit(f"the served model disagrees with onnxruntime ({error:.1e} > 1e-5)")
            for concurrency in args.concurrency:
                half = args.seconds / 2
                runs = {label: [in_process(backend, prepared, args.cells_per_request, concurrency, half)]
                        for label, backend in (("default", local), ("no spinning", quiet))}
                served = [run_perf_analyzer(binary, name, server.grpc_url, json_path, args.cells_per_request,
                                            concurrency, args.interval_ms, args.requests, workdir,
                                            names_in=name == counts_dir.name)
                          for name, json_path in inputs.items()]
                for label, backend in (("no spinning", quiet), ("default", local)):
                    runs[label].append(in_process(backend, prepared, args.cells_per_request, concurrency, half))
                added = [in_process_row(runs[label], args.cells_per_request, concurrency, label)
                         for label in ("default", "no spinning")] + served
                rows += added
                for row in added:
                    print(f"  {row}", flush=True)
    finally:
        local.close()
        quiet.close()
        if workdir_context is not None:
            workdir_context.cleanup()
    print(f"\n{os.cpu_count()} CPU cores, load average after {os.getloadavg()}; {args.cells_per_request} cells per "
          f"request; onnxruntime {args.threads} intra-op threads (in process and per Triton graph model); Triton: "
          f"Python backend, 1 instance per model, dynamic batching ({args.queue_delay_us} us)\n")
    print(table(rows))


if __name__ == "__main__":
    main()
