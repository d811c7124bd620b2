"""An honest reference point for protein prediction: PCA of log-normalised RNA + ridge regression.

Any model worth running should beat this. It takes seconds on a laptop, needs no GPU and no
vocabulary (genes are matched by name between training and prediction data). The statistics are
scikit-learn's (an optional dependency, in the `analysis` and `dev` extras, imported only here).

Steps, all fitted on the training cells only:
1. align the input's columns to the training gene list by name (genes missing at predict time
   are 0), then library-size normalise over that gene panel and log1p (`normalize_block`,
   "total_log1p"). Totals are taken over the training panel, not the input's full width, so a
   whole-transcriptome input is scaled like the HVG-only data the model was trained on;
2. centre the genes and keep the top `n_components` principal axes: `sklearn.decomposition.PCA`
   with the ARPACK solver, which centres a sparse matrix implicitly (never densifies it) and gives
   the exact top axes (seeded start vector); the full solver when all axes are kept;
3. `sklearn.linear_model.Ridge` from the PC scores to the (already scaled) protein targets; the
   intercept is not penalised.

Alpha is chosen by k-fold cross-validation on the training cells among `cv_alphas`
(`sklearn.model_selection.GridSearchCV` over a seeded, shuffled `KFold`, scored by mean squared
error over all proteins; ties go to the larger alpha). PCA is fitted once on all training cells,
which is unsupervised and never sees the targets. Pass `cv_alphas=None` to use `alpha` as given.
The fitted model is kept as plain arrays (mean, components, coefficients), so predicting and
loading a saved model need no scikit-learn.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sctranslator.errors import InputDataError, StoreError
from sctranslator.kernels import normalize_block

DEFAULT_CV_ALPHAS: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5)
FORMAT_VERSION = 1


def heldout_split(n_obs: int, n_heldout: int = 500, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Hold out `n_heldout` cells drawn at random with a seeded generator.

    The same draw as ``sctranslator.train.split_cells(obs, val_count=n_heldout, seed=seed)``, so the
    baseline and the trained model are scored on the same cells.

    Parameters
    ----------
    n_obs : int
        Number of cells.
    n_heldout : int
        Number of cells held out, between 1 and ``n_obs - 1``.
    seed : int
        Seed of the draw.

    Returns
    -------
    train_idx : numpy.ndarray
        int64 positions of the training cells, sorted.
    test_idx : numpy.ndarray
        int64 positions of the held-out cells, sorted.

    Raises
    ------
    InputDataError
        `n_heldout` is not between 1 and ``n_obs - 1``.

    Examples
    --------
    >>> from sctranslator.analysis import heldout_split
    >>> train, test = heldout_split(10, 3, seed=0)
    >>> len(train), len(test), sorted({*train, *test}) == list(range(10))
    (7, 3, True)
    """
    if not 0 < n_heldout < n_obs:
        raise InputDataError(f"cannot hold out {n_heldout} of {n_obs} cells")
    held = np.zeros(n_obs, dtype=bool)
    held[np.random.default_rng(seed).choice(n_obs, size=n_heldout, replace=False)] = True
    return np.flatnonzero(~held).astype(np.int64), np.flatnonzero(held).astype(np.int64)


def _as_float_matrix(x: np.ndarray | sp.spmatrix | sp.sparray) -> np.ndarray | sp.csr_matrix:
    if sp.issparse(x):
        return sp.csr_matrix(x, dtype=np.float32)
    return np.asarray(x, dtype=np.float32)


