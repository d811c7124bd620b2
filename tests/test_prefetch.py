"""Read-ahead (engine.prefetch): the same blocks as direct reads, at most `ahead` blocks held."""

from __future__ import annotations

import numpy as np
from datafiles import PBMC, TINY_A, data_file

from sctranslator.engine.block_runner import BlockRunner
from sctranslator.engine.prefetch import prefetching
from sctranslator.engine.sources import open_source
from sctranslator.model import load_model
from sctranslator.plan import build_plan


def test_prefetched_blocks_equal_direct_reads_and_stay_bounded() -> None:
    source = open_source(data_file(PBMC / "rna.h5ad"))
    plan = build_plan(source.var, load_model(TINY_A), ["CD3", "CD4"], normalize="total_log1p")
    runner = BlockRunner(source, plan, allow_empty_cells=True)
    ranges = [(start, min(start + 100, source.n_obs)) for start in range(0, source.n_obs, 100)]
    direct = [runner.read(a, b).data for a, b in ranges]
    with prefetching(runner, ranges):
        prefetcher = runner.prefetcher
        for index, (a, b) in enumerate(ranges):
            block = runner.read(a, b)
            assert (block.data != direct[index]).nnz == 0 and (block.start, block.stop) == (a, b)
            held = list(prefetcher._futures)
            assert len(held) <= 1  # one block ahead, never more
            if index + 1 < len(ranges):
                assert held == [ranges[index + 1]]  # the next block is already being read
        # A subset read (rows given) bypasses the read-ahead and is still right.
        rows = np.array([3, 7, 42])
        assert (runner.read(0, 100, rows).data != direct[0][rows]).nnz == 0
    assert runner.prefetcher is None
