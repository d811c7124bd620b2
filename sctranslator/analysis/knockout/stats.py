"""Mergeable per-slot statistics (count, mean, M2) of knockout effects over cells.

Each block stores its own (count, mean, M2) per slot (slot 0 = all cells, 1.. = obs groups); blocks
are merged with Chan et al.'s pairwise update, which stays accurate when the spread is tiny compared
with the mean (a plain sum of squares would cancel).
"""

from __future__ import annotations

import numpy as np


def block_stats(values: np.ndarray, codes: np.ndarray, n_slots: int) -> dict[str, np.ndarray]:
    """Per-slot count, mean and sum of squared deviations of a block's values.

    Parameters
    ----------
    values
        float64 (cells, ...): one row per cell.
    codes
        (cells,) int64 group codes (0: no group; slot 0 always takes every cell).
    n_slots
        1 + the number of groups.

    Returns
    -------
    dict
        count (S,) int64, mean (S, ...) and m2 (S, ...) float64.
    """
    shape = (n_slots, *values.shape[1:])
    count = np.zeros(n_slots, dtype=np.int64)
    mean, m2 = np.zeros(shape), np.zeros(shape)
    for slot in range(n_slots):
        chosen = values if slot == 0 else values[codes == slot]
        if chosen.shape[0] == 0:
            continue
        count[slot] = chosen.shape[0]
        mean[slot] = chosen.mean(axis=0)
        m2[slot] = ((chosen - mean[slot]) ** 2).sum(axis=0)
    return {"count": count, "mean": mean, "m2": m2}


def merge_stats(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The statistics of two blocks together (Chan et al.'s pairwise update).

    Parameters
    ----------
    a, b
        `block_stats` results of the same shapes.

    Returns
    -------
    dict
        count, mean and m2 over the cells of both.
    """
    count = a["count"] + b["count"]
    extra = (-1,) + (1,) * (a["mean"].ndim - 1)
    n_a, n_b = a["count"].reshape(extra).astype(np.float64), b["count"].reshape(extra).astype(np.float64)
    total = np.maximum(count.reshape(extra), 1).astype(np.float64)
    delta = b["mean"] - a["mean"]
    mean = a["mean"] + delta * (n_b / total)
    m2 = a["m2"] + b["m2"] + delta**2 * (n_a * n_b / total)
    return {"count": count, "mean": mean, "m2": m2}


def std_from(stats: dict[str, np.ndarray]) -> np.ndarray:
    """Sample standard deviation (ddof = 1); NaN where a slot has fewer than two cells.

    Parameters
    ----------
    stats
        count, mean and m2 (`block_stats` / `merge_stats`).

    Returns
    -------
    numpy.ndarray
        (S, ...) float64.
    """
    extra = (-1,) + (1,) * (stats["mean"].ndim - 1)
    n = stats["count"].reshape(extra).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 1, np.sqrt(stats["m2"] / np.maximum(n - 1, 1)), np.nan)
