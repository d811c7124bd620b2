"""Gene-gene and protein-protein attention, as the original `attention_matrix.py` defines them.

The original (`scPerformerEncDec.forward` with `output_attentions=True`) returns, per cell, the
encoder attention `enc_weights` (L x L) and the decoder attention `dec_weights` (P x P): for each
layer the Performer's implied row-normalised attention A_lh = diag(1 / D) q' k'^T (all keys,
padding included, in the normaliser), averaged over heads, then over layers. It sums them over
cells, keeps the real genes (proteins) and min-max scales every column, then every row
(`attention_normalize`). Its tutorial (fig5) then lists, per gene (protein), the `k` partners with
the highest scaled score, itself excluded: the gene regulatory network and protein-interaction
tables.

Here the row i of the encoder matrix is formed for a block of query genes at a time,
mean_lh (q'_i / D_i) k'^T, from the features the model computed anyway: memory is O(block x L)
per cell. Pure functions of tensors and arrays, so they can move onto any pipeline.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from sctranslator.analysis.attention.math import concat_heads, normalised_queries


def attention_rows(q_feat: torch.Tensor, k_feat: torch.Tensor, rows: torch.Tensor,
                   columns: torch.Tensor) -> torch.Tensor:
    """``sum_h A_h[rows, columns]`` for one layer.

    The normaliser D runs over all N keys, as in the model. Divide by H (and the number of layers) for
    the original's mean.

    Parameters
    ----------
    q_feat : torch.Tensor
        ``(B, H, N, nb)`` query features.
    k_feat : torch.Tensor
        ``(B, H, N, nb)`` key features.
    rows : torch.Tensor
        int64 query positions.
    columns : torch.Tensor
        int64 key positions.

    Returns
    -------
    torch.Tensor
        ``(B, len(rows), len(columns))``.
    """
    queries = concat_heads(normalised_queries(q_feat[:, :, rows], k_feat))
    keys = concat_heads(k_feat[:, :, columns])
    return torch.matmul(queries, keys.transpose(1, 2))


def window_attention(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """The decoder's mean attention from concatenated, pre-scaled features (see `DecoderPass`).

    Parameters
    ----------
    queries : torch.Tensor
        ``(B, P, layers * H * nb)``.
    keys : torch.Tensor
        ``(B, P, layers * H * nb)``.

    Returns
    -------
    torch.Tensor
        ``(B, P, P)``.
    """
    return torch.matmul(queries, keys.transpose(1, 2))


def protein_pair_matrix(window_sums: np.ndarray, output_index: np.ndarray, window_size: int) -> np.ndarray:
    """Per-window sums -> a matrix over the output proteins; NaN across windows.

    Proteins in different decoder windows never attend to each other, so their entry is undefined.

    Parameters
    ----------
    window_sums : numpy.ndarray
        ``(W, P, P)``.
    output_index : numpy.ndarray
        int64 flat index of each output protein into the windows.
    window_size : int
        P.

    Returns
    -------
    numpy.ndarray
        ``(n_out, n_out)``.
    """
    window = output_index // window_size
    position = output_index % window_size
    matrix = window_sums[window[:, None], position[:, None], position[None, :]].astype(np.float64)
    matrix[window[:, None] != window[None, :]] = np.nan
    return matrix


# Min-max scaling over one or two proteins leaves nothing but their order (every value 0 or 1), and a
# single protein's column has no range at all: below this many proteins a window's scaling is undefined.
MIN_SCALED_WINDOW = 3


def scale_windows(window_means: np.ndarray, window_mask: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """The original's ``attention_normalize`` over each decoder window's real proteins, as the model ran them.

    The scaling uses every protein in the window (for a panel model its whole panel window), so a pair's
    scaled value does not depend on which proteins were asked for.

    Parameters
    ----------
    window_means : numpy.ndarray
        ``(W, P, P)``.
    window_mask : numpy.ndarray
        bool ``(W, P)``.

    Returns
    -------
    scaled : numpy.ndarray
        ``(W, P, P)``; NaN where undefined: padding, a constant column or row, and whole windows of
        fewer than MIN_SCALED_WINDOW proteins.
    unscaled : list of int
        The indices of those small windows.
    """
    scaled = np.full(window_means.shape, np.nan)
    degenerate = []
    for w in range(window_means.shape[0]):
        real = np.flatnonzero(window_mask[w])
        if real.size < MIN_SCALED_WINDOW:
            degenerate.append(w)
            continue
        block = np.asarray(window_means[w][np.ix_(real, real)], dtype=np.float64)
        lo, hi = block.min(axis=0), block.max(axis=0)
        with np.errstate(all="ignore"):
            block = np.where(hi > lo, (block - lo) / (hi - lo), np.nan)
            lo = np.nanmin(block, axis=1, keepdims=True, initial=np.inf)
            hi = np.nanmax(block, axis=1, keepdims=True, initial=-np.inf)
            block = np.where(hi > lo, (block - lo) / (hi - lo), np.nan)
        scaled[w][np.ix_(real, real)] = block
    return scaled, degenerate


def column_ranges(blocks: list[np.ndarray] | np.ndarray, block_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-column (nan)min and (nan)max of a matrix read `block_rows` rows at a time.

    Parameters
    ----------
    blocks : list of numpy.ndarray or numpy.ndarray
        The matrix, whole or in row blocks.
    block_rows : int
        Rows per block.

    Returns
    -------
    lo : numpy.ndarray
        Column minima.
    hi : numpy.ndarray
        Column maxima.
    """
    lo = np.full(blocks.shape[1], np.inf)
    hi = np.full(blocks.shape[1], -np.inf)
    for start in range(0, blocks.shape[0], block_rows):
        block = np.asarray(blocks[start:start + block_rows], dtype=np.float64)
        with np.errstate(all="ignore"):
            np.fmin(lo, np.nanmin(block, axis=0, initial=np.inf), out=lo)
            np.fmax(hi, np.nanmax(block, axis=0, initial=-np.inf), out=hi)
    return lo, hi


