"""Gene mapping modes: `original` is the published pipeline exactly, `extended` is wider and adds up.

Real data subsets and a slice of scTranslator's own dictionaries live in tests/data/genemap (made by
scripts/make_genemap_test_data.py), so these tests need nothing outside the repository except the
official-format fixture checkpoint (skipped without it).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import sctranslator
from sctranslator.errors import InputDataError, VocabularyError
from sctranslator.model import ModelConfig, TranslatorModel
from sctranslator.plan import build_plan, reference_alignment
from sctranslator.vocab import map_genes, map_proteins, mapping_report_for_file

DATA = Path(__file__).resolve().parent / "data" / "genemap"
REPO = Path(__file__).resolve().parents[1]
PROTEINS = ["CD3", "CD4", "CD8a", "CD14", "CD16", "CD19", "CD45RA", "HLA-DR", "CD11c", "CD56"]


@pytest.fixture(scope="module")
def pbmc() -> ad.AnnData:
    return ad.read_h5ad(DATA / "pbmc10k_slice.h5ad")


@pytest.fixture(scope="module")
def bmmc() -> ad.AnnData:
    return ad.read_h5ad(DATA / "bmmc.h5ad")


@pytest.fixture(scope="module")
def hgnc() -> pd.DataFrame:
    return pd.read_csv(DATA / "hgnc_bmmc.tsv", sep="\t", dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def original_dicts() -> tuple[dict[str, str], dict[str, int]]:
    """scTranslator's hgs_to_EntrezID and EntrezID_to_myID, restricted to the genes of the test data."""
    table = pd.read_csv(DATA / "sctranslator_dicts.tsv", sep="\t", dtype=str, keep_default_na=False)
    symbols = table[table["table"] == "symbol"]
    entrez = table[table["table"] == "entrez"]
    return dict(zip(symbols["key"], symbols["value"], strict=True)), dict(
        zip(entrez["key"], entrez["value"].astype(int), strict=True))


def original_tokens(names: pd.Index, dicts: tuple[dict[str, str], dict[str, int]]) -> np.ndarray:
    """The original's hugo_symbol_to_myID: two dict.get calls per name, None -> 0."""
    hgs_to_entrez, entrez_to_token = dicts
    return np.array([entrez_to_token.get(hgs_to_entrez.get(name), 0) for name in names], dtype=np.int64)


def original_predictions(rna: ad.AnnData, model: TranslatorModel, proteins: list[str],
                         dicts: tuple[dict[str, str], dict[str, int]]) -> np.ndarray:
    """The original pipeline written plainly: drop unmapped columns, min-max each cell over the kept
    ones, first L, pad, one forward pass of P proteins (utils.fix_sc_normalize_truncate_padding)."""
    tokens = original_tokens(rna.var_names, dicts)
    keep = np.flatnonzero(tokens > 0)
    x = np.asarray(rna.X[:, keep].todense(), dtype=np.float64)
    lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
    scaled = 1e-8 + (x - lo) / (hi - lo) * (1 - 1e-8)
    length, width = model.config.max_genes, model.config.max_proteins
    n = min(length, keep.size)
    values = np.zeros((rna.n_obs, length), np.float32)
    values[:, :n] = scaled[:, :n]
    genes = np.zeros(length, np.int64)
    genes[:n] = tokens[keep][:n]
    assert len(proteins) <= width
    ids = np.zeros(width, np.int64)
    ids[: len(proteins)] = map_proteins(proteins).token_ids
    with torch.no_grad():
        pred = model(torch.from_numpy(values), torch.from_numpy(genes).expand(rna.n_obs, -1),
                     torch.from_numpy(ids).expand(rna.n_obs, -1),
                     torch.from_numpy(np.arange(length) < n).expand(rna.n_obs, -1),
                     torch.from_numpy(np.arange(width) < len(proteins)).expand(rna.n_obs, -1))
    return pred.numpy()[:, : len(proteins)].astype(np.float64)


