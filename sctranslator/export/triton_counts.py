"""The names-in Triton model `<name>_counts`: raw counts, gene names and protein names in, predictions out.

Any KServe-v2 client (curl, tritonclient, perf_analyzer) can call it with what a user has:

- `counts` FP32 [cells, genes]: raw counts as the user has them (not normalised, not scaled);
- `gene_names` BYTES [genes]: the counts' columns, as symbols, Ensembl or Entrez IDs (detected as
  `translate` detects them, mapped with the model's own gene mapping);
- `protein_names` BYTES [proteins]: antibody or gene names, any number, mapped as `--proteins`;
- output `predictions` FP32 [cells, proteins], in the order asked.

One request is one item of Triton's batch axis: every tensor carries a leading axis of size 1
(counts [1, cells, genes], gene_names [1, genes], protein_names [1, proteins], predictions [1,
cells, proteins]), since the three inputs have different lengths (cells, genes, proteins) and
Triton batches along one shared first axis. `max_batch_size` bounds the requests one execution
takes, and `allow_ragged_batch` lets the dynamic batcher hand requests of different shapes to one
`execute` call, where the model groups them by gene layout (triton_counts_model.py): one encoder
call per layout and one decoder call per protein window. (With `max_batch_size: 0` Triton runs
every request on its own.)

Written at export beside the model's `model.py` (triton_counts_model.py): `model_facts.json`
(model configuration, panels, preprocessing, gene mapping, fingerprint, precision) and a copy of
the `sctranslator` package that exported it, with its identifier tables, so the server plans,
checks and prepares exactly as `translate` of that version does (its dependencies, numpy, pandas,
scipy, numba and torch, come from the stub's Python environment).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from sctranslator.export.triton_config import (
    PARAM_DECODER_MAX_BATCH,
    PARAM_DECODER_MODEL,
    PARAM_ENCODER_MODEL,
    PYTHON_FILE,
    ServingSettings,
    graph_model_names,
)
from sctranslator.options import DEFAULT_MIN_COVERAGE

COUNTS_SUFFIX = "_counts"
FACTS_FILE = "model_facts.json"
PACKAGE_DIR = "sctranslator"  # the package copy, beside model.py
PACKAGE_SOURCE = Path(__file__).resolve().parents[1]
# Not needed to serve: bytecode and the demo's data.
PACKAGE_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "demo")
MODEL_SOURCE = Path(__file__).with_name("triton_counts_model.py")
COUNTS_INPUT, GENES_INPUT, PROTEINS_INPUT, OUTPUT_NAME = "counts", "gene_names", "protein_names", "predictions"
# What each tensor means, as config parameters a client reads through the model-config API.
DESCRIPTIONS = {
    COUNTS_INPUT: "FP32 [1, cells, genes]: raw counts, one row per cell, columns in gene_names order; finite, >= 0",
    GENES_INPUT: "BYTES [1, genes]: gene symbols, Ensembl or Entrez IDs of the counts' columns (detected)",
    PROTEINS_INPUT: "BYTES [1, proteins]: antibody or gene names to predict (any number, order kept)",
    OUTPUT_NAME: "FP32 [1, cells, proteins]: predicted protein abundance, columns in protein_names order",
}
# The KServe v2 request parameters the model reads (triton_counts_model.request_options), as config
# parameters `request.<name>` so a client finds them through the model-config API.
REQUEST_PARAMETERS = {
    "allow_low_coverage": "bool, default false: go on when fewer of the model's genes are present than "
                          "min_coverage (translate's allow_low_coverage)",
    "allow_empty_cells": "bool, default false: predict cells with no counts in the model's genes as constant "
                         "cells (translate's allow_empty_cells)",
    "min_coverage": f"number in 0..1, default {DEFAULT_MIN_COVERAGE}: the fraction of the model's genes (its panel, "
                    "else the mapped input genes) below which a request is refused (translate's min_coverage)",
}
PARAM_FACTS_FILE = "facts_file"
PARAM_PACKAGE_DIR = "package_dir"


def counts_model_name(name: str) -> str:
    """The names-in model's Triton name for the export named `name`.

    Parameters
    ----------
    name : str
        The client-facing model's name.

    Returns
    -------
    str
        ``<name>_counts``.
    """
    return name + COUNTS_SUFFIX


def model_gene_mapping(panel: dict[str, Any] | None) -> str:
    """The gene mapping a model was trained with (as `plan.default_gene_mapping`, from its panel).

    Parameters
    ----------
    panel : dict or None
        The model's panel metadata; None: a published checkpoint.

    Returns
    -------
    str
        "original" or "extended".
    """
    genes = (panel or {}).get("genes")
    return str(genes.get("mapping", "extended")) if genes else "original"


def model_facts(metadata: dict[str, Any]) -> dict[str, Any]:
    """What the names-in model needs to plan a request, from the ONNX metadata.

    Parameters
    ----------
    metadata : dict
        `read_onnx_metadata`'s dict.

    Returns
    -------
    dict
        Sizes, panel, preprocessing and gene mapping, JSON-able.
    """
    config = metadata["config"]
    return {"config": config, "panel": metadata.get("panel"), "preprocessing": metadata.get("preprocessing"),
            "gene_mapping": model_gene_mapping(metadata.get("panel")), "min_coverage": DEFAULT_MIN_COVERAGE,
            "fingerprint": str(metadata.get("fingerprint", "")), "precision": str(metadata["precision"]),
            "version": str(metadata["version"])}


def counts_config(settings: ServingSettings, parameters: dict[str, str]) -> mc.ModelConfig:
    """config.pbtxt of ``<name>_counts``: Python backend, one request per batch item, ragged batching.

    Parameters
    ----------
    settings : ServingSettings
        How the models are served.
    parameters : dict of str to str
        Config parameters.

    Returns
    -------
    ModelConfig
        Triton's model configuration message.
    """
    settings.check()
    config = mc.ModelConfig(name=counts_model_name(settings.name), backend="python",
                            max_batch_size=settings.max_batch_size)
    # dims exclude the batch axis (one request per item); ragged: requests of any shapes batch together.
    config.input.add(name=COUNTS_INPUT, data_type=mc.TYPE_FP32, dims=[-1, -1], allow_ragged_batch=True)
    config.input.add(name=GENES_INPUT, data_type=mc.TYPE_STRING, dims=[-1], allow_ragged_batch=True)
    config.input.add(name=PROTEINS_INPUT, data_type=mc.TYPE_STRING, dims=[-1], allow_ragged_batch=True)
    config.output.add(name=OUTPUT_NAME, data_type=mc.TYPE_FP32, dims=[-1, -1])
    config.instance_group.add(count=settings.instances, kind=mc.ModelInstanceGroup.KIND_CPU)
    # Requests arriving together reach one execute() call, which groups them by gene layout.
    batching = config.dynamic_batching
    batching.SetInParent()
    batching.max_queue_delay_microseconds = settings.max_queue_delay_us or 0
    names = graph_model_names(settings.name)
    values = {**parameters, PARAM_ENCODER_MODEL: names["encoder"], PARAM_DECODER_MODEL: names["decoder"],
              PARAM_DECODER_MAX_BATCH: str(settings.max_batch_size), PARAM_FACTS_FILE: FACTS_FILE,
              PARAM_PACKAGE_DIR: PACKAGE_DIR}
    values.update({f"input.{key}" if key != OUTPUT_NAME else f"output.{key}": text
                   for key, text in DESCRIPTIONS.items()})
    values.update({f"request.{key}": text for key, text in REQUEST_PARAMETERS.items()})
    for key, value in sorted(values.items()):
        config.parameters[key].string_value = value
    return config


def write_counts_files(version_dir: Path, metadata: dict[str, Any]) -> None:
    """Write model.py, model_facts.json and the package copy into the names-in model's version directory.

    Parameters
    ----------
    version_dir : pathlib.Path
        The model's version directory (``<repo>/<name>_counts/1``).
    metadata : dict
        `read_onnx_metadata`'s dict.
    """
    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(MODEL_SOURCE, version_dir / PYTHON_FILE)
    (version_dir / FACTS_FILE).write_text(json.dumps(model_facts(metadata), sort_keys=True, indent=1))
    shutil.copytree(PACKAGE_SOURCE, version_dir / PACKAGE_DIR, ignore=PACKAGE_IGNORE, dirs_exist_ok=True)
