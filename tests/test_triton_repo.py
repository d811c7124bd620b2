"""Triton model repositories: config.pbtxt parsed back with Triton's own protobuf definitions, the
Python-backend graph model and the BLS model (with a stand-in for Triton's pb_utils), the CLI and
`serve` without a server."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from datafiles import TINY_A, data_file
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

import sctranslator
from sctranslator.errors import CheckpointError, ExportError, OutputConflictError
from sctranslator.export import export_onnx, random_inputs, read_onnx_metadata
from sctranslator.export import serve as serve_module
from sctranslator.export.command import define_export, define_serve
from sctranslator.export.onnx_format import graph_files
from sctranslator.export.onnx_validate import create_graphs, onnx_predictions
from sctranslator.export.triton import BLS_MODEL_SOURCE, LAYOUT_SOURCE, PYTHON_MODEL_SOURCE, export_triton
from sctranslator.export.triton_config import (
    ServingSettings,
    build_configs,
    client_config,
    graph_config,
    model_parameters,
)
from sctranslator.graph.contract import DECODER, ENCODER
from sctranslator.model import TranslatorModel
from sctranslator.model.identity import model_fingerprint

INPUTS = ["values", "gene_ids", "gene_mask", "protein_ids", "protein_mask"]


@pytest.fixture(scope="module")
def tiny_a() -> TranslatorModel:
    return sctranslator.load_model(data_file(TINY_A))


@pytest.fixture(scope="module")
def onnx_file(tiny_a: TranslatorModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "tiny_a.onnx"
    export_onnx(tiny_a, path)
    return path


def parse(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def listing(repo: Path) -> list[str]:
    """The repository's files, without the names-in model's copy of the package (tests/test_triton_counts.py)."""
    return sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file()
                  and "sctranslator" not in p.relative_to(repo).parts[2:3])


def test_onnxruntime_repository_serves_the_graphs_behind_a_bls_model(tiny_a: TranslatorModel, onnx_file: Path,
                                                                     tmp_path: Path) -> None:
    exported = export_triton(tiny_a, tmp_path, ServingSettings(name="tiny"), onnx_path=onnx_file)
    assert exported.config_path == tmp_path / "tiny" / "config.pbtxt"
    assert listing(tmp_path) == [
        "tiny/.sctranslator-output.json", "tiny/1/graph_model.py", "tiny/1/model.py", "tiny/1/token_layout.py",
        "tiny/config.pbtxt",
        "tiny_counts/.sctranslator-output.json", "tiny_counts/1/model.py", "tiny_counts/1/model_facts.json",
        "tiny_counts/config.pbtxt",
        "tiny_decoder/.sctranslator-output.json", "tiny_decoder/1/model.onnx", "tiny_decoder/config.pbtxt",
        "tiny_encoder/.sctranslator-output.json", "tiny_encoder/1/model.onnx", "tiny_encoder/config.pbtxt"]
    encoder_file, decoder_file = graph_files(onnx_file)
    assert (tmp_path / "tiny_encoder" / "1" / "model.onnx").read_bytes() == encoder_file.read_bytes()
    assert (tmp_path / "tiny_decoder" / "1" / "model.onnx").read_bytes() == decoder_file.read_bytes()
    assert (tmp_path / "tiny" / "1" / "model.py").read_text() == BLS_MODEL_SOURCE.read_text()
    assert (tmp_path / "tiny" / "1" / "token_layout.py").read_text() == LAYOUT_SOURCE.read_text()
    assert (tmp_path / "tiny" / "1" / "graph_model.py").read_text() == PYTHON_MODEL_SOURCE.read_text()

    # The client-facing model: today's five inputs and one output, proteins any multiple of P.
    config = parse(exported.config_path)
    assert (config.name, config.backend, config.max_batch_size) == ("tiny", "python", 64)
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("values", mc.TYPE_FP32, [64]), ("gene_ids", mc.TYPE_INT64, [64]), ("gene_mask", mc.TYPE_BOOL, [64]),
        ("protein_ids", mc.TYPE_INT64, [-1]), ("protein_mask", mc.TYPE_BOOL, [-1])]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [("predictions", mc.TYPE_FP32, [-1])]
    assert [(g.kind, g.count) for g in config.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 1)]
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    assert json.loads(parameters["sctranslator.config"]) == json.loads(json.dumps(tiny_a.config.to_dict()))
    assert parameters["sctranslator.max_genes"] == "64" and parameters["sctranslator.max_proteins"] == "16"
    assert parameters["sctranslator.fingerprint"] == model_fingerprint(tiny_a)
    assert parameters["sctranslator.precision"] == "fp32"
    assert (parameters["encoder_model"], parameters["decoder_model"]) == ("tiny_encoder", "tiny_decoder")

    # The encoder: explicit shapes, never batched across requests (its layout inputs are per call).
    encoder = parse(tmp_path / "tiny_encoder" / "config.pbtxt")
    assert (encoder.platform, encoder.backend, encoder.max_batch_size) == ("onnxruntime_onnx", "onnxruntime", 0)
    assert [(t.name, list(t.dims)) for t in encoder.input] == [
        ("values", [-1, -1]), ("gene_ids", [-1, -1]), ("gene_mask", [-1, -1]), ("token_counts", [-1]),
        ("token_positions", [-1])]
    assert [(t.name, list(t.dims)) for t in encoder.output] == [("translated", [-1, 16, tiny_a.config.dim])]
    assert not encoder.HasField("dynamic_batching")
    decoder = parse(tmp_path / "tiny_decoder" / "config.pbtxt")
    assert (decoder.backend, decoder.max_batch_size) == ("onnxruntime", 64)
    assert [(t.name, list(t.dims)) for t in decoder.input] == [
        ("translated", [16, tiny_a.config.dim]), ("protein_ids", [16]), ("protein_mask", [16])]
    for graph in (encoder, decoder):
        assert [(g.kind, g.count) for g in graph.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, 1)]
        assert not graph.optimization.execution_accelerators.gpu_execution_accelerator
    assert read_onnx_metadata(exported.onnx_path)["fingerprint"] == model_fingerprint(tiny_a)


def test_python_backend_repository_with_dynamic_batching(tiny_a: TranslatorModel, onnx_file: Path,
                                                         tmp_path: Path) -> None:
    settings = ServingSettings(name="py", backend="python", max_batch_size=16, instances=2, dynamic_batching=True,
                               preferred_batch_sizes=(4, 8), max_queue_delay_us=250, intra_op_threads=2)
    exported = export_triton(tiny_a, tmp_path, settings, onnx_path=onnx_file)
    for graph in ("py_encoder", "py_decoder"):
        assert (tmp_path / graph / "1" / "model.py").read_text() == PYTHON_MODEL_SOURCE.read_text()
        config = parse(tmp_path / graph / "config.pbtxt")
        assert config.backend == "python" and config.platform == ""
        assert [(g.kind, g.count) for g in config.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 2)]
        assert config.parameters["onnx_file"].string_value == "model.onnx"
        assert config.parameters["intra_op_threads"].string_value == "2"
    assert not parse(tmp_path / "py_encoder" / "config.pbtxt").HasField("dynamic_batching")
    config = parse(exported.config_path)
    assert config.backend == "python" and config.max_batch_size == 16
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    decoder = parse(tmp_path / "py_decoder" / "config.pbtxt")
    assert decoder.max_batch_size == 16 and list(decoder.dynamic_batching.preferred_batch_size) == [4, 8]
    # The decoder's callers wait on it: it merges what is queued but never waits for more.
    assert decoder.dynamic_batching.max_queue_delay_microseconds == 0


def test_dynamic_batching_without_options_is_an_empty_block(tiny_a: TranslatorModel, onnx_file: Path) -> None:
    config = client_config(ServingSettings(dynamic_batching=True), 64, 16, {})
    assert config.HasField("dynamic_batching")
    assert "dynamic_batching {\n}" in text_format.MessageToString(config)


@pytest.mark.parametrize(("precision", "mode"), [("fp32", "FP32"), ("fp16", "FP16"), ("bf16", "FP32")])
def test_tensorrt_uses_the_onnxruntime_backend_accelerator(precision: str, mode: str, onnx_file: Path) -> None:
    parameters = model_parameters(read_onnx_metadata(onnx_file))
    configs = build_configs(ServingSettings(backend="tensorrt", precision=precision), 64, 16, 8, parameters)
    assert sorted(configs) == ["sctranslator", "sctranslator_decoder", "sctranslator_encoder"]
    assert configs["sctranslator"].backend == "python"
    for spec in (ENCODER, DECODER):
        config = configs[f"sctranslator_{spec.role}"]
        assert config == graph_config(ServingSettings(backend="tensorrt", precision=precision), spec, 16, 8,
                                      parameters)
        assert config.backend == "onnxruntime"
        (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
        assert accelerator.name == "tensorrt"
        assert accelerator.parameters["precision_mode"] == mode
        assert int(accelerator.parameters["max_workspace_size_bytes"]) > 0
        assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
        # Round trip through the text format Triton reads.
        assert text_format.Parse(text_format.MessageToString(config), mc.ModelConfig()) == config


@pytest.mark.parametrize(("settings", "message"), [
    (ServingSettings(backend="tensorflow"), "unknown Triton backend"),
    (ServingSettings(backend="tensorrt", kind="cpu"), "GPU only"),
    (ServingSettings(max_batch_size=0), "max-batch-size"),
    (ServingSettings(instances=0), "instances"),
    (ServingSettings(dynamic_batching=True, preferred_batch_sizes=(128,)), "preferred batch sizes"),
    (ServingSettings(preferred_batch_sizes=(4,)), "need --dynamic-batching"),
    (ServingSettings(name="a/b"), "not a valid directory name"),
    (ServingSettings(precision="int8"), "unknown precision"),
])
def test_bad_settings_are_export_errors(settings: ServingSettings, message: str, tiny_a: TranslatorModel,
                                        tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=message):
        export_triton(tiny_a, tmp_path, settings)
    assert not any(tmp_path.iterdir())


def test_reexport_replaces_the_model_directory(tiny_a: TranslatorModel, onnx_file: Path, tmp_path: Path) -> None:
    export_triton(tiny_a, tmp_path, ServingSettings(name="m", backend="python"), onnx_path=onnx_file)
    export_triton(tiny_a, tmp_path, ServingSettings(name="m", backend="onnxruntime"), onnx_path=onnx_file,
                  overwrite=True)
    assert listing(tmp_path) == [
        "m/.sctranslator-output.json", "m/1/graph_model.py", "m/1/model.py", "m/1/token_layout.py", "m/config.pbtxt",
        "m_counts/.sctranslator-output.json", "m_counts/1/model.py", "m_counts/1/model_facts.json",
        "m_counts/config.pbtxt",
        "m_decoder/.sctranslator-output.json", "m_decoder/1/model.onnx", "m_decoder/config.pbtxt",
        "m_encoder/.sctranslator-output.json", "m_encoder/1/model.onnx", "m_encoder/config.pbtxt"]
    assert parse(tmp_path / "m_encoder" / "config.pbtxt").backend == "onnxruntime"


def test_a_foreign_directory_where_a_graph_model_goes_is_refused(tiny_a: TranslatorModel, onnx_file: Path,
                                                                 tmp_path: Path) -> None:
    export_triton(tiny_a, tmp_path, ServingSettings(name="m"), onnx_path=onnx_file)
    (tmp_path / "m_decoder" / ".sctranslator-output.json").unlink()  # now a directory sctranslator did not write
    with pytest.raises(OutputConflictError, match="m_decoder is where the export of Triton model 'm' puts a graph"):
        export_triton(tiny_a, tmp_path, ServingSettings(name="m"), onnx_path=onnx_file, overwrite=True)
    fresh = tmp_path / "fresh"
    (fresh / "n_encoder").mkdir(parents=True)
    with pytest.raises(OutputConflictError, match="n_encoder exists, but"):
        export_triton(tiny_a, fresh, ServingSettings(name="n"), onnx_path=onnx_file)
    assert sorted(p.name for p in fresh.iterdir()) == ["n_encoder"]


def test_a_file_without_sctranslator_metadata_is_refused(tiny_a: TranslatorModel, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not onnx")
    with pytest.raises(CheckpointError):
        export_triton(tiny_a, tmp_path / "repo", onnx_path=bogus)


# -- the Python-backend model.py, run here with a stand-in for triton_python_backend_utils --------------

class FakeTensor:
    def __init__(self, name: str, array: np.ndarray):
        self.name, self.array = name, array

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> Any:
        return self.array.__dlpack_device__()

    @classmethod
    def from_dlpack(cls, name: str, array: np.ndarray) -> FakeTensor:
        return cls(name, np.from_dlpack(array).copy())


class FakeResponse:
    def __init__(self, output_tensors: list[FakeTensor], error: Any = None):
        self.outputs, self.error = output_tensors, error


class FakeError:
    def __init__(self, message: str):
        self.text = message

    def message(self) -> str:
        return self.text


class FakeBLSResponse:
    def __init__(self, response: FakeResponse):
        self.response = response

    def has_error(self) -> bool:
        return self.response.error is not None

    def error(self) -> FakeError:
        return FakeError(self.response.error)


def fake_pb_utils() -> types.ModuleType:
    """A stand-in for triton_python_backend_utils; BLS requests go to its `models` (name -> model object)
    and are recorded in its `calls` (model name, shape of the first tensor)."""
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = FakeTensor  # type: ignore[attr-defined]
    module.InferenceResponse = FakeResponse  # type: ignore[attr-defined]
    module.TritonError = lambda message: message  # type: ignore[attr-defined]
    module.get_input_tensor_by_name = lambda request, name: request.get(name)  # type: ignore[attr-defined]
    module.get_output_tensor_by_name = lambda response, name: next(  # type: ignore[attr-defined]
        t for t in response.response.outputs if t.name == name)
    calls: list[tuple[str, tuple[int, ...]]] = []
    module.calls = calls  # type: ignore[attr-defined]
    module.models = {}  # type: ignore[attr-defined]

    class InferenceRequest:
        def __init__(self, model_name: str, requested_output_names: list[str], inputs: list[FakeTensor]):
            self.model_name, self.inputs = model_name, {tensor.name: tensor for tensor in inputs}

        def exec(self) -> FakeBLSResponse:
            calls.append((self.model_name, self.inputs["translated" if "translated" in self.inputs
                                                       else "values"].array.shape))
            return FakeBLSResponse(module.models[self.model_name].execute([self.inputs])[0])

    module.InferenceRequest = InferenceRequest  # type: ignore[attr-defined]
    return module


def as_triton_json(message: mc.ModelConfig) -> dict[str, Any]:
    """A model configuration as Triton hands it to a Python-backend model: config.pbtxt as JSON."""
    return json.loads(json_format.MessageToJson(message, preserving_proto_field_name=True))


def load_python_model(source: str, monkeypatch: pytest.MonkeyPatch, pb_utils: types.ModuleType) -> Any:
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb_utils)
    return importlib.reload(importlib.import_module(source))  # picks the stand-in up as pb_utils


PY_SETTINGS = ServingSettings(backend="python", max_batch_size=16, intra_op_threads=1)


def graph_models(onnx_file: Path, tiny_a: TranslatorModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                 pb_utils: types.ModuleType) -> dict[str, Any]:
    """The encoder and decoder Python-backend models, initialised as Triton would, keyed by model name."""
    module = load_python_model("sctranslator.export.triton_python_model", monkeypatch, pb_utils)
    models = {}
    for spec, graph_file in zip((ENCODER, DECODER), graph_files(onnx_file), strict=True):
        config = graph_config(PY_SETTINGS, spec, tiny_a.config.max_proteins, tiny_a.config.dim, {})
        (tmp_path / config.name / "1").mkdir(parents=True)
        (tmp_path / config.name / "1" / "model.onnx").write_bytes(graph_file.read_bytes())
        model = module.TritonPythonModel()
        model.initialize({"model_config": json.dumps(as_triton_json(config)),
                          "model_repository": str(tmp_path / config.name), "model_version": "1",
                          "model_instance_kind": "CPU", "model_instance_device_id": "0"})
        models[config.name] = model
    return models


@pytest.fixture()
def pb_utils(monkeypatch: pytest.MonkeyPatch) -> Any:
    yield fake_pb_utils()
    monkeypatch.delitem(sys.modules, "triton_python_backend_utils")
    for name in ("sctranslator.export.triton_python_model", "sctranslator.export.triton_bls_model"):
        importlib.reload(importlib.import_module(name))


@pytest.fixture()
def served(onnx_file: Path, tiny_a: TranslatorModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
           pb_utils: Any) -> tuple[Any, dict[str, Any], Any]:
    """(the BLS model, the graph models it calls, the pb_utils stand-in recording the calls)."""
    models = graph_models(onnx_file, tiny_a, tmp_path, monkeypatch, pb_utils)
    pb_utils.models.update(models)
    module = load_python_model("sctranslator.export.triton_bls_model", monkeypatch, pb_utils)
    bls = module.TritonPythonModel()
    config = client_config(PY_SETTINGS, tiny_a.config.max_genes, tiny_a.config.max_proteins, {})
    bls.initialize({"model_config": json.dumps(as_triton_json(config)), "model_repository": str(tmp_path),
                    "model_version": "1"})
    return bls, models, pb_utils


def test_python_models_read_the_graph_contract_from_the_written_configs(tiny_a: TranslatorModel, onnx_file: Path,
                                                                        tmp_path: Path) -> None:
    """model.py cannot import sctranslator inside Triton: what it reads from config.pbtxt must be the contract."""
    from sctranslator.export import triton_python_model
    from sctranslator.graph.contract import INPUTS, OUTPUT

    export_triton(tiny_a, tmp_path, ServingSettings(name="py", backend="python"), onnx_path=onnx_file)
    for spec in (ENCODER, DECODER):
        config = as_triton_json(parse(tmp_path / f"py_{spec.role}" / "config.pbtxt"))
        inputs, output = triton_python_model.graph_io(config)
        assert list(inputs.items()) == [(tensor.name, tensor.dtype) for tensor in spec.inputs]
        assert output == spec.output_names[0]
        for tensor in (*spec.inputs, *spec.outputs):
            assert triton_python_model.CONFIG_DTYPES[tensor.triton_config_type] == tensor.dtype
    client = as_triton_json(parse(tmp_path / "py" / "config.pbtxt"))
    inputs, output = triton_python_model.graph_io(client)
    assert list(inputs.items()) == [(tensor.name, tensor.dtype) for tensor in INPUTS] and output == OUTPUT.name
    with pytest.raises(ValueError, match="must declare the graph's inputs and one output"):
        triton_python_model.graph_io({"input": client["input"]})
    with pytest.raises(ValueError, match=r"data types \['TYPE_STRING'\]"):
        triton_python_model.graph_io({**client, "input": [{"name": "values", "data_type": "TYPE_STRING"}]})


def request_of(inputs: dict[str, np.ndarray]) -> dict[str, FakeTensor]:
    return {name: FakeTensor(name, array) for name, array in inputs.items()}


def two_windows(tiny_a: TranslatorModel, size: int, seed: int) -> dict[str, np.ndarray]:
    """Client-contract inputs whose protein axis holds two windows (2 * P)."""
    first, second = random_inputs(tiny_a.config, size, seed=seed), random_inputs(tiny_a.config, size, seed=seed + 50)
    return {**first, "protein_ids": np.concatenate([first["protein_ids"], second["protein_ids"]], axis=1),
            "protein_mask": np.concatenate([first["protein_mask"], second["protein_mask"]], axis=1)}


def test_bls_model_runs_the_encoder_once_and_the_decoder_per_window(served: Any, tiny_a: TranslatorModel,
                                                                    onnx_file: Path) -> None:
    bls, _, pb = served
    graphs = create_graphs(onnx_file)
    one_window = random_inputs(tiny_a.config, 3, seed=1)
    cases = [two_windows(tiny_a, 4, seed=2), one_window]
    broken = request_of(one_window)
    del broken["gene_mask"]
    odd = {**one_window, "protein_ids": one_window["protein_ids"][:, :10],
           "protein_mask": one_window["protein_mask"][:, :10]}
    responses = bls.execute([request_of(cases[0]), broken, request_of(odd), request_of(cases[1])])
    assert "no input 'gene_mask'" in responses[1].error and responses[1].outputs == []
    assert "k * 16" in responses[2].error
    for response, case in zip([responses[0], responses[3]], cases, strict=True):
        assert response.error is None
        (output,) = response.outputs
        assert output.name == "predictions" and output.array.shape == case["protein_ids"].shape
        np.testing.assert_allclose(output.array, onnx_predictions(graphs, case), rtol=1e-5, atol=1e-6)
    P, dim = tiny_a.config.max_proteins, tiny_a.config.dim
    # Both good requests have cells of differing layouts: merged on the full layout, one encoder call for
    # their 7 cells, the first window for all 7, the second only for the 4 cells that asked two windows.
    assert pb.calls == [("sctranslator_encoder", (7, 64)), ("sctranslator_decoder", (7, P, dim)),
                        ("sctranslator_decoder", (4, P, dim))]


def shared_layout(tiny_a: TranslatorModel, cells: int, genes: int, seed: int) -> dict[str, np.ndarray]:
    """Client-contract inputs whose `cells` cells share one gene layout: the first `genes` genes, then padding."""
    inputs = random_inputs(tiny_a.config, 1, seed=seed)
    kept = np.arange(tiny_a.config.max_genes) < genes
    shared = {name: np.repeat(array, cells, axis=0) for name, array in inputs.items()}
    values = np.random.default_rng(seed).uniform(0, 1, (cells, tiny_a.config.max_genes))
    shared["values"] = np.where(kept, values, 0).astype(np.float32)
    shared["gene_ids"] = np.broadcast_to(np.where(kept, np.arange(1, tiny_a.config.max_genes + 1) * 3, 0),
                                         shared["values"].shape).copy()
    shared["gene_mask"] = np.broadcast_to(kept, shared["values"].shape).copy()
    shared["protein_ids"] = np.random.default_rng(seed + 1).integers(1, 500, shared["protein_ids"].shape)
    return shared


def test_bls_model_runs_merged_requests_of_one_layout_as_one_batch(served: Any, tiny_a: TranslatorModel,
                                                                   onnx_file: Path) -> None:
    """Requests Triton merged into one execute: those sharing a gene layout (whatever their proteins and
    windows) go through one encoder call and one decoder call per window; another layout runs apart."""
    bls, _, pb = served
    graphs = create_graphs(onnx_file)
    P, dim = tiny_a.config.max_proteins, tiny_a.config.dim
    first, second, third = (shared_layout(tiny_a, 2, 20, seed=1), shared_layout(tiny_a, 3, 20, seed=2),
                            shared_layout(tiny_a, 1, 30, seed=3))
    two = two_windows(tiny_a, 3, seed=6)  # another request's two protein windows on `second`'s cells
    second = {**second, "protein_ids": two["protein_ids"], "protein_mask": two["protein_mask"]}
    cases = [first, third, second]
    responses = bls.execute([request_of(case) for case in cases])
    for response, case in zip(responses, cases, strict=True):
        assert response.error is None
        np.testing.assert_allclose(response.outputs[0].array, onnx_predictions(graphs, case), rtol=1e-5, atol=1e-6)
    # 20 genes + one pad token for the 5 cells of `first` and `second`; the second window only for
    # `second`'s 3 cells; `third` (30 genes) on its own.
    assert pb.calls == [("sctranslator_encoder", (5, 21)), ("sctranslator_decoder", (5, P, dim)),
                        ("sctranslator_decoder", (3, P, dim)),
                        ("sctranslator_encoder", (1, 31)), ("sctranslator_decoder", (1, P, dim))]


def test_bls_model_collapses_padding_shared_by_the_request(served: Any, tiny_a: TranslatorModel,
                                                           onnx_file: Path) -> None:
    bls, _, pb = served
    inputs = random_inputs(tiny_a.config, 1, seed=4)
    kept = np.arange(tiny_a.config.max_genes) < 20
    shared = {name: np.repeat(array, 3, axis=0) for name, array in inputs.items()}
    shared["values"] = np.where(kept, np.random.default_rng(0).uniform(0, 1, (3, 64)), 0).astype(np.float32)
    shared["gene_ids"] = np.where(kept, shared["gene_ids"], 0)
    shared["gene_mask"] = np.broadcast_to(kept, (3, 64)).copy()
    (response,) = bls.execute([request_of(shared)])
    assert pb.calls[0] == ("sctranslator_encoder", (3, 21))  # 20 genes and one pad token
    from sctranslator.engine.backends import Batch, TorchBackend

    want = TorchBackend(tiny_a, collapse_padding=False).predict(
        Batch(values=shared["values"], gene_ids=shared["gene_ids"][0], gene_mask=kept,
              protein_ids=shared["protein_ids"][:1], protein_mask=shared["protein_mask"][:1]))
    np.testing.assert_allclose(response.outputs[0].array, want, rtol=1e-5, atol=1e-6)


def test_decoder_model_batches_requests_and_encoder_model_does_not(served: Any, tiny_a: TranslatorModel,
                                                                   onnx_file: Path) -> None:
    _, models, _ = served
    graphs = create_graphs(onnx_file)
    rng = np.random.default_rng(0)
    P, dim = tiny_a.config.max_proteins, tiny_a.config.dim
    requests = [{"translated": rng.normal(size=(size, P, dim)).astype(np.float32),
                 "protein_ids": rng.integers(1, 500, (size, P)), "protein_mask": np.ones((size, P), dtype=bool)}
                for size in (1, 4, 2)]
    responses = models["sctranslator_decoder"].execute([request_of(r) for r in requests])
    for response, request in zip(responses, requests, strict=True):
        np.testing.assert_allclose(response.outputs[0].array, graphs.decoder.run(["predictions"], request)[0],
                                   rtol=1e-5, atol=1e-6)
    from sctranslator.graph.token_layout import TokenLayout

    feeds = []
    for real in (5, 9):  # two layouts of different token counts in one execute: never merged
        kept = np.arange(64) < real
        ids = np.where(kept, rng.integers(1, 500, 64), 0)
        values = np.where(kept, rng.uniform(0, 1, (2, 64)), 0).astype(np.float32)
        feeds.append(TokenLayout.for_layout(ids, kept).encoder_inputs(values, ids, kept))
    responses = models["sctranslator_encoder"].execute([request_of(f) for f in feeds])
    for response, feed in zip(responses, feeds, strict=True):
        assert response.error is None, response.error
        np.testing.assert_allclose(response.outputs[0].array, graphs.encoder.run(["translated"], feed)[0],
                                   rtol=1e-5, atol=1e-6)


def test_decoder_model_reports_inference_failures_on_every_request(served: Any, tiny_a: TranslatorModel) -> None:
    _, models, _ = served
    narrow = {"translated": np.zeros((2, 8, tiny_a.config.dim), dtype=np.float32),  # wrong P: onnxruntime refuses
              "protein_ids": np.ones((2, 8), dtype=np.int64), "protein_mask": np.ones((2, 8), dtype=bool)}
    responses = models["sctranslator_decoder"].execute([request_of(narrow), request_of(narrow)])
    assert all("inference failed" in response.error for response in responses)


# -- command line and serve without a server ---------------------------------------------------------

def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sctranslator export")
    handler = define_export(parser)
    return handler(parser.parse_args(argv))


def test_export_triton_command_writes_the_repository(onnx_file: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code = cli(["triton", str(TINY_A), "--repo", str(tmp_path), "--name", "cli", "--backend", "python",
                "--max-batch-size", "32", "--instances", "3", "--dynamic-batching", "--preferred-batch-sizes", "8",
                "16", "--max-queue-delay-us", "100", "--onnx", str(onnx_file)])
    assert code == 0
    config = parse(tmp_path / "cli" / "config.pbtxt")
    assert (config.max_batch_size, config.instance_group[0].count) == (32, 3)
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16]
    assert (tmp_path / "cli" / "1" / "model.py").exists()
    assert "Triton model 'cli' (python backend)" in capsys.readouterr().out


def test_export_onnx_command_reports_the_error(tiny_a: TranslatorModel, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["onnx", str(TINY_A), str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert "max abs error" in out and "max rel error" in out
    assert read_onnx_metadata(tmp_path / "m.onnx")["precision"] == "fp32"


def test_command_choices_mirror_the_export_modules() -> None:
    from sctranslator.export import PRECISIONS, command, serve, triton_config

    assert sorted(command.PRECISIONS) == sorted(PRECISIONS)
    assert command.SERVING_BACKENDS == triton_config.SERVING_BACKENDS
    assert command.INSTANCE_KINDS == triton_config.INSTANCE_KINDS
    assert command.DEFAULT_MODEL_NAME == triton_config.DEFAULT_MODEL_NAME
    assert command.DEFAULT_REPO == serve.DEFAULT_REPO


def test_export_command_rejects_bad_options_before_exporting(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="need --dynamic-batching"):
        cli(["triton", str(TINY_A), "--repo", str(tmp_path), "--preferred-batch-sizes", "4"])
    with pytest.raises(SystemExit):
        cli(["triton", str(TINY_A), "--repo", str(tmp_path), "--backend", "tensorflow"])


def test_serve_without_a_binary_prints_the_docker_command(tiny_a: TranslatorModel, onnx_file: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(serve_module, "find_tritonserver", lambda: None)
    lines: list[str] = []
    request = serve_module.ServeRequest(model=tiny_a, repo=tmp_path / "repo", http_port=9000, onnx_path=onnx_file)
    with caplog.at_level(logging.DEBUG, logger=serve_module.__name__):
        assert serve_module.serve(request, echo=lines.append) is None
    text = "\n".join(lines)
    # A few lines: the repository and its models, not the ~170 files exported (those are in the DEBUG log, -v).
    files = sorted(str(path) for path in (tmp_path / "repo").rglob("*") if path.is_file()
                   and not path.name.startswith("."))
    assert len(text.splitlines()) <= 5 and len(files) > 50
    assert f"in {tmp_path / 'repo'} ({len(files)} files; -v lists them)" in text
    assert not any(path in text for path in files)
    debug = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)
    assert all(path in debug for path in files)
    assert (f"docker run --rm --gpus all -p9000:8000 -p8001:8001 -p8002:8002 -v {(tmp_path / 'repo').resolve()}:"
            "/models nvcr.io/nvidia/tritonserver:24.10-py3 tritonserver --model-repository=/models") in text
    # No local server: the repository is for NVIDIA's image, which has the ONNX Runtime backend.
    assert parse(tmp_path / "repo" / "sctranslator_encoder" / "config.pbtxt").backend == "onnxruntime"
    assert parse(tmp_path / "repo" / "sctranslator_decoder" / "config.pbtxt").backend == "onnxruntime"


def test_serve_command_without_a_binary(onnx_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(serve_module, "find_tritonserver", lambda: None)
    parser = argparse.ArgumentParser(prog="sctranslator serve")
    handler = define_serve(parser)
    args = parser.parse_args([str(TINY_A), "--repo", str(tmp_path), "--onnx", str(onnx_file), "--grpc-port", "9101"])
    assert handler(args) == 0
    assert "-p9101:8001" in capsys.readouterr().out
    assert (tmp_path / "sctranslator_encoder" / "1" / "model.onnx").exists()
    assert (tmp_path / "sctranslator" / "1" / "model.py").exists()
