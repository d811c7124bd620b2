"""`finetune`: paired RNA + protein data in, a trained model bundle out."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sctranslator.errors import CheckpointError, InputDataError, OutputConflictError
from sctranslator.model import ModelConfig, TranslatorModel, load_model, save_model
from sctranslator.model.cells import ancestor_cells, write_cell_hashes
from sctranslator.model.identity import model_fingerprint
from sctranslator.options import DEFAULT_TARGET_SUM, Preset, TrainDataOptions
from sctranslator.outputs import claim_output, one_writer, write_identity
from sctranslator.train import distributed
from sctranslator.train.card import model_card
from sctranslator.train.checkpoint import STATE_FILE
from sctranslator.train.datasets import (
    as_list as _as_list,
)
from sctranslator.train.datasets import (
    build_stream,
    cell_hashes,
    cell_names,
    combined_origin,
    training_record,
    union_protein_panel,
)
from sctranslator.train.inputs import attach_panels, data_gene_tokens, gene_panel_from_data
from sctranslator.train.loop import Outcome, Trainer, TrainOptions, apply_freeze
from sctranslator.train.metrics_log import MetricsLog
from sctranslator.train.paired import PairedData, load_paired
from sctranslator.train.presets import preset_config
from sctranslator.train.split import Split, split_cells
from sctranslator.train.training_threads import pin_training_threads
from sctranslator.util.atomic import install_dir, remove_path, staging_dir
from sctranslator.util.storage import check_location, check_not_folded, is_url, parse_storage_options, refuse_remote
from sctranslator.vocab.genes import check_gene_mapping

log = logging.getLogger(__name__)

OUTPUT_KIND = "finetune"
WORK_KIND = "finetune-work"
METRICS_FILE = "metrics.jsonl"  # the metrics log's default place, in the checkpoint folder
KEEP = "model"  # feature_redraw_interval: keep the starting model's setting


DataOptions = TrainDataOptions  # the data options of finetune, declared in sctranslator.options


@dataclass
class Validation:
    """The trainer's own held-out predictions for the returned weights (attached to the model).

    Parameters
    ----------
    obs_names : list of str
        The held-out cells.
    predictions : numpy.ndarray
        ``(n_val, n_proteins)`` on the target scale.
    targets : numpy.ndarray
        ``(n_val, n_proteins)``; NaN where a cell's dataset did not measure the protein.
    metrics : dict
        The validation metrics.
    """

    obs_names: list[str]
    predictions: np.ndarray  # (n_val, n_proteins), on the target scale
    targets: np.ndarray
    metrics: dict[str, Any]


def _split_options(options: dict[str, Any]) -> tuple[DataOptions, TrainOptions]:
    data_fields = {f.name for f in dataclasses.fields(DataOptions)}
    train_fields = {f.name for f in dataclasses.fields(TrainOptions)}
    unknown = sorted(set(options) - data_fields - train_fields)
    if unknown:
        raise TypeError(f"finetune() got unknown options {unknown}")
    data = DataOptions(**{k: v for k, v in options.items() if k in data_fields})
    train = TrainOptions(**{k: v for k, v in options.items() if k in train_fields})
    data.check()
    train.check()
    return data, train


def _gene_mapping(init: TranslatorModel | None, requested: str | None) -> str:
    """The requested gene mapping, else the one an init bundle's panel records, else extended."""
    if requested is not None:
        return check_gene_mapping(requested)
    genes = ((init.panel if init is not None else None) or {}).get("genes")
    return str(genes.get("mapping", "extended")) if genes else "extended"


