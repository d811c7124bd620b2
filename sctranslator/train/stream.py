"""Training data that streams: paired cells read in blocks, shuffled through a bounded buffer, prepared on the fly.

The data order of an epoch: every block (`block_cells` consecutive paired cells of one dataset) of
every dataset, in one seeded random order (`rng([seed, epoch])`), so datasets interleave in
proportion to their size; consecutive `shuffle_blocks` blocks of that order form a shuffle window
whose training cells are permuted with `rng([seed, epoch, window])`. Micro-batches are consecutive
runs of that cell stream (a batch may span two windows); an epoch's partial last batch is skipped.
The position in the order is (epoch, offset): everything else is derived from the seed, so a
checkpoint of those two numbers resumes the exact order. At most two windows of raw (unprepared)
blocks are held; values are prepared per micro-batch by the engine's Numba kernels, exactly as
`translate` prepares them. Under DDP every process reads the same windows and prepares only its
share of each micro-batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from sctranslator.engine.block_runner import BlockRunner
from sctranslator.engine.input_checks import SAMPLE_CELLS, check_counts_table, check_expression_scale
from sctranslator.kernels import scale_targets
from sctranslator.train.paired import PairedData

log = logging.getLogger(__name__)

DEFAULT_BLOCK_CELLS = 1024
DEFAULT_SHUFFLE_BLOCKS = 16
_SCAN_CELLS = 16_384  # most cells one read of the checking pass takes (CSR inputs)


@dataclass
class StreamSet:
    """One paired dataset as the stream reads it.

    Parameters
    ----------
    paired : PairedData
        The paired cells.
    runner : BlockRunner
        Reads and prepares its RNA blocks for the model.
    protein_columns : numpy.ndarray
        int64: the dataset's protein columns used as targets.
    protein_slots : numpy.ndarray
        int64: the model panel position of each such column.
    train : numpy.ndarray
        int64 positions of its training cells.
    val : numpy.ndarray
        int64 positions of its held-out cells.
    target_scaling : str
        Per-cell scaling of the protein targets.
    """

    paired: PairedData
    runner: BlockRunner  # the dataset's own plan onto the model's gene panel
    protein_columns: np.ndarray  # int64: columns of the dataset's protein table that are trained on
    protein_slots: np.ndarray  # int64: position of each of those columns in the model's protein panel
    train: np.ndarray  # int64 paired positions (increasing)
    val: np.ndarray
    target_scaling: str = "minmax"


@dataclass
class Batch:
    """Model inputs and targets of some cells.

    Parameters
    ----------
    values : numpy.ndarray
        float32 ``(n, L)``.
    targets : numpy.ndarray
        float32 ``(n, P)`` scaled targets.
    protein_mask : numpy.ndarray
        bool ``(n, P)``: measured panel positions.
    gene_ids : numpy.ndarray or None
        int64 ``(n, L)`` per cell, with a random gene subset; None: the panel's.
    gene_mask : numpy.ndarray or None
        bool ``(n, L)`` per cell; None: the panel's.
    """

    values: np.ndarray
    targets: np.ndarray
    protein_mask: np.ndarray
    gene_ids: np.ndarray | None = None  # (n, L) per-cell gene tokens after a random gene subset
    gene_mask: np.ndarray | None = None  # (n, L) with them


class _Window:
    """The raw blocks of one shuffle window and the permutation of its cells."""

    def __init__(self, parts: list[tuple[int, object, np.ndarray, np.ndarray]], order: np.ndarray) -> None:
        # parts: (set index, raw RNA rows (CSR/dense), targets (n, P), protein mask (n, P)) per block
        self.parts = parts
        self.starts = np.cumsum([0] + [p[2].shape[0] for p in parts])
        self.order = order  # window cell index at each stream position


class TrainStream:
    """Micro-batches of training cells over several datasets, and their held-out cells in order.

    Parameters
    ----------
    sets : list of StreamSet
        The datasets, each with its plan and split.
    gene_ids : numpy.ndarray
        int64 ``(L,)``: the model's gene panel, shared by all datasets.
    gene_mask : numpy.ndarray
        bool ``(L,)``.
    protein_ids : numpy.ndarray
        int64 ``(P,)``: the model's protein panel.
    protein_mask : numpy.ndarray
        bool ``(P,)`` (per-dataset masks come from ``protein_slots``).
    seed : int
        Seeds the block order and the shuffle windows.
    block_cells : int
        Paired cells per block read.
    shuffle_blocks : int
        Blocks per shuffle window (at most two windows are held, unprepared).
    gene_subset : int or None
        Each training cell sees this many panel genes drawn at random (the original's random gene
        sampling); validation always sees the whole panel.
    """

    def __init__(self, sets: list[StreamSet], *, gene_ids: np.ndarray, gene_mask: np.ndarray,
                 protein_ids: np.ndarray, protein_mask: np.ndarray, seed: int,
                 block_cells: int = DEFAULT_BLOCK_CELLS, shuffle_blocks: int = DEFAULT_SHUFFLE_BLOCKS,
                 gene_subset: int | None = None) -> None:
        self.sets = sets
        self.gene_ids, self.gene_mask = gene_ids, gene_mask
        self.protein_ids, self.protein_mask = protein_ids, protein_mask
        self.n_proteins = int(protein_mask.sum())
        self.seed = int(seed)
        self.block_cells = int(block_cells)
        self.shuffle_blocks = int(shuffle_blocks)
        self.gene_subset = gene_subset
        self.real_positions = np.flatnonzero(gene_mask)
        # The block table: (set, first paired position, training cells in the block), blocks without any left out.
        table = []
        for index, item in enumerate(sets):
            edges = np.arange(0, item.paired.n_cells + self.block_cells, self.block_cells)
            edges[-1] = min(edges[-1], item.paired.n_cells)
            counts = np.diff(np.searchsorted(item.train, edges))
            for k in np.flatnonzero(counts):
                table.append((index, int(edges[k]), int(counts[k])))
        self.blocks = np.asarray(table, dtype=np.int64).reshape(-1, 3)
        self.n_train = int(self.blocks[:, 2].sum()) if len(self.blocks) else 0
        self.n_val = int(sum(item.val.size for item in sets))
        self.epoch = 0
        self.offset = 0
        self._windows: dict[tuple[int, int], _Window] = {}

    # --- the order -----------------------------------------------------------------------------
    def _epoch_windows(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(block order of `epoch`, first stream position of each window and the end)."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.blocks))
        sizes = self.blocks[order, 2]
        bounds = np.cumsum(sizes)[self.shuffle_blocks - 1::self.shuffle_blocks]
        starts = np.concatenate([[0], bounds])
        if starts[-1] != self.n_train:
            starts = np.concatenate([starts, [self.n_train]])
        return order, starts

    def _window(self, epoch: int, index: int, order: np.ndarray) -> _Window:
        key = (epoch, index)
        if key not in self._windows:
            chosen = order[index * self.shuffle_blocks:(index + 1) * self.shuffle_blocks]
            parts = [self._read_train_block(*self.blocks[b]) for b in chosen]
            n = sum(p[2].shape[0] for p in parts)
            permutation = np.random.default_rng([self.seed, epoch, index]).permutation(n)
            # Keep the window being left and the one entered: a batch spans at most two.
            self._windows = {k: v for k, v in self._windows.items() if k == (epoch, index - 1)}
            self._windows[key] = _Window(parts, permutation)
        return self._windows[key]

    def _read_train_block(self, set_index: int, first: int, _count: int) -> tuple[int, object, np.ndarray, np.ndarray]:
        item = self.sets[set_index]
        lo, hi = np.searchsorted(item.train, [first, first + self.block_cells])
        positions = item.train[lo:hi]
        data, targets, mask = self._read(item, positions)
        return set_index, data, targets, mask

    def _read(self, item: StreamSet, positions: np.ndarray) -> tuple[object, np.ndarray, np.ndarray]:
        """Raw RNA rows (checked), scaled targets and protein mask of the paired cells at `positions`."""
        rows = item.paired.rows[positions]
        block = item.runner.read(int(rows[0]), int(rows[-1]) + 1, rows)
        counts = item.paired.read_proteins(positions)[:, item.protein_columns]
        targets = np.zeros((positions.size, self.protein_ids.shape[0]), dtype=np.float32)
        targets[:, item.protein_slots] = scale_targets(counts, item.target_scaling)
        mask = np.zeros(targets.shape, dtype=bool)
        mask[:, item.protein_slots] = True
        return block.data, targets, mask

    def _prepare(self, set_index: int, data: object) -> np.ndarray:
        return self.sets[set_index].runner.prepare(data)

    # --- training batches ----------------------------------------------------------------------
    def take(self, count: int, lo: int, hi: int, rng: np.random.Generator | None = None) -> Batch:
        """Advance by `count` cells (a micro-batch of all processes) and prepare cells ``[lo, hi)`` of them.

        An epoch whose remaining cells are fewer than `count` ends there: the next epoch starts.

        Parameters
        ----------
        count : int
            Cells of the micro-batch over all processes.
        lo : int
            First of this process's cells.
        hi : int
            End of this process's cells.
        rng : numpy.random.Generator or None
            Draws the random gene subsets (with `gene_subset`).

        Returns
        -------
        Batch
            This process's cells.
        """
        if self.offset + count > self.n_train:
            self.epoch += 1
            self.offset = 0
        first = self.offset + lo
        self.offset += count
        order, starts = self._epoch_windows(self.epoch)
        n = hi - lo
        values = np.empty((n, self.gene_ids.shape[0]), dtype=np.float32)
        targets = np.empty((n, self.protein_ids.shape[0]), dtype=np.float32)
        mask = np.empty(targets.shape, dtype=bool)
        position = first
        while position < first + n:
            w = int(np.searchsorted(starts, position, side="right") - 1)
            window = self._window(self.epoch, w, order)
            end = min(first + n, int(starts[w + 1]))
            cells = window.order[position - starts[w]:end - starts[w]]
            base = position - first
            # One read-out and one kernel call per block present in the batch, not per cell.
            part_of = np.searchsorted(window.starts, cells, side="right") - 1
            for p in np.unique(part_of):
                chosen = np.flatnonzero(part_of == p)
                set_index, data, block_targets, block_mask = window.parts[p]
                local = cells[chosen] - window.starts[p]
                values[base + chosen] = self._prepare(set_index, data[local])
                targets[base + chosen] = block_targets[local]
                mask[base + chosen] = block_mask[local]
            position = end
        batch = Batch(values, targets, mask)
        return self._subset_genes(batch, rng) if self.gene_subset else batch

    def _subset_genes(self, batch: Batch, rng: np.random.Generator | None) -> Batch:
        """Each cell keeps `gene_subset` panel genes drawn at random without replacement (as the
        original's training set draws genes of a cell), in the drawn order at positions 0..N-1; the
        other positions are padding (token 0, masked), as the original pads a short cell."""
        rng = rng if rng is not None else np.random.default_rng()
        n, k = batch.values.shape[0], int(self.gene_subset or 0)
        real = self.real_positions
        if k >= real.size:
            return batch
        # argsort of uniform keys: a random k-subset per row, vectorised (no per-cell Python).
        picks = real[np.argsort(rng.random((n, real.size)), axis=1)[:, :k]]
        length = self.gene_ids.shape[0]
        values = np.zeros((n, length), dtype=np.float32)
        values[:, :k] = np.take_along_axis(batch.values, picks, axis=1)
        gene_ids = np.zeros((n, length), dtype=self.gene_ids.dtype)
        gene_ids[:, :k] = self.gene_ids[picks]
        gene_mask = np.zeros((n, length), dtype=bool)
        gene_mask[:, :k] = True
        return Batch(values, batch.targets, batch.protein_mask, gene_ids, gene_mask)

    # --- held-out cells ------------------------------------------------------------------------
    def val_batches(self, size: int) -> Iterator[Batch]:
        """The held-out cells of every dataset, in dataset then cell order, `size` cells at a time.

        Parameters
        ----------
        size : int
            Cells per batch.

        Yields
        ------
        Batch
            The next held-out cells.
        """
        for index, item in enumerate(self.sets):
            # A read spans a bounded range of paired cells (held-out cells are sparse among them).
            step = self._span(item)
            for first in range(0, item.paired.n_cells, step):
                lo, hi = np.searchsorted(item.val, [first, first + step])
                if lo == hi:
                    continue
                positions = item.val[lo:hi]
                data, targets, mask = self._read(item, positions)
                for lo in range(0, positions.size, size):
                    part = data[lo:lo + size]
                    yield Batch(self._prepare(index, part), targets[lo:lo + size], mask[lo:lo + size])

    # --- checks and state ----------------------------------------------------------------------
    def scan(self) -> int:
        """Read every paired cell once, in blocks, before training, so bad values fail now rather than mid-run.

        Returns
        -------
        int
            The number of empty cells (when allowed).

        Raises
        ------
        BadCellsError
            NaN, Inf or negative values, or empty cells unless allowed.
        """
        empty = 0
        for item in self.sets:
            check_expression_scale(item.paired.source, item.runner.plan, what="the RNA")
            sample = item.paired.read_proteins(np.arange(min(item.paired.n_cells, SAMPLE_CELLS)))
            check_counts_table(sample, what="the protein table",
                               advice=f"targets are scaled from counts ({item.target_scaling}); give raw "
                               "protein counts")
            rows = item.paired.rows
            step = self._span(item)
            for start in range(0, rows.size, step):
                chunk = rows[start:start + step]
                empty += item.runner.read(int(chunk[0]), int(chunk[-1]) + 1, chunk).n_empty
        return empty

    def _span(self, item: StreamSet) -> int:
        """Paired cells one read of the checking pass or of the held-out cells covers: a few blocks,
        or a stored CSR chunk when small enough (so that a chunk is not decoded again and again)."""
        source = item.paired.source
        step = self.block_cells * 4
        if source.matrix_format == "csr" and source.chunk_rows:
            step = max(step, min(int(source.chunk_rows), _SCAN_CELLS))
        return step

    def state(self) -> dict[str, int]:
        """The position in the data order (all a checkpoint needs: the rest follows from the seed).

        Returns
        -------
        dict of str to int
            Epoch and position.
        """
        return {"epoch": self.epoch, "offset": self.offset}

    def restore(self, state: dict[str, int]) -> None:
        """Return to a position recorded by `state`.

        Parameters
        ----------
        state : dict of str to int
            The recorded position.
        """
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
        self._windows = {}