def scale_block(block: np.ndarray, column_lo: np.ndarray | None, column_hi: np.ndarray | None) -> np.ndarray:
    """The original's ``attention_normalize`` on a block of rows: columns by the given ranges, then rows.

    Constant columns or rows scale to 0 (the original divides by zero there); NaN stays NaN.

    Parameters
    ----------
    block : numpy.ndarray
        Rows x columns.
    column_lo : numpy.ndarray or None
        Column minima; None skips the column step (a subset of rows cannot know a column's range).
    column_hi : numpy.ndarray or None
        Column maxima.

    Returns
    -------
    numpy.ndarray
        The scaled block.
    """
    values = np.asarray(block, dtype=np.float64)
    if column_lo is not None and column_hi is not None:
        span = np.where(column_hi > column_lo, column_hi - column_lo, 1.0)
        values = (values - column_lo) / span
    with np.errstate(all="ignore"):
        lo = np.nanmin(values, axis=1, keepdims=True, initial=np.inf)
        hi = np.nanmax(values, axis=1, keepdims=True, initial=-np.inf)
    span = np.where(hi > lo, hi - lo, 1.0)
    return (values - np.where(np.isfinite(lo), lo, 0.0)) / span


def top_partners(matrix: np.ndarray, row_names: list[str], column_names: list[str], self_column: np.ndarray,
                 top_k: int, *, scale_columns: bool = True, block_rows: int = 1024,
                 label: str = "gene", scaled_matrix: np.ndarray | None = None) -> pd.DataFrame:
    """Each row's `top_k` partners by the original's scaled score, itself excluded, block by block.

    Ranked by scaled (ties: the first column first), as the original's fig5 tables are. Memory: one
    block.

    Parameters
    ----------
    matrix : numpy.ndarray
        Rows x columns mean attention (an array or a memory map).
    row_names : list of str
        The rows' names.
    column_names : list of str
        The columns' names.
    self_column : numpy.ndarray
        Row i's own column (-1: none).
    top_k : int
        Partners per row.
    scale_columns : bool
        Scale columns before rows.
    block_rows : int
        Rows per block.
    label : str
        The first column's name ("gene", "protein").
    scaled_matrix : numpy.ndarray or None
        The scaled scores, given instead (NaN: undefined, never listed).

    Returns
    -------
    pandas.DataFrame
        Columns `label`, partner, rank, score, scaled.
    """
    lo, hi = column_ranges(matrix, block_rows) if scale_columns and scaled_matrix is None else (None, None)
    k = max(0, min(top_k, matrix.shape[1] - 1))
    frames = []
    for start in range(0, matrix.shape[0], block_rows):
        raw = np.asarray(matrix[start:start + block_rows], dtype=np.float64)
        if scaled_matrix is None:
            scaled = scale_block(raw, lo, hi)
        else:
            scaled = np.asarray(scaled_matrix[start:start + block_rows], dtype=np.float64)
        rows = np.arange(raw.shape[0])
        own = self_column[start:start + raw.shape[0]]
        key = np.where(np.isnan(scaled), -np.inf, scaled)
        key[rows[own >= 0], own[own >= 0]] = -np.inf  # a gene is not its own partner
        # Descending; ties keep column order, as pandas' nlargest in the original's tutorial does.
        order = np.argsort(-key, axis=1, kind="stable")[:, :k]
        picked = np.take_along_axis(key, order, axis=1)
        keep = np.isfinite(picked)  # fewer real partners than k (e.g. a protein alone in its window)
        row_index = np.repeat(rows, order.shape[1]).reshape(order.shape)[keep]
        columns = order[keep]
        frames.append(pd.DataFrame({
            label: np.asarray(row_names, dtype=object)[start + row_index],
            "partner": np.asarray(column_names, dtype=object)[columns],
            "rank": (np.cumsum(keep, axis=1)[keep]).astype(np.int64),
            "score": raw[row_index, columns],
            "scaled": scaled[row_index, columns],
        }))
    if not frames:
        return pd.DataFrame(columns=[label, "partner", "rank", "score", "scaled"])
    return pd.concat(frames, ignore_index=True)
