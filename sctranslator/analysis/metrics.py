"""Accuracy of predicted against measured protein values (cells x proteins).

All functions take two dense matrices of the same shape, predictions first. A protein (or cell)
that is constant on either side has no defined correlation: it gets NaN, is left out of the means,
and is named in the summary, so a mean never silently hides it. Non-finite predictions propagate
to NaN in the metrics they touch and are counted.

`cosine_score` is the number the original scTranslator prints as "ccc": the cosine similarity of
all (cell, protein) values of a batch, flattened, averaged over batches of `batch_size` consecutive
cells. It depends on the batch size and on the values' offset (it is not a correlation), so it
is only comparable between runs that use the same batching and target scaling; the default here
is one batch of all cells.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

from sctranslator.kernels import pearson_columns, pearson_rows


def _pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if pred.ndim != 2 or pred.shape != truth.shape:
        raise ValueError(f"predictions and truth must be 2-D of the same shape; got {pred.shape} and {truth.shape}")
    return pred, truth


def _nonfinite(pred: np.ndarray, truth: np.ndarray, axis: int) -> np.ndarray:
    return ~(np.isfinite(pred).all(axis=axis) & np.isfinite(truth).all(axis=axis))


def pearson_per_protein(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Pearson r over cells, one per protein.

    Parameters
    ----------
    pred : numpy.ndarray
        Predictions, ``(n_cells, n_proteins)``.
    truth : numpy.ndarray
        Measured values on the same scale, ``(n_cells, n_proteins)``.

    Returns
    -------
    numpy.ndarray
        float64 ``(n_proteins,)``; NaN where a column is constant or has a NaN/Inf.

    Raises
    ------
    ValueError
        `pred` and `truth` are not 2-D arrays of one shape.
    """
    pred, truth = _pair(pred, truth)
    r = pearson_columns(pred, truth)
    # The kernel's clip to [-1, 1] turns a NaN sum into -1, so non-finite columns are masked here.
    r[_nonfinite(pred, truth, axis=0)] = np.nan
    return r


