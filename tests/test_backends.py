"""The backend package and the graph contract: torch-free layers, registry, embedding capability, one table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import sctranslator.engine.backends as backends
from sctranslator.engine.backends import BACKENDS, BackendSpec, Batch, create_backend
from sctranslator.engine.backends.base import no_embeddings
from sctranslator.errors import BackendError, MissingExtraError
from sctranslator.graph.contract import GENES, INPUT_NAMES, INPUTS, OUTPUT, OUTPUT_NAME, PRECISION_NAMES, TENSORS

ROOT = Path(__file__).resolve().parents[1]


def imports_without(statement: str, forbidden: tuple[str, ...]) -> list[str]:
    """Run `statement` in a fresh interpreter; the forbidden modules it imported."""
    code = (f"import sys\n{statement}\n"
            f"print(','.join(name for name in {forbidden!r} if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return [name for name in result.stdout.strip().split(",") if name]


@pytest.mark.parametrize("statement", [
    "import sctranslator.engine.backends.base",
    "import sctranslator.engine.backends.selection",
    "from sctranslator.engine.backends import BackendSpec, Batch, get_backend, BACKENDS",
    "import sctranslator.graph.contract",
])
def test_base_registry_and_contract_do_not_import_torch_or_runtimes(statement: str) -> None:
    assert imports_without(statement, ("torch", "onnx", "onnxruntime", "tritonclient")) == []


def test_a_triton_client_does_not_import_torch() -> None:
    pytest.importorskip("tritonclient.grpc", reason="the triton extra is not installed")
    assert imports_without("import sctranslator.engine.backends.triton_backend", ("torch", "onnx", "onnxruntime")) == []


def test_lazy_names_resolve_to_their_modules() -> None:
    assert backends.TorchBackend.__module__ == "sctranslator.engine.backends.torch_backend"
    assert backends.OnnxRuntimeBackend.__module__ == "sctranslator.engine.backends.onnxruntime_backend"
    assert backends.TritonBackend.__module__ == "sctranslator.engine.backends.triton_backend"
    assert backends.onnx_file_for.__module__ == "sctranslator.engine.backends.onnx_cache"
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        backends.nothing  # noqa: B018


def test_every_backend_declares_its_embedding_capability() -> None:
    pytest.importorskip("tritonclient.grpc", reason="the triton extra is not installed")
    assert BACKENDS == ("auto", "torch", "onnxruntime", "triton")
    capabilities = {name: getattr(backends, cls).supports_embeddings for name, cls in
                    [("torch", "TorchBackend"), ("onnxruntime", "OnnxRuntimeBackend"), ("triton", "TritonBackend")]}
    assert capabilities == {"torch": True, "onnxruntime": False, "triton": False}
    for cls in ("TorchBackend", "OnnxRuntimeBackend", "TritonBackend"):
        assert callable(getattr(backends, cls).predict_with_embeddings)


def test_unknown_backend_kind_is_a_named_error() -> None:
    with pytest.raises(BackendError, match=r"unknown backend 'tpu'; choose one of \('auto', 'torch', 'onnxruntime'"):
        create_backend(BackendSpec(kind="tpu"))


def test_triton_without_its_extra_is_a_named_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)  # as if tritonclient were not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'sctranslator\[triton\]'"):
        create_backend(BackendSpec(kind="triton", options={"url": "localhost:8001"}))


def test_a_backend_without_embeddings_predicts_but_refuses_embeddings() -> None:
    batch = small_batch()

    class Stub:  # a backend that cannot embed: returns row sums as its predictions
        name = "stub"
        supports_embeddings = False

        def predict(self, batch: Batch) -> np.ndarray:
            return batch.values.sum(axis=1, keepdims=True)

    predictions, embedding = no_embeddings(Stub(), batch, embeddings=False)
    np.testing.assert_array_equal(predictions, batch.values.sum(axis=1, keepdims=True))
    assert embedding is None
    with pytest.raises(BackendError, match="stub backend cannot return cell embeddings.*--backend torch"):
        no_embeddings(Stub(), batch, embeddings=True)


def small_batch(cells: int = 3, genes: int = 6, proteins: int = 4, windows: int = 2) -> Batch:
    rng = np.random.default_rng(0)
    return Batch(values=rng.random((cells, genes)).astype(np.float64),  # float64 on purpose: expanded casts
                 gene_ids=np.arange(1, genes + 1, dtype=np.int32), gene_mask=np.arange(genes) < genes - 1,
                 protein_ids=np.arange(1, windows * proteins + 1).reshape(windows, proteins),
                 protein_mask=np.arange(windows * proteins).reshape(windows, proteins) < windows * proteins - 1)


def test_expanded_batch_follows_the_contract() -> None:
    batch = small_batch()
    for window in range(2):
        arrays = batch.expanded(window)
        assert list(arrays) == list(INPUT_NAMES)
        for tensor in INPUTS:
            array = arrays[tensor.name]
            assert array.dtype == np.dtype(tensor.dtype), tensor.name
            assert array.shape == tensor.shape(3, 6, 4), tensor.name
            assert array.flags.c_contiguous, tensor.name
        np.testing.assert_array_equal(arrays["values"], batch.values.astype(np.float32))
        for row in range(3):  # every cell gets the shared gene row and this window's protein row
            np.testing.assert_array_equal(arrays["gene_ids"][row], batch.gene_ids)
            np.testing.assert_array_equal(arrays["gene_mask"][row], batch.gene_mask)
            np.testing.assert_array_equal(arrays["protein_ids"][row], batch.protein_ids[window])
            np.testing.assert_array_equal(arrays["protein_mask"][row], batch.protein_mask[window])


def test_contract_spellings_agree_with_each_runtime() -> None:
    """numpy, ONNX and Triton names of each element type denote the same type, by those libraries' own tables."""
    mc = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="the triton extra is not installed")
    triton_to_np_dtype = pytest.importorskip("tritonclient.utils").triton_to_np_dtype
    assert INPUT_NAMES == ("values", "gene_ids", "gene_mask", "protein_ids", "protein_mask")
    assert OUTPUT_NAME == "predictions" and list(TENSORS) == [*INPUT_NAMES, OUTPUT_NAME]
    for tensor in TENSORS.values():
        numpy_type = np.dtype(tensor.dtype)
        onnx_type = onnx.helper.tensor_dtype_to_np_dtype(onnx.TensorProto.DataType.Value(tensor.onnx_type))
        assert np.dtype(onnx_type) == numpy_type, tensor.name
        assert np.dtype(triton_to_np_dtype(tensor.triton_type)) == numpy_type, tensor.name
        assert mc.DataType.Value(tensor.triton_config_type) > 0, tensor.name
    assert [t.axis == GENES for t in (*INPUTS, OUTPUT)] == [True, True, True, False, False, False]
    assert OUTPUT.shape(5, 64, 16) == (5, 16) and INPUTS[0].shape(5, 64, 16) == (5, 64)


