"""What a new user meets in the first hour: unusual but valid inputs, name lists, duplicate cell names,
progress bars. Real files (h5ad, zarr, backed AnnData) and the bundled demo model; no mocks."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp
import zarr
from datafiles import PBMC, TINY_A, data_file

import sctranslator
from sctranslator.cli.entry import main
from sctranslator.engine.sources import open_source
from sctranslator.errors import InputDataError

N_CELLS = 12
KNOCKOUT_PROTEINS = ["CD3", "CD4", "CD14", "CD19"]


@pytest.fixture(scope="module")
def rna() -> ad.AnnData:
    adata = ad.read_h5ad(data_file(PBMC / "rna.h5ad"))[:N_CELLS].copy()
    adata.X = sp.csr_matrix(adata.X)
    return adata


@pytest.fixture(scope="module")
def half(rna: ad.AnnData) -> ad.AnnData:
    """The cells with their counts stored as float16 (dense): what memory-saving pipelines write."""
    out = rna.copy()
    out.X = rna.X.toarray().astype(np.float16)
    return out


@pytest.fixture(scope="module")
def expected(half: ad.AnnData, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """Predictions for the same values given as float32 (float16 -> float32 is exact)."""
    ref = half.copy()
    ref.X = sp.csr_matrix(half.X.astype(np.float32))
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    return np.asarray(sctranslator.translate(ref, "demo", out=out, quiet=True).X)


def _sparse_float16_store(adata: ad.AnnData, path: Path) -> Path:
    """An AnnData file whose CSR X/data is float16 (scipy.sparse cannot hold float16, so it is written
    with h5py / zarr directly, as other tools do)."""
    data = adata.X.data.astype(np.float16)
    if path.suffix == ".h5ad":
        adata.write_h5ad(path)
        with h5py.File(path, "r+") as f:
            del f["X/data"]
            f.create_dataset("X/data", data=data)
    else:
        adata.write_zarr(path)
        group = zarr.open_group(path, mode="r+")
        del group["X"]["data"]
        group["X"].create_array("data", data=data, chunks=data.shape)
        zarr.consolidate_metadata(path)
    return path


@pytest.mark.parametrize("kind", ["dense-memory", "dense-h5ad", "dense-zarr", "csr-h5ad", "csr-zarr", "csr-backed"])
def test_float16_x_translates_like_its_float32_values(kind: str, rna: ad.AnnData, half: ad.AnnData,
                                                      expected: np.ndarray, tmp_path: Path) -> None:
    layout, where = kind.split("-")
    if layout == "dense":
        data = {"memory": half, "h5ad": tmp_path / "x.h5ad", "zarr": tmp_path / "x.zarr"}[where]
        if where == "h5ad":
            half.write_h5ad(data)
        elif where == "zarr":
            half.write_zarr(data)
    else:
        path = _sparse_float16_store(half_as_csr32(half), tmp_path / ("x.zarr" if where == "zarr" else "x.h5ad"))
        data = ad.read_h5ad(path, backed="r") if where == "backed" else path
    with open_source(data) as source:
        assert source.dtype == np.float16  # the stored type is reported (and fingerprinted) as it is
        block = source.read_block(0, 4)
    assert block.dtype == np.float32
    dense = block.toarray() if sp.issparse(block) else block
    np.testing.assert_array_equal(dense, half.X[:4].astype(np.float32))
    got = sctranslator.translate(data, "demo", out=tmp_path / "pred.zarr", quiet=True)
    np.testing.assert_array_equal(np.asarray(got.X), expected)


def half_as_csr32(half: ad.AnnData) -> ad.AnnData:
    out = half.copy()
    out.X = sp.csr_matrix(half.X.astype(np.float32))
    return out


def test_a_matrix_without_genes_is_a_named_error(rna: ad.AnnData, tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match="has no genes"):
        sctranslator.translate(rna[:, :0].copy(), "demo", out=tmp_path / "p.zarr", quiet=True)
    assert not (tmp_path / "p.zarr").exists()


# -- name lists -----------------------------------------------------------------------------------------

def _not_text(kind: str, tmp_path: Path) -> Path:
    if kind == "h5ad":
        return data_file(PBMC / "protein.h5ad")
    if kind == "zarr":
        path = tmp_path / "protein.zarr"
        ad.read_h5ad(data_file(PBMC / "protein.h5ad"))[:3].copy().write_zarr(path)
        return path
    if kind == "gzip":
        path = tmp_path / "names.txt.gz"
        path.write_bytes(gzip.compress(b"CD3\nCD4\n"))
        return path
    path = tmp_path / "empty.txt"
    path.write_text("# nothing but a comment\n\n")
    return path


@pytest.mark.parametrize("option", ["--proteins", "--cells"])
@pytest.mark.parametrize("kind", ["h5ad", "zarr", "gzip", "empty"])
def test_an_at_file_that_is_not_a_text_list_is_a_one_line_named_error(
        kind: str, option: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    listing = _not_text(kind, tmp_path)
    out = tmp_path / "pred.zarr"
    code = main(["translate", str(data_file(PBMC / "rna.h5ad")), "--model", "demo", "--out", str(out), "--quiet",
                 option, f"@{listing}"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: OptionError: ") and "\n" not in err, err
    assert ("lists no names" in err) if kind == "empty" else ("one name per line" in err), err
    assert not out.exists()


def test_a_text_list_with_comments_and_a_bom_is_read(tmp_path: Path) -> None:
    from sctranslator.options import parse_names

    listing = tmp_path / "names.txt"
    listing.write_bytes("\ufeffCD3\n# controls below\nCD4  # helper\n\n".encode())
    assert parse_names(f"@{listing}") == ["CD3", "CD4"]


# -- duplicate cell names ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def duplicated(rna: ad.AnnData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    adata = rna.copy()
    names = list(adata.obs_names)
    names[5] = names[2]
    adata.obs_names = names
    path = tmp_path_factory.mktemp("dup") / "dup.h5ad"
    adata.write_h5ad(path)
    return path


def test_cells_by_name_refuses_duplicate_obs_names(duplicated: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    names = ad.read_h5ad(duplicated).obs_names
    out = tmp_path / "pred.zarr"
    code = main(["translate", str(duplicated), "--model", "demo", "--out", str(out), "--quiet",
                 "--cells", f"{names[2]},{names[0]}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith("error: InputDataError: ") and "obs_names_make_unique()" in err and names[2] in err
    assert not out.exists()


def test_mudata_write_back_refuses_duplicate_obs_names(duplicated: Path, tmp_path: Path) -> None:
    """A MuData pairs its modalities by cell name: with a repeated name it would pair the wrong cells."""
    pytest.importorskip("mudata")
    out, mudata_path = tmp_path / "pred.zarr", tmp_path / "both.h5mu"
    with pytest.raises(InputDataError, match=r"obs_names_make_unique\(\)"):
        sctranslator.translate(duplicated, "demo", out=out, write_mudata=mudata_path, quiet=True)
    assert not out.exists() and not mudata_path.exists()


def test_duplicate_obs_names_are_fine_where_cells_are_matched_by_position(duplicated: Path, tmp_path: Path) -> None:
    got = sctranslator.translate(duplicated, "demo", out=tmp_path / "pred.zarr", quiet=True)
    assert list(got.obs_names) == list(ad.read_h5ad(duplicated).obs_names)


# -- progress bars in the Python API ---------------------------------------------------------------------

def _run_api(command: str, rna: ad.AnnData, tmp_path: Path, **kwargs: object) -> None:
    if command == "translate":
        sctranslator.translate(rna, "demo", out=tmp_path / "p.zarr", **kwargs)
    elif command == "knockout":
        model = sctranslator.load_model(data_file(TINY_A))
        sctranslator.knockout(rna, model, ["LYZ"], KNOCKOUT_PROTEINS, out=tmp_path / "k.h5ad",
                              block_cells=6, **kwargs)
    else:
        model = sctranslator.load_model(data_file(TINY_A))
        sctranslator.interactions(rna[:4].copy(), model, KNOCKOUT_PROTEINS, **kwargs)


@pytest.mark.parametrize("command,desc,cells", [("translate", "translate", N_CELLS),
                                                 ("knockout", "knockout", N_CELLS), ("attention", "attention", 4)])
def test_the_api_shows_progress_unless_quiet(command: str, desc: str, cells: int, rna: ad.AnnData, tmp_path: Path,
                                             capfd: pytest.CaptureFixture[str]) -> None:
    _run_api(command, rna, tmp_path / "default")
    err = capfd.readouterr().err
    assert desc in err and f"{cells}/{cells}" in err, err
    _run_api(command, rna, tmp_path / "quiet", quiet=True)
    assert f"{cells}/{cells}" not in capfd.readouterr().err


# -- vocab on every input kind ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cite_inputs(rna: ad.AnnData, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    mudata = pytest.importorskip("mudata")
    root = tmp_path_factory.mktemp("cite")
    protein = ad.read_h5ad(data_file(PBMC / "protein.h5ad"))[rna.obs_names].copy()
    both = mudata.MuData({"rna": rna, "prot": protein})
    paths = {"h5ad": data_file(PBMC / "rna.h5ad"), "zarr": root / "rna.zarr", "h5mu": root / "cite.h5mu",
             "mudata-zarr": root / "cite.zarr"}
    rna.write_zarr(paths["zarr"])
    both.write_h5mu(paths["h5mu"])
    both.write_zarr(paths["mudata-zarr"])
    return paths


@pytest.mark.parametrize("kind", ["h5ad", "zarr", "h5mu", "mudata-zarr"])
def test_vocab_reads_every_input_kind_like_translate(kind: str, cite_inputs: dict[str, Path], rna: ad.AnnData,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The genes are the RNA's (a MuData's 'rna' modality, never its protein names); --proteins takes a
    MuData's 'prot' modality."""
    assert main(["vocab", str(cite_inputs[kind]), "--proteins", str(cite_inputs["h5mu"])]) == 0
    out = capsys.readouterr().out
    assert re.search(r"inputs\s+" + f"{rna.n_vars:,}", out), out  # the 4,000 genes, not 4,000 + 14 proteins
    assert "modality 'prot'" in out
    protein_names = ad.read_h5ad(data_file(PBMC / "protein.h5ad")).var_names
    assert re.search(r"inputs\s+" + str(len(protein_names)) + r"\b", out.split("# proteins")[1]), out


