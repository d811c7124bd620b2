"""Triton Python-backend BLS model: the client-facing `sctranslator` model over the encoder and decoder models.

`sctranslator export triton` copies this file as `<repo>/<name>/1/model.py`, with
sctranslator/graph/token_layout.py (numpy only) and triton_python_model.py (as graph_model.py, for its
stub-boundary helpers) beside it, because inside Triton the package cannot be imported.

Per request: values (B, L), gene_ids (B, L), gene_mask (B, L), protein_ids (B, k * P),
protein_mask (B, k * P) for any k >= 1 -> predictions (B, k * P). The requests Triton's dynamic
batcher merges into one `execute` are grouped by gene layout (the same gene ids and mask in every
cell); each group's cells are concatenated, the token layout built (padding collapsed), the encoder
model called once and the decoder model once per window of P proteins, and the predictions split
back per request. Requests of different layouts form different groups; requests whose own cells
differ in layout run together on the full (uncollapsed) layout.

The names of the two models and of every tensor come from the model configuration Triton hands to
`initialize` (written by export/triton_config.py from the graph contract, graph/contract.py).
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


TokenLayout = _sibling("token_layout.py", "sctranslator.graph.token_layout").TokenLayout
# The stub-boundary helpers (DLPack in and out, error responses, configuration dtypes) and the BLS
# calls are the graph model's, whose file is copied beside this one as graph_model.py.
_graph_model = _sibling("graph_model.py", "sctranslator.export.triton_python_model")
CONFIG_DTYPES = _graph_model.CONFIG_DTYPES
to_numpy, to_tensor, error_response = _graph_model.to_numpy, _graph_model.to_tensor, _graph_model.error_response
bls_infer = _graph_model.bls_infer


def layout_key(gene_ids: np.ndarray, gene_mask: np.ndarray) -> bytes | None:
    """What requests must share to run as one batch: the bytes of their one gene layout.

    Parameters
    ----------
    gene_ids : numpy.ndarray
        int64 ``(B, L)``.
    gene_mask : numpy.ndarray
        bool ``(B, L)``.

    Returns
    -------
    bytes or None
        The layout's bytes when every cell has the same ids and mask; None for a request whose cells
        differ (it runs on the full layout, uncollapsed, with every other such request).
    """
    ids, mask = np.asarray(gene_ids), np.asarray(gene_mask, dtype=bool)
    if ids.shape[0] == 0 or not ((ids == ids[:1]).all() and (mask == mask[:1]).all()):
        return None
    return ids[0].astype(np.int64).tobytes() + np.packbits(mask[0]).tobytes()


class TritonPythonModel:
    """Per call (the requests Triton merged): encoder once per gene layout, decoder once per protein window."""

    def initialize(self, args: dict[str, str]) -> None:
        """Load what the model serves (Triton calls this once per instance).

        Parameters
        ----------
        args : dict of str to str
            Triton's arguments: model_config (JSON), model_repository, model_version, model_instance_kind,
            model_instance_device_id, ...
        """
        config = json.loads(args["model_config"])
        parameters = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
        self.encoder_model = parameters["encoder_model"]
        self.decoder_model = parameters["decoder_model"]
        # The decoder model's max_batch_size: merged requests can carry more cells, sent in several calls.
        self.decoder_limit = int(parameters.get("decoder_max_batch_size") or 0)
        self.genes = int(parameters["sctranslator.max_genes"])
        self.proteins = int(parameters["sctranslator.max_proteins"])
        self.inputs = {tensor["name"]: CONFIG_DTYPES[tensor["data_type"]] for tensor in config.get("input") or []}
        self.output = config["output"][0]["name"]

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

    def run(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Predict one request.

        Parameters
        ----------
        arrays : dict of str to numpy.ndarray
            The request's five client-contract inputs.

        Returns
        -------
        numpy.ndarray
            float32 predictions ``(B, k * P)``.
        """
        return self.run_group([arrays])[0]

    def run_group(self, group: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        """Predict requests that share one gene layout (or all take the full layout) together.

        Their cells go through one encoder call and one decoder call per window, and the outputs are
        split back per request.

        Parameters
        ----------
        group : list of dict of str to numpy.ndarray
            The requests' inputs.

        Returns
        -------
        list of numpy.ndarray
            float32 ``(B_i, k_i * P)`` per request, in order.
        """
        sizes = [arrays["values"].shape[0] for arrays in group]
        widths = [arrays["protein_ids"].shape[1] for arrays in group]

        def joined(name: str) -> np.ndarray:
            return group[0][name] if len(group) == 1 else np.concatenate([arrays[name] for arrays in group])

        values, gene_ids, gene_mask = joined("values"), joined("gene_ids"), joined("gene_mask")
        layout = TokenLayout.for_batch(gene_ids, gene_mask, values)
        translated = bls_infer(self.encoder_model, layout.encoder_inputs(values, gene_ids, gene_mask),
                                "translated")
        bounds = np.cumsum([0, *sizes])
        outputs: list[list[np.ndarray]] = [[] for _ in group]
        for lo in range(0, max(widths), self.proteins):
            # Requests asking fewer windows than others sit this window out (their rows are left out).
            taking = [i for i, width in enumerate(widths) if width > lo]
            if len(taking) == len(group):
                rows, window_translated = None, translated
            else:
                rows = np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in taking])
                window_translated = np.ascontiguousarray(translated[rows])
            feed = {"translated": window_translated,
                    "protein_ids": np.concatenate([group[i]["protein_ids"][:, lo:lo + self.proteins]
                                                   for i in taking]),
                    "protein_mask": np.concatenate([group[i]["protein_mask"][:, lo:lo + self.proteins]
                                                    for i in taking])}
            predicted = bls_infer(self.decoder_model, feed, self.output, self.decoder_limit)
            start = 0
            for i in taking:
                outputs[i].append(predicted[start:start + sizes[i]])
                start += sizes[i]
        return [np.concatenate(parts, axis=1).astype(np.float32, copy=False) for parts in outputs]

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
        responses: list[Any] = [None] * len(requests)
        groups: dict[bytes | None, list[tuple[int, dict[str, np.ndarray]]]] = {}
        for index, request in enumerate(requests):
            try:  # one bad request must not fail the others
                arrays = self.read_request(request)
            except Exception as exc:
                responses[index] = error_response(f"sctranslator: bad request: {exc}")
                continue
            groups.setdefault(layout_key(arrays["gene_ids"], arrays["gene_mask"]), []).append((index, arrays))
        for members in groups.values():
            try:
                predictions = self.run_group([arrays for _, arrays in members])
            except Exception as exc:  # the encoder or decoder model failed: this group's requests fail
                for index, _ in members:
                    responses[index] = error_response(f"sctranslator: inference failed: {exc}")
                continue
            for (index, _), predicted in zip(members, predictions, strict=True):
                responses[index] = pb_utils.InferenceResponse(output_tensors=[to_tensor(self.output, predicted)])
        return responses

    def finalize(self) -> None:
        """Release what `initialize` loaded (Triton calls this when unloading the model)."""
        pass
