"""The block runner on real cells: one error format everywhere, the lowest bad row, empty cells,
and the expression-scale warnings of every command that reads expression."""

from __future__ import annotations

import copy
import logging
import re
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp

import sctranslator
from sctranslator.analysis.attention import interactions
from sctranslator.analysis.knockout import knockout
from sctranslator.engine.sources.memory import AnnDataSource
from sctranslator.errors import BadCellsError, InputDataError
from sctranslator.model import TranslatorModel
from sctranslator.plan import build_plan
from sctranslator.train.inputs import (
    TrainingArrays,
    attach_panels,
    data_gene_tokens,
    gene_panel_from_data,
    prepare_arrays,
    protein_panel,
)
from sctranslator.train.paired import load_paired
from sctranslator.vocab import map_proteins

PROTEINS = ["CD3", "CD4", "CD14", "CD19"]
N_CELLS = 64
CHECKS_LOGGER = "sctranslator.engine.input_checks"


@pytest.fixture(scope="module")
def pbmc(data_dir: Path) -> tuple[ad.AnnData, ad.AnnData]:
    rna = ad.read_h5ad(data_dir / "pbmc10k_cite_10x" / "rna.h5ad")[:N_CELLS].copy()
    protein = ad.read_h5ad(data_dir / "pbmc10k_cite_10x" / "protein.h5ad")[:N_CELLS].copy()
    return rna, protein


@pytest.fixture(scope="module")
def tiny(fixtures_dir: Path) -> TranslatorModel:
    return sctranslator.load_model(fixtures_dir / "tiny_a_official.pt")


@pytest.fixture(scope="module")
def tiny_path(fixtures_dir: Path) -> Path:
    return fixtures_dir / "tiny_a_official.pt"


def with_values(rna: ad.AnnData, cells: list[int], columns: np.ndarray | slice, value: float) -> ad.AnnData:
    """A copy of real cells with X[cells, columns] set to `value` (CSR kept, explicit zeros removed)."""
    copy = rna.copy()
    x = copy.X.tolil()
    for cell in cells:
        x[cell, columns] = value
    copy.X = sp.csr_matrix(x)
    copy.X.eliminate_zeros()
    return copy


def used_columns(rna: ad.AnnData, model: TranslatorModel) -> np.ndarray:
    """Columns the model reads: for translate (the published checkpoint's plan) or for the trainer (the
    gene panel it builds from the data)."""
    reference = build_plan(rna.var, model, PROTEINS).column_slot >= 0
    trainer = copy.deepcopy(model)
    attach_panels(trainer, gene_panel_from_data(data_gene_tokens(rna.var), model.config.max_genes),
                  {"names": ["CD3"], "token_ids": [int(map_proteins(["CD3"]).token_ids[0])], "genes": ["CD3E"]}, {})
    return np.flatnonzero(reference | (build_plan(rna.var, trainer).column_slot >= 0))


def knocked_out(rna: ad.AnnData, model: TranslatorModel) -> str:
    return str(rna.var_names[used_columns(rna, model)[0]])


def run_all(data: ad.AnnData, protein: ad.AnnData, model: TranslatorModel, model_path: Path, tmp_path: Path,
            **options) -> dict[str, object]:
    """Each command that reads expression, on the same cells; returns what each gave back."""
    got: dict[str, object] = {}
    got["translate"] = sctranslator.translate(data, model, PROTEINS, block_cells=16, **options)
    got["knockout"] = knockout(data, model, [knocked_out(data, model)], PROTEINS, out=tmp_path / "ko.h5ad",
                               block_cells=16, overwrite=True, **options)
    got["attention"] = interactions(data, model, PROTEINS, block_cells=16, **options)
    got["finetune"] = trainer_inputs(data, protein, model_path, **options)
    return got


def trainer_inputs(data: ad.AnnData, protein: ad.AnnData, model_path: Path, normalize: str = "none",
                   allow_empty_cells: bool = False) -> TrainingArrays:
    """What `finetune` feeds its loop: panels from the data attached to the model, then the arrays."""
    paired = load_paired(data, protein)
    proteins, columns = protein_panel(paired.protein_names)
    model = sctranslator.load_model(model_path)
    genes = gene_panel_from_data(data_gene_tokens(paired.source.var), model.config.max_genes)
    attach_panels(model, genes, proteins, {"normalize": normalize, "target_sum": 1e4, "target_scaling": "minmax"})
    return prepare_arrays(paired, model, columns, allow_empty_cells=allow_empty_cells)


def errors_of_all(data: ad.AnnData, protein: ad.AnnData, model: TranslatorModel, model_path: Path,
                  tmp_path: Path) -> dict[str, BadCellsError]:
    found = {}
    for name in ("translate", "knockout", "attention", "finetune"):
        with pytest.raises(BadCellsError) as caught:
            run_only(name, data, protein, model, model_path, tmp_path)
        found[name] = caught.value
    return found


