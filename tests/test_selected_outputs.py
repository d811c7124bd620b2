"""The decoder at the real protein positions only (model/selected_outputs.py) equals the whole decoder there."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datafiles import PBMC, TINY_A

import sctranslator
from sctranslator.engine.backends.base import Batch
from sctranslator.engine.backends.torch_backend import TorchBackend
from sctranslator.engine.block_runner import BlockRunner
from sctranslator.engine.sources import open_source
from sctranslator.model import ModelConfig, TranslatorModel, load_model
from sctranslator.model.selected_outputs import decode_selected, selected_outputs_apply
from sctranslator.plan import build_plan


@pytest.mark.parametrize("real", [1, 10, 999])
def test_selected_positions_equal_the_whole_decoder_at_full_size(real: int) -> None:
    torch.manual_seed(real)
    config = ModelConfig()  # the published sizes: P = 1,000 decoder tokens, dim 128, 2 layers
    model = TranslatorModel(config).eval()
    translated = torch.randn(2, config.max_proteins, config.dim)
    ids = torch.zeros(config.max_proteins, dtype=torch.int64)
    ids[:real] = torch.randint(1, 5_000, (real,))
    mask = ids != 0
    keep = torch.arange(real)
    with torch.inference_mode():
        whole = model.decode(translated, ids.expand(2, -1), mask.expand(2, -1))
        got = decode_selected(model, translated, ids.expand(2, -1), mask, keep)
        assert selected_outputs_apply(model)
    scale = whole[:, keep].abs().max()
    assert (got - whole[:, keep]).abs().max() <= 1e-5 * scale
    # the padded tokens still count: dropping them from the keys changes the answer
    with torch.inference_mode():
        alone = model.decode(translated[:, :real], ids[:real].expand(2, -1), mask[:real].expand(2, -1))
    assert (alone - whole[:, keep]).abs().max() > 1e-4 * scale


def test_the_backend_skips_padded_proteins_only_when_asked() -> None:
    model = load_model(TINY_A)
    source = open_source(str(PBMC / "rna.h5ad"))
    plan = build_plan(source.var, model, ["CD3", "CD4", "CD14"], allow_low_coverage=True)
    _, values = BlockRunner(source, plan, allow_empty_cells=True).read_prepared(0, 8)
    batch = Batch(values, plan.gene_ids, plan.position_real, plan.protein_windows, plan.protein_window_mask)
    whole = TorchBackend(model).predict(batch)
    selected = TorchBackend(model, selected_outputs=True).predict(batch)
    real = plan.protein_window_mask.reshape(-1)
    assert np.isnan(selected[:, ~real]).all() and not np.isnan(whole).any()
    np.testing.assert_allclose(selected[:, plan.output_index], whole[:, plan.output_index], rtol=0,
                               atol=1e-5 * np.abs(whole).max())
    model.dec.layers[-1].attn.capture = lambda q, k: None  # attention analysis needs the whole decoder
    assert not selected_outputs_apply(model)
    model.dec.layers[-1].attn.capture = None


def test_translate_writes_the_same_proteins_with_selected_outputs(tmp_path) -> None:
    rna = str(PBMC / "rna.h5ad")
    proteins = ["CD3", "CD4", "CD14"]
    default = sctranslator.translate(rna, TINY_A, proteins, allow_empty_cells=True, out=tmp_path / "a.zarr")
    whole = sctranslator.translate(rna, TINY_A, proteins, allow_empty_cells=True, out=tmp_path / "b.zarr",
                                   backend_options={"selected_outputs": False})
    a, b = np.asarray(default.X[:200]), np.asarray(whole.X[:200])
    assert not np.isnan(a).any()
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())