def _starting_model(init: str | os.PathLike | TranslatorModel | None, config: str | ModelConfig | None,
                    overrides: dict[str, Any], tokens_of: Callable[[str], np.ndarray], n_proteins: int,
                    seed: int, requested_mapping: str | None) -> tuple[TranslatorModel, dict[str, Any], str]:
    """(model, gene panel, description of the start) from a checkpoint/bundle or a configuration.

    `tokens_of(mapping)` maps the data's genes with that gene mapping; the panel records the mapping.
    """
    if init is not None and config is not None:
        raise InputDataError("pass either init (a model to start from) or config (train from scratch), not both")
    if init is not None:
        model = copy.deepcopy(init) if isinstance(init, TranslatorModel) else load_model(init)
        described = getattr(model, "source", None) or "an in-memory model"
        mapping = _gene_mapping(model, requested_mapping)
        existing = (model.panel or {}).get("genes")
        genes = ({**existing, "mapping": mapping} if existing
                 else gene_panel_from_data(tokens_of(mapping), model.config.max_genes, mapping))
        return model, genes, described
    mapping = _gene_mapping(None, requested_mapping)
    gene_tokens = tokens_of(mapping)
    if config is None:
        raise InputDataError("say where to start: init=MODEL (checkpoint or bundle) or config=NAME (from scratch)")
    torch.manual_seed(seed)  # the initial weights and random features follow the seed
    if isinstance(config, ModelConfig):
        settings = dataclasses.replace(config, **overrides) if overrides else config
        genes = gene_panel_from_data(gene_tokens, settings.max_genes, mapping)
        return TranslatorModel(settings), genes, "scratch (a given configuration)"
    genes = gene_panel_from_data(gene_tokens, overrides.get("max_genes"), mapping)
    settings = preset_config(config, n_genes=len(genes["token_ids"]), n_proteins=n_proteins, **overrides)
    genes = gene_panel_from_data(gene_tokens, settings.max_genes, mapping)
    return TranslatorModel(settings), genes, f"scratch (configuration {config!r})"


# What finetune uses when neither the options nor the starting model say otherwise.
PREPROCESSING_DEFAULTS = {"normalize": "total_log1p", "target_sum": DEFAULT_TARGET_SUM, "target_scaling": "minmax"}


def inherit_preprocessing(options: DataOptions, init: TranslatorModel | None
                          ) -> tuple[DataOptions, dict[str, str]]:
    """Fill the preprocessing options left unset (None) from the starting model, else the defaults.

    A model keeps the input normalisation and target scaling it was trained with unless the user asks
    for others: a fine-tuned model would otherwise predict on another scale than its start without a
    word.

    Parameters
    ----------
    options : TrainDataOptions
        The data options given.
    init : TranslatorModel or None
        The starting model; None: from scratch.

    Returns
    -------
    options : TrainDataOptions
        The completed options.
    sources : dict of str to str
        Per setting, where its value came from.
    """
    recorded = (getattr(init, "preprocessing", None) or {}) if init is not None else {}
    chosen: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name, default in PREPROCESSING_DEFAULTS.items():
        asked = getattr(options, name)
        if asked is not None:
            chosen[name], origin[name] = asked, "asked"
        elif recorded.get(name) is not None:
            chosen[name], origin[name] = recorded[name], "the --init model"
        else:
            chosen[name], origin[name] = default, "default"
    chosen["target_sum"] = float(chosen["target_sum"])
    for name, value in chosen.items():
        if origin[name] == "asked" and recorded.get(name) is not None and recorded[name] != value:
            log.warning("the starting model was trained with %s=%s; %s=%s was asked, so the new model's "
                        "%s differ from its start", name, recorded[name], name, value,
                        "predictions are on another scale" if name == "target_scaling" else "inputs are prepared")
    completed = dataclasses.replace(options, **chosen)
    completed.check()
    log.info("preprocessing: %s", ", ".join(f"{k}={chosen[k]} ({origin[k]})" for k in chosen))
    return completed, {k: v for k, v in origin.items() if v != "asked"}


def _fingerprint(model: TranslatorModel, pairs: list[PairedData], splits: list[Split], data_options: DataOptions,
                 options: TrainOptions, world: int) -> str:
    """Identity of a run, so that resuming refuses other data or settings."""
    settings = {k: v for k, v in dataclasses.asdict(options).items() if k not in ("quiet", "stop_after", "device")}
    data = {k: v for k, v in dataclasses.asdict(data_options).items() if not (k == "measurement" and v is None)}
    digest = hashlib.sha256(json.dumps({"train": settings, "data": data,
                                        "panel": model.panel, "world": world,
                                        "origin": [paired.origin for paired in pairs]},
                                       sort_keys=True, default=str).encode())
    for split in splits:
        digest.update(split.train.tobytes())
        digest.update(split.val.tobytes())
    digest.update(model_fingerprint(model).encode())
    return digest.hexdigest()


