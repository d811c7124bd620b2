"""What translate hands back and writes beside the RNA: a lazy AnnData, streamed h5ad/h5mu write-backs,
`inplace=True`, and the refusal of an `--out` that names an HDF5 file. Self-contained (synthetic data,
a tiny random model)."""

from __future__ import annotations

import gc
import tempfile
import warnings
from pathlib import Path

import anndata as ad
import dask.array as da
import mudata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from memory_probe import gene_symbols, tiny_model

import sctranslator
from sctranslator.cli.entry import main as cli_main
from sctranslator.errors import InputDataError, StoreError

N_CELLS, N_GENES = 150, 40
PROTEINS = ["CD3", "CD4", "CD8a", "CD14", "CD19", "CD16"]  # CD4, CD14, CD19 are gene names too


@pytest.fixture(scope="module")
def model():  # noqa: ANN201
    return tiny_model(32, 8)


@pytest.fixture(scope="module")
def rna() -> ad.AnnData:
    rng = np.random.default_rng(3)
    genes = gene_symbols(N_GENES - 2) + ["CD4", "CD19"]  # the clash MuData must cope with
    x = sp.random(N_CELLS, N_GENES, density=0.2, format="csr", random_state=4, dtype=np.float32)
    x.data = np.ceil(x.data * 9).astype(np.float32)
    x = (x + sp.csr_matrix((np.ones(N_CELLS, np.float32), (np.arange(N_CELLS), np.zeros(N_CELLS, int))),
                           shape=x.shape)).tocsr()  # no empty cell
    adata = ad.AnnData(x, obs=pd.DataFrame({"cell_type": pd.Categorical(rng.choice(["T", "B", "NK"], N_CELLS)),
                                            "n_counts": np.asarray(x.sum(1)).ravel()},
                                           index=[f"cell{i}" for i in range(N_CELLS)]),
                       var=pd.DataFrame({"highly_variable": np.arange(N_GENES) % 2 == 0}, index=genes))
    adata.layers["counts"] = x.copy()
    adata.obsm["X_pca"] = rng.normal(size=(N_CELLS, 4)).astype(np.float32)
    adata.obsm["protein_expression"] = rng.poisson(3, size=(N_CELLS, 2)).astype(np.float64)  # measured: kept
    adata.uns["note"] = {"kept": 1}
    return adata


