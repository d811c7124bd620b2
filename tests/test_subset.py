"""Cell selections read exactly the chosen rows of the input, in the input's order."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from sctranslator.engine.sources import open_source
from sctranslator.engine.sources.subset import select_cells
from sctranslator.errors import InputDataError

RNA = Path(str(resources.files("sctranslator") / "data" / "demo" / "rna.h5ad"))


@pytest.fixture(scope="module")
def adata() -> ad.AnnData:
    data = ad.read_h5ad(RNA)
    data.obs["group"] = np.where(np.arange(data.n_obs) % 3 == 0, "a", "b")
    return data


def _dense(block) -> np.ndarray:
    return block.toarray() if hasattr(block, "toarray") else np.asarray(block)


@pytest.mark.parametrize("where", ["memory", "file"])
def test_named_cells_query_and_max_cells(adata, where) -> None:
    source = open_source(adata if where == "memory" else str(RNA))
    names = list(adata.obs_names[[400, 7, 8, 9, 250, 3]])  # any order asked; input order served
    subset = select_cells(source, cells=names, max_cells=5)
    expected_rows = [3, 7, 8, 9, 250]
    assert list(subset.obs_names) == list(adata.obs_names[expected_rows])
    np.testing.assert_array_equal(_dense(subset.read_block(0, 5)), _dense(adata.X[expected_rows]))
    np.testing.assert_array_equal(_dense(subset.read_block(1, 3)), _dense(adata.X[[7, 8]]))
    assert subset.fingerprint()["obs_names_sha256"] != source.fingerprint()["obs_names_sha256"]


def test_obs_query(adata) -> None:
    subset = select_cells(open_source(adata), obs_query="group == 'a'")
    rows = np.flatnonzero(adata.obs["group"].to_numpy() == "a")
    assert subset.n_obs == rows.size
    np.testing.assert_array_equal(_dense(subset.read_block(0, subset.n_obs)), _dense(adata.X[rows]))
    assert list(subset.read_obs().index) == list(adata.obs_names[rows])


def test_nothing_asked_is_the_source_itself(adata) -> None:
    source = open_source(adata)
    assert select_cells(source) is source


def test_bad_selections_are_named(adata) -> None:
    source = open_source(adata)
    with pytest.raises(InputDataError, match="not in"):
        select_cells(source, cells=["no-such-cell"])
    with pytest.raises(InputDataError, match="cannot be evaluated"):
        select_cells(source, obs_query="no_such_column > 3")
    with pytest.raises(InputDataError, match="leaves no cell"):
        select_cells(source, obs_query="group == 'zzz'")
    with pytest.raises(InputDataError, match=">= 1"):
        select_cells(source, max_cells=0)


def test_translate_a_few_cells(adata, tmp_path) -> None:
    from sctranslator import translate
    from sctranslator.cli.entry import main

    full = translate(adata[:12].copy(), "demo", workers=1)
    first = translate(RNA, "demo", max_cells=5, workers=1, out=tmp_path / "five.zarr")
    assert first.n_obs == 5 and list(first.obs_names) == list(adata.obs_names[:5])
    np.testing.assert_allclose(np.asarray(first.X), np.asarray(full.X)[:5], rtol=1e-6, atol=1e-6)
    assert "first 5 cells" in first.uns["sctranslator"]["settings"]["cell_selection"]
    names = ",".join(adata.obs_names[[9, 2]])
    code = main(["translate", str(RNA), "--model", "demo", "--cells", names, "--out", str(tmp_path / "two.zarr"),
                 "--quiet", "--workers", "1"])
    assert code == 0
    two = ad.read_zarr(tmp_path / "two.zarr")
    assert list(two.obs_names) == list(adata.obs_names[[2, 9]])
    np.testing.assert_allclose(two.X, np.asarray(full.X)[[2, 9]], rtol=1e-6, atol=1e-6)
    with pytest.raises(InputDataError, match="whole input"):
        translate(RNA, "demo", max_cells=5, write_h5ad=tmp_path / "w.h5ad")


def test_run_statistics_travel_with_the_store_and_unfinished_stores_are_refused(adata, tmp_path) -> None:
    from sctranslator import translate
    from sctranslator.engine.output_reader import open_predictions
    from sctranslator.errors import BadCellsError, StoreError

    cells = adata[:20].copy()
    dense = cells.X.toarray()
    dense[7] = 0.0  # an empty cell
    cells.X = dense
    out = tmp_path / "e.zarr"
    translate(cells, "demo", out=out, allow_empty_cells=True, workers=1)
    stored = ad.read_zarr(out).uns["sctranslator"]["run"]
    assert int(stored["empty_cells"]) == 1 and int(stored["cells_computed"]) == 20
    # A job that stops part-way leaves a resumable store, which is not read as if it were finished.
    bad = adata[:40].copy()
    values = bad.X.toarray()
    values[30, 0] = np.nan
    bad.X = values
    with pytest.raises(BadCellsError):
        translate(bad, "demo", out=tmp_path / "w.zarr", block_cells=10, workers=1)
    with pytest.raises(StoreError, match="unfinished translate output"):
        open_predictions(tmp_path / "w.zarr")
    partial = open_predictions(tmp_path / "w.zarr", allow_incomplete=True)
    assert np.isnan(np.asarray(partial.X)[30:]).all()
