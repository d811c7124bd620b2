"""Triton Python-backend model `<name>_counts`: raw counts + gene names + protein names -> predictions.

`sctranslator export triton` copies this file as `<repo>/<name>_counts/1/model.py`, with
`model_facts.json` and a copy of the exporting `sctranslator` package beside it
(export/triton_counts.py). It does what `translate` does,
with the same code: the plan (identifier detection and mapping with the model's own mapping mode,
protein mapping, coverage check), the block checks (NaN, infinite, negative values, empty cells),
`prepare_values` (normalisation and per-cell scaling), the token layout (padding collapse), then
BLS calls to `<name>_encoder` (once per gene layout) and `<name>_decoder` (once per protein window).
It imports that package copy (put first on sys.path), so the identifier tables and the code are
those of the export; the package's dependencies (numpy, pandas, scipy, numba, torch) must be in
the Python environment of Triton's stub, as they are where `sctranslator serve` runs it.

Requests that arrive together (dynamic batching) and share a gene layout run as one encoder call
and one decoder call per window. A bad request gets its own error response, `TYPE: message` with
the text `translate` raises, and the other requests of the call still succeed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import OrderedDict
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton: tests and linters
    pb_utils = None

PLAN_CACHE = 16  # plans kept per instance: a service sees few (gene names, proteins) pairs


@dataclass
class Prepared:
    """One request, checked and prepared: model values and the plan's layout and windows.

    Parameters
    ----------
    index : int
        Its position in `execute`'s request list.
    values : numpy.ndarray
        float32 ``(B, L)`` model values.
    plan : Plan
        The request's plan.
    """

    index: int  # position in execute()'s request list
    values: np.ndarray  # float32 (B, L)
    plan: Any  # sctranslator.plan.Plan


class _RequestSource:
    """The smallest Source the block runner needs, so bad values are reported in translate's words."""

    def __init__(self, counts: np.ndarray, genes: Any) -> None:
        import pandas as pd

        self.counts = counts
        self.obs_names = pd.Index([f"cell{i}" for i in range(counts.shape[0])])
        self.var = pd.DataFrame(index=genes)

    def read_block(self, start: int, stop: int) -> np.ndarray:
        return self.counts[start:stop]

    def describe(self) -> str:
        return "the request's counts"


# The KServe v2 request parameters a client may send ("parameters": {...} in the request JSON), with
# the meaning of translate's arguments of the same name; other parameters are Triton's or ignored.
REQUEST_FLAGS = ("allow_low_coverage", "allow_empty_cells")
# translate's advice names CLI flags; a client of the server sets request parameters instead.
SERVER_WORDS = (
    ("Check the identifier type (--id-type / --gene-column), or pass --allow-low-coverage to go on.",
     'Check gene_names (symbols, Ensembl or Entrez IDs), or send the request parameter "allow_low_coverage": '
     'true to go on.'),
    ("pass --allow-empty-cells (allow_empty_cells=True) to", 'send the request parameter "allow_empty_cells": true to'),
    ("--allow-low-coverage", 'the request parameter "allow_low_coverage": true'),
    ("--min-coverage", 'the request parameter "min_coverage"'),
)


def server_words(message: str) -> str:
    """translate's error text with its command-line flags replaced by the request parameters that do the same.

    Parameters
    ----------
    message : str
        An error message.

    Returns
    -------
    str
        The message as a Triton client should read it.
    """
    for cli, parameter in SERVER_WORDS:
        message = message.replace(cli, parameter)
    return message


@dataclass(frozen=True)
class RequestOptions:
    """A request's allowances, as translate's arguments of the same names.

    Parameters
    ----------
    allow_low_coverage : bool
        Go on below the minimum gene coverage.
    allow_empty_cells : bool
        Predict cells without counts in the model's genes.
    min_coverage : float or None
        The minimum coverage; None: the model's default.
    """

    allow_low_coverage: bool = False
    allow_empty_cells: bool = False
    min_coverage: float | None = None  # None: the model's default


def request_options(text: str | None) -> RequestOptions:
    """A request's allowances from its parameters.

    Parameters
    ----------
    text : str or None
        ``request.parameters()``: a JSON object as text.

    Returns
    -------
    RequestOptions
        The allowances (defaults for those not given).

    Raises
    ------
    InputDataError
        A parameter of the wrong type or range (named).
    """
    from sctranslator.errors import InputDataError

    try:
        given = json.loads(text or "{}")
    except ValueError as exc:
        raise InputDataError(f"the request's parameters are not a JSON object: {exc}") from exc
    values: dict[str, Any] = {}
    for name in REQUEST_FLAGS:
        value = given.get(name, False)
        if isinstance(value, str) and value.lower() in ("true", "false"):  # clients that send only strings
            value = value.lower() == "true"
        if not isinstance(value, bool):
            raise InputDataError(f"request parameter {name!r} must be true or false, got {value!r}")
        values[name] = value
    if "min_coverage" in given:
        value = given["min_coverage"]
        try:
            number = float(value) if not isinstance(value, bool) else float("nan")
        except (TypeError, ValueError):
            number = float("nan")
        if not 0.0 <= number <= 1.0:
            raise InputDataError(f"request parameter 'min_coverage' must be a number in 0..1 (a fraction of the "
                                 f"genes), got {value!r}")
        values["min_coverage"] = number
    return RequestOptions(**values)