def spearman_per_protein(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Spearman rho over cells, one per protein: Pearson of average ranks.

    Parameters
    ----------
    pred : numpy.ndarray
        Predictions, ``(n_cells, n_proteins)``.
    truth : numpy.ndarray
        Measured values on the same scale, ``(n_cells, n_proteins)``.

    Returns
    -------
    numpy.ndarray
        float64 ``(n_proteins,)``; ties share their mean rank; NaN where undefined.

    Raises
    ------
    ValueError
        `pred` and `truth` are not 2-D arrays of one shape.
    """
    pred, truth = _pair(pred, truth)
    if pred.shape[0] == 0:
        return np.full(pred.shape[1], np.nan)
    # rankdata would rank NaN as a value; keep NaN columns NaN as Pearson does.
    rho = pearson_columns(rankdata(pred, axis=0), rankdata(truth, axis=0))
    rho[_nonfinite(pred, truth, axis=0)] = np.nan
    return rho


def pearson_per_cell(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Pearson r over proteins, one per cell.

    Parameters
    ----------
    pred : numpy.ndarray
        Predictions, ``(n_cells, n_proteins)``.
    truth : numpy.ndarray
        Measured values on the same scale, ``(n_cells, n_proteins)``.

    Returns
    -------
    numpy.ndarray
        float64 ``(n_cells,)``; NaN where a row is constant, has a NaN/Inf or fewer than 2 proteins.

    Raises
    ------
    ValueError
        `pred` and `truth` are not 2-D arrays of one shape.
    """
    pred, truth = _pair(pred, truth)
    r = pearson_rows(pred, truth)
    r[_nonfinite(pred, truth, axis=1)] = np.nan
    return r


def cosine_score(pred: np.ndarray, truth: np.ndarray, batch_size: int | None = None) -> float:
    """Mean over batches of the cosine similarity of the batch's flattened values (the original's "ccc").

    Batches are consecutive runs of `batch_size` cells in the given order; the last batch may be
    smaller and counts as much as the others, as in the original. A batch whose values are all zero
    on either side has no cosine and is skipped.

    Parameters
    ----------
    pred : numpy.ndarray
        Predictions, ``(n_cells, n_proteins)``.
    truth : numpy.ndarray
        Measured values on the same scale, ``(n_cells, n_proteins)``.
    batch_size : int or None
        Cells per batch; None: one batch of all cells.

    Returns
    -------
    float
        The mean cosine; NaN when no batch has one.

    Raises
    ------
    ValueError
        `pred` and `truth` are not 2-D arrays of one shape.
    """
    pred, truth = _pair(pred, truth)
    n = pred.shape[0]
    if n == 0 or pred.shape[1] == 0:
        return math.nan
    step = n if batch_size is None else int(batch_size)
    if step < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    scores = []
    for start in range(0, n, step):
        a = pred[start:start + step].ravel()
        b = truth[start:start + step].ravel()
        norm = np.linalg.norm(a) * np.linalg.norm(b)
        scores.append(float(a @ b / norm) if norm > 0 else math.nan)
    finite = [s for s in scores if not math.isnan(s)]
    return float(np.mean(finite)) if finite else math.nan


def rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    """Root mean squared error over all (cell, protein) values.

    Parameters
    ----------
    pred : numpy.ndarray
        Predictions, ``(n_cells, n_proteins)``.
    truth : numpy.ndarray
        Measured values on the same scale, ``(n_cells, n_proteins)``.

    Returns
    -------
    float
        On the predictions' scale.

    Raises
    ------
    ValueError
        `pred` and `truth` are not 2-D arrays of one shape.
    """
    pred, truth = _pair(pred, truth)
    return float(np.sqrt(np.mean((pred - truth) ** 2))) if pred.size else math.nan


def rmse_per_protein(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Root mean squared error over cells, one per protein.

    Parameters
    ----------
    pred : numpy.ndarray
        Predictions, ``(n_cells, n_proteins)``.
    truth : numpy.ndarray
        Measured values on the same scale, ``(n_cells, n_proteins)``.

    Returns
    -------
    numpy.ndarray
        float64 ``(n_proteins,)``; NaN for no cells.

    Raises
    ------
    ValueError
        `pred` and `truth` are not 2-D arrays of one shape.
    """
    pred, truth = _pair(pred, truth)
    if pred.shape[0] == 0:
        return np.full(pred.shape[1], np.nan)
    return np.sqrt(np.mean((pred - truth) ** 2, axis=0))


def _json_float(value: float) -> float | None:
    # JSON has no NaN: undefined metrics are written as null.
    value = float(value)
    return value if math.isfinite(value) else None


def _nan_summary(values: np.ndarray, reducer: Any) -> float | None:
    finite = values[np.isfinite(values)]
    return _json_float(reducer(finite)) if finite.size else None


def compute_metrics(pred: np.ndarray, truth: np.ndarray, proteins: Sequence[str], *,
                    cosine_batch_size: int | None = None) -> dict[str, Any]:
    """Score predictions against measured proteins: a per-protein table and summaries, JSON-able.

    Summaries: mean / median per-protein Pearson, mean per-protein Spearman, mean per-cell Pearson,
    cosine score (see `cosine_score`), RMSE. Means skip NaN entries; the skipped proteins are listed
    under ``undefined_proteins`` and the number of skipped cells under ``undefined_cells``.

    Parameters
    ----------
    pred : numpy.ndarray
        Predictions, ``(n_cells, n_proteins)``, on the same per-cell scale as `truth`.
    truth : numpy.ndarray
        Measured proteins, ``(n_cells, n_proteins)``, cells and proteins in the order of `pred`.
    proteins : sequence of str
        The name of each column, ``(n_proteins,)``.
    cosine_batch_size : int or None
        Cells per batch for the cosine score; None: all cells at once.

    Returns
    -------
    dict
        ``n_cells``, ``n_proteins``, ``summary`` (the scores above; undefined ones are None) and
        ``per_protein`` (one record per protein: pearson, spearman, rmse, pred_mean, truth_mean).

    Raises
    ------
    ValueError
        `pred` and `truth` are not 2-D arrays of one shape, or `proteins` has another length.

    Examples
    --------
    >>> import numpy as np
    >>> from sctranslator.analysis import compute_metrics
    >>> truth = np.array([[0.0, 1.0], [0.5, 0.2], [1.0, 0.0]])
    >>> report = compute_metrics(truth * 2, truth, ["CD4", "CD8"])
    >>> report["summary"]["mean_protein_pearson"]
    1.0
    """
    pred, truth = _pair(pred, truth)
    names = [str(p) for p in proteins]
    if len(names) != pred.shape[1]:
        raise ValueError(f"{len(names)} protein names for {pred.shape[1]} columns")
    r = pearson_per_protein(pred, truth)
    rho = spearman_per_protein(pred, truth)
    per_cell = pearson_per_cell(pred, truth)
    errors = rmse_per_protein(pred, truth)
    table = [
        {"protein": name, "pearson": _json_float(r[j]), "spearman": _json_float(rho[j]),
         "rmse": _json_float(errors[j]), "pred_mean": _json_float(np.mean(pred[:, j])) if len(pred) else None,
         "truth_mean": _json_float(np.mean(truth[:, j])) if len(truth) else None}
        for j, name in enumerate(names)
    ]
    summary = {
        "mean_protein_pearson": _nan_summary(r, np.mean),
        "median_protein_pearson": _nan_summary(r, np.median),
        "mean_protein_spearman": _nan_summary(rho, np.mean),
        "mean_cell_pearson": _nan_summary(per_cell, np.mean),
        "cosine": _json_float(cosine_score(pred, truth, cosine_batch_size)),
        "cosine_batch_size": cosine_batch_size or pred.shape[0],
        "rmse": _json_float(rmse(pred, truth)),
        "undefined_proteins": [names[j] for j in np.flatnonzero(~np.isfinite(r))],
        "undefined_cells": int(np.count_nonzero(~np.isfinite(per_cell))),
        "nonfinite_predictions": int(np.count_nonzero(~np.isfinite(pred))),
    }
    return {"n_cells": int(pred.shape[0]), "n_proteins": int(pred.shape[1]), "summary": summary,
            "per_protein": table}
