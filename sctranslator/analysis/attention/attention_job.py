"""One attention block on the engine's block pipeline: trace its cells, commit the block's sums.

`AttentionJob` is a `engine.pipeline.BlockJob` whose `process` reads, checks and prepares a block
(the engine's `BlockRunner`), traces it batch by batch (`batch_interactions`) into sums of its own,
and commits those sums to a `engine.block_results.BlockResults` ledger; the job's result is the sum
over the blocks, in block order, so a resumed run equals an uninterrupted one. Tracing hooks the one
in-memory model, so one block traces at a time (a compute gate of one slot); further workers read
and prepare the next blocks meanwhile.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sctranslator.analysis.attention.groups import add_by_group
from sctranslator.analysis.attention.kinds import GENE_PROTEIN, PairSums
from sctranslator.analysis.attention.passes import decoder_pass, encoder_pass, gene_to_protein_block, translate_rows
from sctranslator.engine.pipeline import BlockJob, values_buffer
from sctranslator.engine.threads import compute_gate
from sctranslator.model import TranslatorModel
from sctranslator.plan import Plan


class Accumulator:
    """Sums over cells, slot 0 = all cells, slots 1.. = obs groups (float64)."""

    def __init__(self, n_slots: int, n_genes: int, n_proteins: int):
        self.count = np.zeros(n_slots, dtype=np.int64)
        self.gene_received = np.zeros((n_slots, n_genes))
        self.protein_received = np.zeros((n_slots, n_proteins))
        self.gene_to_protein = np.zeros((n_slots, n_genes, n_proteins))

    def means(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(gene received (S, genes), protein received (S, proteins), gene-to-protein (S, genes, proteins))."""
        with np.errstate(invalid="ignore", divide="ignore"):
            n = self.count.astype(np.float64)
            return (self.gene_received / n[:, None], self.protein_received / n[:, None],
                    self.gene_to_protein / n[:, None, None])

    def arrays(self) -> dict[str, np.ndarray]:
        """The sums, by name (a block's file)."""
        return {"count": self.count, "gene_received": self.gene_received, "protein_received": self.protein_received,
                "gene_to_protein": self.gene_to_protein}

    def add(self, arrays: dict[str, np.ndarray]) -> None:
        """Add a block's sums (`arrays`)."""
        for name, value in self.arrays().items():
            value += arrays[name]


def traced_model(model: TranslatorModel, device: str) -> TranslatorModel:
    """The model to trace on `device`: itself on the CPU, else a copy moved there (the caller's stays put).

    Parameters
    ----------
    model
        The loaded model, in eval mode.
    device
        cpu, cuda or cuda:N.

    Returns
    -------
    TranslatorModel
        In eval mode, on `device`.
    """
    if torch.device(device) == next(model.parameters()).device:
        return model
    return copy.deepcopy(model).to(device).eval()


def batch_interactions(model: TranslatorModel, values: np.ndarray, plan: Plan, rows: torch.Tensor,
                       codes: np.ndarray, acc: Accumulator, *, row_block: int, as_published: bool,
                       pairs: PairSums) -> None:
    """One batch of cells: trace encoder and decoder windows, then gene rows block by block.

    Parameters
    ----------
    model
        The model, in eval mode (called under `torch.inference_mode`).
    values
        float32 (cells, L) prepared values with the plan's layout.
    plan
        The plan (gene layout, protein windows, output columns).
    rows
        int64 (genes,) the real positions traced.
    codes
        (cells,) obs group codes (0: none).
    acc, pairs
        The sums this batch adds to.
    row_block, as_published
        As for `interactions`.
    """
    batch = values.shape[0]
    device = next(model.parameters()).device
    tensor = torch.from_numpy(values).to(device)
    gene_ids = torch.from_numpy(plan.gene_ids).to(device).expand(batch, -1)
    gene_mask = torch.from_numpy(plan.position_real).to(device).expand(batch, -1)
    rows = rows.to(device)
    heads = model.enc.layers[0].attn.heads if len(model.enc.layers) else 1
    enc = encoder_pass(model, tensor, gene_ids, gene_mask, rows, row_block=row_block, as_published=as_published,
                       also=pairs.encoder_callback(heads, len(model.enc.layers)))
    pairs.count += batch
    translated = model.translate_sequence(enc.encodings)
    del enc.encodings
    decoders = [decoder_pass(model, translated, torch.from_numpy(ids).to(device).expand(batch, -1),
                             torch.from_numpy(mask).to(device).expand(batch, -1), as_published=as_published)
                for ids, mask in zip(plan.protein_windows, plan.protein_window_mask, strict=True)]
    pairs.add_decoders([d.queries for d in decoders], [d.keys for d in decoders])
    index = torch.from_numpy(plan.output_index).to(device)
    protein_received = torch.cat([d.protein_received for d in decoders], dim=1)[:, index]
    acc.count[0] += batch
    for code in np.unique(codes[codes > 0]):
        acc.count[code] += int((codes == code).sum())
    add_by_group(acc.gene_received, enc.gene_received.double().cpu().numpy(), codes)
    add_by_group(acc.protein_received, protein_received.double().cpu().numpy(), codes)
    gene_protein_rows = rows.shape[0] if GENE_PROTEIN in pairs.kinds else 0  # else skip the translator rows
    for lo in range(0, gene_protein_rows, row_block):
        translated_rows = translate_rows(model, enc.first_layer[:, lo:lo + row_block])
        block = gene_to_protein_block(translated_rows, decoders)[:, :, index]
        add_by_group(acc.gene_to_protein[:, lo:lo + block.shape[1]], block.double().cpu().numpy(), codes)