@one_writer
def finetune(rna: Any, protein: Any = None, *, init: str | os.PathLike | TranslatorModel | None = None,
             config: Preset | ModelConfig | None = None, out: str | os.PathLike,
             config_overrides: dict[str, Any] | None = None, feature_redraw_interval: int | None | str = KEEP,
             work_dir: str | os.PathLike | None = None, metrics_log: str | os.PathLike | None = None,
             resume: bool = False, workers: int | None = None, overwrite: bool = False,
             storage_options: str | dict[str, Any] | None = None, **options: Any) -> TranslatorModel:
    """Train a model on paired RNA + protein data and save it as a bundle at `out`.

    The cells are streamed: read in blocks of ``block_cells`` through the engine's sources, in a seeded
    random block order shuffled within windows of ``shuffle_blocks`` blocks, and prepared per
    micro-batch. Under ``torchrun`` each process runs this same call (DDP). Nothing but an earlier
    finetune bundle at `out` and its checkpoint folder is ever replaced.

    Parameters
    ----------
    rna : str, os.PathLike, AnnData, MuData, or a list of these
        .h5ad, .h5mu (MuData with 'rna' and 'prot') or Zarr store, or an AnnData (cells x genes, raw
        counts); a list is several paired datasets, each with its own genes and proteins, trained on
        together (the model's panels are their unions).
    protein : str, os.PathLike, AnnData, list or None
        Protein counts of the same cells (cells x proteins); None: inside `rna` (a MuData 'prot'
        modality or ``obsm[protein_key]``). With several `rna`, a list in the same order.
    init : str, os.PathLike, TranslatorModel or None
        Start from a published .pt checkpoint, a bundle or a model.
    config : {'published', 'small', 'tiny'}, ModelConfig or None
        Start from scratch with a preset or a configuration (exactly one of `init` and `config`).
    out : str or os.PathLike
        The bundle directory.
    config_overrides : dict or None
        ModelConfig fields to change with `config`.
    feature_redraw_interval : int, None or 'model'
        Random-feature redraw every N training forward calls; None: fixed; "model": the starting
        model's setting.
    work_dir : str, os.PathLike or None
        Checkpoints and the metrics log; None: ``<out>.training``.
    metrics_log : str, os.PathLike or None
        The metrics file (.csv or JSON lines); None: in `work_dir`.
    resume : bool
        Continue a stopped run exactly.
    workers : int or None
        CPU threads per process.
    overwrite : bool
        Replace an earlier finetune bundle at `out` and checkpoint folder at `work_dir`.
    storage_options : str, dict or None
        fsspec options (or their JSON) for inputs at s3://, gs:// or http(s):// URLs; outputs stay
        local.
    wait : bool
        When another job is writing the outputs, wait for it instead of refusing.
    **options
        The fields of `sctranslator.options.TrainDataOptions` (proteins, protein_key, layer,
        gene_column, id_type, gene_mapping, normalize, target_sum, target_scaling, val_fraction,
        val_count, split_column + val_values, allow_low_coverage, allow_empty_cells) and
        `sctranslator.options.TrainOptions` (steps or epochs, batch_size, accumulation, lr, ...,
        device, quiet); each documents its default and choices.

    Returns
    -------
    TranslatorModel
        The trained model (eval mode, on CPU) with its held-out predictions in ``.validation``.

    Raises
    ------
    TypeError
        An unknown keyword option.
    OptionError
        A choice (id_type, normalize, target_scaling, decay, precision, freeze) outside its choices.
    InputDataError
        No length (steps / epochs), sizes below 1, both or neither of `init` and `config`, unusable
        data (unpaired cells, too few cells to split).
    BadCellsError
        Paired cells with bad values, or with no counts in any panel gene unless
        ``allow_empty_cells``.
    CheckpointError
        An unreadable `init`, an unknown preset, or `resume` with no saved run or one saved with other
        data or settings.
    OutputConflictError
        `out` or `work_dir` holds something else, or is or overlaps an input.
    """
    data_options, train_options = _split_options(options)
    storage_options = parse_storage_options(storage_options)
    protein = _embedded_marks(protein)
    check_inputs(_as_list(rna) + (_as_list(protein) if protein is not None else []))
    refuse_remote("finetune", reason="finetune writes the model bundle, its checkpoints and metrics log to local "
                  "paths (inputs may be URLs); write them locally, then copy the bundle with your storage tool",
                  out=out, work_dir=work_dir, metrics_log=metrics_log)
    refuse_remote("finetune", reason="a model to start from is read from a local path; copy the bundle or "
                  "checkpoint to a local path first", init=init)
    out = Path(out)
    work = Path(work_dir) if work_dir else out.with_name(out.name + ".training")
    # Every process checks before any writes: the process group's start is the barrier after it.
    inputs = (*_as_list(rna), *(_as_list(protein) if protein is not None else []), init)
    work_is_ours = _claim_outputs(out, work, inputs, overwrite=overwrite, resume=resume)
    if resume and not (work / STATE_FILE).exists():
        # Refused before the work folder, its identity record or a metrics log is made.
        raise CheckpointError(f"nothing to resume: {work / STATE_FILE} does not exist (start without --resume, "
                              "or give the --work-dir of the run to continue)")
    processes = distributed.start(train_options.device)
    callers_threads = pin_training_threads(workers)  # the same count in every call of this process
    try:
        datasets = _as_list(rna)
        proteins_in = _as_list(protein) if protein is not None else [None] * len(datasets)
        if len(proteins_in) != len(datasets):
            raise InputDataError(f"{len(datasets)} RNA inputs but {len(proteins_in)} protein inputs: give one "
                                 "protein input per RNA input, in the same order (or none when each RNA file holds "
                                 "its proteins)")
        pairs = [load_paired(r, p, protein_key=data_options.protein_key, layer=data_options.layer,
                             use_raw=data_options.use_raw, modality=data_options.modality,
                             missing_chunks=data_options.missing_chunks, measurement=data_options.measurement,
                             storage_options=storage_options)
                 for r, p in zip(datasets, proteins_in, strict=True)]
        splits = [split_cells(paired.split_table(data_options.split_column),
                              val_fraction=data_options.val_fraction, val_count=data_options.val_count,
                              split_column=data_options.split_column, val_values=data_options.val_values,
                              seed=train_options.seed) for paired in pairs]
        proteins, protein_columns, protein_slots = union_protein_panel([p.protein_names for p in pairs],
                                                                       data_options.proteins)

        def tokens_of(mapping: str) -> np.ndarray:
            return np.concatenate([data_gene_tokens(paired.source.var, gene_column=data_options.gene_column,
                                                    id_type=data_options.id_type, only=data_options.genes,
                                                    gene_mapping=mapping) for paired in pairs])

        model, genes, start = _starting_model(init, config, dict(config_overrides or {}), tokens_of,
                                              len(proteins["names"]), train_options.seed, data_options.gene_mapping)
        # A cell that trained the init bundle (or its own init) trained this model too: keep its record.
        ancestors = ancestor_cells(getattr(model, "source", None)) if init is not None else None
        if feature_redraw_interval != KEEP:
            model.config = dataclasses.replace(model.config, feature_redraw_interval=feature_redraw_interval)
        data_options, inherited = inherit_preprocessing(data_options, model if init is not None else None)
        attach_panels(model, genes, proteins, {"normalize": data_options.normalize,
                                               "target_sum": float(data_options.target_sum),
                                               "target_scaling": data_options.target_scaling})
        apply_freeze(model, train_options.freeze)
        train_options = effective_gene_subset(train_options, len(genes["token_ids"]))
        stream = build_stream(pairs, splits, model, protein_columns, protein_slots, data_options, train_options,
                              gene_mapping=genes["mapping"])
        n_empty = stream.scan()
        if n_empty:
            log.warning("%d paired cell(s) have no counts in any panel gene; trained on as constant cells, as "
                        "allowed", n_empty)
        if processes.is_main:
            _prepare_work_dir(work, replace=work_is_ours and not resume)
        distributed.barrier(processes)
        fingerprint = _fingerprint(model, pairs, splits, data_options, train_options, processes.world)
        metrics = MetricsLog((metrics_log or work / METRICS_FILE) if processes.is_main else None, append=resume)
        trainer = Trainer(model, stream, train_options, processes, work, metrics, fingerprint)
        outcome = trainer.run(resume=resume)
        model = trainer.model.to("cpu").eval()
        if outcome.interrupted:
            log.info("stopped after step %d as asked; resume=True continues the run", outcome.steps_done)
        elif processes.is_main:
            data = {**combined_origin(pairs), "empty_cells": n_empty}
            split_text = "; ".join(dict.fromkeys(split.description for split in splits))
            card = model_card(model, init=start, data=data, split=split_text,
                              n_train=stream.n_train, n_val=stream.n_val, options=train_options,
                              outcome=outcome, world=processes.world, inherited=inherited)
            _save_bundle(model, out, card, {"train": cell_hashes(pairs, splits, "train"),
                                            "val": cell_hashes(pairs, splits, "val")},
                         {"preprocessing_from": {k: inherited.get(k, "asked") for k in PREPROCESSING_DEFAULTS},
                          "training_data": training_record(pairs, train_options)},
                         ancestors)
        _attach_validation(model, pairs, splits, outcome)
        model.training_outcome = outcome
        distributed.barrier(processes)
        return model
    finally:
        torch.set_num_threads(callers_threads)
        distributed.stop(processes)


