"""The torch backend keeps the intra-op thread count it was given, whatever Numba's kernels did to it."""

from __future__ import annotations

import torch
from datafiles import PBMC, data_file

from sctranslator.engine.backends.base import BackendSpec, Batch
from sctranslator.engine.backends.torch_backend import TorchBackend
from sctranslator.engine.block_runner import BlockRunner
from sctranslator.engine.sources import open_source
from sctranslator.model import load_model
from sctranslator.plan import build_plan


def test_threads_reasserted_after_numba_prepare() -> None:
    before = torch.get_num_threads()
    try:
        model = load_model("demo")
        backend = TorchBackend.from_spec(BackendSpec(kind="torch", model=model, threads=1))
        source = open_source(str(data_file(PBMC / "rna.h5ad")))
        plan = build_plan(source.var, model, ["CD3", "CD4"], allow_low_coverage=True)
        _, values = BlockRunner(source, plan, allow_empty_cells=True).read_prepared(0, 64)  # Numba, parallel
        torch.set_num_threads(2)  # what a Numba OpenMP kernel leaves behind on a 2-core machine
        backend.predict(Batch(values, plan.gene_ids, plan.position_real, plan.protein_windows,
                              plan.protein_window_mask))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