@dataclass
class AttentionJob(BlockJob):
    """Attention over the blocks of `source`: `sink` is a `BlockResults` ledger of per-block sums.

    Parameters
    ----------
    source : Source
        The input.
    plan : Plan
        The alignment onto the model.
    backend : BackendSpec
        What each worker builds.
    sink : BlockSink
        The block results ledger.
    batch_size : int
        Cells per backend call.
    allow_empty_cells : bool
        Predict cells with no counts in the genes the model reads.
    embeddings : bool
        Also write obsm['X_sctranslator'] (torch backend).
    auto_batch_size : bool
        Let the backend size its calls from free device memory (torch on CUDA); `batch_size` is the
        fallback.
    flop_per_cell : float
        The arithmetic of one cell's forward (the threads rule, applied again inside each Dask worker).
    compute_slots : int or None
        Blocks that may compute at once in a process; None: all.
    in_caller_thread : bool
        With one local worker, run the blocks in the calling thread (no scheduler thread).
    model : TranslatorModel or None
        The model traced (eval mode).
    positions : numpy.ndarray
        int64 real positions traced.
    codes : numpy.ndarray
        int64 obs group of each cell (0: none).
    n_slots : int
        1 + the number of groups.
    n_proteins : int
        Output proteins.
    row_block : int
        Genes at a time through the translator.
    as_published : bool
        Take each layer's attention as the original script did.
    pair_settings : dict
        Settings of the gene-gene / protein-protein sums.
    """

    model: TranslatorModel | None = None
    positions: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    codes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    n_slots: int = 1
    n_proteins: int = 0
    row_block: int = 2048
    as_published: bool = False
    pair_settings: dict[str, Any] = field(default_factory=dict)

    def new_sums(self) -> tuple[Accumulator, PairSums]:
        """Empty sums for a block (or for the whole job's total)."""
        return (Accumulator(self.n_slots, self.positions.shape[0], self.n_proteins),
                PairSums(positions=self.positions, row_block=self.row_block, **self.pair_settings))

    def process(self, index: int, start: int, stop: int, progress: Callable[[int], object] | None = None, *,
                threads: int | None = None, compute_slots: int | None = None) -> int:
        """Trace rows [start, stop) and commit the block's sums; returns its empty cells.

        Parameters
        ----------
        index, start, stop
            The block and its input rows.
        progress
            Told the cells of each traced batch.
        threads
            Intra-op threads (default: the job's backend spec's).
        compute_slots
            Ignored: one block traces at a time (hooks on the one model).

        Returns
        -------
        int
            Empty cells in the block (only when allowed).

        Raises
        ------
        BadCellsError
            Bad values, or empty cells when not allowed.
        """
        assert self.model is not None
        block, values = self.runner.read_prepared(start, stop, out=values_buffer(stop - start, self.plan.max_genes))
        acc, pairs = self.new_sums()
        rows = torch.from_numpy(self.positions)
        codes = self.codes[start:stop]
        try:
            with compute_gate(1), torch.inference_mode():
                wanted = threads or self.backend.threads
                if wanted and torch.get_num_threads() != wanted:
                    torch.set_num_threads(wanted)
                for lo in range(0, stop - start, self.batch_size):
                    hi = min(lo + self.batch_size, stop - start)
                    batch_interactions(self.model, values[lo:hi], self.plan, rows, codes[lo:hi], acc,
                                       row_block=self.row_block, as_published=self.as_published, pairs=pairs)
                    if progress is not None:
                        progress(hi - lo)
            arrays = {**acc.arrays(), "pair_count": np.asarray(pairs.count, dtype=np.int64),
                      "empty_cells": np.asarray(block.n_empty, dtype=np.int64)}
            if pairs.gene_sums is not None:
                arrays["gene_sums"] = np.asarray(pairs.gene_sums)
            if pairs.protein_sums is not None:
                arrays["protein_sums"] = pairs.protein_sums
            self.sink.commit(index, arrays)  # type: ignore[attr-defined]
        finally:
            pairs.close()
        return int(block.n_empty)