def _strings(array: np.ndarray) -> list[str]:
    return [item.decode("utf-8") if isinstance(item, bytes) else str(item) for item in np.ravel(array)]


class TritonPythonModel:
    """Plans, checks and prepares each request; encoder once per gene layout, decoder once per window."""

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
        here = os.path.join(args["model_repository"], args["model_version"])
        # The package copy written at export, before any installed sctranslator.
        package = os.path.join(here, parameters.get("package_dir", "sctranslator"))
        if os.path.isdir(package) and os.path.dirname(package) not in sys.path:
            sys.path.insert(0, os.path.dirname(package))
        with open(os.path.join(here, parameters.get("facts_file", "model_facts.json")), encoding="utf-8") as handle:
            facts = json.load(handle)
        from sctranslator import plan as plan_module
        from sctranslator.engine.block_runner import BlockRunner
        from sctranslator.export import triton_python_model as graph_model
        from sctranslator.graph.token_layout import TokenLayout

        self.plan_module, self.BlockRunner, self.TokenLayout = plan_module, BlockRunner, TokenLayout
        self.to_numpy, self.to_tensor = graph_model.to_numpy, graph_model.to_tensor
        self.error_response, self.bls_infer = graph_model.error_response, graph_model.bls_infer
        self.model = SimpleNamespace(config=SimpleNamespace(**facts["config"]), panel=facts.get("panel"),
                                     preprocessing=facts.get("preprocessing"))
        self.facts = facts
        self.proteins = int(facts["config"]["max_proteins"])
        self.encoder_model = parameters["encoder_model"]
        self.decoder_model = parameters["decoder_model"]
        # The decoder model's max_batch_size: merged requests can carry more cells, sent in several calls.
        self.decoder_limit = int(parameters.get("decoder_max_batch_size") or 0)
        self.plans: OrderedDict[tuple, Any] = OrderedDict()

    # --- one request -------------------------------------------------------------------------------
    def plan_for(self, genes: list[str], proteins: list[str], options: RequestOptions | None = None) -> Any:
        """The plan of (gene names, protein names), as translate builds it with the request's allowances.

        Cached per (genes, proteins, allowances).

        Parameters
        ----------
        genes : list of str
            The request's gene names.
        proteins : list of str
            The proteins asked for.
        options : RequestOptions or None
            The request's allowances.

        Returns
        -------
        Plan
            The plan.

        Raises
        ------
        SctranslatorError
            As `build_plan` (coverage, unknown proteins).
        """
        options = options or RequestOptions()
        min_coverage = float(self.facts["min_coverage"]) if options.min_coverage is None else options.min_coverage
        key = (tuple(genes), tuple(proteins), options.allow_low_coverage, min_coverage)
        plan = self.plans.get(key)
        if plan is None:
            import pandas as pd

            plan = self.plan_module.build_plan(pd.DataFrame(index=pd.Index(genes)), self.model, proteins,
                                               gene_mapping=self.facts["gene_mapping"],
                                               min_coverage=min_coverage,
                                               allow_low_coverage=options.allow_low_coverage)
            self.plans[key] = plan
            if len(self.plans) > PLAN_CACHE:
                self.plans.popitem(last=False)
        else:
            self.plans.move_to_end(key)
        return plan

    def prepare(self, request: Any, index: int) -> Prepared:
        """Read, plan, check and prepare one request.

        Parameters
        ----------
        request : pb_utils.InferenceRequest
            The request.
        index : int
            Its position in the list.

        Returns
        -------
        Prepared
            The model values and plan.

        Raises
        ------
        SctranslatorError
            A bad request (unknown proteins, low coverage, bad cells).
        ValueError
            Malformed tensors.
        """
        arrays = {}
        for name in ("counts", "gene_names", "protein_names"):
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"the request has no input {name!r}")
            arrays[name] = tensor.as_numpy() if name != "counts" else np.asarray(self.to_numpy(tensor))
        from sctranslator.errors import InputDataError

        items = {name: array.shape[0] if array.ndim else 0 for name, array in arrays.items()}
        if set(items.values()) != {1}:
            raise InputDataError(f"each request is one batch item: the first axis of every input must be 1, got "
                                 f"{items}; send counts [1, cells, genes], gene_names [1, genes], protein_names "
                                 "[1, proteins]")
        counts = np.asarray(arrays["counts"], dtype=np.float32)[0]
        genes, proteins = _strings(arrays["gene_names"]), _strings(arrays["protein_names"])
        if counts.ndim != 2 or counts.shape[1] != len(genes):
            raise InputDataError(f"counts has shape {[1, *counts.shape]}; expected [1, cells, {len(genes)}]: one "
                                 "row per cell and one column per entry of gene_names")
        if counts.shape[0] == 0:
            raise InputDataError("counts has no cells (shape [1, 0, genes]); send at least one row")
        options = request_options(request.parameters() if hasattr(request, "parameters") else None)
        plan = self.plan_for(genes, proteins, options)
        runner = self.BlockRunner(_RequestSource(counts, genes), plan, allow_empty_cells=options.allow_empty_cells)
        block = runner.read(0, counts.shape[0])
        return Prepared(index, runner.prepare(block.data), plan)

    # --- the graphs --------------------------------------------------------------------------------
    def run_group(self, group: list[Prepared]) -> list[np.ndarray]:
        """Predictions of requests sharing one gene layout: the encoder once, the decoder once per window.

        Parameters
        ----------
        group : list of Prepared
            The requests.

        Returns
        -------
        list of numpy.ndarray
            float32 ``(B_i, n_proteins_i)`` per request, in order.
        """
        plan = group[0].plan
        values = np.concatenate([item.values for item in group]) if len(group) > 1 else group[0].values
        layout = self.TokenLayout.for_layout(plan.gene_ids, plan.position_real)
        if not layout.fits(values):  # a padded-looking position holds a value: compute it as a token
            layout = self.TokenLayout.for_layout(plan.gene_ids, plan.position_real, values)
        translated = self.bls_infer(self.encoder_model,
                                layout.encoder_inputs(values, plan.gene_ids, plan.position_real), "translated")
        sizes = [item.values.shape[0] for item in group]
        bounds = np.cumsum([0, *sizes])
        windows = [item.plan.n_windows for item in group]
        outputs: list[list[np.ndarray]] = [[] for _ in group]
        for window in range(max(windows)):
            members = [k for k, count in enumerate(windows) if count > window]  # requests with this window
            rows = np.concatenate([np.arange(bounds[k], bounds[k + 1]) for k in members])
            ids = np.concatenate([np.broadcast_to(group[k].plan.protein_windows[window], (sizes[k], self.proteins))
                                  for k in members])
            mask = np.concatenate([np.broadcast_to(group[k].plan.protein_window_mask[window],
                                                   (sizes[k], self.proteins)) for k in members])
            feed = {"translated": translated if len(members) == len(group) else translated[rows],
                    "protein_ids": np.ascontiguousarray(ids, dtype=np.int64),
                    "protein_mask": np.ascontiguousarray(mask, dtype=np.bool_)}
            predicted = self.bls_infer(self.decoder_model, feed, "predictions", self.decoder_limit)
            offsets = np.cumsum([0, *(sizes[k] for k in members)])
            for j, k in enumerate(members):
                outputs[k].append(predicted[offsets[j]:offsets[j + 1]])
        return [np.concatenate(parts, axis=1)[:, item.plan.output_index].astype(np.float32, copy=False)
                for parts, item in zip(outputs, group, strict=True)]

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
        groups: dict[bytes, list[Prepared]] = {}
        for index, request in enumerate(requests):
            try:
                item = self.prepare(request, index)
            except Exception as exc:  # one bad request must not fail the others: a user error, HTTP 400
                responses[index] = self.user_error(f"{type(exc).__name__}: {server_words(str(exc))}")
                continue
            key = hashlib.sha1(item.plan.gene_ids.tobytes() + item.plan.position_real.tobytes()).digest()
            groups.setdefault(key, []).append(item)
        for group in groups.values():
            try:
                predictions = self.run_group(group)
            except Exception as exc:  # the encoder or decoder model failed
                for item in group:
                    responses[item.index] = self.error_response(f"ServerError: inference failed: {exc}")
                continue
            for item, array in zip(group, predictions, strict=True):
                responses[item.index] = pb_utils.InferenceResponse(
                    output_tensors=[self.to_tensor("predictions", array[np.newaxis])])
        return responses

    def user_error(self, message: str) -> Any:
        """An error response for a bad request.

        INVALID_ARG (HTTP 400, gRPC INVALID_ARGUMENT) where the Python backend has error codes (Triton
        23.06 and later), else the default (500).

        Parameters
        ----------
        message : str
            What was wrong.

        Returns
        -------
        pb_utils.InferenceResponse
            The response.
        """
        code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
        if code is None:
            return self.error_response(message)
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))

    def finalize(self) -> None:
        """Release what `initialize` loaded (Triton calls this when unloading the model)."""
        self.plans.clear()
