"""Triton serving against in-process onnxruntime: throughput and latency per batch size and concurrency.

For each model (the tiny fixture and a mid-size random model) the same ONNX graph runs
  * in-process: the engine's OnnxRuntimeBackend, called from N threads at once;
  * through Triton: a local tritonserver (Python backend running onnxruntime, dynamic batching)
    and the engine's TritonBackend over gRPC, called from N threads with N requests in flight.
Each cell of the table runs for a fixed time; latency is per request (one batch of cells).

Run: python benchmarks/bench_triton.py [--seconds 3] [--batch-sizes 8 64] [--concurrency 1 2 4 8]
Needs a tritonserver (scripts/install_tritonserver.sh).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(tempfile.gettempdir()) / "sctranslator-numba-cache"))

import numpy as np  # noqa: E402

import sctranslator  # noqa: E402
from sctranslator.engine.backends import BackendSpec, Batch, OnnxRuntimeBackend, TritonBackend  # noqa: E402
from sctranslator.export.triton import export_triton  # noqa: E402
from sctranslator.export.triton_config import ServingSettings  # noqa: E402
from sctranslator.export.triton_server import TritonServer  # noqa: E402
from sctranslator.model import ModelConfig, TranslatorModel  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"


@dataclass
class Result:
    model: str
    backend: str
    batch: int
    concurrency: int
    cells_per_s: float
    p50_ms: float
    p95_ms: float
    requests: int


def mid_model() -> TranslatorModel:
    """A random model between the tiny fixtures and the published size (L=1024, P=64, dim 32)."""
    import torch

    torch.manual_seed(0)
    config = ModelConfig.sized(dim=32, enc_depth=2, dec_depth=2, enc_heads=4, dec_heads=4, enc_dim_head=8,
                               dec_dim_head=8, enc_nb_features=32, dec_nb_features=32, max_genes=1024,
                               max_proteins=64)
    return TranslatorModel(config).eval()


def make_batch(model: TranslatorModel, cells: int, seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    L, P = model.config.max_genes, model.config.max_proteins
    return Batch(values=rng.uniform(0, 1, (cells, L)).astype(np.float32),
                 gene_ids=rng.integers(1, 20_000, L).astype(np.int64), gene_mask=np.ones(L, dtype=bool),
                 protein_ids=rng.integers(1, 20_000, (1, P)).astype(np.int64),
                 protein_mask=np.ones((1, P), dtype=bool))


def measure(predict: Callable[[Batch], np.ndarray], batch: Batch, concurrency: int, seconds: float) -> tuple:
    """Run `predict` from `concurrency` threads for `seconds`; (cells/s, p50 ms, p95 ms, requests)."""
    predict(batch)  # warm-up
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def loop() -> None:
        mine = []
        while time.perf_counter() < stop_at or not mine:
            started = time.perf_counter()
            predict(batch)
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=loop) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    cells = len(latencies) * batch.values.shape[0]
    ms = np.array(latencies) * 1e3
    return cells / wall, float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), len(latencies)


def bench_model(label: str, model: TranslatorModel, args: argparse.Namespace, workdir: Path) -> list[Result]:
    repo = workdir / f"repo-{label}"
    settings = ServingSettings(name=label, backend="python", max_batch_size=max(args.batch_sizes) * 8,
                               dynamic_batching=True, max_queue_delay_us=args.queue_delay_us,
                               intra_op_threads=args.threads)
    exported = export_triton(model, repo, settings)
    local = OnnxRuntimeBackend(str(exported.onnx_path), threads=args.threads)
    results = []
    with TritonServer(repo) as server:
        for batch_size in args.batch_sizes:
            batch = make_batch(model, batch_size)
            reference = local.predict(batch)
            for concurrency in args.concurrency:
                spec = BackendSpec(kind="triton", model=model, options={
                    "url": server.grpc_url, "model_name": label, "max_in_flight": concurrency})
                remote = TritonBackend.from_spec(spec)
                error = float(np.abs(remote.predict(batch) - reference).max() / np.abs(reference).max())
                assert error <= 1e-5, f"Triton and onnxruntime disagree: {error:.2e}"
                for name, backend in (("onnxruntime (in-process)", local), ("triton grpc (python backend)", remote)):
                    rate, p50, p95, n = measure(backend.predict, batch, concurrency, args.seconds)
                    results.append(Result(label, name, batch_size, concurrency, rate, p50, p95, n))
                    print(f"  {label:5s} {name:30s} batch {batch_size:4d} x{concurrency}: {rate:9.1f} cells/s  "
                          f"p50 {p50:8.2f} ms  p95 {p95:8.2f} ms", flush=True)
                remote.close()
    local.close()
    return results


def table(results: list[Result]) -> str:
    lines = ["| model | backend | batch | in flight | cells/s | p50 ms | p95 ms | requests |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        lines.append(f"| {r.model} | {r.backend} | {r.batch} | {r.concurrency} | {r.cells_per_s:,.0f} | "
                     f"{r.p50_ms:.2f} | {r.p95_ms:.2f} | {r.requests} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per table cell")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="onnxruntime intra-op threads")
    parser.add_argument("--queue-delay-us", type=int, default=200, help="Triton dynamic batcher delay")
    parser.add_argument("--models", nargs="+", default=["tiny", "mid"], choices=["tiny", "mid"])
    args = parser.parse_args()
    models = {"tiny": lambda: sctranslator.load_model(SHARED / "fixtures" / "reference_model" / "tiny_a_official.pt"),
              "mid": mid_model}
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-triton-") as workdir:
        for label in args.models:
            model = models[label]()
            print(f"{label}: L={model.config.max_genes}, P={model.config.max_proteins}, "
                  f"{model.n_parameters():,} parameters", flush=True)
            results += bench_model(label, model, args, Path(workdir))
    print(f"\n{os.cpu_count()} CPU cores; onnxruntime {args.threads} intra-op threads (in-process and per Triton "
          f"instance); Triton: 1 instance, dynamic batching ({args.queue_delay_us} us)\n")
    print(table(results))


if __name__ == "__main__":
    main()