def predict(rna: ad.AnnData, model: TranslatorModel, proteins: list[str], **options) -> ad.AnnData:
    """translate's result in memory (it returns X as a lazy dask array over the store)."""
    return sctranslator.translate(rna, model, proteins, block_cells=64, batch_size=8, **options).to_memory()


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(np.asarray(actual, dtype=np.float64) - expected).max() / np.abs(expected).max())


@pytest.fixture(scope="module")
def wide_model() -> TranslatorModel:
    """A published-style model (no panels) with L larger than the data: every position matters."""
    torch.manual_seed(0)
    config = ModelConfig(dim=8, enc_depth=1, enc_heads=2, enc_dim_head=4, enc_nb_features=6, dec_depth=1,
                         dec_heads=2, dec_dim_head=4, dec_nb_features=6, max_genes=4096, max_proteins=16,
                         translator_depth=1)
    return TranslatorModel(config).eval()


@pytest.fixture(scope="module")
def official(fixtures_dir: Path) -> TranslatorModel:
    return sctranslator.load_model(fixtures_dir / "tiny_a_official.pt")


# ------------------------------------------------------------- the original pipeline, exactly


def test_the_slice_has_names_only_the_extended_mapping_knows(pbmc, original_dicts):
    original = map_genes(pbmc.var_names, id_type="symbol", mapping="original").token_ids
    extended = map_genes(pbmc.var_names, id_type="symbol", mapping="extended").token_ids
    np.testing.assert_array_equal(original, original_tokens(pbmc.var_names, original_dicts))
    only_extended = pbmc.var_names[(original == 0) & (extended > 0)]
    assert {"C1ORF162", "AC008957.1"} <= set(only_extended)
    # Early enough to move the positions the fixture checkpoints read (L = 64).
    first = np.flatnonzero((original == 0) & (extended > 0))[0]
    assert (original[:first] > 0).sum() < 64


@pytest.mark.parametrize("checkpoint", ["tiny_a_official.pt", "tiny_b_official.pt"])
def test_translate_with_an_official_checkpoint_is_the_original_pipeline(pbmc, original_dicts, fixtures_dir,
                                                                        checkpoint):
    model = sctranslator.load_model(fixtures_dir / checkpoint)
    proteins = PROTEINS[: model.config.max_proteins]
    expected = original_predictions(pbmc, model, proteins, original_dicts)
    result = predict(pbmc, model, proteins)
    assert relative_error(result.X, expected) <= 1e-5
    record = result.uns["sctranslator"]
    assert record["plan"]["gene_mapping"] == "original" and record["settings"]["gene_mapping"] == "original"
    # The extended mapping is a different model input: it must not pass for the original.
    wider = predict(pbmc, model, proteins, gene_mapping="extended")
    assert relative_error(wider.X, expected) > 1e-3
    assert wider.uns["sctranslator"]["plan"]["fingerprint"] != record["plan"]["fingerprint"]


def test_every_position_is_the_original_one_with_a_long_model(pbmc, original_dicts, wide_model):
    expected = original_predictions(pbmc, wide_model, PROTEINS, original_dicts)
    assert relative_error(predict(pbmc, wide_model, PROTEINS).X, expected) <= 1e-5
    plan = build_plan(pbmc.var, wide_model, PROTEINS)
    tokens = original_tokens(pbmc.var_names, original_dicts)
    np.testing.assert_array_equal(plan.gene_ids[plan.position_real], tokens[tokens > 0])


def test_mt_co2_is_one_token_whatever_names_it(original_dicts):
    hgs_to_entrez, entrez_to_token = original_dicts
    expected = entrez_to_token[hgs_to_entrez["MT-CO2"]]  # what scTranslator's own table gives the symbol
    assert expected != entrez_to_token["4513"]  # ... which is not Entrez 4513's own token
    for ids, id_type in ((["MT-CO2"], "symbol"), (["4513"], "entrez"), ([4513], "auto"),
                         (["ENSG00000198712"], "ensembl"), (["ENSG00000198712.1"], "auto"),
                         (["mt-Co2"], "mouse_symbol")):
        assert map_genes(ids, id_type=id_type, mapping="original").token_ids.tolist() == [expected], ids


