"""The names-in Triton model `<name>_counts` (raw counts, gene names, protein names in) against a real server.

The request JSON of the serving guide (docs/guide/export-serving.md) sent with the standard library,
the predictions against `translate` on the same cells; bad requests in one batch each get translate's
named error while the others are answered; requests sharing a gene layout run in fewer executions than
requests.
"""

from __future__ import annotations

import json
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from datafiles import FIXTURES, PBMC, data_file
from triton_server import require_tritonserver, running_server
from tritonclient.grpc import model_config_pb2 as mc

import sctranslator
from sctranslator.errors import CoverageError, UnknownProteinError
from sctranslator.export.onnx import export_onnx
from sctranslator.export.serve import ServeRequest, serve
from sctranslator.export.triton import export_triton
from sctranslator.export.triton_config import ServingSettings, parse_config
from sctranslator.export.triton_counts import DESCRIPTIONS, FACTS_FILE, PACKAGE_DIR, REQUEST_PARAMETERS
from sctranslator.export.triton_counts_model import server_words
from sctranslator.export.triton_reuse import export_mismatch
from sctranslator.export.triton_server import TritonServer, free_port
from sctranslator.model import TranslatorModel

PAGE = Path(__file__).resolve().parents[1] / "docs" / "guide" / "export-serving.md"
NAME = "sctranslator"  # the model name the guide's request names
# 20 proteins: two windows of the tiny model's P=16, the second one padded.
PROTEINS = ["CD3", "CD4", "CD8a", "CD14", "CD16", "CD19", "CD45RA", "PD-1", "TIGIT", "CD127", "CD25", "CD56",
            "CD45RO", "CD28", "CD27", "CD11c", "HLA-DR", "CD15", "CD34", "CD86"]


@pytest.fixture(scope="module")
def tiny_a() -> TranslatorModel:
    return sctranslator.load_model(data_file(FIXTURES / "tiny_a_official.pt"))


@pytest.fixture(scope="module")
def rna() -> ad.AnnData:
    """Real cells that have counts in the tiny model's genes (no empty cells), dense float32."""
    full = ad.read_h5ad(data_file(PBMC / "rna.h5ad"))[:40]
    X = full.X.toarray() if hasattr(full.X, "toarray") else np.asarray(full.X)
    return ad.AnnData(X.astype(np.float32), obs=full.obs[[]], var=full.var[[]])


@pytest.fixture(scope="module")
def repo(tiny_a: TranslatorModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("counts-repo")
    onnx_path = tmp_path_factory.mktemp("onnx") / "tiny_a.onnx"
    export_onnx(tiny_a, onnx_path, validation_batch_sizes=(1,))
    # A long queue delay so that requests sent together are handed to one execute() call.
    export_triton(tiny_a, path, ServingSettings(name=NAME, backend="python", dynamic_batching=True,
                                                max_queue_delay_us=50_000, intra_op_threads=1), onnx_path=onnx_path)
    return path


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[TritonServer]:
    with running_server(repo) as running:
        yield running


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TritonServer, TranslatorModel]]:
    """A server of the demo model (what `sctranslator serve demo` serves), for the guide's request."""
    require_tritonserver()
    demo = sctranslator.load_model("demo")
    path = tmp_path_factory.mktemp("demo-repo")
    export_triton(demo, path, ServingSettings(name=NAME, backend="python", intra_op_threads=1))
    with running_server(path) as running:
        yield running, demo


def guide_request() -> dict:
    """The request JSON the serving guide shows (the block after its counts-request marker)."""
    text = PAGE.read_text()
    match = re.search(r"<!-- counts-request -->\s*```json\n(.*?)```", text, re.S)
    assert match, "docs/guide/export-serving.md lost the names-in request example"
    return json.loads(match.group(1))


def translated(model: TranslatorModel, counts: np.ndarray, genes: list[str], proteins: list[str],
               **allowances: object) -> np.ndarray:
    cells = ad.AnnData(np.asarray(counts, dtype=np.float32), var={"name": genes})
    cells.var_names = genes
    return np.asarray(sctranslator.translate(cells, model, proteins, **allowances).X)


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual.astype(np.float64) - expected).max() / np.abs(expected).max())


