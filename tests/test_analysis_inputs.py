"""knockout, attention and finetune read the RNA the way translate does: .raw, a MuData modality."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import anndata as ad
import mudata
import numpy as np
import pytest
import scanpy as sc

from sctranslator.analysis.attention import interactions
from sctranslator.analysis.knockout import knockout

DEMO = Path(str(resources.files("sctranslator") / "data" / "demo"))


@pytest.fixture(scope="module")
def counts() -> ad.AnnData:
    return ad.read_h5ad(DEMO / "rna.h5ad")[:24].copy()


@pytest.fixture(scope="module")
def normalised_with_raw(counts) -> ad.AnnData:
    """What a scanpy user holds: X normalised and log-transformed, the counts kept in .raw."""
    data = counts.copy()
    data.raw = data.copy()  # (raw = data would share the buffer that normalize_total rewrites)
    sc.pp.normalize_total(data, target_sum=1e4)
    sc.pp.log1p(data)
    return data


def test_knockout_reads_raw_and_a_named_modality(counts, normalised_with_raw, tmp_path) -> None:
    want = knockout(counts, "demo", ["CD4", "CD8A"], out=tmp_path / "a.h5ad").mean
    from_raw = knockout(normalised_with_raw, "demo", ["CD4", "CD8A"], out=tmp_path / "b.h5ad", use_raw=True).mean
    np.testing.assert_allclose(from_raw.to_numpy(), want.to_numpy(), rtol=1e-6, atol=1e-7)
    stale = knockout(normalised_with_raw, "demo", ["CD4", "CD8A"], out=tmp_path / "c.h5ad").mean
    assert not np.allclose(stale.to_numpy(), want.to_numpy(), atol=1e-4)  # X itself would be normalised twice
    both = mudata.MuData({"GEX": counts.copy()})
    by_name = knockout(both, "demo", ["CD4", "CD8A"], out=tmp_path / "d.h5ad", modality="GEX").mean
    np.testing.assert_allclose(by_name.to_numpy(), want.to_numpy(), rtol=1e-6, atol=1e-7)


def test_attention_reads_raw(counts, normalised_with_raw) -> None:
    want = interactions(counts, "demo", block_cells=24).gene_to_protein
    got = interactions(normalised_with_raw, "demo", block_cells=24, use_raw=True).gene_to_protein
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=1e-5, atol=1e-7)
