"""TileDB-SOMA experiments as input: real local experiments written by soma_io.from_h5ad from
the committed BMMC cells, translated and compared with the same cells given as an h5ad."""

from __future__ import annotations

import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import tiledbsoma  # the `soma` extra, part of `dev`
import tiledbsoma.io as soma_io

import sctranslator
from sctranslator.analysis.knockout import knockout
from sctranslator.cli.entry import main
from sctranslator.engine.sources import open_source
from sctranslator.engine.sources.soma import SomaSource
from sctranslator.engine.sources.subset import select_cells
from sctranslator.errors import InputDataError, MissingExtraError, OptionError, StoreError
from sctranslator.model import TranslatorModel
from sctranslator.plan import build_plan

PROTEINS = ["CD3", "CD4", "CD8a", "CD14", "CD19", "CD45RA"]
QUERY = "cell_type in ['CD14+ Mono', 'NK'] and n_genes_by_counts > 1000"  # SOMA value_filter syntax
PANDAS_QUERY = QUERY  # the same expression evaluated by pandas on the h5ad's obs
COMMON = {"block_cells": 32, "batch_size": 16, "workers": 1, "quiet": True}


@pytest.fixture(scope="module")
def cells(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The BMMC cells as an h5ad with Census-style var columns (feature_name, feature_id)."""
    rna = ad.read_h5ad(data_dir / "bmmc_cite_neurips2021" / "rna.h5ad")
    rna.var["feature_name"] = rna.var_names.astype(str)
    rna.var["feature_id"] = rna.var["gene_ids"].astype(str)
    path = tmp_path_factory.mktemp("soma") / "bmmc.h5ad"
    rna.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def experiment(cells: Path) -> str:
    """A local SOMA experiment: raw counts in ms['RNA'].X['raw'] as in Census."""
    uri = str(cells.parent / "bmmc_exp")
    soma_io.from_h5ad(uri, str(cells), measurement_name="RNA", X_layer_name="raw")
    return uri


@pytest.fixture(scope="module")
def h5ad(cells: Path) -> ad.AnnData:
    return ad.read_h5ad(cells)


@pytest.fixture(scope="module")
def tiny(fixtures_dir: Path) -> TranslatorModel:
    return sctranslator.load_model(fixtures_dir / "tiny_a_official.pt")


def predictions(result: ad.AnnData) -> np.ndarray:
    return np.asarray(result.X, dtype=np.float64)


def test_query_is_pushed_down_and_selects_the_cells_pandas_selects(experiment: str, h5ad: ad.AnnData,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    reads = []
    real = tiledbsoma.DataFrame.read

    def recording(self, *args, **kwargs):  # tiledbsoma's own reader, watched
        if str(self.uri).rstrip("/").endswith("obs"):
            reads.append(kwargs)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(tiledbsoma.DataFrame, "read", recording)
    source = open_source(experiment)
    chosen = select_cells(source, obs_query=QUERY)
    expected = np.flatnonzero(h5ad.obs.eval(PANDAS_QUERY).to_numpy())
    assert 0 < expected.size < h5ad.n_obs
    np.testing.assert_array_equal(chosen.joinids, expected)  # from_h5ad numbers cells 0..n-1 in file order
    filtered = [r for r in reads if r.get("value_filter")]
    assert filtered and all(r["column_names"] == ["soma_joinid"] for r in filtered)
    # Every obs read is either the joinid column alone or the selected cells' rows: obs is never read whole.
    assert all(r.get("column_names") == ["soma_joinid"] or "coords" in r for r in reads)
    assert chosen.read_obs().index.tolist() == h5ad.obs_names[expected].tolist()


def test_named_cells_with_a_pushed_down_query_select_what_a_file_selects(experiment: str, cells: Path,
                                                                         h5ad: ad.AnnData) -> None:
    inside = np.flatnonzero(h5ad.obs.eval(PANDAS_QUERY).to_numpy())
    names = [*h5ad.obs_names[[inside[5], 0, inside[1], 1, inside[9]]]]  # two outside the query
    from_file = select_cells(open_source(cells), cells=names, obs_query=PANDAS_QUERY, max_cells=2)
    from_soma = select_cells(open_source(experiment), cells=names, obs_query=QUERY, max_cells=2)
    assert from_soma.obs_names.tolist() == from_file.obs_names.tolist() == list(h5ad.obs_names[inside[[1, 5]]])
    assert (from_soma.read_block(0, 2) != from_file.read_block(0, 2)).nnz == 0
    assert QUERY in from_soma.selection
    with pytest.raises(InputDataError, match="not in the SOMA experiment.*NOT_A_CELL"):
        select_cells(open_source(experiment), cells=["NOT_A_CELL"], obs_query=QUERY)


def test_translate_uri_and_open_experiment_equal_the_h5ad(experiment: str, h5ad: ad.AnnData,
                                                          tiny: TranslatorModel, tmp_path: Path) -> None:
    rows = np.flatnonzero(h5ad.obs.eval(PANDAS_QUERY).to_numpy())
    reference = predictions(sctranslator.translate(h5ad[rows].copy(), tiny, PROTEINS, **COMMON))
    by_uri = sctranslator.translate(experiment, tiny, PROTEINS, obs_query=QUERY, out=tmp_path / "uri.zarr",
                                    obs_columns=["cell_type", "batch"], **COMMON)
    np.testing.assert_allclose(predictions(by_uri), reference, atol=1e-5, rtol=0)
    stored = ad.read_zarr(tmp_path / "uri.zarr")
    assert list(stored.obs.columns) == ["soma_joinid", "cell_type", "batch"]
    np.testing.assert_array_equal(stored.obs["soma_joinid"].to_numpy(), rows)
    assert stored.obs_names.tolist() == h5ad.obs_names[rows].tolist()
    assert stored.obs["cell_type"].astype(str).tolist() == h5ad.obs["cell_type"].iloc[rows].astype(str).tolist()
    settings = stored.uns["sctranslator"]["settings"]
    assert QUERY in settings["cell_selection"] and settings["measurement"] == "RNA"
    with tiledbsoma.Experiment.open(experiment) as opened:
        by_object = sctranslator.translate(opened, tiny, PROTEINS, obs_query=QUERY, **COMMON)
        np.testing.assert_allclose(predictions(by_object), reference, atol=1e-5, rtol=0)
        assert "soma_joinid" in by_object.obs and "cell_type" in by_object.obs  # all obs columns by default


def test_gene_column_feature_id_equals_the_symbol_run(experiment: str, tiny: TranslatorModel) -> None:
    symbols = sctranslator.translate(experiment, tiny, PROTEINS, obs_query="cell_type == 'NK'", **COMMON)
    ensembl = sctranslator.translate(experiment, tiny, PROTEINS, obs_query="cell_type == 'NK'",
                                     gene_column="feature_id", **COMMON)
    assert ensembl.uns["sctranslator"]["input"]["gene_column"] == "feature_id"
    np.testing.assert_allclose(predictions(ensembl), predictions(symbols), atol=1e-5, rtol=0)
    with pytest.raises(InputDataError, match="no column 'gene_symbol'.*feature_id"):
        open_source(experiment, gene_column="gene_symbol")


def test_layer_default_and_named_errors(cells: Path, experiment: str, tmp_path: Path) -> None:
    # raw is the default beside another layer; the only layer is the default; several without raw: named error.
    with tiledbsoma.Experiment.open(experiment) as opened:
        assert SomaSource(opened).layer == "raw"
    two = str(tmp_path / "two_layers")
    soma_io.from_h5ad(two, str(cells), measurement_name="RNA", X_layer_name="counts")
    assert open_source(two).layer == "counts"
    with tiledbsoma.Experiment.open(two, "w") as writable:
        soma_io.add_X_layer(writable, "RNA", "logcounts", ad.read_h5ad(cells).X.log1p())
    with pytest.raises(InputDataError, match="layers: counts, logcounts.*--layer"):
        open_source(two)
    assert open_source(two, layer="logcounts").layer == "logcounts"
    with pytest.raises(InputDataError, match="no layer 'normalized'.*counts, logcounts"):
        open_source(two, layer="normalized")
    with pytest.raises(InputDataError, match="no measurement 'ATAC'.*RNA.*--measurement"):
        open_source(experiment, measurement="ATAC")
    with pytest.raises(OptionError, match="--measurement"):
        open_source(cells, measurement="RNA")  # an h5ad has no measurements
    with pytest.raises(InputDataError, match="not a valid SOMA value filter.*cell_type"):
        sctranslator.translate(experiment, "demo", obs_query="no_such_column == 3", quiet=True)
    with pytest.raises(InputDataError, match="selects no cell"):
        sctranslator.translate(experiment, "demo", obs_query="n_genes_by_counts < 0", quiet=True)
    with pytest.raises(OptionError, match="--write-h5ad.*SOMA.*soma_joinid"):
        sctranslator.translate(experiment, "demo", write_h5ad=tmp_path / "copy.h5ad", quiet=True)


def test_cli_translate_and_its_named_errors(experiment: str, h5ad: ad.AnnData, tiny: TranslatorModel,
                                             fixtures_dir: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.zarr"
    model = str(fixtures_dir / "tiny_a_official.pt")
    code = main(["translate", experiment, "--model", model, "--proteins", ",".join(PROTEINS), "--measurement",
                 "RNA", "--layer", "raw", "--obs-query", "cell_type == 'NK'", "--obs-columns", "cell_type",
                 "--block-cells", "32", "--workers", "1", "--out", str(out), "--quiet"])
    assert code == 0
    stored = ad.read_zarr(out)
    rows = np.flatnonzero((h5ad.obs["cell_type"] == "NK").to_numpy())
    np.testing.assert_array_equal(stored.obs["soma_joinid"].to_numpy(), rows)
    reference = predictions(sctranslator.translate(h5ad[rows].copy(), tiny, PROTEINS, **COMMON))
    np.testing.assert_allclose(np.asarray(stored.X, dtype=np.float64), reference, atol=1e-5, rtol=0)
    capsys.readouterr()
    code = main(["translate", experiment, "--model", model, "--measurement", "ATAC", "--out",
                 str(tmp_path / "x.zarr"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "error: InputDataError:" in err and "'ATAC'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.zarr").exists()  # refused before any work


def test_missing_extra_is_named_before_any_work(experiment: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "tiledbsoma" or m.startswith("tiledbsoma.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tiledbsoma", None)  # as if not installed: the import fails
    with pytest.raises(MissingExtraError, match=r"sctranslator\[soma\]"):
        sctranslator.translate(experiment, "demo", out=tmp_path / "p.zarr", quiet=True)
    assert not (tmp_path / "p.zarr").exists()


def test_interrupted_run_resumes_and_a_changed_query_is_refused(experiment: str, tiny: TranslatorModel,
                                                                 tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    full = predictions(sctranslator.translate(experiment, tiny, PROTEINS, obs_query=QUERY, **COMMON))
    assert full.shape[0] > 3 * COMMON["block_cells"]
    out = tmp_path / "resumed.zarr"
    real = SomaSource._read_rows
    reads: list[int] = []

    def failing(self, start, stop):  # the read of the third block fails, as a lost connection would
        block = COMMON["block_cells"]
        if start % block == 0 and stop - start <= block:  # a block of the run (the scale check samples more)
            reads.append(start)
            if start == 2 * block and failing.armed:
                raise StoreError("connection lost")
        return real(self, start, stop)

    failing.armed = True
    monkeypatch.setattr(SomaSource, "_read_rows", failing)
    with pytest.raises(StoreError, match="connection lost"):
        sctranslator.translate(experiment, tiny, PROTEINS, obs_query=QUERY, out=out, **COMMON)
    committed = {int(p.name) for p in (out / ".sctranslator-job" / "blocks").iterdir() if p.name.isdigit()}
    assert committed and 2 not in committed
    reads.clear()
    failing.armed = False
    resumed = sctranslator.translate(experiment, tiny, PROTEINS, obs_query=QUERY, out=out, **COMMON)
    assert 2 * COMMON["block_cells"] in reads
    assert set(reads).isdisjoint({index * COMMON["block_cells"] for index in committed})  # not redone
    np.testing.assert_array_equal(predictions(resumed), full)
    with pytest.raises(StoreError, match="different"):
        sctranslator.translate(experiment, tiny, PROTEINS, obs_query="cell_type == 'NK'", out=out, **COMMON)


def test_knockout_reads_a_soma_experiment_like_the_h5ad(experiment: str, h5ad: ad.AnnData, tiny: TranslatorModel,
                                                        tmp_path: Path) -> None:
    rows = np.r_[0:20, 400:420]
    subset = h5ad[rows].copy()
    exp_rows = str(tmp_path / "subset_exp")
    subset_file = tmp_path / "subset.h5ad"
    subset.write_h5ad(subset_file)
    soma_io.from_h5ad(exp_rows, str(subset_file), measurement_name="RNA", X_layer_name="raw")
    plan = build_plan(subset.var, tiny, PROTEINS)
    genes = [str(subset.var_names[int(np.flatnonzero(plan.column_slot == 3)[0])])]  # a gene the model reads
    from_file = knockout(subset, tiny, genes, PROTEINS, out=tmp_path / "file.h5ad", block_cells=10)
    from_soma = knockout(exp_rows, tiny, genes, PROTEINS, out=tmp_path / "soma.h5ad", block_cells=10,
                         measurement="RNA")
    np.testing.assert_allclose(from_soma.adata.layers["mean"], from_file.adata.layers["mean"], atol=1e-6, rtol=0)


def test_obs_columns_also_choose_a_files_obs(cells: Path, tiny: TranslatorModel, tmp_path: Path) -> None:
    out = tmp_path / "file.zarr"
    sctranslator.translate(cells, tiny, PROTEINS, obs_columns=["batch", "cell_type"], max_cells=20, out=out,
                           **COMMON)
    assert list(ad.read_zarr(out).obs.columns) == ["batch", "cell_type"]
    with pytest.raises(InputDataError, match="'tissue'.*cell_type"):
        sctranslator.translate(cells, tiny, PROTEINS, obs_columns=["tissue"], max_cells=20, **COMMON)


def test_uris_members_and_finetune_pairing(experiment: str, data_dir: Path) -> None:
    assert open_source("file://" + experiment).n_obs == 600
    with pytest.raises(StoreError, match="not a SOMAExperiment.*experiment's URI"):
        open_source(Path(experiment) / "ms")  # a TileDB group inside the experiment, not the experiment
    from sctranslator.train.paired import load_paired

    paired = load_paired(experiment, data_dir / "bmmc_cite_neurips2021" / "protein.h5ad")
    assert isinstance(paired.source, SomaSource) and paired.origin["paired_cells"] == 600


def test_knockout_and_attention_select_cells_as_translate_does(experiment: str, h5ad: ad.AnnData,
                                                               tiny: TranslatorModel, fixtures_dir: Path,
                                                               tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from sctranslator.analysis.attention import interactions

    query = "cell_type == 'NK' and n_genes_by_counts > 1500"
    rows = np.flatnonzero(h5ad.obs.eval(query).to_numpy())
    assert 0 < rows.size < 60
    subset = h5ad[rows].copy()
    plan = build_plan(subset.var, tiny, PROTEINS)
    gene = str(subset.var_names[int(np.flatnonzero(plan.column_slot == 3)[0])])  # a gene the model reads
    model = str(fixtures_dir / "tiny_a_official.pt")
    code = main(["knockout", experiment, "--model", model, "--genes", gene, "--proteins", ",".join(PROTEINS),
                 "--obs-query", query, "--block-cells", "16", "--out", str(tmp_path / "ko.h5ad"), "--quiet"])
    assert code == 0
    from_file = knockout(subset, tiny, [gene], PROTEINS, out=tmp_path / "file.h5ad", block_cells=16, quiet=True)
    from_soma = ad.read_h5ad(tmp_path / "ko.h5ad")
    np.testing.assert_allclose(from_soma.layers["mean"], from_file.adata.layers["mean"], atol=1e-6, rtol=0)
    recorded = from_soma.uns["sctranslator_knockout"]
    assert query in recorded["cell_selection"] and list(recorded["n_cells"]) == [rows.size]

    soma_attention = interactions(experiment, tiny, PROTEINS, obs_query=query, block_cells=16, batch_size=4, quiet=True)
    file_attention = interactions(subset, tiny, PROTEINS, block_cells=16, batch_size=4, quiet=True)
    assert soma_attention.n_cells["all"] == rows.size
    np.testing.assert_allclose(soma_attention.gene_to_protein.to_numpy(), file_attention.gene_to_protein.to_numpy(),
                               atol=1e-6, rtol=1e-5)
    assert query in soma_attention.adata.uns["sctranslator_attention"]["cell_selection"]

    # --max-cells and --cells on a file input: the first N cells / the named cells, as an h5ad of them
    first = knockout(h5ad, tiny, [gene], PROTEINS, out=tmp_path / "first.h5ad", block_cells=16, max_cells=12,
                     quiet=True)
    expected = knockout(h5ad[:12].copy(), tiny, [gene], PROTEINS, out=tmp_path / "first_ref.h5ad", block_cells=16,
                        quiet=True)
    assert first.n_cells["all"] == 12
    np.testing.assert_allclose(first.adata.layers["mean"], expected.adata.layers["mean"], atol=1e-6, rtol=0)
    named = list(h5ad.obs_names[[5, 3]])
    picked = interactions(h5ad, tiny, PROTEINS, cells=named, block_cells=16, batch_size=2, quiet=True)
    reference = interactions(h5ad[[3, 5]].copy(), tiny, PROTEINS, block_cells=16, batch_size=2, quiet=True)
    np.testing.assert_allclose(picked.gene_to_protein.to_numpy(), reference.gene_to_protein.to_numpy(), atol=1e-6,
                               rtol=1e-5)

    # a bad query, from a file (pandas) and from the experiment (TileDB), is a one-line named error, exit 2
    capsys.readouterr()
    for data, command in [(experiment, "knockout"), (experiment, "attention"), (str(tmp_path / "subset.h5ad"),
                                                                                "knockout")]:
        subset.write_h5ad(tmp_path / "subset.h5ad")
        out = tmp_path / f"bad_{command}_{Path(data).suffix or 'soma'}"
        extra = ["--genes", gene] if command == "knockout" else []
        code = main([command, data, "--model", model, *extra, "--obs-query", "no_such_column >",
                     "--out", str(out) + (".h5ad" if command == "knockout" else ""), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and "error: InputDataError:" in err and len(err.strip().splitlines()) == 1, err
        assert not [p for p in tmp_path.iterdir() if p.name.startswith("bad_")]  # refused before any output
    code = main(["attention", str(tmp_path / "subset.h5ad"), "--model", model, "--max-cells", "0", "--out",
                 str(tmp_path / "att0"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "--max-cells must be >= 1" in err


def test_an_open_experiment_in_a_collection_is_named_after_its_uri(experiment: str, cells: Path) -> None:
    import tiledbsoma

    from sctranslator.engine.collection import store_names

    with tiledbsoma.Experiment.open(experiment) as opened:
        names = store_names([opened, Path(experiment), cells])
    stem = Path(experiment).name
    # The open experiment and its path share a stem: the second gets the collision suffix.
    assert names == [f"{stem}.zarr", f"{stem}-2.zarr", f"{cells.stem}.zarr"]


def test_plain_h5ad_experiment_names_genes_by_var_id_when_they_are_genes(data_dir: Path, tiny: TranslatorModel,
                                                                         fixtures_dir: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    # tiledbsoma.io.from_h5ad of a plain h5ad (no feature_name) keeps its var names in var['var_id'].
    plain = ad.read_h5ad(data_dir / "bmmc_cite_neurips2021" / "rna.h5ad")[:40].copy()
    for kind, names in (("symbols", plain.var_names), ("ensembl", plain.var["gene_ids"])):
        cells = plain.copy()
        cells.var_names = names.astype(str).to_numpy()
        cells.write_h5ad(tmp_path / f"{kind}.h5ad")
        soma_io.from_h5ad(str(tmp_path / kind), str(tmp_path / f"{kind}.h5ad"), measurement_name="RNA")
        source = open_source(str(tmp_path / kind))
        assert source.gene_column == "var_id" and source.var.index.tolist() == cells.var_names.tolist()
        got = sctranslator.translate(str(tmp_path / kind), tiny, PROTEINS, **COMMON)
        np.testing.assert_allclose(predictions(got), predictions(sctranslator.translate(cells, tiny, PROTEINS,
                                                                                        **COMMON)), atol=1e-5, rtol=0)
    # var names that are no genes (a default integer index): the named error lists the columns, nothing written.
    numbered = plain.copy()
    numbered.var["symbol"] = numbered.var_names.astype(str)
    numbered.var_names = [str(i) for i in range(numbered.n_vars)]
    numbered.write_h5ad(tmp_path / "numbered.h5ad")
    soma_io.from_h5ad(str(tmp_path / "numbered"), str(tmp_path / "numbered.h5ad"), measurement_name="RNA")
    capsys.readouterr()
    args = ["translate", str(tmp_path / "numbered"), "--model", str(fixtures_dir / "tiny_a_official.pt"), "--proteins",
            ",".join(PROTEINS), "--out", str(tmp_path / "n.zarr"), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error: InputDataError:" in err and "'var_id' values (0, 1, 2, ...) are not gene symbols" in err
    assert "--gene-column (var columns: var_id, gene_ids," in err and "symbol)" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "n.zarr").exists()
    assert main([*args, "--gene-column", "symbol"]) == 0