def align_genes(counts: np.ndarray | sp.spmatrix | sp.sparray, genes: Sequence[str],
                panel: Sequence[str]) -> np.ndarray | sp.csr_matrix:
    """The columns of `counts` reordered to `panel` by name; panel genes absent from `genes` are 0.

    A duplicated input gene name uses its first column.

    Parameters
    ----------
    counts : numpy.ndarray or scipy.sparse matrix or array
        ``(n_cells, n_genes)`` counts.
    genes : sequence of str
        The name of each column, ``(n_genes,)``.
    panel : sequence of str
        The genes wanted, in order, ``(n_panel,)``.

    Returns
    -------
    numpy.ndarray or scipy.sparse.csr_matrix
        ``(n_cells, n_panel)``, float.

    Raises
    ------
    InputDataError
        The number of names differs from the number of columns.
    """
    counts = _as_float_matrix(counts)
    names = pd.Index([str(g) for g in genes])
    if counts.ndim != 2 or counts.shape[1] != len(names):
        raise InputDataError(f"RNA matrix has shape {counts.shape} but {len(names)} gene names were given")
    first = ~names.duplicated()
    lookup = pd.Index(names[first]).get_indexer(pd.Index(panel))
    columns = np.flatnonzero(first)[np.maximum(lookup, 0)]
    present = lookup >= 0
    if sp.issparse(counts):
        selector = sp.csr_matrix((np.ones(int(present.sum()), np.float32),
                                  (columns[present], np.flatnonzero(present))), shape=(counts.shape[1], len(panel)))
        return sp.csr_matrix(counts @ selector)
    aligned = np.zeros((counts.shape[0], len(panel)), dtype=np.float32)
    aligned[:, present] = counts[:, columns[present]]
    return aligned


def _centered_product(x: np.ndarray | sp.csr_matrix, mean: np.ndarray, m: np.ndarray) -> np.ndarray:
    # (X - 1 mean) @ m without densifying a sparse X.
    return np.asarray(x @ m) - np.outer(np.ones(x.shape[0]), mean @ m)


def _sklearn(module: str):  # noqa: ANN202 - a module
    """Import a scikit-learn module, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(f"sklearn.{module}")
    except ImportError as exc:  # pragma: no cover - sklearn is in the analysis/dev extras
        raise InputDataError("the ridge baseline needs scikit-learn: pip install 'sctranslator[analysis]'") from exc


def fit_pca(x: np.ndarray | sp.csr_matrix, n_components: int, *, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PCA of the column-centred X: mean, axes, singular values and scores.

    ``sklearn.decomposition.PCA``: ARPACK (seeded) for k < min(n, g), which accepts sparse X without
    densifying it, else the full SVD. Signs follow the largest loading of each axis (positive), so a
    refit gives the same axes.

    Parameters
    ----------
    x : numpy.ndarray or scipy.sparse.csr_matrix
        ``(n, g)`` log-normalised expression.
    n_components : int
        k, the axes kept (fewer when n or g is smaller).
    seed : int
        Seed of ARPACK's start vector.

    Returns
    -------
    mean : numpy.ndarray
        ``(g,)`` column means.
    components : numpy.ndarray
        ``(k, g)`` principal axes.
    singular_values : numpy.ndarray
        ``(k,)``.
    scores : numpy.ndarray
        ``(n, k)``.

    Raises
    ------
    InputDataError
        No component can be fitted, or scikit-learn is not installed.
    """
    n, g = x.shape
    k = min(n_components, n - 1, g)
    if k < 1:
        raise InputDataError(f"cannot fit {n_components} principal components on {n} cells x {g} genes")
    x = x.astype(np.float64) if sp.issparse(x) else np.asarray(x, dtype=np.float64)
    if k < min(n, g):
        solver = "arpack"
    else:
        solver = "full"
        x = x.toarray() if sp.issparse(x) else x
    pca = _sklearn("decomposition").PCA(n_components=k, svd_solver=solver, random_state=seed)
    scores = pca.fit_transform(x)
    components = pca.components_
    signs = np.sign(components[np.arange(k), np.abs(components).argmax(axis=1)])
    return pca.mean_, components * signs[:, None], pca.singular_values_, scores * signs[None, :]