def _embedded_marks(protein: Any) -> Any:
    """`protein` with each "-" entry as None: that dataset's proteins are inside its RNA input."""
    if protein is None:
        return None
    if isinstance(protein, list | tuple):
        return [None if isinstance(p, str) and p == "-" else p for p in protein]
    return None if isinstance(protein, str) and protein == "-" else protein


def effective_gene_subset(options: TrainOptions, n_panel: int) -> TrainOptions:
    """The options with `gene_subset` capped at the gene panel's size.

    The original's `SCDataset` samples N genes only from a cell with at least N genes and keeps a
    shorter cell whole; likewise a subset at least as large as the panel keeps every panel gene.
    A warning says so, and the effective N is what the card, config.json and the fingerprint record.

    Parameters
    ----------
    options
        The training options as asked.
    n_panel
        Number of genes in the model's gene panel.

    Returns
    -------
    TrainOptions
        `options` itself, or a copy with `gene_subset` = `n_panel`.
    """
    asked = options.gene_subset
    if asked is None or asked <= n_panel:
        return options
    log.warning("--gene-subset %d exceeds the %d-gene panel: every training cell sees all %d panel genes (as the "
                "original keeps a cell with fewer genes whole); gene_subset=%d is recorded", asked, n_panel,
                n_panel, n_panel)
    return dataclasses.replace(options, gene_subset=n_panel)


