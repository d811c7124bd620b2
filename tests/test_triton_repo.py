"""Triton model repositories: config.pbtxt parsed back with Triton's own protobuf definitions,
the Python-backend model.py (with a stand-in for Triton's pb_utils), the CLI and `serve` without a server."""

from __future__ import annotations

import argparse
import importlib
import json
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
from sctranslator.errors import CheckpointError, ExportError
from sctranslator.export import create_session, export_onnx, random_inputs, read_onnx_metadata
from sctranslator.export import serve as serve_module
from sctranslator.export.command import define_export, define_serve
from sctranslator.export.triton import PYTHON_MODEL_SOURCE, export_triton
from sctranslator.export.triton_config import ServingSettings, build_config, model_parameters
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


def test_onnxruntime_repository_declares_the_graph(tiny_a: TranslatorModel, onnx_file: Path, tmp_path: Path) -> None:
    exported = export_triton(tiny_a, tmp_path, ServingSettings(name="tiny"), onnx_path=onnx_file)
    assert exported.config_path == tmp_path / "tiny" / "config.pbtxt"
    assert (tmp_path / "tiny" / "1" / "model.onnx").read_bytes() == onnx_file.read_bytes()
    assert not (tmp_path / "tiny" / "1" / "model.py").exists()
    config = parse(exported.config_path)
    assert (config.name, config.platform, config.backend) == ("tiny", "onnxruntime_onnx", "onnxruntime")
    assert config.max_batch_size == 64
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("values", mc.TYPE_FP32, [64]), ("gene_ids", mc.TYPE_INT64, [64]), ("gene_mask", mc.TYPE_BOOL, [64]),
        ("protein_ids", mc.TYPE_INT64, [16]), ("protein_mask", mc.TYPE_BOOL, [16])]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [("predictions", mc.TYPE_FP32, [16])]
    assert [(g.kind, g.count) for g in config.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, 1)]
    assert not config.HasField("dynamic_batching")
    assert not config.optimization.execution_accelerators.gpu_execution_accelerator
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    assert json.loads(parameters["sctranslator.config"]) == json.loads(json.dumps(tiny_a.config.to_dict()))
    assert parameters["sctranslator.max_genes"] == "64" and parameters["sctranslator.max_proteins"] == "16"
    assert parameters["sctranslator.fingerprint"] == model_fingerprint(tiny_a)
    assert parameters["sctranslator.precision"] == "fp32"
    assert read_onnx_metadata(exported.onnx_path)["fingerprint"] == model_fingerprint(tiny_a)


def test_python_backend_repository_with_dynamic_batching(tiny_a: TranslatorModel, onnx_file: Path,
                                                         tmp_path: Path) -> None:
    settings = ServingSettings(name="py", backend="python", max_batch_size=16, instances=2, dynamic_batching=True,
                               preferred_batch_sizes=(4, 8), max_queue_delay_us=250, intra_op_threads=2)
    exported = export_triton(tiny_a, tmp_path, settings, onnx_path=onnx_file)
    model_py = tmp_path / "py" / "1" / "model.py"
    assert model_py.read_text() == PYTHON_MODEL_SOURCE.read_text()
    config = parse(exported.config_path)
    assert config.backend == "python" and config.platform == ""
    assert config.max_batch_size == 16
    assert [(g.kind, g.count) for g in config.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 2)]
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    assert config.parameters["onnx_file"].string_value == "model.onnx"
    assert config.parameters["intra_op_threads"].string_value == "2"


def test_dynamic_batching_without_options_is_an_empty_block(tiny_a: TranslatorModel, onnx_file: Path) -> None:
    config = build_config(ServingSettings(dynamic_batching=True), 64, 16, {})
    assert config.HasField("dynamic_batching")
    assert "dynamic_batching {\n}" in text_format.MessageToString(config)


@pytest.mark.parametrize(("precision", "mode"), [("fp32", "FP32"), ("fp16", "FP16"), ("bf16", "FP32")])
def test_tensorrt_uses_the_onnxruntime_backend_accelerator(precision: str, mode: str, onnx_file: Path) -> None:
    parameters = model_parameters(read_onnx_metadata(onnx_file))
    config = build_config(ServingSettings(backend="tensorrt", precision=precision), 64, 16, parameters)
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
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "m", "m/.sctranslator-output.json", "m/1", "m/1/model.onnx", "m/config.pbtxt"]
    assert parse(tmp_path / "m" / "config.pbtxt").backend == "onnxruntime"


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


def fake_pb_utils() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = FakeTensor  # type: ignore[attr-defined]
    module.InferenceResponse = FakeResponse  # type: ignore[attr-defined]
    module.TritonError = lambda message: message  # type: ignore[attr-defined]
    module.get_input_tensor_by_name = lambda request, name: request.get(name)  # type: ignore[attr-defined]
    return module


def triton_json_config(settings: ServingSettings, model: TranslatorModel) -> dict[str, Any]:
    """The model configuration as Triton hands it to a Python-backend model: config.pbtxt as JSON."""
    message = build_config(settings, model.config.max_genes, model.config.max_proteins, {})
    return json.loads(json_format.MessageToJson(message, preserving_proto_field_name=True))