def _ridge_coef(scores: np.ndarray, targets: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(coef k x p, intercept p) of `sklearn.linear_model.Ridge` (intercept not penalised)."""
    ridge = _sklearn("linear_model").Ridge(alpha=alpha).fit(scores, targets)
    coef = np.asarray(ridge.coef_, dtype=np.float64).reshape(targets.shape[1], -1).T
    return coef, np.asarray(ridge.intercept_, dtype=np.float64).reshape(-1)


def cv_alpha(scores: np.ndarray, targets: np.ndarray, alphas: Sequence[float], *, folds: int = 5,
             seed: int = 0) -> tuple[float, dict[float, float]]:
    """The ridge penalty with the lowest k-fold mean squared error (ties: the larger), and all errors.

    ``GridSearchCV(Ridge(), alphas, cv=KFold(folds, shuffle=True, random_state=seed))``; the error
    of an alpha is the mean over folds of the mean squared error over all cells and proteins.

    Parameters
    ----------
    scores : numpy.ndarray
        ``(n, k)`` PC scores.
    targets : numpy.ndarray
        ``(n, p)`` scaled protein targets.
    alphas : sequence of float
        The penalties compared.
    folds : int
        k.
    seed : int
        Seed of the fold shuffle.

    Returns
    -------
    alpha : float
        The chosen penalty.
    errors : dict of float to float
        Penalty -> cross-validated mean squared error.

    Raises
    ------
    InputDataError
        scikit-learn is not installed.
    """
    n = scores.shape[0]
    folds = max(2, min(folds, n))
    selection = _sklearn("model_selection")
    search = selection.GridSearchCV(
        _sklearn("linear_model").Ridge(), {"alpha": [float(a) for a in alphas]},
        cv=selection.KFold(n_splits=folds, shuffle=True, random_state=seed),
        scoring="neg_mean_squared_error", refit=False,
    ).fit(scores, targets)
    tried = [float(a) for a in search.cv_results_["param_alpha"]]
    errors = dict(zip(tried, (-search.cv_results_["mean_test_score"]).tolist(), strict=True))
    best = min(errors.items(), key=lambda item: (item[1], -item[0]))[0]
    return best, errors


class RidgeBaseline:
    """PCA + ridge regression from RNA counts to per-cell scaled protein targets: a reference to beat.

    Library-size normalisation and log1p over the training genes, the top principal axes, then
    ridge regression (alpha chosen by cross-validation) to the targets. Fitting needs scikit-learn
    (the ``analysis`` extra); predicting and loading a saved model do not.

    Parameters
    ----------
    n_components : int
        Principal axes kept.
    alpha : float
        Ridge penalty, used as given when `cv_alphas` is None.
    target_sum : float
        Library size each cell is normalised to before log1p.
    cv_alphas : sequence of float or None
        Penalties compared by k-fold cross-validation on the training cells; None: use `alpha`.
    cv_folds : int
        Folds of the cross-validation.
    seed : int
        Seed of the PCA start vector and the folds.
    """

    def __init__(self, n_components: int = 50, alpha: float = 1.0, target_sum: float = 1e4, *,
                 cv_alphas: Sequence[float] | None = DEFAULT_CV_ALPHAS, cv_folds: int = 5, seed: int = 0) -> None:
        self.n_components = int(n_components)
        self.alpha = float(alpha)
        self.target_sum = float(target_sum)
        self.cv_alphas = tuple(float(a) for a in cv_alphas) if cv_alphas else None
        self.cv_folds = int(cv_folds)
        self.seed = int(seed)
        self.genes_: np.ndarray | None = None
        self.proteins_: np.ndarray | None = None
        self.cv_errors_: dict[float, float] = {}

    # -- fitting ------------------------------------------------------------------------------------
    def _log_normalised(self, counts: np.ndarray | sp.spmatrix | sp.sparray, genes: Sequence[str]
                        ) -> np.ndarray | sp.csr_matrix:
        aligned = align_genes(counts, genes, self.genes_)
        values = aligned.data if sp.issparse(aligned) else aligned
        if values.size and values.min() < 0:
            raise InputDataError("RNA counts must be non-negative: raw counts are expected (normalised here)")
        return normalize_block(aligned, "total_log1p", target_sum=self.target_sum)

    def fit(self, rna_counts: np.ndarray | sp.spmatrix | sp.sparray, targets: np.ndarray, genes: Sequence[str],
            proteins: Sequence[str] | None = None) -> RidgeBaseline:
        """Fit on raw RNA counts and per-cell scaled protein targets of the same cells.

        Parameters
        ----------
        rna_counts : numpy.ndarray or scipy.sparse matrix
            Raw RNA counts, ``(n_cells, n_genes)`` (normalised and log1p here; never negative).
        genes : sequence of str
            The gene name of each column, ``(n_genes,)``; matched to the training genes by name
            (training genes missing here count as 0).
        targets : numpy.ndarray
            Scaled protein targets, ``(n_cells, n_proteins)``, finite.
        proteins : sequence of str or None
            The target columns' names; None: protein_0, protein_1, ...

        Returns
        -------
        RidgeBaseline
            This model, fitted.

        Raises
        ------
        InputDataError
            Targets of another number of cells, NaN / Inf targets, negative counts, or names that do
            not match the targets' columns; or scikit-learn (the ``analysis`` extra) is not installed.
        """
        targets = np.asarray(targets, dtype=np.float64)
        if targets.ndim != 2 or targets.shape[0] != rna_counts.shape[0]:
            raise InputDataError(f"targets {targets.shape} do not match the RNA's {rna_counts.shape[0]} cells")
        if not np.isfinite(targets).all():
            raise InputDataError("targets contain NaN or Inf")
        names = pd.Index([str(g) for g in genes])
        self.genes_ = np.asarray(names[~names.duplicated()], dtype=str)
        self.proteins_ = np.asarray([str(p) for p in proteins] if proteins is not None
                                    else [f"protein_{j}" for j in range(targets.shape[1])], dtype=str)
        if len(self.proteins_) != targets.shape[1]:
            raise InputDataError(f"{len(self.proteins_)} protein names for {targets.shape[1]} target columns")
        x = self._log_normalised(rna_counts, genes)
        self.mean_, self.components_, _, scores = fit_pca(x, self.n_components, seed=self.seed)
        if self.cv_alphas:
            self.alpha_, self.cv_errors_ = cv_alpha(scores, targets, self.cv_alphas, folds=self.cv_folds,
                                                    seed=self.seed)
        else:
            self.alpha_ = self.alpha
        self.coef_, self.intercept_ = _ridge_coef(scores, targets, self.alpha_)
        return self

    # -- prediction ---------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if self.genes_ is None:
            raise InputDataError("this RidgeBaseline is not fitted; call fit() or RidgeBaseline.load() first")

    def transform(self, rna_counts: np.ndarray | sp.spmatrix | sp.sparray, genes: Sequence[str]) -> np.ndarray:
        """Project new cells onto the fitted principal axes, genes aligned by name.

        Parameters
        ----------
        rna_counts : numpy.ndarray or scipy.sparse matrix
            Raw RNA counts, ``(n_cells, n_genes)`` (normalised and log1p here; never negative).
        genes : sequence of str
            The gene name of each column, ``(n_genes,)``; matched to the training genes by name
            (training genes missing here count as 0).

        Returns
        -------
        numpy.ndarray
            PC scores, ``(n_cells, n_components)``.

        Raises
        ------
        InputDataError
            The model is not fitted, or counts are negative.
        """
        self._check_fitted()
        x = self._log_normalised(rna_counts, genes)
        return _centered_product(x, self.mean_, self.components_.T)

    def predict(self, rna_counts: np.ndarray | sp.spmatrix | sp.sparray, genes: Sequence[str]) -> np.ndarray:
        """Predict the protein targets of new cells from their raw RNA counts.

        Parameters
        ----------
        rna_counts : numpy.ndarray or scipy.sparse matrix
            Raw RNA counts, ``(n_cells, n_genes)`` (normalised and log1p here; never negative).
        genes : sequence of str
            The gene name of each column, ``(n_genes,)``; matched to the training genes by name
            (training genes missing here count as 0).

        Returns
        -------
        numpy.ndarray
            float32 predictions, ``(n_cells, n_proteins)``, on the targets' scale.

        Raises
        ------
        InputDataError
            The model is not fitted, or counts are negative.
        """
        return (self.transform(rna_counts, genes) @ self.coef_ + self.intercept_).astype(np.float32)

    def gene_coverage(self, genes: Sequence[str]) -> float:
        """Fraction of the training genes present in `genes` (missing ones are predicted from 0).

        Parameters
        ----------
        genes : sequence of str
            Gene names of a dataset to predict.

        Returns
        -------
        float
            Between 0 and 1.

        Raises
        ------
        InputDataError
            The model is not fitted.
        """
        self._check_fitted()
        return float(np.isin(self.genes_, np.asarray([str(g) for g in genes])).mean())

    # -- persistence (plain .npz, no pickle) --------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the fitted model to an .npz (arrays and strings only; loads with allow_pickle=False).

        Parameters
        ----------
        path : str or pathlib.Path
            The file; ``.npz`` is appended when it has another suffix.

        Returns
        -------
        pathlib.Path
            The file written.

        Raises
        ------
        InputDataError
            The model is not fitted.
        """
        self._check_fitted()
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(".npz")
        alphas = np.asarray(list(self.cv_errors_), dtype=np.float64)
        np.savez(path, format_version=FORMAT_VERSION, n_components=self.n_components, alpha=self.alpha,
                 target_sum=self.target_sum, cv_folds=self.cv_folds, seed=self.seed,
                 cv_alphas=np.asarray(self.cv_alphas or (), dtype=np.float64), alpha_=self.alpha_,
                 cv_error_alphas=alphas, cv_errors=np.asarray([self.cv_errors_[a] for a in alphas.tolist()]),
                 genes=self.genes_, proteins=self.proteins_, mean=self.mean_, components=self.components_,
                 coef=self.coef_, intercept=self.intercept_)
        return path

    @classmethod
    def load(cls, path: str | Path) -> RidgeBaseline:
        """Read a model written by `save`.

        Parameters
        ----------
        path : str or pathlib.Path
            The .npz file.

        Returns
        -------
        RidgeBaseline
            The fitted model.

        Raises
        ------
        StoreError
            The file does not exist, is not a readable .npz, or is of another format version.
        """
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"baseline model {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as stored:
                data = {key: stored[key] for key in stored.files}
        except (OSError, ValueError, KeyError, AttributeError, zipfile.BadZipFile) as error:
            raise StoreError(f"{path} is not a readable RidgeBaseline .npz: {error}") from error
        if int(data.get("format_version", -1)) != FORMAT_VERSION:
            raise StoreError(f"{path} is not a RidgeBaseline file of format {FORMAT_VERSION}")
        model = cls(int(data["n_components"]), float(data["alpha"]), float(data["target_sum"]),
                    cv_alphas=data["cv_alphas"].tolist() or None, cv_folds=int(data["cv_folds"]),
                    seed=int(data["seed"]))
        model.alpha_ = float(data["alpha_"])
        model.cv_errors_ = dict(zip(data["cv_error_alphas"].tolist(), data["cv_errors"].tolist(), strict=True))
        model.genes_, model.proteins_ = data["genes"], data["proteins"]
        model.mean_, model.components_ = data["mean"], data["components"]
        model.coef_, model.intercept_ = data["coef"], data["intercept"]
        return model

    def __repr__(self) -> str:
        fitted = "unfitted" if self.genes_ is None else f"{len(self.genes_)} genes -> {len(self.proteins_)} proteins"
        alpha = getattr(self, "alpha_", math.nan)
        return f"RidgeBaseline(n_components={self.n_components}, alpha={alpha:g}, {fitted})"