def test_mt_co2_is_one_token_in_the_extended_mapping_too():
    tokens = [map_genes(ids, mapping="extended").token_ids[0] for ids in (["MT-CO2"], [4513], ["ENSG00000198712.3"])]
    assert tokens[0] == tokens[1] == tokens[2] > 0


# ------------------------------------------------------------- one dataset, three identifier types


def same_gene_columns(bmmc: ad.AnnData, hgnc: pd.DataFrame) -> np.ndarray:
    """Columns whose symbol is the current HGNC symbol of their Ensembl ID: both name one gene."""
    current = hgnc.set_index("ensembl_gene_id")["symbol"].reindex(bmmc.var["gene_ids"].astype(str))
    return np.flatnonzero(current.to_numpy() == bmmc.var_names.to_numpy())


def as_identifiers(rna: ad.AnnData, names: pd.Index | np.ndarray) -> ad.AnnData:
    return ad.AnnData(X=rna.X, obs=rna.obs, var=pd.DataFrame(index=pd.Index(names, dtype=str)))


def test_symbols_ensembl_and_entrez_give_identical_predictions(bmmc, hgnc, wide_model):
    columns = same_gene_columns(bmmc, hgnc)
    assert columns.size > 950  # all but the genes bmmc names by an older or clone-based name
    same = bmmc[:, columns].copy()
    by_ensembl = hgnc.set_index("ensembl_gene_id").reindex(same.var["gene_ids"].astype(str))
    inputs = {
        "symbol": same,
        "ensembl": as_identifiers(same, same.var["gene_ids"].astype(str).to_numpy()),
        "ensembl.version": as_identifiers(same, (same.var["gene_ids"].astype(str) + ".5").to_numpy()),
    }
    with_entrez = by_ensembl["entrez_id"].to_numpy() != ""
    entrez = same[:, with_entrez].copy()
    inputs["entrez"] = as_identifiers(entrez, by_ensembl["entrez_id"].to_numpy()[with_entrez])
    inputs["symbol, entrez genes"] = entrez
    results = {name: predict(rna, wide_model, PROTEINS) for name, rna in inputs.items()}
    detected = {name: r.uns["sctranslator"]["plan"]["coverage"]["id_type"] for name, r in results.items()}
    assert detected["ensembl"] == detected["ensembl.version"] == "ensembl" and detected["entrez"] == "entrez"
    for name in ("ensembl", "ensembl.version"):
        np.testing.assert_array_equal(results[name].X, results["symbol"].X, err_msg=name)
    np.testing.assert_array_equal(results["entrez"].X, results["symbol, entrez genes"].X)


def test_the_demo_bundle_gives_symbols_and_ensembl_ids_identical_predictions(bmmc, hgnc):
    demo = sctranslator.load_model(REPO / "sctranslator" / "data" / "demo" / "model")
    same = bmmc[:, same_gene_columns(bmmc, hgnc)].copy()
    # bmmc has no MT-CO2 (a gene of the demo panel, under the token scTranslator's table gives the
    # symbol): add it, with MT-CO3's counts.
    counts = same.X[:, [int(np.flatnonzero(same.var_names == "MT-CO3")[0])]]
    symbols = [*same.var_names, "MT-CO2"]
    ensembl = [*same.var["gene_ids"].astype(str), "ENSG00000198712"]
    data = ad.AnnData(X=sp.hstack([same.X, counts]).tocsr(), obs=same.obs, var=pd.DataFrame(index=symbols))
    by_symbol = predict(data, demo, None, allow_low_coverage=True)
    by_ensembl = predict(as_identifiers(data, np.array(ensembl)), demo, None, allow_low_coverage=True)
    assert by_ensembl.uns["sctranslator"]["plan"]["gene_mapping"] == "extended"
    np.testing.assert_array_equal(by_ensembl.X, by_symbol.X)