@pytest.fixture()
def python_model(onnx_file: Path, tiny_a: TranslatorModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb_utils())
    module = importlib.import_module("sctranslator.export.triton_python_model")
    module = importlib.reload(module)  # picks the stand-in up as pb_utils
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.onnx").write_bytes(onnx_file.read_bytes())
    model = module.TritonPythonModel()
    config = triton_json_config(ServingSettings(backend="python", max_batch_size=16, intra_op_threads=1), tiny_a)
    model.initialize({"model_config": json.dumps(config), "model_repository": str(tmp_path), "model_version": "1",
                      "model_instance_kind": "CPU", "model_instance_device_id": "0"})
    yield model
    monkeypatch.delitem(sys.modules, "triton_python_backend_utils")
    importlib.reload(module)


def test_python_model_reads_the_graph_contract_from_the_written_config(tiny_a: TranslatorModel, onnx_file: Path,
                                                                        tmp_path: Path) -> None:
    """model.py cannot import sctranslator inside Triton: what it reads from config.pbtxt must be the contract."""
    from sctranslator.export import triton_python_model
    from sctranslator.export.contract import INPUTS, OUTPUT

    exported = export_triton(tiny_a, tmp_path, ServingSettings(name="py", backend="python"), onnx_path=onnx_file)
    config = json.loads(json_format.MessageToJson(parse(exported.config_path), preserving_proto_field_name=True))
    inputs, output = triton_python_model.graph_io(config)
    assert list(inputs.items()) == [(tensor.name, tensor.dtype) for tensor in INPUTS]
    assert output == OUTPUT.name
    for tensor in (*INPUTS, OUTPUT):
        assert triton_python_model.CONFIG_DTYPES[tensor.triton_config_type] == tensor.dtype
    with pytest.raises(ValueError, match="must declare the graph's inputs and one output"):
        triton_python_model.graph_io({"input": config["input"]})
    with pytest.raises(ValueError, match=r"data types \['TYPE_STRING'\]"):
        triton_python_model.graph_io({**config, "input": [{"name": "values", "data_type": "TYPE_STRING"}]})


def request_of(inputs: dict[str, np.ndarray]) -> dict[str, FakeTensor]:
    return {name: FakeTensor(name, array) for name, array in inputs.items()}


def test_python_model_batches_requests_and_splits_the_answers(python_model: Any, tiny_a: TranslatorModel,
                                                              onnx_file: Path) -> None:
    session = create_session(onnx_file)
    cases = [random_inputs(tiny_a.config, size, seed=size) for size in (1, 4, 2)]
    broken = request_of(cases[0])
    del broken["gene_mask"]
    responses = python_model.execute([request_of(cases[0]), broken, request_of(cases[1]), request_of(cases[2])])
    assert len(responses) == 4
    assert "no input 'gene_mask'" in responses[1].error and responses[1].outputs == []
    for response, case in zip([responses[0], responses[2], responses[3]], cases, strict=True):
        assert response.error is None
        (output,) = response.outputs
        assert output.name == "predictions"
        expected = session.run(["predictions"], case)[0]
        np.testing.assert_allclose(output.array, expected, rtol=1e-5, atol=1e-6)


def test_python_model_reports_inference_failures_on_every_request(python_model: Any,
                                                                  tiny_a: TranslatorModel) -> None:
    good = random_inputs(tiny_a.config, 2, seed=0)
    narrow = {name: array[:, :8] for name, array in good.items()}  # wrong width: onnxruntime refuses
    responses = python_model.execute([request_of(narrow)])
    assert "inference failed" in responses[0].error


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
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serve_module, "find_tritonserver", lambda: None)
    lines: list[str] = []
    request = serve_module.ServeRequest(model=tiny_a, repo=tmp_path / "repo", http_port=9000, onnx_path=onnx_file)
    assert serve_module.serve(request, echo=lines.append) is None
    text = "\n".join(lines)
    assert (f"docker run --rm --gpus all -p9000:8000 -p8001:8001 -p8002:8002 -v {(tmp_path / 'repo').resolve()}:"
            "/models nvcr.io/nvidia/tritonserver:24.10-py3 tritonserver --model-repository=/models") in text
    # No local server: the repository is for NVIDIA's image, which has the ONNX Runtime backend.
    assert parse(tmp_path / "repo" / "sctranslator" / "config.pbtxt").backend == "onnxruntime"


def test_serve_command_without_a_binary(onnx_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(serve_module, "find_tritonserver", lambda: None)
    parser = argparse.ArgumentParser(prog="sctranslator serve")
    handler = define_serve(parser)
    args = parser.parse_args([str(TINY_A), "--repo", str(tmp_path), "--onnx", str(onnx_file), "--grpc-port", "9101"])
    assert handler(args) == 0
    assert "-p9101:8001" in capsys.readouterr().out
    assert (tmp_path / "sctranslator" / "1" / "model.onnx").exists()
