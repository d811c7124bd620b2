"""Triton Python-backend model: one sctranslator graph (encoder or decoder model.onnx) run by onnxruntime.

`sctranslator export triton --backend python` copies this file as `<repo>/<name>_encoder/1/model.py`
and `<repo>/<name>_decoder/1/model.py`, for Triton builds without the ONNX Runtime backend (such
as the one bundled with nvidia-pytriton). The client-facing model calling them is triton_bls_model.py.
It is self-contained: the Python environment of Triton's stub needs only numpy and onnxruntime
(onnxruntime-gpu for KIND_GPU instances). Its stub-boundary helpers (`to_numpy`, `to_tensor`,
`error_response`) and BLS calls (`bls_infer`) serve the client-facing models too.

Under numpy 2 tensors cross the stub boundary through DLPack: the stub's `Tensor(name, ndarray)`
and `as_numpy()` are compiled against numpy 1 and give empty outputs under numpy 2, while
`np.from_dlpack` and `Tensor.from_dlpack` work. Under numpy 1 (the stub environment that
scripts/install_tritonserver.sh sets up, needed for BYTES inputs) the stub's own calls are used.

The tensor names and dtypes are not written here: they come from the model configuration Triton
hands to `initialize`, which export/triton_config.py writes from the graph contract
(graph/contract.py ENCODER, DECODER); this file cannot import sctranslator inside Triton. A test checks that
what `graph_io` reads from a written configuration equals the contract.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton: tests and linters
    pb_utils = None

# The pytriton stub is compiled against numpy 1 (install_tritonserver.sh gives its stubs numpy<2).
NUMPY_1 = int(np.__version__.split(".")[0]) < 2
# Triton configuration data types -> numpy (the subset of Triton's table an sctranslator graph uses).
CONFIG_DTYPES = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_INT64": np.int64, "TYPE_INT32": np.int32,
                 "TYPE_BOOL": np.bool_}


def graph_io(config: dict[str, Any]) -> tuple[dict[str, type[np.generic]], str]:
    """The model's inputs and its one output, from the configuration Triton passes (JSON of config.pbtxt).

    Parameters
    ----------
    config : dict
        The model configuration.

    Returns
    -------
    inputs : dict of str to type
        Input name -> numpy dtype, in config order.
    output : str
        The output's name.
    """
    inputs, outputs = config.get("input") or [], config.get("output") or []
    if not inputs or len(outputs) != 1:
        raise ValueError(f"the model configuration must declare the graph's inputs and one output; it declares "
                         f"{len(inputs)} input(s) and {len(outputs)} output(s). Re-export the repository with "
                         "`sctranslator export triton`.")
    unknown = sorted({tensor.get("data_type") for tensor in inputs} - set(CONFIG_DTYPES))
    if unknown:
        raise ValueError(f"the model configuration uses data types {unknown}; known: {sorted(CONFIG_DTYPES)}")
    return {tensor["name"]: CONFIG_DTYPES[tensor["data_type"]] for tensor in inputs}, outputs[0]["name"]


def to_numpy(tensor: Any) -> np.ndarray:
    """A pb_utils input tensor as numpy, zero-copy through DLPack when the stub supports it.

    Parameters
    ----------
    tensor : pb_utils.Tensor
        An input tensor.

    Returns
    -------
    numpy.ndarray
        Its values.
    """
    if NUMPY_1:  # the stub's own conversion works with the numpy it was compiled against
        return tensor.as_numpy()
    try:
        return np.from_dlpack(tensor)
    except (AttributeError, TypeError, BufferError, RuntimeError):
        return tensor.as_numpy()


def to_tensor(name: str, array: np.ndarray) -> Any:
    """A pb_utils output tensor holding `array` (through DLPack when the stub and numpy allow it).

    Parameters
    ----------
    name : str
        The output's name.
    array : numpy.ndarray
        Its values.

    Returns
    -------
    pb_utils.Tensor
        The tensor.
    """
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:  # views of request tensors: DLPack (before 1.0) cannot export read-only arrays
        array = array.copy()
    if not NUMPY_1 and hasattr(pb_utils.Tensor, "from_dlpack"):  # numpy 1: DLPack capsules are refused
        return pb_utils.Tensor.from_dlpack(name, array)
    return pb_utils.Tensor(name, array)


def error_response(message: str) -> Any:
    """An inference response carrying only an error.

    Parameters
    ----------
    message : str
        What went wrong.

    Returns
    -------
    pb_utils.InferenceResponse
        The response.
    """
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))


def bls_infer(model: str, feed: dict[str, np.ndarray], output: str, limit: int = 0) -> np.ndarray:
    """BLS calls to the Triton model `model`, each of at most `limit` cells, every input split along its first axis.

    Parameters
    ----------
    model : str
        The called model (the encoder or decoder graph model).
    feed : dict of str to numpy.ndarray
        Its inputs; the first axis is cells.
    output : str
        The output to read back.
    limit : int
        Cells per call (the model's max_batch_size); 0: one call, as for the encoder, whose
        max_batch_size 0 takes any batch.

    Returns
    -------
    numpy.ndarray
        The output of every call, concatenated along the first axis.

    Raises
    ------
    RuntimeError
        A call failed (with the callee's message).
    """
    cells = next(iter(feed.values())).shape[0]
    if limit <= 0 or cells <= limit:
        return bls_infer_once(model, feed, output)
    return np.concatenate([bls_infer_once(model, {name: array[lo:lo + limit] for name, array in feed.items()},
                                          output) for lo in range(0, cells, limit)])


def bls_infer_once(model: str, feed: dict[str, np.ndarray], output: str) -> np.ndarray:
    """One BLS call to `model`.

    Parameters
    ----------
    model : str
        The called model.
    feed : dict of str to numpy.ndarray
        Its inputs.
    output : str
        The output to read back.

    Returns
    -------
    numpy.ndarray
        That output.

    Raises
    ------
    RuntimeError
        The call failed (with the callee's message).
    """
    request = pb_utils.InferenceRequest(model_name=model, requested_output_names=[output],
                                        inputs=[to_tensor(name, array) for name, array in feed.items()])
    response = request.exec()
    if response.has_error():
        raise RuntimeError(f"{model}: {response.error().message()}")
    return np.array(to_numpy(pb_utils.get_output_tensor_by_name(response, output)))


def _providers(kind: str, device_id: int) -> list[Any]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if kind == "GPU" and "CUDAExecutionProvider" in available:
        return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class TritonPythonModel:
    """Runs requests through one exported graph with onnxruntime inside Triton's Python backend.

    With max_batch_size 0 (the encoder: a call's cells share one token layout) one request at a time;
    else the requests are concatenated into one batch and split back.
    """

    def initialize(self, args: dict[str, str]) -> None:
        """Load what the model serves (Triton calls this once per instance).

        Parameters
        ----------
        args : dict of str to str
            Triton's arguments: model_config (JSON), model_repository, model_version, model_instance_kind,
            model_instance_device_id, ...
        """
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        parameters = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], parameters.get("onnx_file", "model.onnx"))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = int(parameters.get("intra_op_threads") or 0)
        if threads:
            options.intra_op_num_threads = threads
        # The stubs of the encoder, decoder and client-facing models share the cores: idle intra-op
        # threads that spin waiting for work take them from the model that has work.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = _providers(args.get("model_instance_kind", "CPU"), int(args.get("model_instance_device_id", 0)))
        self.session = ort.InferenceSession(path, options, providers=providers)
        self.max_batch_size = int(config.get("max_batch_size") or 0)
        self.inputs, self.output = graph_io(config)

    def read_request(self, request: Any) -> dict[str, np.ndarray]:
        """A request's input tensors as numpy arrays.

        Parameters
        ----------
        request : pb_utils.InferenceRequest
            The request.

        Returns
        -------
        dict of str to numpy.ndarray
            Input name -> array.
        """
        feed = {}
        for name, dtype in self.inputs.items():
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"request has no input {name!r}")
            feed[name] = np.asarray(to_numpy(tensor), dtype=dtype)
        sizes = {array.shape[0] for array in feed.values() if array.ndim > 1}  # token_counts etc. are 1-D
        if len(sizes) != 1:
            raise ValueError(f"inputs disagree on the batch size: {sorted(sizes)}")
        return feed

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """Run the graph on one feed.

        Parameters
        ----------
        feed : dict of str to numpy.ndarray
            The graph's inputs.

        Returns
        -------
        numpy.ndarray
            The graph's output.
        """
        return self.session.run([self.output], feed)[0].astype(np.float32, copy=False)

    def execute(self, requests: list[Any]) -> list[Any]:
        """Answer a list of requests (Triton calls this with the requests it batched together).

        Parameters
        ----------
        requests : list of pb_utils.InferenceRequest
            The requests.

        Returns
        -------
        list of pb_utils.InferenceResponse
            One response per request, in order; a bad request gets an error response.
        """
        if self.max_batch_size == 0:  # explicit shapes: requests are never merged
            return [self.execute_batch([request])[0] for request in requests]
        return self.execute_batch(requests)

    def execute_batch(self, requests: list[Any]) -> list[Any]:
        """Answer requests as one concatenated batch, split back per request.

        Parameters
        ----------
        requests : list of pb_utils.InferenceRequest
            The requests.

        Returns
        -------
        list of pb_utils.InferenceResponse
            One per request, in order.
        """
        responses: list[Any] = [None] * len(requests)
        batch: list[tuple[int, dict[str, np.ndarray]]] = []
        for index, request in enumerate(requests):
            try:
                batch.append((index, self.read_request(request)))
            except Exception as exc:  # one bad request must not fail the others
                responses[index] = error_response(f"sctranslator: bad request: {exc}")
        if batch:
            try:
                feed = {name: np.concatenate([inputs[name] for _, inputs in batch]) for name in self.inputs}
                predictions = self.run(feed)
                bounds = np.cumsum([0] + [len(next(iter(inputs.values()))) for _, inputs in batch])
                for (index, _), lo, hi in zip(batch, bounds[:-1], bounds[1:], strict=True):
                    outputs = [to_tensor(self.output, predictions[lo:hi])]
                    responses[index] = pb_utils.InferenceResponse(output_tensors=outputs)
            except Exception as exc:  # onnxruntime errors, shape mismatches between requests
                for index, _ in batch:
                    responses[index] = error_response(f"sctranslator: inference failed: {exc}")
        return responses

    def finalize(self) -> None:
        """Release what `initialize` loaded (Triton calls this when unloading the model)."""
        self.session = None