def run_only(name: str, data: ad.AnnData, protein: ad.AnnData, model: TranslatorModel, model_path: Path,
             tmp_path: Path, **options) -> object:
    if name == "translate":
        return sctranslator.translate(data, model, PROTEINS, block_cells=16, **options)
    if name == "knockout":
        return knockout(data, model, [knocked_out(data, model)], PROTEINS, out=tmp_path / "ko.h5ad",
                        block_cells=16, overwrite=True, **options)
    if name == "attention":
        return interactions(data, model, PROTEINS, block_cells=16, **options)
    return trainer_inputs(data, protein, model_path, **options)


def test_one_error_format_names_input_rows_cell_and_gene(pbmc, tiny, tiny_path, tmp_path):
    rna, protein = pbmc
    bad = with_values(rna, [21], [7], np.nan)
    bad = with_values(bad, [26], [3], -2.0)
    cell, gene = str(rna.obs_names[21]), str(rna.var_names[7])
    errors = errors_of_all(bad, protein, tiny, tiny_path, tmp_path)
    messages = {name: str(error) for name, error in errors.items()}
    expected = (r"^the in-memory anndata input, rows 16\.\.31: "
                rf"1 NaN value\(s\) \(first: cell {re.escape(repr(cell))}, row 21; gene {re.escape(repr(gene))}\); "
                rf"1 negative value\(s\) \(first: cell {re.escape(repr(str(rna.obs_names[26])))}, row 26; gene "
                rf"{re.escape(repr(str(rna.var_names[3])))}\)\. Expression must be finite and non-negative")
    for name in ("translate", "knockout", "attention"):
        assert re.match(expected, messages[name]), (name, messages[name])
        assert errors[name].first_row == 21
    # The trainer reads its own block size, so its row range differs; the rest of the message does not.
    assert messages["finetune"].split(": ", 1)[1] == messages["translate"].split(": ", 1)[1]
    assert re.match(r"^the in-memory anndata input, rows 0\.\.63: ", messages["finetune"])
    assert all(isinstance(error, InputDataError) for error in errors.values())


def test_lowest_bad_row_is_reported_whichever_block_fails_first(pbmc, tiny, monkeypatch):
    rna, _ = pbmc
    bad = with_values(rna, [0], [5], np.nan)  # the first bad cell, in the first block
    bad = with_values(bad, [33], [2], -1.0)
    bad = with_values(bad, [50], slice(None), 0.0)  # an empty cell
    real = AnnDataSource._read_rows

    def slow_first_block(self, start, stop):
        if start == 0 and stop - start == 16:
            time.sleep(0.5)  # the later blocks fail while the first one is still being read
        return real(self, start, stop)

    monkeypatch.setattr(AnnDataSource, "_read_rows", slow_first_block)
    for _ in range(3):
        with pytest.raises(BadCellsError) as caught:
            sctranslator.translate(bad, tiny, PROTEINS, block_cells=16, workers=4)
        assert caught.value.first_row == 0
        assert re.search(rf"rows 0\.\.15: 1 NaN value\(s\) \(first: cell '{rna.obs_names[0]}', row 0;",
                         str(caught.value))
    # Without the bad first cell, the next lowest one is named.
    repaired = bad.copy()
    repaired.X[0, 5] = rna.X[0, 5]
    with pytest.raises(BadCellsError, match=r"rows 32\.\.47: 1 negative value\(s\) \(first: cell .*, row 33;"):
        sctranslator.translate(repaired, tiny, PROTEINS, block_cells=16, workers=4)


def test_cells_without_counts_in_used_genes_are_empty_cells(pbmc, tiny, tiny_path, tmp_path, caplog):
    rna, protein = pbmc
    used = used_columns(rna, tiny)
    # Real cells 3 and 40 keep their counts in genes the model does not read; cell 9 is all zero.
    silent = with_values(rna, [3, 40], used, 0.0)
    silent = with_values(silent, [9], slice(None), 0.0)
    assert silent.X[3].sum() > 0 and silent.X[40].sum() > 0 and silent.X[9].sum() == 0
    errors = errors_of_all(silent, protein, tiny, tiny_path, tmp_path)
    length = tiny.config.max_genes
    assert re.search(rf"rows 0\.\.15: 2 empty cell\(s\) with no counts in any of the {length} genes the model "
                     rf"reads \(cell '{rna.obs_names[3]}', row 3; cell '{rna.obs_names[9]}', row 9\).*"
                     "--allow-empty-cells", str(errors["translate"])), str(errors["translate"])
    for name, error in errors.items():
        assert "empty cell(s)" in str(error) and error.first_row == 3, name
    with caplog.at_level(logging.WARNING):
        got = run_all(silent, protein, tiny, tiny_path, tmp_path, allow_empty_cells=True)
    assert "3 empty cell(s)" in caplog.text
    # Allowed, they are the constant cells an all-zero cell gives: the same predictions.
    predictions = np.asarray(got["translate"].X)
    np.testing.assert_array_equal(predictions[3], predictions[9])
    np.testing.assert_array_equal(predictions[40], predictions[9])
    zero = with_values(rna, [3], slice(None), 0.0)
    alone = sctranslator.translate(zero, tiny, PROTEINS, allow_empty_cells=True)
    np.testing.assert_array_equal(np.asarray(alone.X)[3], predictions[3])
    # ... and the count is recorded with each result.
    assert got["translate"].uns["sctranslator"]["run"]["empty_cells"] == 3
    assert got["translate"].uns["sctranslator"]["settings"]["allow_empty_cells"] is True
    assert got["knockout"].adata.uns["sctranslator_knockout"]["empty_cells"] == 3
    assert got["attention"].adata.uns["sctranslator_attention"]["empty_cells"] == 3
    assert got["finetune"].n_empty_cells == 3
    assert np.all(got["finetune"].values[[3, 9, 40]] == np.float32(1e-8))


