"""Tests of sctranslator.vocab against the raw identifier tables and the four development datasets."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import datafiles
import numpy as np
import pandas as pd
import pytest

from sctranslator.errors import InputDataError, UnknownProteinError, VocabularyError
from sctranslator.vocab import (
    GeneMapping,
    MappingReport,
    ProteinMapping,
    detect_id_type,
    map_genes,
    map_proteins,
    mapping_report_for_file,
    token_entrez_ids,
    token_symbols,
    vocabulary_size,
)
from sctranslator.vocab.names import candidate_spellings, is_control_key, name_key
from sctranslator.vocab.proteins import curated_proteins

REPO = Path(__file__).resolve().parents[1]
# Row subsets of the raw tables (tests/data/vocab, see scripts/make_test_data.py): every group a test
# looks into (shared Ensembl IDs, homology classes, a symbol's scTranslator row) is kept whole.
VOCAB = datafiles.VOCAB
DATA = datafiles.DATASETS
PANELS = ["pbmc10k_cite_10x", "bmmc_cite_neurips2021", "pbmc_eccite_mimitou2019"]


def read_raw(relative: str) -> pd.DataFrame:
    return pd.read_csv(datafiles.data_file(VOCAB / relative), sep="\t", dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def raw():
    """The raw tables, and Entrez -> token as the ground truth for expected tokens."""
    tokens = read_raw("sctranslator_entrez_to_token.tsv.gz")
    return {
        "token_of_entrez": dict(zip(tokens["entrez_id"], tokens["token_id"].astype(int), strict=True)),
        "sct_symbols": read_raw("sctranslator_human_symbol_to_entrez.tsv.gz"),
        "sct_mouse": read_raw("sctranslator_mouse_symbol_to_human_symbol.tsv.gz"),
        "sct_mouse_ensembl": read_raw("sctranslator_mouse_ensembl_to_human_symbol.tsv.gz"),
        "hgnc": read_raw("hgnc_complete_set_2024-10-18_full/hgnc_complete_set.txt.gz"),
        "hgnc_2026": read_raw("hgnc_complete_set_2026-06-20_subset/hgnc_complete_set.tsv.gz"),
        "hom": read_raw("mgi_mouse_human_orthology_2024-11-04/HOM_MouseHumanSequence.rpt.gz"),
    }


def var_names(dataset: str, kind: str, column: str | None = None) -> np.ndarray:
    import anndata

    adata = anndata.read_h5ad(datafiles.data_file(DATA / dataset / f"{kind}.h5ad"), backed="r")
    try:
        return (adata.var_names if column is None else adata.var[column]).to_numpy()
    finally:
        adata.file.close()


# ---------------------------------------------------------------- package data


def test_package_data_is_small_and_complete():
    data = REPO / "sctranslator" / "vocab" / "data"
    manifest = json.loads((data / "manifest.json").read_text())
    assert (data / manifest["file"]).is_file()
    assert (data / "curated_proteins.tsv").is_file()
    total = sum(path.stat().st_size for path in data.iterdir() if path.is_file())
    assert total <= 10 * 1024 * 1024, f"package data is {total / 1e6:.1f} MB"


def read_table(path: Path, table: str) -> pd.DataFrame:
    """One table of a vocab_tables.npz (integer members, and text members stored '\\n'-joined)."""
    columns = {}
    with np.load(path) as members:
        for member in members.files:
            name, _, column = member.partition("__")
            if name == table and column.endswith("__utf8"):
                columns[column.removesuffix("__utf8")] = bytes(members[member]).decode("utf-8").split("\n")
            elif name == table:
                columns[column] = members[member]
    return pd.DataFrame(columns)


def test_rebuilding_from_the_raw_rows_gives_the_shipped_entries(tmp_path):
    """build_vocab.py on the committed raw rows reproduces the shipped rows wherever those rows decide.

    The committed rows hold scTranslator's row for every HGNC symbol they hold and every HGNC 2024 row
    sharing an Ensembl ID, so a symbol won by scTranslator's table (rank 0) and an Ensembl ID won by
    HGNC 2024 (rank 0) have the same candidates as in the full build. The whole rebuild from the full
    tables, member by member, is `python scripts/build_vocab.py --check` (it needs ../shared/vocab).
    """
    spec = importlib.util.spec_from_file_location("build_vocab", REPO / "scripts" / "build_vocab.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    build.main(["--source", str(VOCAB), "--out", str(tmp_path)])
    shipped = REPO / "sctranslator" / "vocab" / "data" / "vocab_tables.npz"
    rebuilt = tmp_path / "vocab_tables.npz"
    # The token table is copied whole: token -> Entrez ID is rebuilt exactly.
    np.testing.assert_array_equal(read_table(rebuilt, "tokens")["entrez_id"],
                                  read_table(shipped, "tokens")["entrez_id"])
    for table, source in (("human_symbol", "sctranslator"), ("human_ensembl", "hgnc_ensembl")):
        got = read_table(rebuilt, table)
        got = got[got["source"] == source].set_index("key")
        assert len(got) > 500, table
        expected = read_table(shipped, table).set_index("key").reindex(got.index)
        pd.testing.assert_frame_equal(got, expected, check_dtype=False, obj=table)
    assert (read_table(rebuilt, "human_ensembl")["alternatives"] != "").any()  # ambiguities were rebuilt too


def test_build_priority_rules_on_a_synthetic_table():
    spec = importlib.util.spec_from_file_location("build_vocab", REPO / "scripts" / "build_vocab.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    keys = pd.Series(["X", "X", "X", "Y", "Y", "Z", "Z"])
    tokens = pd.Series([30, 20, 10, 5, 6, 0, 7])
    ranks = {"alias": 5, "prev": 3, "symbol": 1}
    pieces = [build.candidate_frame(keys[[i]], tokens[[i]], rank=ranks[source], source=source,
                                    in_vocab=tokens[[i]] > 0, tiebreak=pd.Series([i]))
              for i, source in enumerate(["alias", "prev", "symbol", "alias", "alias", "symbol", "prev"])]
    table = build.choose(pd.concat(pieces, ignore_index=True)).set_index("key")
    assert table.loc["X", "value"] == 10 and table.loc["X", "source"] == "symbol"  # symbol > prev > alias
    assert table.loc["Y", "value"] == 5 and table.loc["Y", "alternatives"] == "6"  # same level: ambiguous
    assert table.loc["Z", "value"] == 0  # known gene outside the vocabulary blocks lower levels


# ---------------------------------------------------------------- genes against the raw tables


def test_public_result_types():
    genes, proteins = map_genes(["CD4", "TP53"]), map_proteins(["CD4", "IgG1"])
    assert isinstance(genes, GeneMapping) and isinstance(proteins, ProteinMapping)
    assert genes.token_ids.dtype == np.int64 and proteins.token_ids.dtype == np.int64
    assert proteins.genes == ["CD4", None] and proteins.status == ["mapped", "control"]


def test_sctranslator_symbol_table_comes_first(raw):
    sample = raw["sct_symbols"].sample(2000, random_state=0)
    expected = sample["entrez_id"].map(raw["token_of_entrez"]).to_numpy()
    mapping = map_genes(sample["symbol"].tolist(), id_type="symbol")
    # Names that share a token with another name of the sample without surely naming that gene
    # (aliases several genes share, e.g. "Hed", "p29") are left unmapped rather than added up.
    aside = sample["symbol"].isin(list(mapping.report.not_merged)).to_numpy()
    assert aside.sum() < 10 and (mapping.token_ids[aside] == 0).all()
    assert all(pd.Series(expected).duplicated(keep=False).to_numpy()[aside])
    np.testing.assert_array_equal(mapping.token_ids[~aside], expected[~aside])
    assert mapping.report.sources == {"sctranslator": 2000 - int(aside.sum())}


def test_sctranslator_choice_wins_where_hgnc_disagrees(raw):
    # Where the checkpoints' own table sends a current HGNC symbol to another Entrez ID (HBD, ...),
    # the published models were trained with that choice, so it must be kept.
    hgnc = raw["hgnc"][["symbol", "entrez_id"]]
    both = hgnc.merge(raw["sct_symbols"], on="symbol", suffixes=("_hgnc", "_sct"))
    differ = both[both["entrez_id_hgnc"] != both["entrez_id_sct"]]
    assert len(differ) > 10
    expected = differ["entrez_id_sct"].map(raw["token_of_entrez"]).to_numpy()
    np.testing.assert_array_equal(map_genes(differ["symbol"].tolist(), id_type="symbol").token_ids, expected)


def test_symbol_entrez_and_ensembl_agree_with_hgnc(raw):
    hgnc = raw["hgnc"]
    sct = dict(zip(raw["sct_symbols"]["symbol"], raw["sct_symbols"]["entrez_id"], strict=True))
    usable = hgnc[(hgnc["locus_group"] == "protein-coding gene") & (hgnc["ensembl_gene_id"] != "")
                  & hgnc["entrez_id"].isin(raw["token_of_entrez"])
                  & (hgnc["symbol"].map(sct).fillna(hgnc["entrez_id"]) == hgnc["entrez_id"])]
    usable = usable[~usable["ensembl_gene_id"].duplicated(keep=False)]
    genes = usable.sample(500, random_state=1)
    expected = genes["entrez_id"].map(raw["token_of_entrez"]).to_numpy()

    by_symbol = map_genes(genes["symbol"].tolist())
    assert by_symbol.id_type == "symbol"
    np.testing.assert_array_equal(by_symbol.token_ids, expected)
    np.testing.assert_array_equal(by_symbol.symbols, genes["symbol"].to_numpy())
    np.testing.assert_array_equal(map_genes(genes["entrez_id"].astype(int).tolist()).token_ids, expected)
    np.testing.assert_array_equal(map_genes(genes["entrez_id"].tolist()).token_ids, expected)
    np.testing.assert_array_equal(map_genes(genes["ensembl_gene_id"]).token_ids, expected)
    np.testing.assert_array_equal(map_genes(genes["ensembl_gene_id"] + ".7").token_ids, expected)
    np.testing.assert_array_equal(token_entrez_ids(expected), genes["entrez_id"].astype(int).to_numpy())


def test_newer_hgnc_symbols_map(raw):
    known = set(raw["sct_symbols"]["symbol"]) | set(raw["hgnc"]["symbol"])
    new = raw["hgnc_2026"][~raw["hgnc_2026"]["symbol"].isin(known)
                           & raw["hgnc_2026"]["entrez_id"].isin(raw["token_of_entrez"])]
    assert len(new) > 0
    expected = new["entrez_id"].map(raw["token_of_entrez"]).to_numpy()
    np.testing.assert_array_equal(map_genes(new["symbol"].tolist(), id_type="symbol").token_ids, expected)


def test_entrez_input_forms():
    tp53, cd4 = map_genes([7157, 920]).token_ids
    assert tp53 > 0 and cd4 > 0
    for values in (["7157", "920"], np.array([7157, 920]), pd.Index([7157, 920]), [7157.0, 920.0],
                   pd.Series(["7157", "920"])):
        mapping = map_genes(values)
        assert mapping.id_type == "entrez"
        np.testing.assert_array_equal(mapping.token_ids, [tp53, cd4])
    assert token_symbols([tp53, cd4]).tolist() == ["TP53", "CD4"]


def test_symbols_fall_back_to_a_case_insensitive_match():
    cd4 = map_genes(["CD4"]).token_ids[0]
    assert map_genes(["cd4", "Cd4"], id_type="symbol").token_ids.tolist() == [cd4, cd4]
    # An exact match beats a case-folded one: "C1orf112" is a key of its own.
    assert map_genes(["C1orf112"], id_type="symbol").token_ids[0] > 0


def test_ensembl_with_and_without_version_and_par_suffix():
    tokens = map_genes(["ENSG00000141510", "ENSG00000141510.18", "ENSG00000010610.10"]).token_ids
    assert tokens[0] == tokens[1] > 0
    assert token_symbols(tokens).tolist() == ["TP53", "TP53", "CD4"]
    assert map_genes(["ENSG00000182378.14_PAR_Y"], id_type="ensembl").token_ids[0] > 0


def test_mouse_symbols_and_ensembl(raw):
    human = map_genes(["CD4", "TP53", "CD19"], id_type="symbol").token_ids
    mouse = map_genes(["Cd4", "Trp53", "Cd19"])
    assert mouse.id_type == "mouse_symbol"
    np.testing.assert_array_equal(mouse.token_ids, human)
    by_ensembl = map_genes(["ENSMUSG00000023274", "ENSMUSG00000059552.14", "ENSMUSG00000030724"])
    assert by_ensembl.id_type == "mouse_ensembl"
    np.testing.assert_array_equal(by_ensembl.token_ids, human)

    # scTranslator's own orthologue map is honoured: mouse symbol -> human symbol -> same token.
    pairs = raw["sct_mouse"].sample(500, random_state=2)
    np.testing.assert_array_equal(map_genes(pairs["mouse_symbol"], id_type="mouse_symbol").token_ids,
                                  map_genes(pairs["human_symbol"], id_type="symbol").token_ids)
    pairs = raw["sct_mouse_ensembl"].sample(500, random_state=3)
    np.testing.assert_array_equal(map_genes(pairs["mouse_ensembl_id"], id_type="mouse_ensembl").token_ids,
                                  map_genes(pairs["human_symbol"], id_type="symbol").token_ids)


def test_mgi_homology_fills_gaps_in_the_sctranslator_mouse_map(raw):
    hom = raw["hom"]
    mouse = hom[hom["NCBI Taxon ID"] == "10090"]
    human = hom[hom["NCBI Taxon ID"] == "9606"]
    pairs = mouse.merge(human, on="DB Class Key", suffixes=("_m", "_h"))
    one_to_one = pairs[~pairs["Symbol_m"].duplicated(keep=False)]
    gaps = one_to_one[~one_to_one["Symbol_m"].isin(raw["sct_mouse"]["mouse_symbol"])
                      & one_to_one["EntrezGene ID_h"].isin(raw["token_of_entrez"])]
    assert len(gaps) > 50
    expected = gaps["EntrezGene ID_h"].map(raw["token_of_entrez"]).to_numpy()
    mapping = map_genes(gaps["Symbol_m"].tolist(), id_type="mouse_symbol")
    np.testing.assert_array_equal(mapping.token_ids, expected)
    assert set(mapping.report.sources) == {"mgi_homology"}


def test_mgi_alliance_fills_gaps_in_the_mouse_ensembl_map(raw):
    alliance = pd.read_csv(VOCAB / "mgi_mouse_human_orthology_2024-11-04/HGNC_AllianceHomology.rpt.gz",
                           sep="\t", dtype=str, keep_default_na=False, index_col=False)
    single = alliance[alliance["HGNC ID"].str.fullmatch(r"HGNC:\d+")
                      & alliance["Ensembl Gene ID"].str.startswith("ENSMUSG")
                      & ~alliance["Ensembl Gene ID"].isin(raw["sct_mouse_ensembl"]["mouse_ensembl_id"])
                      & ~alliance["Marker Symbol"].isin(raw["sct_mouse"]["mouse_symbol"])]
    entrez = single["HGNC ID"].map(raw["hgnc"].set_index("hgnc_id")["entrez_id"])
    single = single[entrez.isin(raw["token_of_entrez"])]
    assert len(single) > 50
    expected = entrez[single.index].map(raw["token_of_entrez"]).to_numpy()
    mapping = map_genes(single["Ensembl Gene ID"].tolist(), id_type="mouse_ensembl")
    np.testing.assert_array_equal(mapping.token_ids, expected)


# ---------------------------------------------------------------- detection


@pytest.mark.parametrize(("values", "expected"), [
    (["CD4", "TP53", "ACTB", "GAPDH"], "symbol"),
    (["Cd4", "Trp53", "Actb", "Gapdh"], "mouse_symbol"),
    ([7157, 920, 60], "entrez"),
    (["7157", "920", "60"], "entrez"),
    (["ENSG00000141510.18", "ENSG00000010610"], "ensembl"),
    (["ENSMUSG00000059552", "ENSMUSG00000023274.3"], "mouse_ensembl"),
    (["Xkcd1", "Foob2"], "mouse_symbol"),  # in no table: letter case decides
    (["XKCD1", "FOOB2"], "symbol"),
])
def test_detect_id_type(values, expected):
    assert detect_id_type(values) == expected


def test_detection_can_be_overridden_and_validated():
    assert map_genes(["CD4"], id_type="mouse_symbol").id_type == "mouse_symbol"
    with pytest.raises(VocabularyError):
        map_genes(["CD4"], id_type="refseq")
    with pytest.raises(VocabularyError):
        detect_id_type(["", ""])
    with pytest.raises(VocabularyError):
        map_genes("CD4")


def test_detection_on_the_bmmc_dataset():
    assert detect_id_type(var_names("bmmc_cite_neurips2021", "rna")) == "symbol"
    ensembl = var_names("bmmc_cite_neurips2021", "rna", "gene_ids")
    assert detect_id_type(ensembl) == "ensembl"
    symbols = map_genes(var_names("bmmc_cite_neurips2021", "rna"))
    by_ensembl = map_genes(ensembl)
    both = (symbols.token_ids > 0) & (by_ensembl.token_ids > 0)
    assert by_ensembl.report.coverage > 0.98 and symbols.report.coverage > 0.95
    assert np.mean(symbols.token_ids[both] == by_ensembl.token_ids[both]) > 0.99


# ---------------------------------------------------------------- reverse map, report


def test_token_symbols_and_entrez_ids():
    size = vocabulary_size()
    assert size == 75_522
    everything = np.arange(size + 1)
    labels = token_symbols(everything)
    assert labels[0] == "" and token_entrez_ids([0])[0] == 0
    assert (labels[1:] != "").all() and len(set(labels[1:])) == size  # labels name output columns
    assert token_symbols(np.array([[0, 1]])).shape == (1, 2)
    with pytest.raises(VocabularyError):
        token_symbols([size + 1])
    with pytest.raises(VocabularyError):
        token_symbols([-1])


def test_duplicates_and_unmapped_are_reported(raw):
    aliases = raw["sct_symbols"][raw["sct_symbols"]["entrez_id"] == "920"]["symbol"].tolist()
    assert len(aliases) > 1  # CD4 has several names in scTranslator's table
    mapping = map_genes(["CD4", "TP53", "CD4", "NOT_A_GENE_XYZ", "", aliases[-1]], id_type="symbol")
    cd4, tp53 = map_genes(["CD4", "TP53"]).token_ids
    np.testing.assert_array_equal(mapping.token_ids, [cd4, tp53, cd4, 0, 0, cd4])
    report = mapping.report
    assert isinstance(report, MappingReport)
    assert report.duplicates == {int(cd4): ["CD4", "CD4", aliases[-1]]}
    assert report.unmapped == ["NOT_A_GENE_XYZ", ""]
    assert report.unmapped_reasons == {"NOT_A_GENE_XYZ": "unknown identifier", "": "empty identifier"}
    assert report.n_mapped == 4 and report.coverage == pytest.approx(4 / 6)
    as_dict = json.loads(json.dumps(report.to_dict()))
    assert as_dict["duplicates"][str(cd4)] == {"symbol": "CD4", "inputs": ["CD4", "CD4", aliases[-1]]}
    text = report.to_text()
    assert "NOT_A_GENE_XYZ" in text and "CD4 <- CD4, CD4" in text and "66.7%" in text


def test_ambiguous_gene_keys_are_reported(raw):
    # "PD1" is an HGNC alias of PDCD1, SNCA and SPATA2, but scTranslator's table decides it: not ambiguous.
    assert map_genes(["PD1"], id_type="symbol").report.ambiguous == {}
    hgnc = raw["hgnc"]
    shared = hgnc[(hgnc["ensembl_gene_id"] != "") & hgnc["ensembl_gene_id"].duplicated(keep=False)]
    assert len(shared) >= 2
    ensembl_id = shared["ensembl_gene_id"].iloc[0]
    genes = set(shared.loc[shared["ensembl_gene_id"] == ensembl_id, "symbol"])
    report = map_genes([ensembl_id]).report
    info = report.ambiguous[ensembl_id]
    assert {info["chosen"], *info["alternatives"]} == genes and info["chosen"] not in info["alternatives"]
    assert ensembl_id in report.to_text()


def test_twenty_thousand_genes_map_well_under_a_second():
    names = var_names("pbmc_eccite_mimitou2019", "rna")
    assert len(names) > 19_000
    map_genes(names)  # loads the tables
    start = time.perf_counter()
    mapping = map_genes(names)
    assert time.perf_counter() - start < 0.75
    assert mapping.report.coverage > 0.8


# ---------------------------------------------------------------- proteins


@pytest.mark.parametrize("dataset", PANELS)
def test_every_panel_protein_maps_controls_aside(dataset, raw):
    names = var_names(dataset, "protein")
    mapping = map_proteins(names)
    assert mapping.report.unmapped == []
    controls = [name for name, status in zip(names, mapping.status, strict=True) if status == "control"]
    assert controls == (["IgG1", "IgG2a"] if dataset == "pbmc_eccite_mimitou2019" else [])
    assert mapping.report.coverage_excluding_controls == 1.0
    # Each gene's token is the one its HGNC Entrez ID has.
    entrez = raw["hgnc"].set_index("symbol")["entrez_id"]
    for gene, token in zip(mapping.genes, mapping.token_ids, strict=True):
        if gene is not None:
            assert token == raw["token_of_entrez"][entrez[gene]], gene


EXPECTED_PROTEINS = {
    "CD3": ("CD3E", "ambiguous"), "CD8a": ("CD8A", "mapped"), "CD8": ("CD8A", "ambiguous"),
    "CD16": ("FCGR3A", "ambiguous"), "PD-1": ("PDCD1", "mapped"), "CD279": ("PDCD1", "mapped"),
    "HLA-DR": ("HLA-DRA", "ambiguous"), "MHCII (HLA-DR)": ("HLA-DRA", "ambiguous"),
    "CD127": ("IL7R", "mapped"), "IL7Ralpha (CD127)": ("IL7R", "mapped"), "TIGIT": ("TIGIT", "mapped"),
    "CD45": ("PTPRC", "mapped"), "CD45RA": ("PTPRC", "ambiguous"), "CD45RO": ("PTPRC", "ambiguous"),
    "B7-H1 (PD-L1)": ("CD274", "mapped"), "C-kit (CD117)": ("KIT", "mapped"),
    "EpCAM (CD326)": ("EPCAM", "mapped"), "Ox40 (CD134)": ("TNFRSF4", "mapped"),
    "HLA-A,B,C": ("HLA-A", "ambiguous"), "HLA-A-B-C": ("HLA-A", "ambiguous"),
    "B220 (CD45R)": ("PTPRC", "ambiguous"), "TCRVa7.2": ("TRAV1-2", "mapped"), "TCRVd2": ("TRDV2", "mapped"),
    "IgM": ("IGHM", "mapped"), "IgD": ("IGHD", "mapped"), "integrinB7": ("ITGB7", "mapped"),
    "FceRIa": ("FCER1A", "mapped"), "Podoplanin": ("PDPN", "mapped"), "LOX-1": ("OLR1", "mapped"),
    "Siglec-8": ("SIGLEC8", "mapped"), "CD66b": ("CEACAM8", "mapped"), "CD77": ("A4GALT", "ambiguous"),
    "CD158e1": ("KIR3DL1", "mapped"), "CD366 (tim3)": ("HAVCR2", "mapped"), "CD197": ("CCR7", "mapped"),
    "CDw197": ("CCR7", "mapped"),
    # assay decorations
    "CD3_TotalSeqB": ("CD3E", "ambiguous"), "CD4-TotalSeqC": ("CD4", "mapped"), "ADT_CD19": ("CD19", "mapped"),
    "CD11c_AAGTCTAGCCTTCGAA": ("ITGAX", "mapped"), "CD4-1": ("CD4", "mapped"), "CD3_UCHT1": ("CD3E", "ambiguous"),
    "Hu.CD8a": ("CD8A", "mapped"), "TIGIT_TotalSeq-A": ("TIGIT", "mapped"), "CD45RA_A0063": ("PTPRC", "ambiguous"),
}


def test_specific_protein_names():
    names = list(EXPECTED_PROTEINS)
    mapping = map_proteins(names)
    got = {name: (gene, status) for name, gene, status in zip(names, mapping.genes, mapping.status, strict=True)}
    assert got == EXPECTED_PROTEINS
    genes = map_genes([gene for gene, _ in EXPECTED_PROTEINS.values()], id_type="symbol")
    np.testing.assert_array_equal(mapping.token_ids, genes.token_ids)
    ambiguous = mapping.report.ambiguous
    assert set(ambiguous["CD3"]["alternatives"]) == {"CD3D", "CD3G", "CD247"}
    assert ambiguous["CD16"]["alternatives"] == ["FCGR3B"]


@pytest.mark.parametrize("name", ["IgG1", "IgG2a", "IgG2b", "Mouse IgG1", "Mouse_IgG2a_kappa", "Rat IgG2b",
                                  "Rat_IgG1_isotype_Ctrl", "isotype_ctrl", "IgG1_TotalSeqB", "Mouse IgM",
                                  "Armenian Hamster IgG", "blank", "Blank_3", "unmapped", "", "Hashtag_1",
                                  "HTO3", "IgG"])
def test_controls_are_never_guessed(name):
    mapping = map_proteins([name])
    assert mapping.status == ["control"] and mapping.genes == [None] and mapping.token_ids[0] == 0
    assert mapping.report.controls == [name] and mapping.report.unmapped == []


def test_unknown_protein_is_reported_or_raises():
    mapping = map_proteins(["CD4", "NotAMarker42x"])
    assert mapping.status == ["mapped", "unmapped"]
    assert mapping.report.unmapped == ["NotAMarker42x"]
    with pytest.raises(UnknownProteinError):
        map_proteins(["CD4", "NotAMarker42x"], strict=True)
    map_proteins(["CD4", "IgG1"], strict=True)  # controls are fine in strict mode


def test_name_keys_keep_digit_separators():
    assert name_key("PD-1") == name_key("pd1") == name_key("PD 1") == "PD1"
    assert name_key("CD4-1") != name_key("CD41")
    assert name_key("TCR Va7.2") == name_key("TCRVa7-2") == "TCRVA7.2"
    assert candidate_spellings("B7-H1 (PD-L1)")[1] == ["PD-L1", "B7-H1"]
    assert not is_control_key(name_key("IgM")) and is_control_key(name_key("Mouse IgG2b"))


def test_curated_genes_exist_and_have_tokens(raw):
    entrez = raw["hgnc"].set_index("symbol")["entrez_id"]
    for key, match in curated_proteins().items():
        for gene in (match.gene, *match.alternatives):
            assert gene in entrez.index, f"{key}: {gene} is not a current HGNC symbol"
        token = map_genes([match.gene], id_type="symbol").token_ids[0]
        assert token == raw["token_of_entrez"][entrez[match.gene]], key


# ---------------------------------------------------------------- file report


def test_mapping_report_for_file():
    rna = DATA / "bmmc_cite_neurips2021" / "rna.h5ad"
    text = mapping_report_for_file(rna, proteins=DATA / "bmmc_cite_neurips2021" / "protein.h5ad")
    assert "identifier type: symbol" in text and "134 / 134" in text
    assert "identifier type: ensembl" in mapping_report_for_file(rna, column="gene_ids")
    assert "CD4" in mapping_report_for_file(rna, proteins=["CD4", "IgG1"])
    with pytest.raises(VocabularyError):
        mapping_report_for_file(rna, column="no_such_column")
    with pytest.raises(InputDataError):
        mapping_report_for_file(DATA / "missing.h5ad")


# ---------------------------------------------------------------- Unicode look-alikes and repeated proteins
# Unicode spelling -> its ASCII twin (Greek letters, Unicode hyphens / minus / dashes, fullwidth forms).
UNICODE_TWINS = {"TCR_γδ": "TCR_gd", "TCR_Vδ2": "TCR_Vd2", "TCR_Vγ9": "TCR_Vg9", "TCR_αβ": "TCR_ab",
                 "TCR_Vα7.2": "TCR_Va7.2", "TCR Vα24-Jα18": "TCR Va24-Ja18", "CD8α": "CD8a", "CD8β": "CD8b",
                 "IFN-γ": "IFN-g", "TNF-α": "TNF-a", "IL-1β": "IL-1b", "CD3ε": "CD3e", "IL-2Rα": "IL-2Ra",
                 "Integrin β7": "Integrin b7", "FcεRIα": "FceRIa", "PD\u20101": "PD-1", "PD\u22121": "PD-1",
                 "HLA\u2013DR": "HLA-DR", "B7\u2011H1 (PD\u2011L1)": "B7-H1 (PD-L1)", "ＣＤ４": "CD4",
                 "CD45RA\u00a0": "CD45RA ", "Mouse IgG1κ isotype": "Mouse IgG1k isotype", "Igμ": "IgM"}


@pytest.mark.parametrize("unicode_name", list(UNICODE_TWINS))
def test_a_unicode_name_maps_exactly_like_its_ascii_twin(unicode_name):
    twin = UNICODE_TWINS[unicode_name]
    got = map_proteins([unicode_name])
    want = map_proteins([twin])
    assert (got.token_ids[0], got.genes[0], got.status[0]) == (want.token_ids[0], want.genes[0], want.status[0])
    assert got.status[0] != "unmapped" and name_key(unicode_name) == name_key(twin)


def test_greek_tcr_names_are_not_read_as_tcr_alpha():
    genes = dict(zip(["TCR_γδ", "TCR_Vδ2", "TCR_Vγ9"], map_proteins(["TCR_γδ", "TCR_Vδ2", "TCR_Vγ9"]).genes,
                     strict=True))
    assert genes == {"TCR_γδ": "TRDC", "TCR_Vδ2": "TRDV2", "TCR_Vγ9": "TRGV9"}


def test_a_unicode_name_without_one_ascii_reading_is_refused_not_guessed():
    from sctranslator.vocab.names import ascii_spellings

    # Characters with no ASCII spelling: never matched by the ASCII part alone ("TCR_漢" is not TCR).
    refused = map_proteins(["TCR_漢", "CD4"])
    assert refused.status == ["unmapped", "mapped"] and refused.token_ids[0] == 0
    assert "without an ASCII spelling" in refused.report.unmapped_reasons["TCR_漢"]
    # μ reads as m or u: both spellings are tried, and only agreeing readings map.
    assert ascii_spellings("Igμ") == (["Igm", "Igu"], "")
    assert ascii_spellings("CD4") == (["CD4"], "")


def test_evaluate_pairs_a_unicode_name_with_its_ascii_twin():
    from sctranslator.analysis.matching import match_proteins

    match = match_proteins(["TCR_Vδ2", "CD8α", "PD\u20101"], ["PD-1", "TCR_Vd2", "CD8a"])
    assert {(p.pred, p.truth, p.by) for p in match.pairs} == {("TCR_Vδ2", "TCR_Vd2", "key"),
                                                              ("CD8α", "CD8a", "key"), ("PD\u20101", "PD-1", "key")}


@pytest.mark.parametrize("names", [["CD3", "CD3"], ["CD4", "CD4 "], ["CD8α", "CD8a"], ["PD\u20101", "PD-1"]])
def test_a_protein_listed_twice_is_refused_everywhere(names):
    from sctranslator.model import load_model
    from sctranslator.plan import build_plan
    from sctranslator.train.inputs import protein_panel
    from sctranslator.vocab.proteins import check_protein_list

    with pytest.raises(UnknownProteinError, match="more than once"):
        check_protein_list(names)
    var = pd.DataFrame(index=["CD3E", "CD4", "CD8A", "PDCD1", "ACTB"])
    for model in (load_model(datafiles.TINY_A), load_model("demo")):  # a reference model and a panel bundle
        with pytest.raises(UnknownProteinError, match="list each protein once"):
            build_plan(var, model, names, allow_low_coverage=True)
    with pytest.raises(UnknownProteinError, match="more than once"):
        protein_panel(["CD3", "CD4", "CD8a", "PD-1"], names)
    # Two clones spelled differently stay two proteins (ECCITE-seq has two anti-PD-1 antibodies).
    assert check_protein_list(["PD-1 (CD279)", "PD1 (CD279)"]) == ["PD-1 (CD279)", "PD1 (CD279)"]


def test_vocab_reads_every_input_kind(tmp_path, capsys):
    import anndata as ad
    import mudata

    from sctranslator.cli.entry import main

    rna = ad.read_h5ad(DATA / "bmmc_cite_neurips2021" / "rna.h5ad")
    prot = ad.read_h5ad(DATA / "bmmc_cite_neurips2021" / "protein.h5ad")
    rna.write_zarr(tmp_path / "rna.zarr")
    prot.write_zarr(tmp_path / "prot.zarr")
    with mudata.set_options(pull_on_update=False):
        cite = mudata.MuData({"rna": rna, "ADT": prot})
        cite.write_h5mu(tmp_path / "cite.h5mu")
        cite.write_zarr(tmp_path / "cite.zarr")
    assert main(["vocab", str(DATA / "bmmc_cite_neurips2021" / "rna.h5ad")]) == 0
    want = capsys.readouterr().out.split("\n", 1)[1]  # the report without its title line
    for path in ("rna.zarr", "cite.h5mu", "cite.zarr"):
        assert main(["vocab", str(tmp_path / path)]) == 0
        printed = capsys.readouterr().out
        assert printed.split("\n", 1)[1] == want, path  # the RNA's genes, never the protein names
    assert main(["vocab", str(tmp_path / "cite.h5mu"), "--proteins", str(tmp_path / "cite.h5mu")]) == 0
    printed = capsys.readouterr().out
    assert "# proteins:" in printed and "(modality 'ADT')" in printed
    assert "inputs                              134" in printed
    assert main(["vocab", str(tmp_path / "rna.zarr"), "--proteins", str(tmp_path / "prot.zarr")]) == 0
    assert "inputs                              134" in capsys.readouterr().out
    assert main(["vocab", str(tmp_path / "cite.h5mu"), "--modality", "nope"]) == 2
    assert "no modality 'nope'" in capsys.readouterr().err


CONSTANT_REGIONS = {"TRAC", "TRBC1", "TRBC2", "TRDC", "TRGC1", "TRGC2"}
UNKNOWN_V_REGIONS = ["TCR_Vδ3", "TCR_Vγ", "TCR_Vd3", "TCR_Vd", "TCR_Vg", "TCR_Va24", "TCR_Vb2", "TCR_Vb13.1",
                     "TCR_Vbeta", "TCR_Vβ_11", "TCR Vβ13.1", "TCR-Vb13.1", "TCRVb13.1", "TRB_Vbeta2"]


@pytest.mark.parametrize("name", UNKNOWN_V_REGIONS)
@pytest.mark.parametrize("separator", ["_", " ", "-"])
def test_unknown_tcr_v_regions_are_unmapped_never_a_constant_region(name, separator):
    spelled = name.replace("_", separator).replace(" ", separator).replace("-", separator)
    mapping = map_proteins([spelled])
    assert mapping.status == ["unmapped"] and mapping.genes == [None] and mapping.token_ids.tolist() == [0]
    assert "V-" in mapping.report.unmapped_reasons[spelled] and "region" in mapping.report.unmapped_reasons[spelled]
    with pytest.raises(UnknownProteinError, match="map to no model token"):
        map_proteins([spelled, "CD4"], strict=True)


@pytest.mark.parametrize(("name", "gene"), [
    ("TCR_Vd2", "TRDV2"), ("TCR Vd2", "TRDV2"), ("TCR-Vd2", "TRDV2"), ("TCR_Vδ2", "TRDV2"), ("TCR_Vg9", "TRGV9"),
    ("TCR Vγ9", "TRGV9"), ("TCR_Va7.2", "TRAV1-2"), ("TCR Vα7.2", "TRAV1-2"), ("TCR_Vd1", "TRDV1"),
    ("ADT_TCR_Vd2_TotalSeqB", "TRDV2"), ("TCR_gd", "TRDC"), ("TCR_γδ", "TRDC"), ("TCR gd", "TRDC"),
    ("TCR", "TRAC"), ("TRBV13", "TRBV13"),
])
def test_known_tcr_names_keep_their_gene(name, gene):
    mapping = map_proteins([name])
    assert mapping.genes == [gene] and mapping.token_ids[0] > 0


def test_the_review_panel_is_refused_rather_than_predicted_as_trac():
    mapping = map_proteins(["TCR_Vδ3", "TCR_Vγ", "CD4"])
    assert mapping.status[:2] == ["unmapped", "unmapped"] and not CONSTANT_REGIONS & set(mapping.genes)
    with pytest.raises(UnknownProteinError, match="TCR_Vδ3, TCR_Vγ"):
        map_proteins(["TCR_Vδ3", "TCR_Vγ", "CD4"], strict=True)