def test_whole_bmmc_differs_between_symbols_and_ensembl_only_where_names_are_outdated(bmmc, hgnc):
    by_symbol = map_genes(bmmc.var_names, mapping="original").token_ids
    by_ensembl = map_genes(bmmc.var["gene_ids"], mapping="original").token_ids
    differ = set(np.flatnonzero(by_symbol != by_ensembl))
    outdated = set(range(bmmc.n_vars)) - set(same_gene_columns(bmmc, hgnc))
    assert differ <= outdated
    assert {"TAZ", "C12orf4", "AL391832.2"} <= set(bmmc.var_names[sorted(differ)])


# ------------------------------------------------------------- several columns on one token


def test_original_keeps_each_column_of_a_shared_token_and_reports_it(pbmc, wide_model, caplog):
    with caplog.at_level(logging.WARNING, logger="sctranslator.plan"):
        plan = build_plan(pbmc.var, wide_model, PROTEINS)
    pair = [int(np.flatnonzero(pbmc.var_names == name)[0]) for name in ("PLA2G2C", "UBXN10-AS1")]
    slots = plan.column_slot[pair]
    assert (slots >= 0).all() and slots[0] != slots[1]  # two positions, as the original
    assert plan.gene_ids[slots[0]] == plan.gene_ids[slots[1]]
    assert plan.collisions["tokens_shared"] == 1 and plan.collisions["columns_sharing"] == 2
    assert sorted(next(iter(plan.collisions["examples"].values()))) == ["PLA2G2C", "UBXN10-AS1"]
    assert "share 1 gene tokens" in caplog.text
    json.dumps(plan.summary())  # the provenance record stays JSON


def split_gene(rna: ad.AnnData, column: int, new_name: str, share: float = 0.3) -> ad.AnnData:
    """The same cells with one gene's counts split over two columns (the second appended)."""
    x = rna.X.toarray()
    moved = np.floor(x[:, column] * share)
    x[:, column] -= moved
    names = [*rna.var_names.astype(str), new_name]
    return ad.AnnData(X=sp.csr_matrix(np.column_stack([x, moved]).astype(np.float32)), obs=rna.obs,
                      var=pd.DataFrame(index=names))


@pytest.mark.parametrize("copy", ["make_unique", "previous symbol"])
def test_extended_adds_up_the_columns_of_one_gene(bmmc, wide_model, copy):
    column = int(np.flatnonzero(bmmc.var_names == "CD74")[0])
    name = "CD74-1" if copy == "make_unique" else "DHLAG"  # DHLAG: a previous symbol of CD74 in HGNC
    tokens = map_genes([name, "CD74"], id_type="symbol", mapping="extended").token_ids
    assert tokens[0] == (0 if copy == "make_unique" else tokens[1])  # a copy has no token of its own
    split = split_gene(bmmc, column, name)
    assert (split.X[:, -1].toarray() > 0).any()
    expected = predict(bmmc, wide_model, PROTEINS, gene_mapping="extended")
    result = predict(split, wide_model, PROTEINS, gene_mapping="extended")
    np.testing.assert_allclose(result.X, expected.X, rtol=0, atol=1e-5 * np.abs(expected.X).max())
    collisions = result.uns["sctranslator"]["plan"]["collisions"]
    assert collisions["rule"].startswith("the columns of one gene are added up")
    assert collisions["tokens_shared"] == 1
    assert collisions["make_unique_copies"] == (1 if copy == "make_unique" else 0)


def test_extended_adds_up_identical_names_and_original_refuses_them(bmmc, wide_model):
    column = int(np.flatnonzero(bmmc.var_names == "CD74")[0])
    split = split_gene(bmmc, column, "CD74")
    expected = predict(bmmc, wide_model, PROTEINS, gene_mapping="extended")
    result = predict(split, wide_model, PROTEINS, gene_mapping="extended")
    np.testing.assert_allclose(result.X, expected.X, rtol=0, atol=1e-5 * np.abs(expected.X).max())
    with pytest.raises(InputDataError, match="--gene-mapping extended"):
        build_plan(split.var, wide_model, PROTEINS)