def test_finetune_refuses_empty_cells_unless_allowed(pbmc, tiny, tiny_path, tmp_path):
    from sctranslator.train import finetune

    rna, protein = pbmc
    silent = with_values(rna, [12], used_columns(rna, tiny), 0.0)
    settings = {"init": tiny_path, "steps": 1, "batch_size": 8, "val_count": 8, "quiet": True, "workers": 1}
    with pytest.raises(BadCellsError, match=r"1 empty cell\(s\).*row 12"):
        finetune(silent, protein, out=tmp_path / "refused", **settings)
    finetune(silent, protein, out=tmp_path / "bundle", allow_empty_cells=True, **settings)
    assert "empty cells (no counts in any panel gene, trained on as constant cells): 1" in \
        (tmp_path / "bundle" / "card.md").read_text()


def normalised(adata: ad.AnnData) -> ad.AnnData:
    """scanpy's standard preprocessing: library size 1e4, then log1p (counts kept in .raw)."""
    copy = adata.copy()
    copy.raw = copy
    sc.pp.normalize_total(copy, target_sum=1e4)
    sc.pp.log1p(copy)
    return copy


def scale_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == CHECKS_LOGGER and r.levelno == logging.WARNING]


@pytest.mark.parametrize("command", ["translate", "knockout", "attention", "finetune"])
def test_scale_warnings_on_every_command(pbmc, tiny, tiny_path, tmp_path, caplog, command):
    rna, protein = pbmc
    logged = normalised(rna)
    assert float(logged.X.max()) < 10 and float(rna.X.max()) > 1000
    cases = {  # (data, the model normalises itself) -> the warning expected, or None
        (False, True): None, (True, True): "normalised twice", (False, False): "looks like raw counts",
        (True, False): None,
    }
    for (is_logged, self_normalising), expected in cases.items():
        data = logged if is_logged else rna
        options = {"normalize": "total_log1p" if self_normalising else "none"}
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=CHECKS_LOGGER):
            run_only(command, data, protein, tiny, tiny_path, tmp_path, **options)
        found = scale_warnings(caplog)
        if expected is None:
            assert found == [], (is_logged, self_normalising, found)
        else:
            assert len(found) == 1 and expected in found[0], (is_logged, self_normalising, found)
            assert ("--layer" in found[0]) and (("--use-raw" in found[0]) == self_normalising)


def test_scale_warning_on_evaluate(pbmc, tiny, caplog):
    from sctranslator.analysis.evaluate import evaluate

    rna, protein = pbmc
    predictions = sctranslator.translate(rna, tiny, ["CD3", "CD4", "CD14", "CD19"])
    for truth, expected in ((protein, None), (normalised(protein), "the protein truth looks already log-transformed")):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=CHECKS_LOGGER):
            evaluate(predictions, truth, plots=False)
        found = scale_warnings(caplog)
        assert found == [] if expected is None else (len(found) == 1 and expected in found[0]), found


@pytest.mark.parametrize("command", ["translate", "knockout", "attention", "finetune"])
def test_allow_empty_cells_on_the_command_line(pbmc, tiny, tiny_path, tmp_path, capsys, command):
    from sctranslator.cli.entry import main

    rna, protein = pbmc
    silent = with_values(rna[:24].copy(), [5], used_columns(rna, tiny), 0.0)
    silent.write_h5ad(tmp_path / "rna.h5ad")
    protein[:24].copy().write_h5ad(tmp_path / "protein.h5ad")
    data, model, out = str(tmp_path / "rna.h5ad"), str(tiny_path), str(tmp_path / "out")
    args = {
        "translate": [data, "--model", model, "--proteins", "CD3,CD4", "--out", out + ".zarr", "--overwrite"],
        "knockout": [data, "--model", model, "--proteins", "CD3,CD4", "--genes", knocked_out(rna, tiny),
                     "--out", out + ".h5ad", "--overwrite"],
        "attention": [data, "--model", model, "--proteins", "CD3,CD4", "--out", out],
        "finetune": ["--rna", data, "--protein", str(tmp_path / "protein.h5ad"), "--init", model, "--out", out,
                     "--steps", "1", "--batch-size", "8", "--val-count", "8"],
    }[command]
    assert main([command, *args, "--quiet"]) == 2
    assert "BadCellsError" in capsys.readouterr().err
    assert main([command, *args, "--quiet", "--allow-empty-cells"]) == 0
