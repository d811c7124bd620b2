"""Metrics against scipy and hand computation, protein/cell matching, and `evaluate` on a real predictions store."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from datafiles import PBMC, TINY_A, data_file
from scipy import stats

from sctranslator.analysis import evaluate
from sctranslator.analysis.commands import define_evaluate
from sctranslator.analysis.matching import match_cells, match_proteins
from sctranslator.analysis.metrics import (
    compute_metrics,
    cosine_score,
    pearson_per_cell,
    pearson_per_protein,
    rmse,
    spearman_per_protein,
)
from sctranslator.errors import InputDataError, StoreError
from sctranslator.kernels import scale_targets

TINY_MODEL = TINY_A
PANEL = ["CD3", "CD4", "CD8a", "CD14", "CD19", "CD45RA"]


# -- metrics ------------------------------------------------------------------------------------------
@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    truth = rng.poisson(3.0, size=(60, 5)).astype(float)  # integer values: Spearman has ties
    pred = truth * 0.5 + rng.normal(size=truth.shape)
    return pred, truth


def test_per_protein_correlations_match_scipy(pair):
    pred, truth = pair
    expected_r = [stats.pearsonr(pred[:, j], truth[:, j])[0] for j in range(5)]
    expected_rho = [stats.spearmanr(pred[:, j], truth[:, j])[0] for j in range(5)]
    np.testing.assert_allclose(pearson_per_protein(pred, truth), expected_r, rtol=1e-10)
    np.testing.assert_allclose(spearman_per_protein(pred, truth), expected_rho, rtol=1e-10)
    expected_cells = [stats.pearsonr(pred[i], truth[i])[0] for i in range(60) if np.ptp(truth[i]) > 0]
    cells = pearson_per_cell(pred, truth)
    np.testing.assert_allclose(cells[np.isfinite(cells)], expected_cells, rtol=1e-10)


def test_cosine_and_rmse_by_hand():
    pred = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    truth = np.array([[1.0, 0.0], [1.0, 0.0], [2.0, 2.0]])
    # One batch of all cells: dot 1+0+0+0+2+2 = 5, |pred| = 2, |truth| = sqrt(10).
    assert cosine_score(pred, truth) == pytest.approx(5 / (2 * math.sqrt(10)))
    # Batches of 2 cells: [1,0,0,1]·[1,0,1,0] = 1 / (sqrt2 * sqrt2) = 0.5, and [1,1]·[2,2] -> 1.0.
    assert cosine_score(pred, truth, batch_size=2) == pytest.approx((0.5 + 1.0) / 2)
    assert rmse(pred, truth) == pytest.approx(math.sqrt((0 + 0 + 1 + 1 + 1 + 1) / 6))
    # A batch that is all zero has no cosine and is skipped, not counted as 0.
    assert cosine_score(np.vstack([pred, [[0.0, 0.0]]]), np.vstack([truth, [[1.0, 1.0]]]), batch_size=3) == \
        pytest.approx(5 / (2 * math.sqrt(10)))


def test_constant_columns_are_nan_excluded_and_reported(pair):
    pred, truth = pair
    truth = truth.copy()
    truth[:, 2] = 4.0  # constant protein: correlation undefined
    pred[7] = 1.0  # constant cell prediction
    report = compute_metrics(pred, truth, ["a", "b", "c", "d", "e"])
    r = pearson_per_protein(pred, truth)
    assert math.isnan(r[2])
    assert report["per_protein"][2]["pearson"] is None
    assert report["summary"]["undefined_proteins"] == ["c"]
    assert report["summary"]["mean_protein_pearson"] == pytest.approx(np.mean(np.delete(r, 2)))
    assert report["summary"]["median_protein_pearson"] == pytest.approx(np.median(np.delete(r, 2)))
    assert report["summary"]["undefined_cells"] >= 1
    json.dumps(report, allow_nan=False)  # JSON-able, no NaN literals


def test_nonfinite_predictions_are_counted(pair):
    pred, truth = pair
    pred = pred.copy()
    pred[0, 1] = np.nan
    report = compute_metrics(pred, truth, list("abcde"))
    assert report["summary"]["nonfinite_predictions"] == 1
    assert report["per_protein"][1]["pearson"] is None and report["per_protein"][1]["spearman"] is None
    assert report["summary"]["undefined_proteins"] == ["b"]
    assert math.isnan(pearson_per_cell(pred, truth)[0])  # the kernel alone would clip NaN to -1


# -- matching -----------------------------------------------------------------------------------------
def test_proteins_match_by_name_then_key_then_unique_gene():
    match = match_proteins(["CD8", "PD-1", "CD45RA", "CD45RO", "CD127", "CD3"],
                           ["CD45RO", "CD8a", "PD-1 (CD279)", "PD1 (CD279)", "CD45RA", "IL7Ralpha (CD127)", "cd-3"])
    by_pred = {p.pred: (p.truth, p.by) for p in match.pairs}
    assert by_pred["CD45RA"] == ("CD45RA", "name") and by_pred["CD45RO"] == ("CD45RO", "name")
    assert by_pred["CD8"] == ("CD8a", "gene")
    assert by_pred["CD127"] == ("IL7Ralpha (CD127)", "gene")
    assert by_pred["CD3"] == ("cd-3", "key")
    # Two anti-PD-1 antibodies: not guessed between.
    assert "PD-1" not in by_pred
    assert match.ambiguous == [{"pred": ["PD-1"], "truth": ["PD-1 (CD279)", "PD1 (CD279)"], "gene": "PDCD1"}]


def test_cells_match_by_name_and_none_shared_is_an_error():
    cells = match_cells(["c", "a", "x"], ["a", "b", "c"])
    assert cells.pred.tolist() == [0, 1] and cells.truth.tolist() == [2, 0] and cells.n_matched == 2
    with pytest.raises(InputDataError, match="no cell names are shared"):
        match_cells(["x", "y"], ["a", "b"])
    with pytest.raises(InputDataError, match=r"repeat 1 name.*the same way in both files"):
        match_cells(["a", "a"], ["a"])


# -- evaluate on a predictions store written by translate ---------------------------------------------
@pytest.fixture(scope="module")
def pbmc_protein() -> ad.AnnData:
    return ad.read_h5ad(data_file(PBMC / "protein.h5ad"))


@pytest.fixture(scope="module")
def store(tmp_path_factory, pbmc_protein) -> Path:
    """A real predictions Zarr store: the tiny reference model on 100 pbmc10k cells."""
    from sctranslator import translate

    rna = ad.read_h5ad(data_file(PBMC / "rna.h5ad"))[:100].copy()
    out = tmp_path_factory.mktemp("pred") / "pred.zarr"
    translate(rna, TINY_MODEL, PANEL, out=out, workers=1)
    return out


@pytest.fixture(scope="module")
def truth(pbmc_protein) -> ad.AnnData:
    """The measured proteins, cells shuffled and CD8a renamed CD8 (matched only through its gene)."""
    order = np.random.default_rng(0).permutation(pbmc_protein.n_obs)
    shuffled = pbmc_protein[order].copy()
    shuffled.var_names = ["CD8" if name == "CD8a" else name for name in shuffled.var_names]
    return shuffled


def _expected_truth(pbmc_protein: ad.AnnData, pred: ad.AnnData, scaling: str) -> np.ndarray:
    rows = pbmc_protein.obs_names.get_indexer(pred.obs_names)
    cols = pbmc_protein.var_names.get_indexer(pred.var_names)
    return scale_targets(pbmc_protein.X[rows], scaling)[:, cols]  # full panel scaled, then subset


def test_evaluate_matches_cells_and_proteins_and_writes_files(store, truth, pbmc_protein, tmp_path):
    report = evaluate(store, truth, out=tmp_path / "eval")
    pred = ad.read_zarr(store)
    assert report["cells"] == {"pred": 100, "truth": pbmc_protein.n_obs, "matched": 100, "evaluated": 100}
    matched = {m["pred"]: m for m in report["proteins"]["matched"]}
    assert set(matched) == set(PANEL)
    assert matched["CD8a"]["truth"] == "CD8" and matched["CD8a"]["by"] == "gene" and matched["CD8a"]["gene"] == "CD8A"
    expected = compute_metrics(np.asarray(pred.X), _expected_truth(pbmc_protein, pred, "minmax"), PANEL)
    for got, want in zip(report["model"]["per_protein"], expected["per_protein"], strict=True):
        assert got["protein"] == want["protein"]
        assert got["pearson"] == pytest.approx(want["pearson"], abs=1e-9)
    assert report["model"]["summary"]["rmse"] == pytest.approx(expected["summary"]["rmse"])
    for name in ("report.json", "scatter.png", "pearson.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 0
    written = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert written["model"]["summary"] == report["model"]["summary"]


def test_evaluate_with_a_baseline_side_by_side(store, truth, pbmc_protein, tmp_path):
    pred = ad.read_zarr(store)
    # A baseline covering only 60 of the cells, proteins in another order: scored on what all share.
    base = ad.AnnData(X=np.random.default_rng(0).random((60, 4)).astype(np.float32),
                      obs=pd.DataFrame(index=pred.obs_names[40:][::-1]),
                      var=pd.DataFrame(index=["CD19", "CD3", "CD8a", "CD4"]))
    report = evaluate(store, truth, out=tmp_path / "eval", baseline=base, scaling="clr")
    assert report["cells"]["evaluated"] == 60
    assert [r["protein"] for r in report["model"]["per_protein"]] == ["CD3", "CD4", "CD8a", "CD19"]
    assert [r["protein"] for r in report["baseline"]["per_protein"]] == ["CD3", "CD4", "CD8a", "CD19"]
    keep = pred[40:, ["CD3", "CD4", "CD8a", "CD19"]]
    want = compute_metrics(base[keep.obs_names, keep.var_names].X, _expected_truth(pbmc_protein, keep, "clr"),
                           list(keep.var_names))
    assert report["baseline"]["summary"]["mean_protein_pearson"] == pytest.approx(
        want["summary"]["mean_protein_pearson"])
    assert set(report["comparison"]["pearson_delta"]) == {"CD3", "CD4", "CD8a", "CD19"}
    assert (tmp_path / "eval" / "pearson.png").stat().st_size > 0

    # An array baseline is taken in the prediction's order.
    same = evaluate(store, truth, baseline=np.asarray(pred.X), plots=False)
    assert same["comparison"]["summary_delta"]["mean_protein_pearson"] == pytest.approx(0.0)
    with pytest.raises(InputDataError, match="shape"):
        evaluate(store, truth, baseline=np.zeros((3, 3)))


def test_evaluate_errors(store, truth, tmp_path):
    renamed = truth.copy()
    renamed.obs_names = [f"other-{i}" for i in range(renamed.n_obs)]
    with pytest.raises(InputDataError, match="no cell names are shared"):
        evaluate(store, renamed, plots=False)
    unrelated = truth[:, ["CD15", "CD25"]].copy()
    with pytest.raises(InputDataError, match="no protein"):
        evaluate(store, unrelated, plots=False)
    with pytest.raises(StoreError, match="does not exist"):
        evaluate(tmp_path / "missing.zarr", truth)
    (tmp_path / "junk.zarr").mkdir()
    with pytest.raises(StoreError, match="cannot read"):
        evaluate(tmp_path / "junk.zarr", truth)
    with pytest.raises(InputDataError, match="unknown scaling"):
        evaluate(store, truth, scaling="zscore")


def test_command_prints_table_and_writes_report(store, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    handler = define_evaluate(parser)
    args = parser.parse_args(["--pred", str(store), "--truth", str(PBMC / "protein.h5ad"), "--out",
                              str(tmp_path / "cli"), "--no-plots", "--scaling", "log1p"])
    assert handler(args) == 0
    printed = capsys.readouterr().out
    assert "CD8a" in printed and "mean protein r" in printed and "100 matched" in printed
    assert json.loads((tmp_path / "cli" / "report.json").read_text())["scaling"] == "log1p"
    assert not (tmp_path / "cli" / "scatter.png").exists()


def test_scaling_names_agree_with_the_kernels():
    from sctranslator.analysis.evaluate import TARGET_SCALINGS
    from sctranslator.kernels import TARGET_SCALINGS as KERNEL_SCALINGS

    assert TARGET_SCALINGS == KERNEL_SCALINGS


def test_quiet_turns_off_the_progress_bar_as_for_translate(store, truth, tmp_path):
    # In a fresh interpreter, so no bar state left by earlier tests (tqdm instances, captured streams)
    # decides what is drawn. By default a bar on stderr counts evaluate's steps: truth, predictions,
    # scaling, scores, files.
    truth_file = tmp_path / "truth.h5ad"
    truth.write_h5ad(truth_file)
    script = (
        "import json, sys\n"
        "from sctranslator.analysis import evaluate\n"
        "quiet = sys.argv[4] == 'quiet'\n"
        "report = evaluate(sys.argv[1], sys.argv[2], out=sys.argv[3], plots=False, quiet=quiet)\n"
        "print(json.dumps(report['model']['summary'], sort_keys=True))\n")
    runs = {}
    for mode in ("shown", "quiet"):
        runs[mode] = subprocess.run([sys.executable, "-c", script, str(store), str(truth_file),
                                     str(tmp_path / mode), mode], capture_output=True, text=True, timeout=600)
        assert runs[mode].returncode == 0, runs[mode].stderr
    assert "evaluate: 100%" in runs["shown"].stderr and "5/5" in runs["shown"].stderr, runs["shown"].stderr
    assert "%|" not in runs["quiet"].stderr, runs["quiet"].stderr  # a tqdm text bar draws "NN%|"
    assert runs["quiet"].stdout == runs["shown"].stdout
    # The command's --quiet reaches it: the report is printed, no bar.
    command = subprocess.run([sys.executable, "-m", "sctranslator", "evaluate", "--pred", str(store), "--truth",
                              str(PBMC / "protein.h5ad"), "--no-plots", "--quiet"],
                             capture_output=True, text=True, timeout=600)
    assert command.returncode == 0, command.stderr
    assert "mean protein r" in command.stdout and "%|" not in command.stderr