def test_export_writes_a_self_describing_names_in_model(repo: Path) -> None:
    directory = repo / f"{NAME}_counts"
    config = parse_config((directory / "config.pbtxt").read_text())
    assert config.backend == "python" and config.max_batch_size == 64
    assert [(t.name, list(t.dims)) for t in config.input] == [("counts", [-1, -1]), ("gene_names", [-1]),
                                                               ("protein_names", [-1])]
    assert [t.data_type for t in config.input] == [mc.TYPE_FP32, mc.TYPE_STRING, mc.TYPE_STRING]
    assert [(t.name, list(t.dims)) for t in config.output] == [("predictions", [-1, -1])]
    assert config.HasField("dynamic_batching") and all(t.allow_ragged_batch for t in config.input)
    for tensor, text in DESCRIPTIONS.items():
        key = f"output.{tensor}" if tensor == "predictions" else f"input.{tensor}"
        assert config.parameters[key].string_value == text
    assert config.parameters["encoder_model"].string_value == f"{NAME}_encoder"
    assert config.parameters["decoder_max_batch_size"].string_value == "64"
    assert {key: config.parameters[f"request.{key}"].string_value for key in REQUEST_PARAMETERS} == REQUEST_PARAMETERS
    facts = json.loads((directory / "1" / FACTS_FILE).read_text())
    assert facts["gene_mapping"] == "original"  # a published checkpoint's
    assert facts["config"]["max_proteins"] == 16 and facts["fingerprint"]
    # The package copy carries the identifier tables: a published checkpoint needs them.
    assert (directory / "1" / PACKAGE_DIR / "vocab" / "data" / "vocab_tables.npz").is_file()
    assert not list((directory / "1" / PACKAGE_DIR).rglob("__pycache__"))


@pytest.mark.triton
def test_guide_request_over_plain_http_matches_translate(demo_server: tuple[TritonServer, TranslatorModel]) -> None:
    """The guide's JSON, parameters included, against the demo model, equals translate with the same allowances."""
    server, demo = demo_server
    body = guide_request()
    assert body["parameters"] == {"allow_low_coverage": True}  # 9 genes of the demo's 3,738-gene panel
    url = f"http://{server.http_url}/v2/models/{NAME}_counts/infer"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.load(response)
    (output,) = answer["outputs"]
    assert output["name"] == "predictions" and output["datatype"] == "FP32"
    predictions = np.asarray(output["data"], dtype=np.float64).reshape(output["shape"])[0]
    inputs = {tensor["name"]: tensor for tensor in body["inputs"]}
    counts = np.asarray(inputs["counts"]["data"], dtype=np.float32).reshape(inputs["counts"]["shape"])[0]
    proteins = inputs["protein_names"]["data"]
    expected = translated(demo, counts, inputs["gene_names"]["data"], proteins, **body["parameters"])
    assert predictions.shape == (counts.shape[0], len(proteins))
    assert relative_error(predictions, expected) <= 1e-5


def _inputs(counts: np.ndarray, genes: list[str], proteins: list[str]) -> list:
    import tritonclient.http as httpclient

    arrays = (np.asarray(counts, dtype=np.float32)[np.newaxis], np.asarray(genes, dtype=object)[np.newaxis],
              np.asarray(proteins, dtype=object)[np.newaxis])  # one request = one batch item
    tensors = [httpclient.InferInput(name, list(array.shape), kind) for name, array, kind in
               zip(("counts", "gene_names", "protein_names"), arrays, ("FP32", "BYTES", "BYTES"), strict=True)]
    for tensor, array in zip(tensors, arrays, strict=True):
        tensor.set_data_from_numpy(array)
    return tensors


def _send_together(server: TritonServer, requests: list) -> list[np.ndarray | str]:
    """Send `requests` (inputs, or (inputs, request parameters)) at once, one connection each; each
    answer's predictions, or its error text."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(server.http_url, concurrency=len(requests), network_timeout=120)
    try:
        pairs = [item if isinstance(item, tuple) else (item, None) for item in requests]
        pending = [client.async_infer(f"{NAME}_counts", inputs, parameters=parameters) for inputs, parameters in pairs]
        answers: list[np.ndarray | str] = []
        for handle in pending:
            try:
                answers.append(handle.get_result().as_numpy("predictions")[0])
            except InferenceServerException as exc:
                answers.append(str(exc))
        return answers
    finally:
        client.close()


def _statistics(server: TritonServer, model: str) -> tuple[int, int]:
    """(requests answered, executions) of `model`, from the server's own statistics."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_url)
    try:
        (stats,) = client.get_inference_statistics(model)["model_stats"]
    finally:
        client.close()
    return int(stats["inference_stats"]["success"]["count"]), int(stats.get("execution_count", 0))