@pytest.fixture(scope="module")
def inputs(rna: ad.AnnData, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("inputs")
    rna.write_h5ad(folder / "rna.h5ad")
    rna.write_zarr(folder / "rna.zarr")
    with mudata.set_options(pull_on_update=False):
        mudata.MuData({"rna": rna}).write(str(folder / "rna.h5mu"))
    return {"h5ad": folder / "rna.h5ad", "zarr": folder / "rna.zarr", "h5mu": folder / "rna.h5mu",
            "memory": rna, "backed": ad.read_h5ad(folder / "rna.h5ad", backed="r")}


@pytest.fixture(scope="module")
def expected(rna: ad.AnnData, model, tmp_path_factory: pytest.TempPathFactory) -> ad.AnnData:  # noqa: ANN001
    out = tmp_path_factory.mktemp("expected") / "pred.zarr"
    sctranslator.translate(rna, model, PROTEINS, out=out, embeddings=True, block_cells=40)
    return ad.read_zarr(out)  # the plain, eager reading of the same store


def test_translate_returns_a_lazy_anndata_over_the_store(rna: ad.AnnData, model, expected: ad.AnnData,  # noqa: ANN001
                                                         tmp_path: Path) -> None:
    out = tmp_path / "pred.zarr"
    result = sctranslator.translate(rna, model, PROTEINS, out=out, embeddings=True, block_cells=40)
    assert isinstance(result.X, da.Array) and result.X.dtype == np.float32
    assert isinstance(result.obsm["X_sctranslator"], da.Array)
    np.testing.assert_array_equal(result.X.compute(), expected.X)
    np.testing.assert_array_equal(np.asarray(result.X[5:9]), expected.X[5:9])
    np.testing.assert_array_equal(result.obsm["X_sctranslator"].compute(), expected.obsm["X_sctranslator"])
    assert list(result.var_names) == PROTEINS and list(result.obs_names) == list(rna.obs_names)
    assert result.uns["sctranslator"]["run"]["cells_computed"] == N_CELLS
    in_memory = result.to_memory()
    assert isinstance(in_memory.X, np.ndarray)
    np.testing.assert_array_equal(in_memory.X, expected.X)
    # The lazy X reads the store: values written there later show (nothing was copied out).
    import zarr

    zarr.open_array(str(out / "X"), mode="r+")[0, 0] = 123.0
    assert float(result.X[0, 0].compute()) == 123.0


def test_without_out_the_temporary_store_lives_as_long_as_the_result(rna: ad.AnnData, model,  # noqa: ANN001
                                                                     expected: ad.AnnData, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = sctranslator.translate(rna, model, PROTEINS, embeddings=True, block_cells=40)
    assert len(list(tmp_path.glob("sctranslator-*"))) == 1
    subset = result[:10, ["CD4", "CD19"]]
    gc.collect()
    np.testing.assert_array_equal(np.asarray(subset.X), expected[:10, ["CD4", "CD19"]].X)
    del result, subset
    gc.collect()
    assert list(tmp_path.glob("sctranslator-*")) == []


@pytest.mark.parametrize("kind", ["h5ad", "zarr", "h5mu", "memory", "backed"])
def test_h5ad_write_back_keeps_the_input_and_adds_proteins_and_embeddings(kind: str, inputs: dict, rna: ad.AnnData,
                                                                          model, expected: ad.AnnData,  # noqa: ANN001
                                                                          tmp_path: Path) -> None:
    path = tmp_path / "with_proteins.h5ad"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sctranslator.translate(inputs[kind], model, PROTEINS, embeddings=True, block_cells=40, write_h5ad=path)
    assert [str(w.message) for w in caught] == []
    back = ad.read_h5ad(path)
    frame = back.obsm["protein_predicted"]
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == PROTEINS
    assert list(frame.index) == list(rna.obs_names)
    np.testing.assert_array_equal(frame.to_numpy(), expected.X)
    np.testing.assert_array_equal(back.obsm["X_protein_predicted"], expected.obsm["X_sctranslator"])
    assert back.uns["protein_predicted"]["settings"]["embeddings"]
    np.testing.assert_array_equal(back.obsm["protein_expression"], rna.obsm["protein_expression"])  # measured
    # The RNA is the input, untouched: matrix, layer, tables, other obsm/uns entries.
    assert (back.X != rna.X).nnz == 0 and (back.layers["counts"] != rna.layers["counts"]).nnz == 0
    pd.testing.assert_frame_equal(back.obs, rna.obs)
    pd.testing.assert_frame_equal(back.var, rna.var)
    np.testing.assert_array_equal(back.obsm["X_pca"], rna.obsm["X_pca"])
    assert back.uns["note"]["kept"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no staging file left


@pytest.mark.parametrize("kind", ["h5ad", "zarr", "memory"])
def test_mudata_write_back_follows_mudata_conventions_without_warnings(kind: str, inputs: dict, rna: ad.AnnData,
                                                                       model, expected: ad.AnnData,  # noqa: ANN001
                                                                       tmp_path: Path) -> None:
    path = tmp_path / "both.h5mu"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sctranslator.translate(inputs[kind], model, PROTEINS, embeddings=True, block_cells=40, write_mudata=path)
        with mudata.set_options(pull_on_update=False):  # mudata's coming default; without it mudata
            both = mudata.read_h5mu(path)               # itself warns about that on any read
    assert [str(w.message) for w in caught] == []
    assert set(both.mod) == {"rna", "prot_predicted"} and both.var_names.is_unique
    prot = both["prot_predicted"]
    assert list(prot.var_names) == [f"prot_predicted:{p}" for p in PROTEINS]
    assert list(prot.var["name"]) == PROTEINS
    np.testing.assert_array_equal(prot.X, expected.X)
    np.testing.assert_array_equal(prot.obsm["X_sctranslator"], expected.obsm["X_sctranslator"])
    assert list(prot.obs_names) == list(rna.obs_names)
    assert prot.uns["sctranslator"]["plan"]["mode"]
    assert (both["rna"].X != rna.X).nnz == 0
    pd.testing.assert_frame_equal(both["rna"].obs, rna.obs)
    np.testing.assert_array_equal(both["rna"].obsm["X_pca"], rna.obsm["X_pca"])


def test_inplace_sets_predictions_and_provenance_under_their_own_key(rna: ad.AnnData, model,  # noqa: ANN001
                                                                     expected: ad.AnnData) -> None:
    adata = rna.copy()
    assert sctranslator.translate(adata, model, PROTEINS, embeddings=True, block_cells=40, inplace=True) is None
    frame = adata.obsm["protein_predicted"]
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == PROTEINS
    assert frame.index.equals(adata.obs_names)
    np.testing.assert_array_equal(frame.to_numpy(), expected.X)
    np.testing.assert_array_equal(adata.obsm["X_protein_predicted"], expected.obsm["X_sctranslator"])
    np.testing.assert_array_equal(adata.obsm["protein_expression"], rna.obsm["protein_expression"])  # measured
    info = adata.uns["protein_predicted"]
    assert info["model"]["fingerprint"] and info["settings"]["embeddings"] and info["run"]["cells_computed"] == 150
    assert (adata.X != rna.X).nnz == 0  # nothing else changed
    with pytest.raises(InputDataError, match="inplace=True needs an AnnData or a MuData"):
        sctranslator.translate("rna.h5ad", model, PROTEINS, inplace=True)


def test_out_naming_an_hdf5_file_is_refused_with_the_fix(inputs: dict, model, tmp_path: Path,  # noqa: ANN001
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(StoreError, match=r"Zarr store.*--out .*x\.zarr.*--write-h5ad .*x\.h5ad"):
        sctranslator.translate(inputs["h5ad"], model, PROTEINS, out=tmp_path / "x.h5ad")
    assert not (tmp_path / "x.h5ad").exists()
    bundle = sctranslator.save_model(model, tmp_path / "bundle")
    code = cli_main(["translate", str(inputs["h5ad"]), "--model", str(bundle), "--proteins", "CD3,CD4",
                     "--out", str(tmp_path / "y.h5ad"), "--quiet"])
    assert code == 2 and "--write-h5ad" in capsys.readouterr().err
    assert not (tmp_path / "y.h5ad").exists()