def check_inputs(locations: list[Any]) -> None:
    """Refuse, before any work, an input URL this package cannot read, and a pathlib.Path made from a URL.

    A no-op for local paths and in-memory data.

    Parameters
    ----------
    locations : list
        The inputs.

    Raises
    ------
    UnsupportedStorageError
        A scheme that cannot be read, or a folded URL.
    MissingExtraError
        The scheme's file system package is not installed.
    """
    for location in locations:
        check_not_folded(location, what="the input")
        if is_url(location):
            check_location(location, what="the input")


def _claim_outputs(out: Path, work: Path, inputs: tuple[Any, ...], *, overwrite: bool, resume: bool) -> bool:
    """Check the bundle and checkpoint folders may be written; True when the folder is ours already."""
    if out.expanduser().resolve() == work.expanduser().resolve():
        raise OutputConflictError(f"the bundle {out} and the checkpoint folder {work} are the same path; "
                                  "give --work-dir another path")
    claim_output(out, OUTPUT_KIND, inputs=(*inputs, work), overwrite=overwrite, resumable=resume)
    return claim_output(work, WORK_KIND, inputs=inputs, overwrite=overwrite, resumable=resume)


def _prepare_work_dir(work: Path, *, replace: bool) -> None:
    """A fresh checkpoint folder (an earlier one of ours is removed first), marked as ours."""
    if replace:
        remove_path(work)
    work.mkdir(parents=True, exist_ok=True)
    # What training adds later is ours too when --overwrite replaces the folder.
    write_identity(work, WORK_KIND, later=(STATE_FILE, METRICS_FILE))


def _save_bundle(model: TranslatorModel, out: Path, card: str, cells: dict[str, np.ndarray],
                 extra: dict[str, Any], ancestors: dict[str, np.ndarray] | None = None) -> None:
    """Write the bundle aside, mark it as a finetune output, and rename it into place whole.

    `cells` (obs name hashes of the training and held-out cells) are kept with a summary in
    config.json, so that `evaluate` can tell scores on training cells from held-out ones; `ancestors`
    (the init bundle's cells, its own ancestors' included) are kept with them.
    """
    with staging_dir(out) as staging:
        summary = write_cell_hashes(staging, cells, ancestors)
        save_model(model, staging, card=card, extra={**extra, "cells": summary})
        write_identity(staging, OUTPUT_KIND)
        install_dir(staging, out)


def _attach_validation(model: TranslatorModel, pairs: list[PairedData], splits: list[Split],
                       outcome: Outcome) -> None:
    if outcome.val_predictions is None:
        model.validation = None
        return
    model.validation = Validation(obs_names=[str(n) for n in cell_names(pairs, splits, "val")],
                                  predictions=outcome.val_predictions, targets=outcome.val_targets,
                                  metrics=outcome.val_metrics)
