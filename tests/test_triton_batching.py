"""Batching across requests in a real tritonserver, read from the server's own statistics.

Requests that arrive together and share a gene layout (the same genes in every cell, as every
request of one dataset does) run as one encoder call and one decoder call per protein window of
the client-facing model: fewer executions than requests at 8 requests in flight. The model is
served under a name only this module calls, so no other test's requests move its counters.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from datafiles import PBMC, TINY_A, data_file
from triton_server import running_server

import sctranslator
from sctranslator.engine.backends import Batch, OnnxRuntimeBackend
from sctranslator.export.contract import INPUTS
from sctranslator.export.onnx import export_onnx
from sctranslator.export.perf_data import PreparedCells, prepare_cells
from sctranslator.export.triton import export_triton
from sctranslator.export.triton_config import ServingSettings
from sctranslator.export.triton_server import TritonServer

pytestmark = pytest.mark.triton

NAME = "batching"
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
    export_triton(sctranslator.load_model(data_file(TINY_A)), workdir / "repo", settings, onnx_path=onnx_file)
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