def test_precision_names_are_the_exporters() -> None:
    from sctranslator.export.onnx_format import PRECISIONS

    assert tuple(PRECISIONS) == PRECISION_NAMES


def contract_graph(path: Path, genes: int, proteins: int, output_type: str = "FLOAT") -> str:
    """A tiny ONNX graph with the contract's tensors whose predictions are the protein ids, as float."""
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(t.name, TensorProto.DataType.Value(t.onnx_type),
                                            ["batch", t.width(genes, proteins)]) for t in INPUTS]
    output = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.DataType.Value(output_type), ["batch", proteins])
    cast = helper.make_node("Cast", ["protein_ids"], [OUTPUT_NAME], to=TensorProto.DataType.Value(output_type))
    model = helper.make_model(helper.make_graph([cast], "contract", inputs, [output]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def test_onnxruntime_backend_refuses_graphs_that_break_the_contract(tmp_path: Path) -> None:
    from sctranslator.engine.backends import OnnxRuntimeBackend

    # A file with the five whole-model inputs: the single-graph export of earlier versions.
    with pytest.raises(BackendError, match=r"single-graph export from an earlier sctranslator version.*re-export"):
        OnnxRuntimeBackend(contract_graph(tmp_path / "old.onnx", 6, 4), genes=6, proteins=4)
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])
    foreign = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "foreign", [x],
                                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])]),
                                opset_imports=[helper.make_opsetid("", 17)])
    foreign.ir_version = 8
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    with pytest.raises(BackendError, match=r"not the encoder graph.*no tensor 'values'.*Its tensors: \['x', 'y'\]"):
        OnnxRuntimeBackend(str(tmp_path / "foreign.onnx"))