@pytest.mark.triton
def test_bad_requests_get_translates_error_and_the_others_are_answered(server: TritonServer, rna: ad.AnnData,
                                                                      tiny_a: TranslatorModel) -> None:
    genes = list(rna.var_names)
    good = rna.X[:6]
    nan, negative = good.copy(), good.copy()
    nan[1, 3] = np.nan
    negative[2, 5] = -1.0
    requests = {
        "good": _inputs(good, genes, PROTEINS),
        "unknown protein": _inputs(good, genes, ["CD3", "FOOBARPROTEIN"]),
        "nan": _inputs(nan, genes, PROTEINS),
        "negative": _inputs(negative, genes, PROTEINS),
        "shape": _inputs(good[:, :-1], genes, PROTEINS),
        "coverage": _inputs(good[:, :20], [f"nonsense{i}" for i in range(15)] + genes[:5], PROTEINS),
        "good again": _inputs(rna.X[6:9], genes, PROTEINS[:3]),
        "coverage allowed": (_inputs(good[:, :20], [f"nonsense{i}" for i in range(15)] + genes[:5], PROTEINS),
                             {"allow_low_coverage": True, "allow_empty_cells": True}),
        "bad parameter": (_inputs(good, genes, PROTEINS), {"min_coverage": 2}),
    }
    answers = dict(zip(requests, _send_together(server, list(requests.values())), strict=True))
    assert relative_error(answers["good"], translated(tiny_a, good, genes, PROTEINS)) <= 1e-5
    assert relative_error(answers["good again"], translated(tiny_a, rna.X[6:9], genes, PROTEINS[:3])) <= 1e-5
    # The names translate refuses: the same error type and text.
    with pytest.raises(UnknownProteinError) as unknown:
        translated(tiny_a, good, genes, ["CD3", "FOOBARPROTEIN"])
    with pytest.raises(CoverageError) as coverage:
        translated(tiny_a, good[:, :20], [f"nonsense{i}" for i in range(15)] + genes[:5], PROTEINS)
    # The server names its request parameters where translate names CLI flags.
    assert '"allow_low_coverage": true' in server_words(str(coverage.value))
    assert "--allow-low-coverage" not in answers["coverage"]
    allowed = translated(tiny_a, good[:, :20], [f"nonsense{i}" for i in range(15)] + genes[:5], PROTEINS,
                         allow_low_coverage=True, allow_empty_cells=True)
    assert relative_error(answers["coverage allowed"], allowed) <= 1e-5
    expected_errors = {"unknown protein": f"UnknownProteinError: {unknown.value}",
                       "coverage": f"CoverageError: {server_words(str(coverage.value))}",
                       "bad parameter": "InputDataError: request parameter 'min_coverage' must be a number in 0..1",
                       "nan": "BadCellsError: the request's counts, rows 0..5: 1 NaN value(s)",
                       "negative": "BadCellsError: the request's counts, rows 0..5: 1 negative value(s)",
                       "shape": f"InputDataError: counts has shape [1, 6, {len(genes) - 1}]; expected [1, cells, "
                                f"{len(genes)}]"}
    for name, text in expected_errors.items():
        assert isinstance(answers[name], str) and text in answers[name], (name, answers[name])
    # A user error is HTTP 400, not a server fault (500).
    body = {"inputs": [{"name": "counts", "datatype": "FP32", "shape": [1, 1, len(genes)],
                        "data": good[0].tolist()},
                       {"name": "gene_names", "datatype": "BYTES", "shape": [1, len(genes)], "data": genes},
                       {"name": "protein_names", "datatype": "BYTES", "shape": [1, 1], "data": ["FOOBARPROTEIN"]}]}
    request = urllib.request.Request(f"http://{server.http_url}/v2/models/{NAME}_counts/infer", method="POST",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 400 and "UnknownProteinError" in refused.value.read().decode()
    # The stub survived: a later request is answered.
    (after,) = _send_together(server, [_inputs(good[:1], genes, ["CD14"])])
    assert isinstance(after, np.ndarray) and after.shape == (1, 1)


@pytest.mark.triton
def test_requests_sharing_a_gene_layout_run_together(server: TritonServer, rna: ad.AnnData,
                                                     tiny_a: TranslatorModel) -> None:
    genes = list(rna.var_names)
    n_requests = 8
    chunks = [rna.X[4 * k:4 * k + 4] for k in range(n_requests)]
    before = {model: _statistics(server, model) for model in (f"{NAME}_counts", f"{NAME}_encoder")}
    answers = _send_together(server, [_inputs(chunk, genes, PROTEINS) for chunk in chunks])
    after = {model: _statistics(server, model) for model in before}
    expected = translated(tiny_a, rna.X[:4 * n_requests], genes, PROTEINS)
    assert all(isinstance(answer, np.ndarray) for answer in answers)
    assert relative_error(np.concatenate(answers), expected) <= 1e-5
    requests = after[f"{NAME}_counts"][0] - before[f"{NAME}_counts"][0]
    executions = after[f"{NAME}_counts"][1] - before[f"{NAME}_counts"][1]
    encoder_calls = after[f"{NAME}_encoder"][1] - before[f"{NAME}_encoder"][1]
    assert requests == n_requests
    assert executions < n_requests, (executions, n_requests)
    assert encoder_calls == executions  # one gene layout: one encoder call per execution


@pytest.mark.triton
def test_executions_over_the_decoders_max_batch_size_are_split(server: TritonServer, rna: ad.AnnData,
                                                               tiny_a: TranslatorModel) -> None:
    """6 merged requests of 40 cells (240 > 64, the decoder's max_batch_size) and one request of 150 cells."""
    genes = list(rna.var_names)
    big = np.tile(rna.X, (4, 1))[:150]
    answers = _send_together(server, [_inputs(rna.X, genes, PROTEINS) for _ in range(6)])
    (single,) = _send_together(server, [_inputs(big, genes, PROTEINS)])
    expected = translated(tiny_a, big, genes, PROTEINS)
    for answer in [*answers, single]:
        assert isinstance(answer, np.ndarray), answer
    for answer in answers:
        assert relative_error(answer, expected[:40]) <= 1e-5
    assert single.shape == (150, len(PROTEINS)) and relative_error(single, expected) <= 1e-5


def test_an_export_is_reusable_only_for_the_same_model_precision_and_options(repo: Path, tiny_a: TranslatorModel,
                                                                              tmp_path: Path) -> None:
    settings = ServingSettings(name=NAME, backend="python", dynamic_batching=True, max_queue_delay_us=50_000,
                               intra_op_threads=1)
    assert export_mismatch(tiny_a, repo, settings) is None
    assert "config.pbtxt differs" in str(export_mismatch(tiny_a, repo, replace(settings, instances=2)))
    assert "fp16 is asked for" in str(export_mismatch(tiny_a, repo, replace(settings, precision="fp16")))
    other = sctranslator.load_model(data_file(FIXTURES / "tiny_b_official.pt"))
    assert "other weights" in str(export_mismatch(other, repo, settings))
    assert "no earlier export" in str(export_mismatch(tiny_a, tmp_path, settings))
    copy = tmp_path / "copy"
    shutil.copytree(repo, copy)
    (copy / f"{NAME}_counts" / "1" / PACKAGE_DIR / "plan.py").write_text("# edited\n")
    assert "plan.py differs" in str(export_mismatch(tiny_a, copy, settings))


@pytest.mark.triton
def test_serve_reuses_its_export_and_starts_without_exporting(tiny_a: TranslatorModel, tmp_path: Path) -> None:
    require_tritonserver()
    repo = tmp_path / "served"
    for start in ("first", "second"):
        lines: list[str] = []
        ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
        server = serve(ServeRequest(model=tiny_a, repo=repo, **ports), echo=lines.append, block=False)
        assert server is not None
        try:
            assert server.is_ready()
        finally:
            server.stop()
        text = "\n".join(lines)
        if start == "first":
            assert "exporting to" in text and "no earlier export" in text
            encoder = repo / f"{NAME}_encoder" / "1" / "model.onnx"
            written = encoder.stat().st_mtime_ns
        else:
            assert "reusing the Triton repository" in text and "exporting to" not in text
            assert encoder.stat().st_mtime_ns == written
