"""Batching across requests in a real tritonserver, read from the server's own statistics, and Triton's
perf_analyzer running on the repository with the --input-data JSON of real prepared cells.

Requests that arrive together and share a gene layout (the same genes in every cell, as every
request of one dataset does) run as one encoder call and one decoder call per protein window of
the client-facing model: fewer executions than requests at 8 requests in flight. Each test calls a
model served under a name only it calls, so no other test's requests move its counters.

perf_analyzer comes from scripts/install_perf_analyzer.sh (`make test` runs it first). Where it
cannot be installed the smoke test is skipped with the reason, except under CI=true, where the
install is part of .ci/run and a missing binary fails the test.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from datafiles import PBMC, TINY_A, data_file
from triton_server import ROOT, _in_ci, running_server

import sctranslator
from sctranslator.engine.backends import Batch, OnnxRuntimeBackend
from sctranslator.export.onnx import export_onnx
from sctranslator.export.perf_data import PreparedCells, client_input_data, prepare_cells, write_input_data
from sctranslator.export.triton import export_triton
from sctranslator.export.triton_config import ServingSettings
from sctranslator.export.triton_server import TritonServer
from sctranslator.graph.contract import INPUTS

pytestmark = pytest.mark.triton

NAME = "batching"
PERF_NAME = "perf"  # the model the perf_analyzer smoke test calls
# 20 proteins: two windows of the tiny model's P=16.
PROTEINS = ["CD3", "CD4", "CD8a", "CD14", "CD16", "CD19", "CD45RA", "PD-1", "TIGIT", "CD127", "CD25", "CD56",
            "CD45RO", "CD28", "CD27", "CD11c", "HLA-DR", "CD15", "CD34", "CD86"]
THREADS, PER_THREAD, CELLS_PER_REQUEST = 8, 3, 4


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("batching")


@pytest.fixture(scope="module")
def onnx_file(workdir: Path) -> Path:
    path = workdir / "tiny_a.onnx"
    export_onnx(sctranslator.load_model(data_file(TINY_A)), path, validation_batch_sizes=(1,))
    return path


@pytest.fixture(scope="module")
def prepared() -> PreparedCells:
    """Real PBMC cells prepared as translate prepares them: one gene layout, two protein windows."""
    model = sctranslator.load_model(data_file(TINY_A))
    return prepare_cells(data_file(PBMC / "rna.h5ad"), model, THREADS * PER_THREAD * CELLS_PER_REQUEST, PROTEINS)


@pytest.fixture(scope="module")
def server(workdir: Path, onnx_file: Path) -> Iterator[TritonServer]:
    # A queue delay long enough that requests sent together are seen together on a busy machine.
    settings = ServingSettings(name=NAME, backend="python", max_batch_size=64, dynamic_batching=True,
                               max_queue_delay_us=20_000, intra_op_threads=1)
    model = sctranslator.load_model(data_file(TINY_A))
    for name in (NAME, PERF_NAME):
        export_triton(model, workdir / "repo", replace(settings, name=name), onnx_path=onnx_file)
    with running_server(workdir / "repo") as running:
        yield running


def model_stats(url: str, model: str) -> tuple[int, int]:
    """(inference_count, execution_count) of `model` from GET /v2/models/<model>/stats (KServe v2)."""
    with urllib.request.urlopen(f"http://{url}/v2/models/{model}/stats", timeout=10) as response:
        (stats,) = json.load(response)["model_stats"]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def settled_stats(url: str, models: list[str], cells: dict[str, int], timeout_s: float = 60.0
                  ) -> dict[str, tuple[int, int]]:
    """The models' statistics once each model's inference_count has reached `cells[model]` and nothing
    has moved for a second (Triton counts a request after answering it)."""
    deadline = time.monotonic() + timeout_s
    counts = {model: model_stats(url, model) for model in models}
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = {model: model_stats(url, model) for model in models}
        if now != counts:
            counts, stable_since = now, time.monotonic()
        elif all(counts[m][0] >= cells.get(m, 0) for m in models) and time.monotonic() - stable_since >= 1.0:
            break
    return counts


def infer(url: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
    import tritonclient.http as http_client

    client = http_client.InferenceServerClient(url, network_timeout=120.0)
    try:
        tensors = []
        for tensor in INPUTS:
            array = np.ascontiguousarray(inputs[tensor.name])
            item = http_client.InferInput(tensor.name, list(array.shape), tensor.triton_type)
            item.set_data_from_numpy(array, binary_data=True)
            tensors.append(item)
        return client.infer(NAME, tensors).as_numpy("predictions")
    finally:
        client.close()


def test_requests_in_flight_that_share_a_layout_run_as_fewer_executions(server: TritonServer, onnx_file: Path,
                                                                         prepared: PreparedCells) -> None:
    inputs = prepared.client_inputs()
    assert inputs["protein_ids"].shape[1] == 32  # two windows of P=16
    requests = THREADS * PER_THREAD
    chunks = [{name: array[i * CELLS_PER_REQUEST:(i + 1) * CELLS_PER_REQUEST] for name, array in inputs.items()}
              for i in range(requests)]
    models = [NAME, f"{NAME}_encoder", f"{NAME}_decoder"]
    before = settled_stats(server.http_url, models, {})
    answers: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def send(thread: int) -> None:
        try:
            start.wait(timeout=60)
            for i in range(thread, requests, THREADS):
                answers[i] = infer(server.http_url, chunks[i])
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(k,)) for k in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    assert sorted(answers) == list(range(requests))
    cells = requests * CELLS_PER_REQUEST
    after = settled_stats(server.http_url, models, {NAME: before[NAME][0] + cells,
                                                    f"{NAME}_decoder": before[f"{NAME}_decoder"][0] + 2 * cells})
    delta = {model.removeprefix(NAME): (after[model][0] - before[model][0], after[model][1] - before[model][1])
             for model in models}

    # Every request answered with its own cells' predictions, in order.
    local = OnnxRuntimeBackend(str(onnx_file), threads=1)
    try:
        batch = prepared.batch
        for i, answer in answers.items():
            rows = slice(i * CELLS_PER_REQUEST, (i + 1) * CELLS_PER_REQUEST)
            expected = local.predict(Batch(batch.values[rows], batch.gene_ids, batch.gene_mask, batch.protein_ids,
                                           batch.protein_mask))
            assert answer.shape == expected.shape
            assert float(np.abs(answer - expected).max() / np.abs(expected).max()) <= 1e-5
    finally:
        local.close()

    # The server's own counters: every cell counted once by the client-facing model, in fewer
    # executions than requests; one encoder call per execution (one layout), one decoder call per
    # window of it, each carrying all the execution's cells.
    bls_cells, bls_executions = delta[""]
    assert bls_cells == cells
    assert 1 <= bls_executions < requests, delta
    assert delta["_encoder"] == (bls_executions, bls_executions), delta  # max_batch_size 0: calls
    assert delta["_decoder"] == (2 * cells, 2 * bls_executions), delta


def require_perf_analyzer() -> Path:
    """The perf_analyzer wrapper, installed with scripts/install_perf_analyzer.sh when missing; skipped
    (failed under CI=true) when it cannot be had."""
    folder = Path(os.environ.get("PERF_ANALYZER_DIR") or Path(sys.prefix) / "perf_analyzer")
    binary = folder / "bin" / "perf_analyzer"
    if binary.exists():
        return binary
    output = ""
    if sys.prefix != sys.base_prefix or os.environ.get("PERF_ANALYZER_DIR"):
        env = dict(os.environ, VENV=sys.prefix, PERF_ANALYZER_DIR=str(folder))
        try:
            done = subprocess.run(["bash", str(ROOT / "scripts" / "install_perf_analyzer.sh")], env=env,
                                  capture_output=True, text=True, timeout=300)
            output = (done.stdout + done.stderr).strip()[-2000:]
        except (OSError, subprocess.TimeoutExpired) as exc:
            output = str(exc)
    if binary.exists():
        return binary
    reason = f"no perf_analyzer at {binary}, even after scripts/install_perf_analyzer.sh: {output}"
    if _in_ci():
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


def _perf_analyzer(binary: Path, model: str, url: str, json_file: Path, batch: int, report: Path,
                   requests: int) -> dict[str, str]:
    """One short perf_analyzer run at concurrency 2; its CSV row (the run must succeed)."""
    done = subprocess.run([str(binary), "-m", model, "-u", url, "-i", "grpc", "-b", str(batch),
                           "--input-data", str(json_file), "--concurrency-range", "2:2",
                           "--measurement-mode", "count_windows", "--measurement-request-count", str(requests),
                           # A smoke test, not a timing: any 3 windows within 11x of each other will do
                           # on a loaded machine (max / min within 1000%).
                           "--stability-percentage", "1000", "--max-trials", "10", "-f", str(report)],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    (row,) = list(csv.DictReader(report.open()))
    assert float(row["Inferences/Second"]) > 0 and float(row["p99 latency"]) > 0
    return row


def test_perf_analyzer_runs_on_real_prepared_cells(server: TritonServer, prepared: PreparedCells,
                                                   tmp_path: Path) -> None:
    """perf_analyzer 2.51 with the JSON of real cells, requests of 4 cells at concurrency 2, no errors, on
    both models: the prepared-input model (`-b 4`, the server counts the cells sent) and the names-in
    model (`-b 1`, entries of 4 cells: counts [4, genes] against its [-1, -1])."""
    binary = require_perf_analyzer()
    data = client_input_data(prepared)
    assert len(data["data"]) == prepared.cells and set(data["data"][0]) == {tensor.name for tensor in INPUTS}
    json_file = write_input_data(tmp_path / "cells.json", data)
    before = settled_stats(server.http_url, [PERF_NAME], {})[PERF_NAME]
    _perf_analyzer(binary, PERF_NAME, server.grpc_url, json_file, 4, tmp_path / "report.csv", 10)
    after = settled_stats(server.http_url, [PERF_NAME], {PERF_NAME: before[0] + 40})[PERF_NAME]
    # At least the measured requests' cells (perf_analyzer also sends warm-up requests).
    assert after[0] - before[0] >= 40 and (after[0] - before[0]) % 4 == 0

    from google.protobuf import json_format

    from sctranslator.export.perf_data import counts_input_data
    from sctranslator.export.triton_config import parse_config

    counts_model = f"{PERF_NAME}_counts"
    text = (server.repo / counts_model / "config.pbtxt").read_text()
    config = json.loads(json_format.MessageToJson(parse_config(text), preserving_proto_field_name=True))
    counts_json = write_input_data(tmp_path / "counts.json", counts_input_data(prepared, config, 4))
    before = settled_stats(server.http_url, [counts_model], {})[counts_model]
    _perf_analyzer(binary, counts_model, server.grpc_url, counts_json, 1, tmp_path / "counts.csv", 5)
    after = settled_stats(server.http_url, [counts_model], {counts_model: before[0] + 15})[counts_model]
    assert after[0] - before[0] >= 15  # requests (one batch item each), measured ones and warm-up


def test_in_process_onnxruntime_without_spinning_gives_the_same_predictions(onnx_file: Path,
                                                                            prepared: PreparedCells) -> None:
    """The perf_analyzer benchmark's second in-process baseline (idle threads not spinning, as the server's
    graph models run) computes the same numbers as the engine's default sessions."""
    batch = prepared.batch
    cells = Batch(batch.values[:8], batch.gene_ids, batch.gene_mask, batch.protein_ids, batch.protein_mask)
    default = OnnxRuntimeBackend(str(onnx_file), threads=2)
    quiet = OnnxRuntimeBackend(str(onnx_file), threads=2, spinning=False)
    try:
        expected, got = default.predict(cells), quiet.predict(cells)
    finally:
        default.close()
        quiet.close()
    assert got.shape == (8, 32) and np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_names_in_model_json_follows_its_config() -> None:
    """perf_analyzer JSON for a `<name>_counts` model: one entry per request of N cells with explicit
    shapes (counts [N, genes], gene_names [genes], protein_names [proteins]; a leading 1 without a batch
    axis); an input it cannot fill is named."""
    from sctranslator.export.perf_data import counts_input_data

    counts = np.arange(12, dtype=np.float32).reshape(4, 3)
    batch = Batch(values=counts, gene_ids=np.arange(3), gene_mask=np.ones(3, bool),
                  protein_ids=np.ones((1, 2), np.int64), protein_mask=np.ones((1, 2), bool))
    cells = PreparedCells(batch=batch, counts=counts, gene_names=["CD3E", "MS4A1", "LYZ"],
                          protein_names=["CD3", "CD19"])
    inputs = [{"name": "counts", "dims": ["-1", "-1"]}, {"name": "gene_names", "dims": ["-1"]},
              {"name": "protein_names", "dims": ["-1"]}]
    requests = counts_input_data(cells, {"max_batch_size": 64, "input": inputs}, cells_per_request=2)["data"]
    assert [entry["counts"] for entry in requests] == [{"content": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "shape": [2, 3]},
                                                       {"content": [6.0, 7.0, 8.0, 9.0, 10.0, 11.0], "shape": [2, 3]}]
    assert all(entry["gene_names"] == {"content": ["CD3E", "MS4A1", "LYZ"], "shape": [3]} for entry in requests)
    assert all(entry["protein_names"] == {"content": ["CD3", "CD19"], "shape": [2]} for entry in requests)
    (whole,) = counts_input_data(cells, {"max_batch_size": 0, "input": inputs}, cells_per_request=4)["data"]
    assert whole["counts"]["shape"] == [1, 4, 3] and whole["gene_names"]["shape"] == [1, 3]
    with pytest.raises(ValueError, match=r"\['scale'\]"):
        counts_input_data(cells, {"input": [*inputs, {"name": "scale", "dims": ["1"]}]})
