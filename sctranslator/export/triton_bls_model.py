"""Triton Python-backend BLS model: the client-facing `sctranslator` model over the encoder and decoder models.

`sctranslator export triton` copies this file as `<repo>/<name>/1/model.py`, with
sctranslator/token_layout.py (numpy only) and triton_python_model.py (as graph_model.py, for its
stub-boundary helpers) beside it, because inside Triton the package cannot be imported.

Per request: values (B, L), gene_ids (B, L), gene_mask (B, L), protein_ids (B, k * P),
protein_mask (B, k * P) for any k >= 1 -> predictions (B, k * P). It builds the token layout
(padding collapsed when every cell shares one gene layout), calls the encoder model once and the
decoder model once per window of P proteins, all on the same translation.

The names of the two models and of every tensor come from the model configuration Triton hands to
`initialize` (written by export/triton_config.py from the graph contract, export/contract.py).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from typing import Any

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton: tests and linters
    pb_utils = None

def _sibling(file_name: str, package_module: str) -> Any:
    """The module of `file_name` copied beside this file (inside Triton), else the installed package's."""
    beside = os.path.join(os.path.dirname(os.path.abspath(__file__)), file_name)
    if not os.path.exists(beside):
        return importlib.import_module(package_module)
    spec = importlib.util.spec_from_file_location(f"sctranslator_bls_{file_name[:-3]}", beside)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]  # dataclasses look the module up
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


TokenLayout = _sibling("token_layout.py", "sctranslator.token_layout").TokenLayout
# The stub-boundary helpers (DLPack in and out, error responses, configuration dtypes) are the
# graph model's, whose file is copied beside this one as graph_model.py.
_graph_model = _sibling("graph_model.py", "sctranslator.export.triton_python_model")
CONFIG_DTYPES = _graph_model.CONFIG_DTYPES
to_numpy, to_tensor, error_response = _graph_model.to_numpy, _graph_model.to_tensor, _graph_model.error_response


class TritonPythonModel:
    """Encoder once per request, decoder once per protein window."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
        self.encoder_model = parameters["encoder_model"]
        self.decoder_model = parameters["decoder_model"]
        self.genes = int(parameters["sctranslator.max_genes"])
        self.proteins = int(parameters["sctranslator.max_proteins"])
        self.inputs = {tensor["name"]: CONFIG_DTYPES[tensor["data_type"]] for tensor in config.get("input") or []}
        self.output = config["output"][0]["name"]

    def read_request(self, request: Any) -> dict[str, np.ndarray]:
        arrays = {}
        for name, dtype in self.inputs.items():
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"request has no input {name!r}")
            arrays[name] = np.asarray(to_numpy(tensor), dtype=dtype)
        batch = arrays["values"].shape[0]
        for name in ("values", "gene_ids", "gene_mask"):
            if arrays[name].shape != (batch, self.genes):
                raise ValueError(f"{name} has shape {arrays[name].shape}, expected ({batch}, {self.genes})")
        width = arrays["protein_ids"].shape[-1] if arrays["protein_ids"].ndim == 2 else -1
        for name in ("protein_ids", "protein_mask"):
            shape = arrays[name].shape
            if len(shape) != 2 or shape[0] != batch or shape[1] != width or width < 1 or width % self.proteins:
                raise ValueError(f"{name} has shape {shape}, expected ({batch}, k * {self.proteins}) for k >= 1, "
                                 "as protein_ids")
        return arrays

    def infer(self, model: str, feed: dict[str, np.ndarray], output: str) -> np.ndarray:
        """One BLS call to `model`; RuntimeError with the callee's message when it fails."""
        request = pb_utils.InferenceRequest(model_name=model, requested_output_names=[output],
                                            inputs=[to_tensor(name, array) for name, array in feed.items()])
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{model}: {response.error().message()}")
        return np.array(to_numpy(pb_utils.get_output_tensor_by_name(response, output)))

    def run(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """predictions (B, k * P) float32 for one request's arrays."""
        values, gene_ids, gene_mask = arrays["values"], arrays["gene_ids"], arrays["gene_mask"]
        layout = TokenLayout.for_batch(gene_ids, gene_mask, values)
        translated = self.infer(self.encoder_model, layout.encoder_inputs(values, gene_ids, gene_mask),
                                "translated")
        outputs = []
        for lo in range(0, arrays["protein_ids"].shape[1], self.proteins):
            feed = {"translated": translated,
                    "protein_ids": np.ascontiguousarray(arrays["protein_ids"][:, lo:lo + self.proteins]),
                    "protein_mask": np.ascontiguousarray(arrays["protein_mask"][:, lo:lo + self.proteins])}
            outputs.append(self.infer(self.decoder_model, feed, self.output))
        return np.concatenate(outputs, axis=1).astype(np.float32, copy=False)

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:  # each request its own layout; one bad request must not fail the others
            try:
                arrays = self.read_request(request)
            except Exception as exc:
                responses.append(error_response(f"sctranslator: bad request: {exc}"))
                continue
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=[to_tensor(self.output,
                                                                                      self.run(arrays))]))
            except Exception as exc:  # the encoder or decoder model failed
                responses.append(error_response(f"sctranslator: inference failed: {exc}"))
        return responses

    def finalize(self) -> None:
        pass