def test_original_drops_a_make_unique_copy_as_the_original_and_says_so(bmmc, wide_model, original_dicts):
    column = int(np.flatnonzero(bmmc.var_names == "CD74")[0])
    split = split_gene(bmmc, column, "CD74-1")
    plan = build_plan(split.var, wide_model, PROTEINS)
    assert plan.column_slot[-1] == -1  # the original's table does not know "CD74-1"
    assert plan.collisions["make_unique_copies"] == 1 and plan.collisions["copy_examples"] == {"CD74-1": "CD74"}
    assert "dropped" in plan.collisions["rule"]
    expected = original_predictions(split, wide_model, PROTEINS, original_dicts)
    assert relative_error(predict(split, wide_model, PROTEINS).X, expected) <= 1e-5


def test_merged_alignment_gives_one_position_per_token():
    tokens = np.array([5, 0, 7, 5, 9, 7, 11])
    slot, real, ids = reference_alignment(tokens, 2, merge=True)
    assert slot.tolist() == [0, -1, 1, 0, -2, 1, -2]
    assert ids.tolist() == [5, 7] and real.tolist() == [True, True]
    slot, _, ids = reference_alignment(tokens, 8)
    assert slot.tolist() == [0, -1, 1, 2, 3, 4, 5] and ids[:6].tolist() == [5, 7, 5, 9, 7, 11]


def test_prepare_values_adds_shared_columns_before_scaling():
    from sctranslator.kernels import build_alignment, prepare_values

    with pytest.raises(ValueError, match="more than one column"):  # the kernels' own check, after merging
        build_alignment(np.array([0, 0, 1]), np.array([True, True]), 3)

    block = np.array([[1, 2, 3, 9], [0, 5, 0, 1]], dtype=np.float32)
    real = np.array([True, True, False])
    summed = np.array([[4, 2], [0, 5]], dtype=np.float32)
    expected = prepare_values(summed, np.array([0, 1]), real)
    for kind in (np.asarray, sp.csr_matrix, sp.csc_matrix):
        np.testing.assert_array_equal(prepare_values(kind(block), np.array([0, 1, 0, -1]), real), expected)


# ------------------------------------------------------------- bundles, vocab report, CLI


def test_bundles_record_and_reuse_their_gene_mapping(bmmc, wide_model):
    demo = sctranslator.load_model(REPO / "sctranslator" / "data" / "demo" / "model")
    assert demo.panel["genes"]["mapping"] == "extended"  # scripts/train_demo.py mapped through extended
    assert build_plan(bmmc.var, demo, None, allow_low_coverage=True).gene_mapping == "extended"
    assert build_plan(bmmc.var, wide_model, PROTEINS).gene_mapping == "original"
    with pytest.raises(VocabularyError, match="unknown gene mapping"):
        build_plan(bmmc.var, wide_model, PROTEINS, gene_mapping="wide")


def test_vocab_report_names_the_mapping_and_the_collisions(tmp_path, pbmc):
    rna = ad.AnnData(X=sp.csr_matrix((pbmc.n_obs, 3), dtype=np.float32), obs=pbmc.obs,
                     var=pd.DataFrame(index=["PLA2G2C", "UBXN10-AS1", "PLA2G2C-1"]))
    rna.write_h5ad(tmp_path / "rna.h5ad")
    text = mapping_report_for_file(tmp_path / "rna.h5ad")
    assert "original gene mapping" in text
    assert "PLA2G2C, UBXN10-AS1" in text and "PLA2G2C-1 (of PLA2G2C)" in text
    assert "extended gene mapping" in mapping_report_for_file(tmp_path / "rna.h5ad", gene_mapping="extended")


