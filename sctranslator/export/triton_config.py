"""Triton model configurations (config.pbtxt) for an exported sctranslator model: three models.

- `<name>_encoder`: the encoder + translator graph (onnxruntime backend; python backend running
  the same ONNX for Triton builds without it), explicit shapes, no batching across requests;
- `<name>_decoder`: the decoder graph, batchable;
- `<name>`: the client-facing model with the contract's five inputs and one output (graph/
  contract.py INPUTS, OUTPUT), a Python-backend BLS model (triton_bls_model.py) that builds the
  token layout, calls the encoder once per execution and gene layout (requests Triton merged that
  share a layout run as one batch) and the decoder once per protein window. Its
  protein axis takes any multiple of P, so a client sends all windows of a cell in one request.

The configuration is built as Triton's own protobuf message (tritonclient ships
`model_config_pb2`) and printed with protobuf's text format, so every field name and enum is
checked by the definitions Triton itself parses, rather than by a hand-written template.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from sctranslator.errors import ExportError
from sctranslator.graph.contract import DECODER, ENCODER, GENES, INPUTS, OUTPUT, PRECISION_NAMES, GraphSpec
from sctranslator.options import INSTANCE_KINDS, SERVING_BACKENDS  # the one list of choices

DEFAULT_MODEL_NAME = "sctranslator"
ONNX_FILE = "model.onnx"
PYTHON_FILE = "model.py"
LAYOUT_FILE = "token_layout.py"  # copied beside the BLS model.py (which cannot import sctranslator)
ENCODER_SUFFIX = "_encoder"
DECODER_SUFFIX = "_decoder"

# Config parameters the client reads back through Triton's model-config API (the same facts
# as the ONNX metadata, which the ONNX Runtime backend does not expose).
PARAM_PREFIX = "sctranslator."
PARAM_CONFIG = PARAM_PREFIX + "config"
PARAM_PANEL = PARAM_PREFIX + "panel"
PARAM_FINGERPRINT = PARAM_PREFIX + "fingerprint"
PARAM_PRECISION = PARAM_PREFIX + "precision"
PARAM_VERSION = PARAM_PREFIX + "version"
PARAM_MAX_GENES = PARAM_PREFIX + "max_genes"
PARAM_MAX_PROTEINS = PARAM_PREFIX + "max_proteins"
# Read by the Python-backend model.py.
PARAM_ONNX_FILE = "onnx_file"
PARAM_INTRA_OP_THREADS = "intra_op_threads"
# Read by the BLS model.py: the models it calls.
PARAM_ENCODER_MODEL = "encoder_model"
PARAM_DECODER_MODEL = "decoder_model"
# The most cells one call to the decoder model may carry (its max_batch_size); callers split beyond it.
PARAM_DECODER_MAX_BATCH = "decoder_max_batch_size"



@dataclass(frozen=True)
class ServingSettings:
    """How Triton should serve the model: backend, batching and instances.

    Parameters
    ----------
    name : str
        The client-facing model's name in the repository.
    backend : {'onnxruntime', 'tensorrt', 'python'}
        The Triton backend of the two graph models.
    max_batch_size : int
        Cells per request.
    instances : int
        Model instances.
    kind : {'gpu', 'cpu'} or None
        Where instances run; None: gpu for onnxruntime / tensorrt, cpu for python.
    dynamic_batching : bool
        Let Triton merge requests.
    preferred_batch_sizes : tuple of int
        Batch sizes the dynamic batcher aims for (needs `dynamic_batching`).
    max_queue_delay_us : int or None
        Longest wait of a request for others to batch with, in microseconds.
    precision : {'fp32', 'fp16', 'bf16'}
        The graphs' compute dtype.
    intra_op_threads : int or None
        Python backend: onnxruntime threads per instance.
    """

    name: str = DEFAULT_MODEL_NAME
    backend: str = "onnxruntime"
    max_batch_size: int = 64
    instances: int = 1
    kind: str | None = None  # None: gpu for onnxruntime/tensorrt, cpu for python
    dynamic_batching: bool = False
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int | None = None
    precision: str = "fp32"
    intra_op_threads: int | None = None  # python backend: onnxruntime threads per instance

    @property
    def instance_kind(self) -> str:
        """Where instances run: `kind`, or its default for the backend."""
        return self.kind or ("cpu" if self.backend == "python" else "gpu")

    def check(self) -> None:
        """Refuse settings Triton would reject or that cannot work.

        Raises
        ------
        ExportError
            An unknown backend, kind or precision, an invalid name, sizes below 1, or batching
            options without `dynamic_batching`.
        """
        if self.backend not in SERVING_BACKENDS:
            raise ExportError(f"unknown Triton backend {self.backend!r}; choose one of {SERVING_BACKENDS}")
        if self.instance_kind not in INSTANCE_KINDS:
            raise ExportError(f"unknown instance kind {self.kind!r}; choose one of {INSTANCE_KINDS}")
        if self.precision not in PRECISION_NAMES:
            raise ExportError(f"unknown precision {self.precision!r}; choose one of {sorted(PRECISION_NAMES)}")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ExportError(f"model name {self.name!r} is not a valid directory name for a Triton repository")
        if self.max_batch_size < 1:
            raise ExportError(f"--max-batch-size must be >= 1, got {self.max_batch_size}")
        if self.instances < 1:
            raise ExportError(f"--instances must be >= 1, got {self.instances}")
        if self.backend == "tensorrt" and self.instance_kind != "gpu":
            raise ExportError("--backend tensorrt runs on the GPU only; use --kind gpu (or --backend onnxruntime)")
        too_big = [size for size in self.preferred_batch_sizes if size < 1 or size > self.max_batch_size]
        if too_big:
            raise ExportError(f"preferred batch sizes {too_big} must lie in 1..max_batch_size "
                              f"({self.max_batch_size})")
        if (self.preferred_batch_sizes or self.max_queue_delay_us is not None) and not self.dynamic_batching:
            raise ExportError("--preferred-batch-sizes and --max-queue-delay-us need --dynamic-batching")
        if self.max_queue_delay_us is not None and self.max_queue_delay_us < 0:
            raise ExportError(f"--max-queue-delay-us must be >= 0, got {self.max_queue_delay_us}")


def model_parameters(metadata: dict[str, Any]) -> dict[str, str]:
    """Config parameters from the ONNX file's sctranslator metadata.

    Parameters
    ----------
    metadata : dict
        `read_onnx_metadata`'s dict.

    Returns
    -------
    dict of str to str
        Parameter -> value (config, panel, fingerprint, precision, ...).
    """
    config = metadata["config"]
    return {
        PARAM_CONFIG: json.dumps(config, sort_keys=True),
        PARAM_PANEL: json.dumps(metadata.get("panel"), sort_keys=True),
        PARAM_FINGERPRINT: str(metadata.get("fingerprint", "")),
        PARAM_PRECISION: str(metadata["precision"]),
        PARAM_VERSION: str(metadata["version"]),
        PARAM_MAX_GENES: str(config["max_genes"]),
        PARAM_MAX_PROTEINS: str(config["max_proteins"]),
    }


def graph_model_names(name: str) -> dict[str, str]:
    """The Triton names of the encoder and decoder models behind a client-facing model.

    Parameters
    ----------
    name : str
        The client-facing model's name.

    Returns
    -------
    dict of str to str
        Role ("encoder", "decoder") -> model name.
    """
    return {"encoder": name + ENCODER_SUFFIX, "decoder": name + DECODER_SUFFIX}


def _instances(config: mc.ModelConfig, settings: ServingSettings, kind: str) -> None:
    group = mc.ModelInstanceGroup.KIND_GPU if kind == "gpu" else mc.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(count=settings.instances, kind=group)


def _dynamic_batching(config: mc.ModelConfig, settings: ServingSettings) -> None:
    if settings.dynamic_batching:
        batching = config.dynamic_batching
        batching.SetInParent()  # an empty `dynamic_batching {}` block still turns it on
        batching.preferred_batch_size.extend(settings.preferred_batch_sizes)
        if settings.max_queue_delay_us is not None:
            batching.max_queue_delay_microseconds = settings.max_queue_delay_us


def _parameters(config: mc.ModelConfig, parameters: dict[str, str]) -> None:
    for key, value in sorted(parameters.items()):
        config.parameters[key].string_value = value


def client_config(settings: ServingSettings, max_genes: int, max_proteins: int,
                  parameters: dict[str, str]) -> mc.ModelConfig:
    """The client-facing BLS model's configuration: the client contract's tensors.

    Genes ``(B, L)``, proteins ``(B, k * P)`` for any k >= 1 (all windows of a cell at once).

    Parameters
    ----------
    settings : ServingSettings
        How the models are served.
    max_genes : int
        L.
    max_proteins : int
        P.
    parameters : dict of str to str
        Config parameters (see `model_parameters`).

    Returns
    -------
    ModelConfig
        Triton's model configuration message.
    """
    settings.check()
    config = mc.ModelConfig(name=settings.name, max_batch_size=settings.max_batch_size, backend="python")
    # dims exclude the batch axis: Triton adds it because max_batch_size > 0.
    for tensor in INPUTS:
        width = max_genes if tensor.axis == GENES else -1
        config.input.add(name=tensor.name, data_type=mc.DataType.Value(tensor.triton_config_type), dims=[width])
    config.output.add(name=OUTPUT.name, data_type=mc.DataType.Value(OUTPUT.triton_config_type), dims=[-1])
    # The BLS step is numpy and two calls: CPU instances whatever serves the graphs.
    _instances(config, settings, "cpu")
    _dynamic_batching(config, settings)
    names = graph_model_names(settings.name)
    _parameters(config, {**parameters, PARAM_ENCODER_MODEL: names["encoder"], PARAM_DECODER_MODEL: names["decoder"],
                         PARAM_DECODER_MAX_BATCH: str(settings.max_batch_size),
                         PARAM_MAX_GENES: str(max_genes), PARAM_MAX_PROTEINS: str(max_proteins)})
    return config


def graph_config(settings: ServingSettings, spec: GraphSpec, max_proteins: int, dim: int,
                 parameters: dict[str, str]) -> mc.ModelConfig:
    """The configuration of the model serving one graph (ENCODER or DECODER).

    Parameters
    ----------
    settings : ServingSettings
        How the models are served.
    spec : GraphSpec
        The graph.
    max_proteins : int
        P.
    dim : int
        The model's embedding width.
    parameters : dict of str to str
        Config parameters (see `model_parameters`).

    Returns
    -------
    ModelConfig
        Triton's model configuration message.
    """
    settings.check()
    name = graph_model_names(settings.name)[spec.role]
    config = mc.ModelConfig(name=name)
    if settings.backend == "python":
        config.backend = "python"
    else:  # the ONNX Runtime backend serves both plain and TensorRT-accelerated graphs
        config.platform = "onnxruntime_onnx"
        config.backend = "onnxruntime"
        config.default_model_filename = ONNX_FILE
    if spec is ENCODER:
        # Not batched across requests: token_counts and token_positions describe the one token layout
        # every cell of a call shares; Triton batching would stack two requests' layouts into one call.
        # max_batch_size 0 declares every axis explicitly (batch and tokens dynamic).
        config.max_batch_size = 0
        drop = 0
    else:
        # Every cell is independent in the decoder: Triton may batch requests (the batch axis is implicit).
        config.max_batch_size = settings.max_batch_size
        drop = 1
        # Its callers are the client-facing model's instances, each waiting for its answer: calls that
        # are queued together are merged, but waiting for more (the queue delay) only delays a call.
        _dynamic_batching(config, replace(settings, max_queue_delay_us=None))
    for tensor in spec.inputs:
        config.input.add(name=tensor.name, data_type=mc.DataType.Value(tensor.triton_config_type),
                         dims=[d if isinstance(d, int) else -1 for d in tensor.dims(max_proteins, dim)][drop:])
    for tensor in spec.outputs:
        config.output.add(name=tensor.name, data_type=mc.DataType.Value(tensor.triton_config_type),
                          dims=[d if isinstance(d, int) else -1 for d in tensor.dims(max_proteins, dim)][drop:])
    _instances(config, settings, settings.instance_kind)
    if settings.backend == "tensorrt":
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        # TensorRT builds fp16 kernels itself; bf16 graphs keep TensorRT at FP32 (no bf16 mode there).
        accelerator.parameters["precision_mode"] = "FP16" if settings.precision == "fp16" else "FP32"
        accelerator.parameters["max_workspace_size_bytes"] = str(1 << 30)
    all_parameters = dict(parameters)
    if settings.backend == "python":
        all_parameters[PARAM_ONNX_FILE] = ONNX_FILE
        if settings.intra_op_threads:
            all_parameters[PARAM_INTRA_OP_THREADS] = str(settings.intra_op_threads)
    _parameters(config, all_parameters)
    return config


def build_configs(settings: ServingSettings, max_genes: int, max_proteins: int, dim: int,
                  parameters: dict[str, str]) -> dict[str, mc.ModelConfig]:
    """The configurations of the three models a repository serves for ``settings.name``.

    Parameters
    ----------
    settings : ServingSettings
        How the models are served.
    max_genes : int
        L.
    max_proteins : int
        P.
    dim : int
        The model's embedding width.
    parameters : dict of str to str
        Config parameters (see `model_parameters`).

    Returns
    -------
    dict of str to ModelConfig
        Model name -> configuration.
    """
    configs = [client_config(settings, max_genes, max_proteins, parameters),
               graph_config(settings, ENCODER, max_proteins, dim, parameters),
               graph_config(settings, DECODER, max_proteins, dim, parameters)]
    return {config.name: config for config in configs}


def render_config(config: mc.ModelConfig) -> str:
    """config.pbtxt text for a model configuration.

    Parameters
    ----------
    config : ModelConfig
        Triton's model configuration message.

    Returns
    -------
    str
        Protobuf text format.
    """
    return text_format.MessageToString(config)


def parse_config(text: str) -> mc.ModelConfig:
    """A config.pbtxt parsed back with Triton's definitions.

    Parameters
    ----------
    text : str
        Protobuf text format.

    Returns
    -------
    ModelConfig
        The message.

    Raises
    ------
    ExportError
        The text does not parse.
    """
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as exc:
        raise ExportError(f"not a valid Triton model configuration: {exc}") from exc
