"""Several paired datasets in one training run: one gene and one protein panel over all, one stream.

Each dataset keeps its own gene layout (its own plan maps its columns onto the shared gene panel)
and its own protein panel (its targets fill its proteins' slots of the shared panel; the loss and
the held-out scores skip the slots it did not measure).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from sctranslator.engine.block_runner import BlockRunner
from sctranslator.errors import InputDataError, UnknownProteinError
from sctranslator.model import TranslatorModel
from sctranslator.options import TrainDataOptions, TrainOptions
from sctranslator.plan import build_plan
from sctranslator.train.inputs import protein_panel
from sctranslator.train.paired import PairedData
from sctranslator.train.split import Split
from sctranslator.train.stream import StreamSet, TrainStream

MIXING_RULE = ("every block of every dataset once per epoch, in one seeded random order (datasets interleave in "
               "proportion to their size), cells shuffled within windows of shuffle_blocks blocks")


def as_list(value: Any) -> list[Any]:
    """One input or a list/tuple of inputs, as a list.

    Parameters
    ----------
    value : object
        An input, or several.

    Returns
    -------
    list
        The inputs.
    """
    return list(value) if isinstance(value, list | tuple) else [value]


def union_protein_panel(names: Sequence[Sequence[str]], wanted: Sequence[str] | None
                        ) -> tuple[dict[str, list], list[np.ndarray], list[np.ndarray]]:
    """The shared protein panel of several datasets, and where each dataset's trained columns go in it.

    The shared panel lists each protein once, in the order of first appearance over the datasets.

    Parameters
    ----------
    names : sequence of sequence of str
        Each dataset's protein names.
    wanted : sequence of str or None
        Train on these proteins only; None: all but isotype controls.

    Returns
    -------
    panel : dict
        The shared panel (names, token ids, genes).
    columns : list of numpy.ndarray
        Per dataset: its trained columns.
    slots : list of numpy.ndarray
        Per dataset: their positions in the shared panel.

    Raises
    ------
    UnknownProteinError
        A wanted protein in none of the tables, or names that map to no gene.
    InputDataError
        A dataset that measures none of the chosen proteins.
    """
    if len(names) == 1:
        panel, columns = protein_panel(names[0], wanted)
        return panel, [columns], [np.arange(columns.size, dtype=np.int64)]
    if wanted is not None:
        unknown = [w for w in wanted if not any(w in list(n) for n in names)]
        if unknown:
            raise UnknownProteinError(f"{unknown} are in none of the protein tables")
    merged: dict[str, list] = {"names": [], "token_ids": [], "genes": []}
    all_columns, all_slots = [], []
    for index, measured in enumerate(names):
        chosen = None if wanted is None else [w for w in wanted if w in list(measured)]
        if chosen is not None and not chosen:
            raise InputDataError(f"dataset {index + 1} measures none of the chosen proteins {list(wanted or [])}")
        panel, columns = protein_panel(measured, chosen)
        slots = []
        for name, token, gene in zip(panel["names"], panel["token_ids"], panel["genes"], strict=True):
            if name not in merged["names"]:
                merged["names"].append(name)
                merged["token_ids"].append(token)
                merged["genes"].append(gene)
            slots.append(merged["names"].index(name))
        all_columns.append(columns)
        all_slots.append(np.asarray(slots, dtype=np.int64))
    return merged, all_columns, all_slots


def build_stream(pairs: list[PairedData], splits: list[Split], model: TranslatorModel,
                 protein_columns: list[np.ndarray], protein_slots: list[np.ndarray], data: TrainDataOptions,
                 options: TrainOptions, *, gene_mapping: str | None) -> TrainStream:
    """The training stream over all datasets, each read through its own plan onto the model's panels.

    Parameters
    ----------
    pairs : list of PairedData
        The paired datasets.
    splits : list of Split
        Each dataset's split.
    model : TranslatorModel
        The model, its panels attached.
    protein_columns : list of numpy.ndarray
        Per dataset: its trained protein columns.
    protein_slots : list of numpy.ndarray
        Per dataset: their panel positions.
    data : TrainDataOptions
        How the data are read and scaled.
    options : TrainOptions
        Block sizes, shuffle windows, seed and gene subsets.
    gene_mapping : str or None
        The gene mapping; None: the model's.

    Returns
    -------
    TrainStream
        The stream.

    Raises
    ------
    CoverageError
        A dataset whose genes cover too little of the panel (unless allowed).
    """
    sets = []
    plan = None
    for paired, split, columns, slots in zip(pairs, splits, protein_columns, protein_slots, strict=True):
        plan = build_plan(paired.source.var, model, gene_column=data.gene_column, id_type=data.id_type,
                          allow_low_coverage=data.allow_low_coverage or len(pairs) > 1, gene_mapping=gene_mapping)
        runner = BlockRunner(paired.source, plan, allow_empty_cells=data.allow_empty_cells)
        sets.append(StreamSet(paired, runner, columns, slots, split.train, split.val,
                              target_scaling=str(data.target_scaling)))
    assert plan is not None
    return TrainStream(sets, gene_ids=plan.gene_ids, gene_mask=plan.position_real,
                       protein_ids=plan.protein_windows[0], protein_mask=plan.protein_window_mask[0],
                       seed=options.seed, block_cells=options.block_cells, shuffle_blocks=options.shuffle_blocks,
                       gene_subset=options.gene_subset)


def cell_names(pairs: list[PairedData], splits: list[Split], part: str) -> pd.Index:
    """Obs names of the training or held-out cells of all datasets, in dataset then cell order.

    Parameters
    ----------
    pairs : list of PairedData
        The paired datasets.
    splits : list of Split
        Each dataset's split.
    part : {'train', 'val'}
        Which cells.

    Returns
    -------
    pandas.Index
        The names (read by row).
    """
    return pd.Index(np.concatenate([p.cell_names(getattr(s, part)) for p, s in zip(pairs, splits, strict=True)]))


def cell_hashes(pairs: list[PairedData], splits: list[Split], part: str) -> np.ndarray:
    """Name hashes of the training or held-out cells of all datasets (8 bytes a cell, no names kept).

    Parameters
    ----------
    pairs : list of PairedData
        The paired datasets.
    splits : list of Split
        Each dataset's split.
    part : {'train', 'val'}
        Which cells.

    Returns
    -------
    numpy.ndarray
        uint64, in dataset then cell order.
    """
    parts = [p.cell_hashes(getattr(s, part)) for p, s in zip(pairs, splits, strict=True)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def combined_origin(pairs: list[PairedData]) -> dict[str, Any]:
    """The model card's data summary: one dataset's origin, or the datasets' joined.

    Parameters
    ----------
    pairs : list of PairedData
        The datasets.

    Returns
    -------
    dict
        Where the data came from and how many cells paired.
    """
    if len(pairs) == 1:
        return dict(pairs[0].origin)
    origins = [p.origin for p in pairs]
    return {"rna": "; ".join(str(o["rna"]) for o in origins), "protein": "; ".join(str(o["protein"]) for o in origins),
            **{key: sum(int(o[key]) for o in origins) for key in ("rna_cells", "protein_cells", "paired_cells")},
            **{key: ", ".join(str(int(o[key])) for o in origins) for key in ("genes", "proteins")},
            "datasets": len(origins)}


def training_record(pairs: list[PairedData], options: TrainOptions) -> dict[str, Any]:
    """What the bundle's config records about the training data and its order.

    Parameters
    ----------
    pairs : list of PairedData
        The datasets.
    options : TrainOptions
        The training options.

    Returns
    -------
    dict
        JSON-able record.
    """
    return {"datasets": [p.origin for p in pairs], "mixing": MIXING_RULE, "block_cells": options.block_cells,
            "shuffle_blocks": options.shuffle_blocks, "gene_subset": options.gene_subset, "seed": options.seed}
