"""Reduced precision (bf16 / fp16) on the torch backend: opt-in, float32 where stability needs it, measured error."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

import sctranslator
from sctranslator.engine.backends import Batch, TorchBackend
from sctranslator.errors import BackendError
from sctranslator.model import ModelConfig, TranslatorModel
from sctranslator.model.precision import DTYPES, DeltaLinear, compute_dtype

PROTEINS = ["CD3", "CD4", "CD8a", "CD14", "CD16", "CD19", "CD45RA", "PD-1", "TIGIT", "CD127"]


def _native(precision: str) -> bool:
    try:
        compute_dtype(precision, "cpu")
    except BackendError:
        return False
    return True


@pytest.fixture(scope="module")
def precision() -> str:
    """A reduced precision this processor runs natively (the tests that need one skip without)."""
    found = next((p for p in ("bf16", "fp16") if _native(p)), None)
    if found is None:
        pytest.skip("this processor has neither native bf16 nor fp16")
    return found


@pytest.fixture(scope="module")
def rna_path(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rna") / "rna.h5ad"
    ad.read_h5ad(data_dir / "pbmc10k_cite_10x" / "rna.h5ad")[:200].copy().write_h5ad(path)
    return path


def per_protein_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    return (a * b).sum(axis=0) / np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_on_real_cells_stays_within_the_error_budget(precision: str, rna_path: Path,
                                                                      fixtures_dir: Path) -> None:
    model = sctranslator.load_model(fixtures_dir / "tiny_a_official.pt")
    if not _native(precision):  # this processor: the named refusal, not a slow emulation
        with pytest.raises(BackendError, match=f"no native {precision} arithmetic"):
            sctranslator.translate(rna_path, model, PROTEINS, precision=precision, allow_empty_cells=True)
        return
    exact = sctranslator.translate(rna_path, model, PROTEINS, allow_empty_cells=True)
    reduced = sctranslator.translate(rna_path, model, PROTEINS, precision=precision, allow_empty_cells=True)
    a, b = np.asarray(exact.X), np.asarray(reduced.X)
    assert reduced.uns["sctranslator"]["settings"]["precision"] == precision
    relative = np.abs(b - a) / np.abs(a).max()
    assert 0 < relative.max() < 2e-3  # it did run in reduced precision, and not far off
    assert np.median(relative) < 2e-4
    assert per_protein_pearson(a, b).min() >= 0.999  # the budget, across these real cells


def test_the_callers_model_is_never_cast_and_random_features_stay_float32(fixtures_dir: Path,
                                                                           precision: str) -> None:
    model = sctranslator.load_model(fixtures_dir / "tiny_a_official.pt")
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    backend = TorchBackend(model, precision=precision)
    dense = [m for m in backend.model.modules() if isinstance(m, DeltaLinear)]
    assert len(dense) == 6 * model.config.enc_depth  # q, k, v, out, and the two feed-forward layers per block
    assert all(m.low_weight.dtype == DTYPES[precision] for m in dense)
    for attn in backend.model.enc.attention_layers() + backend.model.dec.attention_layers():
        assert attn.projection_matrix.dtype == torch.float32
    after = model.state_dict()
    assert all(after[name].dtype == t.dtype and torch.equal(after[name], t) for name, t in before.items())


def test_half_precision_model_keeps_its_feature_map_exactly() -> None:
    torch.manual_seed(0)
    model = TranslatorModel(ModelConfig.sized(dim=16, enc_depth=1, enc_heads=2, enc_dim_head=8, dec_depth=1,
                                              dec_heads=2, dec_dim_head=8, max_genes=32, max_proteins=4,
                                              translator_depth=2, vocab_size=100))
    projection = model.enc.layers[0].attn.projection_matrix.clone()
    model.to(torch.bfloat16)
    assert torch.equal(model.enc.layers[0].attn.projection_matrix, projection)  # not rounded to bf16
    assert model.enc.layers[0].attn.to_q.weight.dtype == torch.bfloat16


def test_reduced_precision_backend_takes_float32_batches_and_returns_float32(fixtures_dir: Path,
                                                                            precision: str) -> None:
    model = sctranslator.load_model(fixtures_dir / "tiny_a_official.pt")
    L, P = model.config.max_genes, model.config.max_proteins
    rng = np.random.default_rng(0)
    ids = np.zeros(L, np.int64)
    ids[:40] = rng.integers(1, 1000, 40)
    values = np.zeros((3, L), np.float32)
    values[:, :40] = rng.random((3, 40))
    batch = Batch(values, ids, ids > 0, rng.integers(1, 1000, (2, P)), np.ones((2, P), bool))
    predictions, embeddings = TorchBackend(model, precision=precision).predict_with_embeddings(batch)
    assert predictions.dtype == np.float32 and predictions.shape == (3, 2 * P)
    assert embeddings is not None and embeddings.dtype == np.float32 and np.isfinite(predictions).all()


def test_unknown_precision_is_a_named_error() -> None:
    with pytest.raises(BackendError, match="unknown precision 'int8'"):
        compute_dtype("int8")


def rounded_directly(model: TranslatorModel, dtype: torch.dtype) -> TranslatorModel:
    """The naive alternative: every dense layer's input rounded to `dtype` (no reference cell)."""
    import copy
    from types import MethodType

    from torch.nn import functional

    naive = copy.deepcopy(model)
    for module in naive.modules():
        if isinstance(module, torch.nn.Linear) and module.in_features > 1 and module.out_features > 1:
            module.to(dtype)
            module.forward = MethodType(lambda self, x: functional.linear(x.to(self.weight.dtype), self.weight,
                                                                          self.bias).float(), module)
    return naive


@pytest.mark.parametrize("padded", [True, False, "valued"])
def test_reference_cell_keeps_the_cell_to_cell_signal_that_direct_rounding_loses(padded: object, fixtures_dir: Path,
                                                                               precision: str) -> None:
    model = sctranslator.load_model(fixtures_dir / "tiny_a_official.pt")
    L, P = model.config.max_genes, model.config.max_proteins
    rng = np.random.default_rng(1)
    n = 40 if padded else L
    ids = np.zeros(L, np.int64)
    ids[:n] = rng.integers(1, 1000, n)
    # Sparse cells, as scaled scRNA cells are: most genes at 1e-8 (a zero count), a few expressed.
    values = np.zeros((64, L), np.float32)
    expressed = rng.random((64, n)) < 0.15
    values[:, :n] = np.where(expressed, rng.random((64, n)), 1e-8)
    if padded == "valued":
        values[:, n - 1:] = 0.3  # "padding" holding values: every position is its own token
        ids[n:] = 0
    batch = Batch(values, ids, ids > 0, rng.integers(1, 1000, (1, P)), np.ones((1, P), bool))
    exact = TorchBackend(model, collapse_padding=False).predict(batch)
    reduced = TorchBackend(model, precision=precision).predict(batch)
    backend = TorchBackend(model, collapse_padding=False)
    backend.model = rounded_directly(model, DTYPES[precision])
    naive = backend.predict(batch)
    ours, theirs = per_protein_pearson(exact, reduced), per_protein_pearson(exact, naive)
    assert ours.min() >= 0.999 and ours.min() > theirs.min()
    assert np.abs(reduced - exact).max() < np.abs(naive - exact).max()