@pytest.mark.parametrize("where", ["h5mu", "memory"])
def test_write_back_copies_the_modality_that_was_read(where: str, rna: ad.AnnData, tmp_path: Path) -> None:
    """`--modality RNA --write-h5ad` on a MuData whose RNA is not called 'rna' (a KeyError before)."""
    mudata = pytest.importorskip("mudata")
    protein = ad.read_h5ad(data_file(PBMC / "protein.h5ad"))[rna.obs_names].copy()
    both = mudata.MuData({"RNA": rna, "ADT": protein})
    data: object = both
    if where == "h5mu":
        data = tmp_path / "cite.h5mu"
        both.write_h5mu(data)
    copy = tmp_path / "with_proteins.h5ad"
    sctranslator.translate(data, "demo", out=tmp_path / "pred.zarr", modality="RNA", write_h5ad=copy, quiet=True)
    written = ad.read_h5ad(copy)
    assert list(written.var_names) == list(rna.var_names)
    np.testing.assert_array_equal(written.X.toarray(), rna.X.toarray())


@pytest.mark.parametrize("proteins,repeated", [("CD4,CD3,CD4", "'CD4' = 'CD4'"),
                                               ("CD8a,CD14,CD8", "'CD8a', 'CD8' -> panel protein 'CD8a'")])
