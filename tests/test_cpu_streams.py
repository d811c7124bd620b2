"""Single-thread streams on CPU (engine/backends/cpu_streams.py): same predictions, in order, within the cores."""

from __future__ import annotations

import threading
import time

import numpy as np
import torch
from datafiles import PBMC, TINY_A

import sctranslator
from sctranslator.engine.backends.base import Batch
from sctranslator.engine.backends.cpu_streams import StreamPool
from sctranslator.engine.backends.torch_backend import TorchBackend
from sctranslator.engine.block_runner import BlockRunner
from sctranslator.engine.sources import open_source
from sctranslator.engine.threads import cell_flop, choose_parallelism
from sctranslator.model import ModelConfig, load_model
from sctranslator.plan import build_plan


def test_streams_keep_the_order_and_at_most_their_count_at_once() -> None:
    running, peak, lock = [0], [0], threading.Lock()
    seen_threads: list[int] = []

    def call(batch: int, embeddings: bool, threads: int) -> tuple[np.ndarray, None]:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            seen_threads.append(threads)
        time.sleep(0.01 * (batch % 3))  # later batches may finish first
        with lock:
            running[0] -= 1
        return np.array([batch]), None

    pool = StreamPool(3)
    try:
        got = [int(p[0]) for p, _ in pool.run(call, iter(range(10)), False)]
        assert got == list(range(10))
        assert peak[0] == 3 and set(seen_threads) == {1}  # three at a time, one thread each
        seen_threads.clear()
        assert [int(p[0]) for p, _ in pool.run(call, [7], False)] == [7]
        assert seen_threads == [3]  # a lone batch gets every thread of the block
    finally:
        pool.close()


def test_streamed_predictions_equal_one_call_at_a_time() -> None:
    model = load_model(TINY_A)
    source = open_source(str(PBMC / "rna.h5ad"))
    plan = build_plan(source.var, model, ["CD3", "CD4", "CD14"], allow_low_coverage=True)
    _, values = BlockRunner(source, plan, allow_empty_cells=True).read_prepared(0, 24)
    batches = [Batch(values[i:i + 4], plan.gene_ids, plan.position_real, plan.protein_windows,
                     plan.protein_window_mask) for i in range(0, 24, 4)]
    before = torch.get_num_threads()
    streamed = TorchBackend(model, threads=2)
    plain = TorchBackend(model, threads=2, cpu_streams=False)
    try:
        assert streamed.streams is not None and plain.streams is None
        got = list(streamed.predict_batches(batches, embeddings=True))
        expected = [plain.predict_with_embeddings(batch) for batch in batches]
        assert len(got) == len(expected)
        for (p, e), (p0, e0) in zip(got, expected, strict=True):
            np.testing.assert_allclose(p, p0, rtol=0, atol=1e-6)
            np.testing.assert_allclose(e, e0, rtol=0, atol=1e-6)
    finally:
        streamed.close()
        torch.set_num_threads(before)


def test_the_rule_records_streams_for_backends_that_run_them() -> None:
    flop = cell_flop(ModelConfig(), 3_700)
    torch_rule = choose_parallelism(flop_per_cell=flop, cpus=4, streams=True)
    assert (torch_rule.workers, torch_rule.threads, torch_rule.compute_slots, torch_rule.streams) == (2, 4, 1, 4)
    assert "4 single-thread calls side by side" in torch_rule.why
    assert torch_rule.record(1)["streams"] == 4
    assert choose_parallelism(flop_per_cell=flop, cpus=4).streams == 1  # e.g. onnxruntime: one call, 4 threads
    assert choose_parallelism(flop_per_cell=flop, cpus=4, device="cuda", streams=True).streams == 1
    assert choose_parallelism(flop_per_cell=flop, cpus=4, workers=4, streams=True).streams == 1  # 1 thread each


def test_translate_records_streams_and_turning_them_off(tmp_path) -> None:
    rna = str(PBMC / "rna.h5ad")
    kwargs = {"allow_empty_cells": True, "batch_size": 8, "block_cells": 32, "workers": 1}
    on = sctranslator.translate(rna, TINY_A, ["CD3", "CD4"], out=tmp_path / "on.zarr", **kwargs)
    off = sctranslator.translate(rna, TINY_A, ["CD3", "CD4"], out=tmp_path / "off.zarr",
                                 backend_options={"cpu_streams": False}, **kwargs)
    recorded_on = on.uns["sctranslator"]["settings"]["parallelism"]
    recorded_off = off.uns["sctranslator"]["settings"]["parallelism"]
    assert recorded_on["streams"] == recorded_on["threads"]
    assert recorded_off["streams"] == 1
    np.testing.assert_allclose(np.asarray(on.X[:64]), np.asarray(off.X[:64]), rtol=0, atol=1e-6)
