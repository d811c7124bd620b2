"""One knockout block on the engine's block pipeline: the unperturbed and every gene's perturbed forwards.

`KnockoutJob` is a `engine.pipeline.BlockJob` whose `process` reads and checks a block once, predicts
it unperturbed, then for each knocked-out gene re-prepares the same in-memory block with the gene's
alignment (the Numba `prepare_values` kernel, O(cells x L)) and predicts it through the same backend,
batch by batch, exactly as translate's `predict_block` does (`engine.pipeline.predict_values`). The
block's statistics are committed to the `KnockoutStore` ledger; `run_job` schedules the blocks
(workers, resume, progress) as it does translate's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from sctranslator.analysis.knockout.gene_columns import KnockoutVariant
from sctranslator.analysis.knockout.stats import block_stats
from sctranslator.engine.pipeline import BlockJob, backend_for, predict_values, values_buffer
from sctranslator.engine.threads import compute_gate


def zeroed(block: Any, column: int) -> Any:
    """A copy of the block with one column's values set to 0 (CSR: stored entries zeroed in place).

    Parameters
    ----------
    block
        A checked block's data: CSR matrix or ndarray (cells, genes).
    column
        The input column to zero.

    Returns
    -------
    The copy, of the same kind.
    """
    if sp.issparse(block):
        copy = sp.csr_matrix(block, copy=True)
        copy.data[copy.indices == column] = 0
        return copy
    copy = np.array(block, copy=True)
    copy[:, column] = 0
    return copy


class PassCounter:
    """Turns forwarded cells into finished cells for a progress bar counting cells.

    A cell is finished when all `passes` of its forwards are: each batch forwarded adds its cells,
    and the bar is advanced by the whole cells that makes (integers only; a block's total is exact).
    """

    def __init__(self, progress: Callable[[int], object] | None, passes: int) -> None:
        self.progress, self.passes = progress, max(1, passes)
        self.forwarded = self.shown = 0

    def __call__(self, cells: int) -> None:
        self.forwarded += cells
        finished = self.forwarded // self.passes
        if finished > self.shown and self.progress is not None:
            self.progress(finished - self.shown)
        self.shown = finished


@dataclass
class KnockoutJob(BlockJob):
    """A knockout over the blocks of `source`: `sink` is a `KnockoutStore`.

    Parameters
    ----------
    source : Source
        The input.
    plan : Plan
        The alignment onto the model.
    backend : BackendSpec
        What each worker builds.
    sink : BlockSink
        The knockout's block store.
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
    variants : list of KnockoutVariant
        The knocked-out genes' alignments.
    codes : numpy.ndarray
        int64 obs group of each cell (0: none).
    n_slots : int
        1 + the number of groups.
    per_cell : bool
        Also keep every cell's changes.
    """

    variants: list[KnockoutVariant] = field(default_factory=list)
    codes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    n_slots: int = 1
    per_cell: bool = False

    def process(self, index: int, start: int, stop: int, progress: Callable[[int], object] | None = None, *,
                threads: int | None = None, compute_slots: int | None = None) -> int:
        """Unperturbed and every gene's knocked-out predictions of rows [start, stop), committed as statistics.

        Parameters
        ----------
        index, start, stop
            The block and its input rows.
        progress
            Told the cells finished (every variant forwarded) after each batch.
        threads, compute_slots
            As for `BlockJob.process`.

        Returns
        -------
        int
            Empty cells in the block (only when allowed).

        Raises
        ------
        BadCellsError
            Bad values, or empty cells when not allowed.
        """
        arrays = self.compute(start, stop, progress, threads=threads, compute_slots=compute_slots)
        self.sink.commit(index, arrays)  # type: ignore[attr-defined]
        return int(arrays["empty_cells"])

    def compute(self, start: int, stop: int, progress: Callable[[int], object] | None = None, *,
                threads: int | None = None, compute_slots: int | None = None) -> dict[str, np.ndarray]:
        """The block's statistics (see `stats.block_stats`): delta_* and baseline_* per slot, empty_cells,
        and with `per_cell` the per-cell changes (cells, genes, proteins) and unperturbed predictions."""
        plan = self.plan
        block, values = self.runner.read_prepared(start, stop, out=values_buffer(stop - start, plan.max_genes))
        backend = backend_for(self, threads)
        counter = PassCounter(progress, len(self.variants) + 1)
        with compute_gate(self.compute_slots if compute_slots is None else compute_slots):
            baseline = predict_values(self, backend, values, plan.gene_ids, plan.position_real,
                                      counter)[0].astype(np.float64)
            deltas = np.empty((stop - start, len(self.variants), baseline.shape[1]), dtype=np.float64)
            for g, variant in enumerate(self.variants):
                data = zeroed(block.data, variant.column) if variant.zero_column else block.data
                self.runner.prepare(data, column_slot=variant.column_slot, position_real=variant.position_real,
                                    out=values)
                perturbed = predict_values(self, backend, values, variant.gene_ids, variant.position_real, counter)[0]
                np.subtract(perturbed, baseline, out=deltas[:, g])
        codes = self.codes[start:stop]
        arrays = {f"delta_{k}": v for k, v in block_stats(deltas, codes, self.n_slots).items()}
        arrays.update({f"baseline_{k}": v for k, v in block_stats(baseline, codes, self.n_slots).items()})
        arrays["empty_cells"] = np.asarray(block.n_empty, dtype=np.int64)
        if self.per_cell:
            arrays["per_cell_delta"] = deltas.astype(np.float32)
            arrays["per_cell_baseline"] = baseline.astype(np.float32)
        return arrays