def test_vocab_command_takes_gene_mapping(tmp_path, capsys):
    from sctranslator.cli.entry import main

    rna = ad.AnnData(X=sp.csr_matrix((2, 5), dtype=np.float32),
                     var=pd.DataFrame(index=["CD4", "C1ORF162", "CD4-1", "CD4.2", "AC008957.1"]))
    rna.write_h5ad(tmp_path / "rna.h5ad")
    assert main(["vocab", str(tmp_path / "rna.h5ad")]) == 0
    text = capsys.readouterr().out
    assert "original gene mapping" in text and "only the extended mapping knows it" in text
    assert "copies (2): CD4-1 (of CD4), CD4.2 (of CD4)" in text  # a clone name like AC008957.1 is no copy
    assert main(["vocab", str(tmp_path / "rna.h5ad"), "--gene-mapping", "extended"]) == 0
    assert "mapped                            3" in capsys.readouterr().out


def test_cli_takes_gene_mapping(tmp_path, bmmc, fixtures_dir):
    from sctranslator.cli.entry import main

    path = tmp_path / "bmmc.h5ad"
    bmmc.write_h5ad(path)
    out = tmp_path / "pred.zarr"
    code = main(["translate", str(path), "--model", str(fixtures_dir / "tiny_a_official.pt"), "--proteins",
                 "CD3,CD4", "--out", str(out), "--gene-mapping", "extended", "--quiet"])
    assert code == 0
    record = ad.read_zarr(out).uns["sctranslator"]
    assert record["plan"]["gene_mapping"] == "extended" and record["settings"]["gene_mapping"] == "extended"


@pytest.mark.parametrize("semantics", ["drop", "zero"])
def test_knockout_removes_every_column_added_up_into_the_gene(bmmc, wide_model, semantics, tmp_path):
    from sctranslator.analysis.knockout import knockout

    column = int(np.flatnonzero(bmmc.var_names == "CD74")[0])
    split = split_gene(bmmc, column, "CD74-1")
    result = knockout(split, wide_model, ["CD74"], PROTEINS, out=tmp_path / "ko.h5ad", semantics=semantics,
                      gene_mapping="extended")
    if semantics == "drop":
        edited = split[:, ~split.var_names.isin(["CD74", "CD74-1"])].copy()
    else:
        x = split.X.toarray()
        x[:, [column, split.n_vars - 1]] = 0
        edited = ad.AnnData(X=sp.csr_matrix(x), obs=split.obs, var=split.var)
    before = np.asarray(predict(split, wide_model, PROTEINS, gene_mapping="extended").X, dtype=np.float64)
    after = np.asarray(predict(edited, wide_model, PROTEINS, gene_mapping="extended").X, dtype=np.float64)
    expected = (after - before).mean(axis=0)
    assert np.abs(expected).max() > 1e-4  # the knockout changes something
    np.testing.assert_allclose(result.mean.loc["CD74"].to_numpy(), expected, rtol=0,
                               atol=1e-5 * np.abs(before).max())


def test_finetuned_bundles_record_and_reuse_the_mapping_they_were_trained_with(pbmc, tmp_path):
    from sctranslator.train import finetune

    rng = np.random.default_rng(0)
    protein = ad.AnnData(X=sp.csr_matrix(rng.poisson(20, (pbmc.n_obs, 4)).astype(np.float32)), obs=pbmc.obs,
                         var=pd.DataFrame(index=["CD3", "CD4", "CD14", "CD19"]))
    options = {"steps": 1, "batch_size": 8, "val_count": 4, "quiet": True, "workers": 1}
    first = finetune(pbmc, protein, config="tiny", out=tmp_path / "a", gene_mapping="original", **options)
    original = map_genes(pbmc.var_names, mapping="original").token_ids
    assert first.panel["genes"]["mapping"] == "original"
    assert first.panel["genes"]["token_ids"] == pd.unique(original[original > 0]).tolist()
    second = finetune(pbmc, protein, init=tmp_path / "a", out=tmp_path / "b", **options)
    assert second.panel["genes"]["mapping"] == "original"  # reused from the init bundle
    saved = json.loads((tmp_path / "b" / "panel.json").read_text())
    assert saved["genes"]["mapping"] == "original"
    assert predict(pbmc, tmp_path / "b", None).uns["sctranslator"]["plan"]["gene_mapping"] == "original"
    scratch = finetune(pbmc, protein, config="tiny", out=tmp_path / "c", **options)
    assert scratch.panel["genes"]["mapping"] == "extended"  # the default from scratch


