"""Predictions never replace measured data: write-backs under keys of their own, the refusal and the
explicit replace, MuData modality names, missing obs values and '/' column names kept, and obsm
arrays carried into the output store. Real CITE-seq cells (tests/data, 10x PBMC) and the demo model."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import anndata as ad
import h5py
import mudata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from datafiles import PBMC, data_file

import sctranslator
from sctranslator.cli.entry import main
from sctranslator.engine.output_reader import open_predictions
from sctranslator.errors import KeyConflictError, OptionError

N = 40


def _dense(x: object) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _bytes(dataset: h5py.Dataset) -> bytes:
    values = np.asarray(dataset[()])
    if values.dtype == object:  # variable-length strings: their text, not the pointers
        return "\0".join(v.decode() if isinstance(v, bytes) else str(v) for v in values.ravel()).encode()
    return values.tobytes()


def _raw(path: Path, element: str) -> bytes:
    """The stored bytes of one HDF5 dataset (or of every dataset of a group, by name)."""
    with h5py.File(path, "r") as handle:
        node = handle[element]
        if isinstance(node, h5py.Dataset):
            return _bytes(node)
        parts: list[bytes] = []
        node.visititems(lambda name, item: parts.append(name.encode() + _bytes(item))
                        if isinstance(item, h5py.Dataset) else None)
        return b"".join(parts)


@pytest.fixture(scope="module")
def cite(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """40 real CITE-seq cells: RNA with the measured proteins in obsm['protein_expression'] (scvi-tools'
    layout) and a spatial layout, as .h5ad; and as a MuData (.h5mu) with modalities 'RNA' and 'prot'."""
    folder = tmp_path_factory.mktemp("cite")
    rna = ad.read_h5ad(data_file(PBMC / "rna.h5ad"))[:N].copy()
    prot = ad.read_h5ad(data_file(PBMC / "protein.h5ad"))[:N].copy()
    rng = np.random.default_rng(0)
    rna.obsm["protein_expression"] = pd.DataFrame(_dense(prot.X), index=rna.obs_names,
                                                  columns=prot.var_names.astype(str))
    rna.obsm["spatial"] = rng.uniform(0, 5000, size=(N, 2))
    rna.obsm["X_pca"] = rng.normal(size=(N, 5)).astype(np.float32)
    rna.obsm["sparse_thing"] = sp.random(N, 3, density=0.5, format="csr", random_state=1)
    rna.write_h5ad(folder / "cite.h5ad")
    rna.write_zarr(folder / "cite.zarr")
    with mudata.set_options(pull_on_update=False), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        modality = ad.AnnData(rna.X, obs=rna.obs, var=rna.var, obsm={"spatial": rna.obsm["spatial"]})
        mudata.MuData({"RNA": modality, "prot": prot}).write(str(folder / "cite.h5mu"))
    return {"h5ad": folder / "cite.h5ad", "zarr": folder / "cite.zarr", "h5mu": folder / "cite.h5mu", "rna": rna,
            "prot": prot}


def _translate(data: object, tmp: Path, **kwargs: object) -> ad.AnnData:
    return sctranslator.translate(data, "demo", out=tmp / "pred.zarr", workers=1, **kwargs)


def test_h5ad_write_back_keeps_measured_proteins_byte_identical(cite: dict, tmp_path: Path) -> None:
    before = _sha(cite["h5ad"])
    result = _translate(cite["h5ad"], tmp_path, write_h5ad=tmp_path / "w.h5ad", embeddings=True)
    assert _sha(cite["h5ad"]) == before  # the input file itself is untouched
    for element in ("obsm/protein_expression", "X", "obsm/spatial", "obs"):
        assert _raw(tmp_path / "w.h5ad", element) == _raw(cite["h5ad"], element), element
    back = ad.read_h5ad(tmp_path / "w.h5ad")
    np.testing.assert_array_equal(back.obsm["protein_predicted"].to_numpy(), result.X.compute())
    assert list(back.obsm["protein_predicted"].columns) == list(result.var_names)
    np.testing.assert_array_equal(back.obsm["X_protein_predicted"], result.obsm["X_sctranslator"].compute())
    assert back.uns["protein_predicted"]["settings"]["output_scaling"] == "clr"
    assert "sctranslator" not in back.uns  # everything of ours is under the key
    # evaluate reads the predictions, never the measured counts beside them
    report = sctranslator.evaluate(tmp_path / "w.h5ad", cite["prot"], plots=False)
    assert "obsm['protein_predicted']" in report["predictions_from"]
    assert report["model"]["summary"] == sctranslator.evaluate(tmp_path / "pred.zarr", cite["prot"],
                                                               plots=False)["model"]["summary"]


def test_mudata_input_keeps_every_modality_and_reads_the_named_one(cite: dict, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["translate", str(cite["h5mu"]), "--model", "demo", "--modality", "RNA", "--workers", "1", "--quiet",
               "--out", str(tmp_path / "p.zarr"), "--write-h5ad", str(tmp_path / "w.h5ad"),
               "--write-mudata", str(tmp_path / "w.h5mu")])
    assert rc == 0, capsys.readouterr().err
    pred = open_predictions(tmp_path / "p.zarr")
    with mudata.set_options(pull_on_update=False):
        both = mudata.read_h5mu(tmp_path / "w.h5mu")
    assert set(both.mod) == {"RNA", "prot", "prot_predicted"}
    assert _raw(tmp_path / "w.h5mu", "mod/prot/X") == _raw(cite["h5mu"], "mod/prot/X")  # measured, as it was
    assert _raw(tmp_path / "w.h5mu", "mod/RNA/X") == _raw(cite["h5mu"], "mod/RNA/X")
    np.testing.assert_array_equal(both["prot_predicted"].X, pred.X.compute())
    assert list(both["prot_predicted"].var["name"]) == list(pred.var_names)
    assert list(both["prot_predicted"].obs_names) == list(both["RNA"].obs_names)
    h5ad = ad.read_h5ad(tmp_path / "w.h5ad")  # the RNA modality 'RNA', not a KeyError on 'rna'
    assert h5ad.shape == both["RNA"].shape and "protein_predicted" in h5ad.obsm
    report = sctranslator.evaluate(tmp_path / "w.h5mu", cite["prot"], plots=False)
    assert "modality 'prot_predicted'" in report["predictions_from"]


@pytest.mark.parametrize(("kind", "args", "error", "says"), [
    ("h5mu", ["--write-mudata", "{tmp}/w.h5mu", "--key", "prot"], "KeyConflictError",
     "already has the modality 'prot'"),
    ("h5ad", ["--write-h5ad", "{tmp}/w.h5ad", "--key", "protein_expression"], "KeyConflictError", "MEASURED"),
    ("zarr", ["--write-h5ad", "{tmp}/w.h5ad", "--write-mudata", "{tmp}/w.h5mu", "--key", "spatial"],
     "KeyConflictError", "obsm['spatial']"),
    ("h5mu", ["--write-h5ad", "{tmp}/w.h5ad", "--replace-key"], "OptionError", "needs the key"),
    ("h5ad", ["--key", "x"], "OptionError", "without one of those"),
    ("h5mu", ["--write-mudata", "{tmp}/w.h5mu", "--key", "RNA"], "KeyConflictError", "RNA modality"),
    ("h5ad", ["--write-mudata", "{tmp}/w.h5mu", "--key", "a/b"], "OptionError", "without '/'"),
])
def test_a_write_back_over_existing_data_is_refused_before_any_work(cite: dict, tmp_path: Path, kind: str,
                                                                    args: list[str], error: str, says: str,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    before = _sha(cite[kind]) if kind != "zarr" else None
    modality = ["--modality", "RNA"] if kind == "h5mu" else []
    rc = main(["translate", str(cite[kind]), "--model", "demo", *modality, "--workers", "1", "--quiet",
               "--out", str(tmp_path / "p.zarr"), *[a.format(tmp=tmp_path) for a in args]])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert rc == 2 and last.startswith(f"error: {error}:") and says in last and err.count("error:") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no store, no write-back, nothing half-made
    if before is not None:
        assert _sha(cite[kind]) == before


def test_an_earlier_prediction_is_replaced_only_when_named_with_the_replace_flag(cite: dict, tmp_path: Path) -> None:
    first = tmp_path / "first.h5ad"
    _translate(cite["h5ad"], tmp_path / "a", write_h5ad=first, proteins=["CD3", "CD4"])
    with pytest.raises(KeyConflictError, match=r"obsm\['protein_predicted'\]"):
        _translate(first, tmp_path / "b", write_h5ad=tmp_path / "second.h5ad")
    assert not (tmp_path / "second.h5ad").exists()
    again = _translate(first, tmp_path / "c", write_h5ad=tmp_path / "second.h5ad", key="protein_predicted",
                       replace_key=True)
    back = ad.read_h5ad(tmp_path / "second.h5ad")
    np.testing.assert_array_equal(back.obsm["protein_predicted"].to_numpy(), again.X.compute())
    assert back.obsm["protein_predicted"].shape[1] == again.n_vars > 2
    # Another key sits beside the first prediction; the measured counts are still there, unchanged.
    _translate(first, tmp_path / "d", write_h5ad=tmp_path / "third.h5ad", key="run2")
    third = ad.read_h5ad(tmp_path / "third.h5ad")
    assert {"protein_predicted", "run2", "protein_expression"} <= set(third.obsm)
    assert list(third.obsm["protein_predicted"].columns) == ["CD3", "CD4"]
    assert _raw(tmp_path / "third.h5ad", "obsm/protein_expression") == _raw(cite["h5ad"], "obsm/protein_expression")
    # Named explicitly, with the flag, even the measured key may be replaced: the user's decision.
    _translate(cite["h5ad"], tmp_path / "e", write_h5ad=tmp_path / "mine.h5ad", key="protein_expression",
               replace_key=True)
    assert ad.read_h5ad(tmp_path / "mine.h5ad").obsm["protein_expression"].shape[1] == again.n_vars


def test_inplace_adds_a_mudata_modality_and_refuses_to_replace_unasked(cite: dict, tmp_path: Path) -> None:
    with mudata.set_options(pull_on_update=False):
        both = mudata.read_h5mu(cite["h5mu"])
    rna_obsm = set(both["RNA"].obsm)
    measured = _dense(both["prot"].X).copy()
    assert sctranslator.translate(both, "demo", workers=1, modality="RNA", inplace=True) is None
    assert set(both.mod) == {"RNA", "prot", "prot_predicted"}
    assert set(both["RNA"].obsm) == rna_obsm  # nothing written into the RNA modality
    np.testing.assert_array_equal(_dense(both["prot"].X), measured)
    expected = _translate(cite["h5ad"], tmp_path)
    np.testing.assert_array_equal(both["prot_predicted"].X, expected.X.compute())
    with pytest.raises(KeyConflictError, match="prot_predicted"):
        sctranslator.translate(both, "demo", workers=1, modality="RNA", inplace=True)
    adata = cite["rna"].copy()
    sctranslator.translate(adata, "demo", workers=1, inplace=True, embeddings=True, backend="torch")
    assert "X_protein_predicted" in adata.obsm
    with pytest.raises(KeyConflictError):
        sctranslator.translate(adata, "demo", workers=1, inplace=True, proteins=["CD3"])
    with pytest.raises(OptionError):
        sctranslator.translate(adata, "demo", workers=1, inplace=True, replace_key=True)
    sctranslator.translate(adata, "demo", workers=1, inplace=True, proteins=["CD3"], key="protein_predicted",
                           replace_key=True)
    assert list(adata.obsm["protein_predicted"].columns) == ["CD3"]
    assert "X_protein_predicted" not in adata.obsm  # the replaced run's embeddings went with it
    np.testing.assert_array_equal(adata.obsm["protein_expression"], cite["rna"].obsm["protein_expression"])


def test_missing_obs_values_stay_missing_in_the_store_and_every_write_back(cite: dict, tmp_path: Path) -> None:
    adata = cite["rna"].copy()
    del adata.obsm["sparse_thing"]
    values = {
        "mixed": [None, 1, "a"] + ["b"] * (N - 3),
        "all_missing": [None] * N,
        "numbers": [None, 1.5] + [2.0] * (N - 2),
        "words": ["x", None, np.nan] + [f"w{i}" for i in range(N - 3)],
        "flags": [True, None] + [False] * (N - 2),
    }
    for name, column in values.items():
        adata.obs[name] = pd.Series(column, index=adata.obs_names, dtype=object)
    adata.obs["cats"] = pd.Categorical(["u", None] + ["v"] * (N - 2))
    _translate(adata, tmp_path, write_h5ad=tmp_path / "w.h5ad", write_mudata=tmp_path / "w.h5mu")
    with mudata.set_options(pull_on_update=False):
        tables = {"store": ad.read_zarr(tmp_path / "pred.zarr").obs, "h5ad": ad.read_h5ad(tmp_path / "w.h5ad").obs,
                  "h5mu": mudata.read_h5mu(tmp_path / "w.h5mu")["rna"].obs}
    for where, obs in tables.items():
        for name, column in {**values, "cats": list(adata.obs["cats"])}.items():
            got = obs[name]
            missing = pd.isna(pd.Series(column, dtype=object)).to_numpy()
            assert (got.isna().to_numpy() == missing).all(), (where, name, list(got[:3]))
            assert "None" not in set(got.dropna().astype(str)), (where, name)
        assert list(obs["mixed"].iloc[1:3].astype(str)) == ["1", "a"] and obs["numbers"].iloc[1] == 1.5
        assert list(obs["words"].dropna()[:2]) == ["x", "w0"]


def test_obs_columns_named_with_a_slash_are_kept(cite: dict, tmp_path: Path) -> None:
    adata = cite["rna"].copy()
    adata.obs["batch/lane"] = pd.Categorical(np.arange(N) % 3)
    adata.obs["batch%2Flane"] = np.arange(N)  # already the escaped name: both stay apart
    result = _translate(adata, tmp_path, write_h5ad=tmp_path / "w.h5ad")
    assert list(result.obs["batch/lane"]) == list(adata.obs["batch/lane"])
    assert list(result.obs["batch%2Flane"]) == list(range(N))
    reopened = open_predictions(tmp_path / "pred.zarr")
    assert {"batch/lane", "batch%2Flane"} <= set(reopened.obs.columns)
    raw = ad.read_zarr(tmp_path / "pred.zarr")  # anndata's own reader sees the stored names
    renamed = raw.uns["sctranslator"]["obs_columns_renamed"]
    assert {renamed[k] for k in renamed} == {"batch/lane"}
    back = ad.read_h5ad(tmp_path / "w.h5ad")
    stored = next(iter(back.uns["protein_predicted"]["obs_columns_renamed"]))
    assert list(back.obs[stored]) == list(adata.obs["batch/lane"])


@pytest.mark.parametrize("kind", ["h5ad", "zarr", "memory", "h5mu"])
def test_numeric_obsm_arrays_travel_into_the_store(cite: dict, tmp_path: Path, kind: str) -> None:
    data = cite["rna"] if kind == "memory" else cite[kind]
    extra = {"modality": "RNA"} if kind == "h5mu" else {}
    result = _translate(data, tmp_path, **extra)
    stored = ad.read_zarr(tmp_path / "pred.zarr")
    np.testing.assert_array_equal(stored.obsm["spatial"], cite["rna"].obsm["spatial"])
    np.testing.assert_array_equal(result.obsm["spatial"].compute(), cite["rna"].obsm["spatial"])
    if kind != "h5mu":  # the MuData's RNA modality was written without these
        np.testing.assert_array_equal(stored.obsm["X_pca"], cite["rna"].obsm["X_pca"])
        assert stored.obsm["X_pca"].dtype == np.float32
        assert "sparse_thing" not in stored.obsm  # only dense numeric arrays travel
    # A cell selection carries the selected rows.
    picked = _translate(data, tmp_path / "sel", max_cells=7, obs_query=None, **extra)
    np.testing.assert_array_equal(picked.obsm["spatial"].compute(), cite["rna"].obsm["spatial"][:7])


def test_knockout_per_cell_output_keeps_missing_obs_values(cite: dict, tmp_path: Path) -> None:
    adata = cite["rna"][:12].copy()
    adata.obs["mixed"] = pd.Series([None, 1, "a"] + ["b"] * 9, index=adata.obs_names, dtype=object)
    adata.obs["plate/well"] = np.arange(12)
    sctranslator.knockout(adata, "demo", ["CD2"], out=tmp_path / "ko.h5ad", per_cell=True)
    obs = ad.read_h5ad(tmp_path / "ko_per_cell.h5ad").obs
    assert obs["mixed"].isna().tolist() == [True] + [False] * 11
    assert list(obs["plate%2Fwell"]) == list(range(12))
    assert "mixed" in adata.obs and adata.obs["mixed"].dtype == object  # the caller's object as it was