def test_a_protein_requested_twice_from_a_panel_model_is_refused_up_front(
        proteins: str, repeated: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same protein twice (by name or by two names) would give two output columns of one protein."""
    out = tmp_path / "pred.zarr"
    code = main(["translate", str(data_file(PBMC / "rna.h5ad")), "--model", "demo", "--out", str(out), "--quiet",
                 "--proteins", proteins])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err.startswith("error: UnknownProteinError: ") and "more than once" in err, err
    assert repeated in err
    assert not out.exists()


# --- papercuts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["notaurl", "tcp://host", "http://host:8786", "host:port"])
def test_bad_scheduler_address_is_an_option_error_before_any_work(tmp_path: Path, capsys, address: str) -> None:
    out = tmp_path / "out.zarr"
    code = main(["translate", str(data_file(PBMC / "rna.h5ad")), "--model", "demo", "--out", str(out),
                 "--scheduler", address])
    err = capsys.readouterr().err
    assert code == 2
    assert "OptionError" in err and "--scheduler" in err and "tcp://host:8786" in err
    assert not out.exists()


@pytest.mark.parametrize("address", ["tcp://10.0.0.1:8786", "host:8786", "tls://host:8786", "ucx://host:1",
                                     "inproc://10.0.0.1/1/2", "tcp://[::1]:8786"])
def test_dask_scheduler_addresses_are_accepted(address: str) -> None:
    from sctranslator.engine.pipeline import check_scheduler_address

    check_scheduler_address(address)


def test_nullable_string_columns_are_written_back_with_missing_values_kept(rna: ad.AnnData, tmp_path: Path) -> None:
    import mudata
    import pandas as pd

    adata = rna.copy()
    adata.obs["donor"] = pd.array(["a", None, "b"] * (adata.n_obs // 3), dtype="string")
    adata.var["note"] = pd.array([None, "x"] * (adata.n_vars // 2), dtype="string")
    sctranslator.translate(adata, "demo", out=tmp_path / "out.zarr", write_h5ad=tmp_path / "w.h5ad",
                           write_mudata=tmp_path / "w.h5mu", quiet=True)
    back = ad.read_h5ad(tmp_path / "w.h5ad")
    assert back.obs["donor"].iloc[0] == "a" and back.obs["donor"].iloc[2] == "b"
    assert pd.isna(back.obs["donor"].iloc[1]) and pd.isna(back.var["note"].iloc[0])
    assert back.var["note"].iloc[1] == "x"
    with mudata.set_options(pull_on_update=False):
        mod = mudata.read_h5mu(tmp_path / "w.h5mu")["rna"]
    assert pd.isna(mod.obs["donor"].iloc[1]) and mod.obs["donor"].iloc[0] == "a"
    assert adata.obs["donor"].dtype == "string"  # the caller's object is untouched


@pytest.mark.parametrize("name", ["ADT", "Antibody Capture", "Protein"])
def test_finetune_finds_the_protein_modality_by_any_usual_name(tmp_path: Path, name: str) -> None:
    import mudata

    from sctranslator.train import load_paired

    rna = ad.read_h5ad(data_file(PBMC / "rna.h5ad"))[:40].copy()
    protein = ad.read_h5ad(data_file(PBMC / "protein.h5ad"))[:40].copy()
    with mudata.set_options(pull_on_update=False):
        mdata = mudata.MuData({"rna": rna, name: protein})
        mdata.write(tmp_path / "pair.h5mu")
    for source in (mdata, tmp_path / "pair.h5mu"):
        assert load_paired(source).protein_names == list(protein.var_names)


def test_finetune_protein_key_names_the_modality(tmp_path: Path) -> None:
    import mudata

    from sctranslator.errors import InputDataError
    from sctranslator.train import load_paired

    rna = ad.read_h5ad(data_file(PBMC / "rna.h5ad"))[:40].copy()
    protein = ad.read_h5ad(data_file(PBMC / "protein.h5ad"))[:40].copy()
    with mudata.set_options(pull_on_update=False):
        mdata = mudata.MuData({"rna": rna, "surface": protein, "adt": protein[:, :3].copy()})
        both = mudata.MuData({"rna": rna, "prot": protein, "adt": protein[:, :3].copy()})
    assert load_paired(mdata, protein_key="surface").protein_names == list(protein.var_names)
    with pytest.raises(InputDataError, match="--protein-key"):
        load_paired(both)


def test_evaluate_reads_a_mudata_zarr_truth(tmp_path: Path) -> None:
    import mudata

    from sctranslator.analysis.evaluate import read_table

    rna = ad.read_h5ad(data_file(PBMC / "rna.h5ad"))[:20].copy()
    protein = ad.read_h5ad(data_file(PBMC / "protein.h5ad"))[:20].copy()
    with mudata.set_options(pull_on_update=False):
        mudata.MuData({"rna": rna, "ADT": protein}).write_zarr(str(tmp_path / "truth.zarr"))
    table = read_table(tmp_path / "truth.zarr", "truth")
    assert list(table.var_names) == list(protein.var_names) and table.n_obs == 20
    protein.write_zarr(tmp_path / "plain.zarr")  # a plain AnnData store still reads as one
    assert read_table(tmp_path / "plain.zarr", "truth").n_vars == protein.n_vars


def test_help_says_what_the_defaults_do(capsys) -> None:
    for command in ("translate", "vocab", "knockout", "attention"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "'rna', else the one RNA-like modality" in text, command
        if command == "vocab":
            assert "default: original" in text and "model's own setting" not in text
    import importlib

    doc = importlib.import_module("sctranslator.analysis.evaluate").evaluate.__doc__
    assert "obsm['protein_predicted']" in doc and "'prot_predicted'" in doc and "obsm['protein_expression']" not in doc
