"""Pairing RNA with protein cells reads names in blocks and keeps none: matches equal pandas' by-name
matching on real data (shuffled, partly overlapping, h5ad and zarr), and the sources' name caches
are released once pairing is done."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from datafiles import PBMC, data_file

from sctranslator.engine.sources import open_source
from sctranslator.errors import InputDataError
from sctranslator.train import cellnames
from sctranslator.train.paired import load_paired

N = 300


@pytest.fixture(scope="module")
def tables() -> tuple[ad.AnnData, ad.AnnData]:
    rna = ad.read_h5ad(data_file(PBMC / "rna.h5ad"))[:N].copy()
    protein = ad.read_h5ad(data_file(PBMC / "protein.h5ad"))[:N].copy()
    return rna, protein


@pytest.mark.parametrize("suffix", ["h5ad", "zarr"])
def test_name_blocks_equal_the_names(tables, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    rna = tables[0]
    path = tmp_path / f"rna.{suffix}"
    rna.write_h5ad(path) if suffix == "h5ad" else rna.write_zarr(path)
    monkeypatch.setattr(cellnames, "NAME_BLOCK", 7)  # many blocks, a short last one
    source = open_source(path)
    got = np.concatenate([names for _, names in cellnames.name_blocks(source, 7)])
    assert source._obs_names is None  # read slice by slice, never the whole index
    assert got.tolist() == rna.obs_names.tolist()
    rows = np.array([0, 5, 6, 150, 299])
    assert cellnames.names_at(source, rows).tolist() == rna.obs_names[rows].tolist()


@pytest.mark.parametrize("suffix", ["h5ad", "zarr"])
def test_pairing_by_name_matches_pandas(tables, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    rna, protein = tables
    monkeypatch.setattr(cellnames, "NAME_BLOCK", 16)
    order = np.random.default_rng(0).permutation(N)[: N - 40]  # shuffled, 40 RNA cells without proteins
    shuffled = protein[order].copy()
    rna_path, protein_path = tmp_path / f"rna.{suffix}", tmp_path / f"protein.{suffix}"
    for table, path in ((rna, rna_path), (shuffled, protein_path)):
        table.write_h5ad(path) if suffix == "h5ad" else table.write_zarr(path)
    paired = load_paired(rna_path, protein_path)
    positions = pd.Index(shuffled.obs_names).get_indexer(rna.obs_names)
    expected = np.flatnonzero(positions >= 0)
    assert paired.rows.tolist() == expected.tolist()
    assert paired.protein_rows.tolist() == positions[expected].tolist()
    measured = shuffled.X[positions[expected]]
    measured = measured.toarray() if hasattr(measured, "toarray") else measured
    assert np.array_equal(paired.proteins, np.asarray(measured, dtype=np.float64))
    # Nothing keeps the names: the sources' caches are empty and obs is read on demand.
    assert paired.source._obs_names is None and paired.protein_source._obs_names is None
    assert paired.obs.index.tolist() == rna.obs_names[expected].tolist()
    assert paired.cell_names(np.array([0, 3])).tolist() == rna.obs_names[expected[[0, 3]]].tolist()


def test_same_order_pairs_row_by_row_and_errors_stay_named(tables, tmp_path: Path) -> None:
    rna, protein = tables
    rna.write_h5ad(tmp_path / "rna.h5ad")
    protein.write_h5ad(tmp_path / "protein.h5ad")
    paired = load_paired(tmp_path / "rna.h5ad", tmp_path / "protein.h5ad")
    assert paired.rows.tolist() == list(range(N)) and paired.protein_rows is paired.rows
    repeated = protein[::-1].copy()
    repeated.obs_names = [*repeated.obs_names[:-1], repeated.obs_names[0]]  # a name twice
    repeated.write_h5ad(tmp_path / "repeated.h5ad")
    with pytest.raises(InputDataError, match=r"protein cell names \(obs_names\) repeat 1 name"):
        load_paired(tmp_path / "rna.h5ad", tmp_path / "repeated.h5ad")
    other = protein.copy()
    other.obs_names = [f"x{name}" for name in other.obs_names]
    other.write_h5ad(tmp_path / "other.h5ad")
    with pytest.raises(InputDataError, match="share no cell names"):
        load_paired(tmp_path / "rna.h5ad", tmp_path / "other.h5ad")
