"""The PCA + ridge baseline: its pieces against reference implementations, persistence, and real accuracy."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from datafiles import PBMC, data_file

from sctranslator.analysis import RidgeBaseline, heldout_split
from sctranslator.analysis.baseline import _ridge_coef, align_genes, cv_alpha, fit_pca
from sctranslator.analysis.metrics import compute_metrics
from sctranslator.errors import InputDataError, StoreError
from sctranslator.kernels import scale_targets


def test_heldout_split_is_seeded_disjoint_and_matches_the_trainer():
    train, test = heldout_split(1000, 100, seed=3)
    assert test.size == 100 and train.size == 900
    assert np.union1d(train, test).tolist() == list(range(1000))
    again_train, again_test = heldout_split(1000, 100, seed=3)
    assert np.array_equal(test, again_test) and np.array_equal(train, again_train)
    assert not np.array_equal(test, heldout_split(1000, 100, seed=4)[1])
    try:
        from sctranslator.train.split import split_cells
    except ImportError:
        return
    split = split_cells(pd.DataFrame(index=[str(i) for i in range(1000)]), val_count=100, seed=3)
    assert np.array_equal(split.val, test) and np.array_equal(split.train, train)
    with pytest.raises(InputDataError):
        heldout_split(10, 10)


def test_fit_pca_matches_dense_svd():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 8)) @ rng.normal(size=(8, 40)) + 0.01 * rng.normal(size=(120, 40))
    centred = x - x.mean(axis=0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    for matrix in (x, sp.csr_matrix(x)):
        for k in (5, 40):  # ARPACK, and the full SVD when every axis is kept
            mean, components, values, scores = fit_pca(matrix, k, seed=1)
            np.testing.assert_allclose(mean, x.mean(axis=0))
            np.testing.assert_allclose(values[:5], s[:5], rtol=1e-8)
            np.testing.assert_allclose(np.abs(components[:5]), np.abs(vt[:5]), atol=1e-7)
            np.testing.assert_allclose(scores, centred @ components.T, atol=1e-8)
            assert components.shape == (k, 40)
            # sign convention: each axis's largest loading is positive
            assert (components[np.arange(k), np.abs(components).argmax(axis=1)] > 0).all()


def _plain_ridge(z: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge with an unpenalised intercept, from the normal equations."""
    zc, yc = z - z.mean(axis=0), y - y.mean(axis=0)
    coef = np.linalg.solve(zc.T @ zc + alpha * np.eye(z.shape[1]), zc.T @ yc)
    return coef, y.mean(axis=0) - z.mean(axis=0) @ coef


def test_ridge_and_cv_match_the_normal_equations():
    pytest.importorskip("sklearn")
    from sklearn.model_selection import KFold

    rng = np.random.default_rng(2)
    z = rng.normal(size=(80, 6))
    y = z @ rng.normal(size=(6, 3)) + rng.normal(size=(80, 3))
    coef, intercept = _ridge_coef(z, y, 3.0)
    want_coef, want_intercept = _plain_ridge(z, y, 3.0)
    np.testing.assert_allclose(coef, want_coef, rtol=1e-8)
    np.testing.assert_allclose(intercept, want_intercept, rtol=1e-8)
    alphas = [0.01, 1.0, 30.0, 1e6]
    best, errors = cv_alpha(z, y, alphas, folds=4, seed=5)
    for alpha in alphas:  # mean over the seeded folds of each fold's mean squared error
        per_fold = []
        for train, test in KFold(4, shuffle=True, random_state=5).split(z):
            c, b = _plain_ridge(z[train], y[train], alpha)
            per_fold.append(np.mean((z[test] @ c + b - y[test]) ** 2))
        np.testing.assert_allclose(errors[alpha], np.mean(per_fold), rtol=1e-8)
    assert best == min(errors, key=errors.get) and errors[1e6] > errors[1.0]


def test_align_genes_reorders_by_name_and_zero_fills():
    counts = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32)
    want = np.array([[3.0, 0.0, 1.0], [6.0, 0.0, 4.0]])
    assert np.array_equal(align_genes(counts, ["a", "b", "c"], ["c", "z", "a"]), want)
    assert np.array_equal(align_genes(sp.csr_matrix(counts), ["a", "b", "c"], ["c", "z", "a"]).toarray(), want)
    with pytest.raises(InputDataError, match="gene names"):
        align_genes(counts, ["a", "b"], ["a"])


@pytest.fixture(scope="module")
def pbmc() -> tuple[ad.AnnData, ad.AnnData]:
    return ad.read_h5ad(data_file(PBMC / "rna.h5ad")), ad.read_h5ad(data_file(PBMC / "protein.h5ad"))


@pytest.fixture(scope="module")
def fitted(pbmc) -> tuple[RidgeBaseline, np.ndarray, np.ndarray]:
    rna, protein = pbmc
    train, test = heldout_split(rna.n_obs, 500, seed=0)
    targets = scale_targets(protein.X, "minmax")
    model = RidgeBaseline().fit(rna.X[train], targets[train], rna.var_names, protein.var_names)
    return model, test, targets


def test_accuracy_on_the_real_heldout_split(pbmc, fitted):
    # Measured (scikit-learn): 0.669 mean per-protein Pearson on the committed 1,000 cells (500 held out;
    # 0.735 with all 6,855 cells), min-max targets, 50 PCs, CV alpha. The floor catches a baseline that stops learning.
    rna, protein = pbmc
    model, test, targets = fitted
    report = compute_metrics(model.predict(rna.X[test], rna.var_names), targets[test], protein.var_names)
    assert report["summary"]["mean_protein_pearson"] >= 0.62
    assert model.alpha_ in model.cv_alphas and len(model.cv_errors_) == len(model.cv_alphas)


def test_save_load_round_trip_is_exact_and_columns_align_by_name(pbmc, fitted, tmp_path):
    rna, _ = pbmc
    model, test, _ = fitted
    cells = rna[test[:50]]
    before = model.predict(cells.X, cells.var_names)
    path = model.save(tmp_path / "baseline")
    assert path.suffix == ".npz"
    loaded = RidgeBaseline.load(path)
    assert np.array_equal(loaded.predict(cells.X, cells.var_names), before)
    assert loaded.genes_.tolist() == model.genes_.tolist() and loaded.proteins_.tolist() == model.proteins_.tolist()
    assert loaded.alpha_ == model.alpha_ and loaded.cv_errors_ == model.cv_errors_
    with np.load(path, allow_pickle=False) as stored:  # plain arrays only
        assert "coef" in stored.files
    # Same cells, genes in another order and as a dense matrix: same predictions (up to float rounding).
    order = np.random.default_rng(0).permutation(cells.n_vars)
    shuffled = loaded.predict(cells.X.toarray()[:, order], cells.var_names[order])
    np.testing.assert_allclose(shuffled, before, atol=1e-5)


def test_errors(tmp_path):
    with pytest.raises(InputDataError, match="not fitted"):
        RidgeBaseline().predict(np.ones((2, 2)), ["a", "b"])
    with pytest.raises(StoreError, match="does not exist"):
        RidgeBaseline.load(tmp_path / "none.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(StoreError):
        RidgeBaseline.load(tmp_path / "junk.npz")
    with pytest.raises(InputDataError, match="non-negative"):
        RidgeBaseline(n_components=1, cv_alphas=None).fit(-np.ones((3, 2)), np.ones((3, 1)), ["a", "b"])