# ------------------------------------------------------------- ambiguous names are never added up
def test_extended_merges_only_names_that_surely_name_the_same_gene():
    names = ["SARS", "SARS2", "GARS", "GART", "DHLAG", "CD74", "C2ORF48", "RRM2"]
    genes = map_genes(names, id_type="symbol", mapping="extended")
    by_name = dict(zip(names, genes.token_ids.tolist(), strict=True))
    # scTranslator's own table sends SARS to SARS2's token and GARS to GART's, but HGNC reads them as
    # previous symbols of SARS1 and GARS1: never added into another gene's column.
    assert by_name["SARS"] == 0 and by_name["GARS"] == 0 and by_name["SARS2"] > 0 and by_name["GART"] > 0
    assert genes.report.not_merged["SARS"]["token_symbol"] == "SARS2"
    assert genes.report.not_merged["SARS"]["hgnc"] == ["SARS1"]
    assert genes.report.not_merged["GARS"]["shares_token_with"] == ["GART"]
    assert set(genes.report.not_merged) == {"SARS", "GARS"}
    # Previous symbols HGNC gives to the very gene they share a token with are still added up.
    assert by_name["DHLAG"] == by_name["CD74"] > 0 and by_name["C2ORF48"] == by_name["RRM2"] > 0
    assert genes.report.to_dict()["not_merged"]["GARS"]["hgnc"] == ["GARS1"]
    assert "Not merged (2)" in genes.report.to_text()
    # The original mapping keeps scTranslator's table as it is (each column its own position).
    original = map_genes(names, id_type="symbol", mapping="original")
    assert original.token_ids[0] == original.token_ids[1] > 0 and not original.report.not_merged


def test_an_ambiguous_column_is_left_out_of_predictions_and_reported(bmmc, wide_model, tmp_path):
    x = bmmc.X.toarray()
    rng = np.random.default_rng(0)
    extra = rng.poisson(2.0, size=(bmmc.n_obs, 2)).astype(np.float32)
    names = [*bmmc.var_names.astype(str)]
    with_sars2 = ad.AnnData(X=sp.csr_matrix(np.column_stack([x, extra[:, 0]])), obs=bmmc.obs,
                            var=pd.DataFrame(index=[*names, "SARS2"]))
    both = ad.AnnData(X=sp.csr_matrix(np.column_stack([x, extra])), obs=bmmc.obs,
                      var=pd.DataFrame(index=[*names, "SARS2", "SARS"]))
    summed = ad.AnnData(X=sp.csr_matrix(np.column_stack([x, extra.sum(axis=1)])), obs=bmmc.obs,
                        var=pd.DataFrame(index=[*names, "SARS2"]))
    expected = predict(with_sars2, wide_model, PROTEINS, gene_mapping="extended")
    result = predict(both, wide_model, PROTEINS, gene_mapping="extended")
    np.testing.assert_allclose(result.X, expected.X, rtol=0, atol=1e-6 * np.abs(expected.X).max())
    assert not np.allclose(predict(summed, wide_model, PROTEINS, gene_mapping="extended").X, expected.X)
    collisions = result.uns["sctranslator"]["plan"]["collisions"]
    assert collisions["not_merged"] == 1 and "SARS1" in collisions["not_merged_examples"]["SARS"]
    both.write_h5ad(tmp_path / "rna.h5ad")
    text = mapping_report_for_file(tmp_path / "rna.h5ad", gene_mapping="extended")
    assert "Not merged (1)" in text and "SARS (not into SARS2 with SARS2)" in text
