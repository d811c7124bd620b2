"""Attention implied by FAVOR+ random features, without ever forming the N x N matrix.

For one head with query features q' (N, nb) and key features k' (N, nb), the Performer's output
is A V with the row-normalised attention A = diag(1 / D) q' k'^T, D_n = q'_n . sum_m k'_m. Every
quantity here is a contraction of A that factors through the nb-dimensional feature space, so
memory stays O(N x nb) per head.
"""

from __future__ import annotations

import torch


def row_normalisers(q_feat: torch.Tensor, k_feat: torch.Tensor) -> torch.Tensor:
    """Each query's normaliser ``D_n = q'_n . sum_m k'_m`` (all keys, padded ones included, as the model does).

    Parameters
    ----------
    q_feat : torch.Tensor
        ``(..., N, nb)``.
    k_feat : torch.Tensor
        ``(..., N, nb)``.

    Returns
    -------
    torch.Tensor
        ``(..., N)``.
    """
    key_sum = k_feat.sum(dim=-2)
    return torch.matmul(q_feat, key_sum.unsqueeze(-1)).squeeze(-1)


def received_attention(q_feat: torch.Tensor, k_feat: torch.Tensor, query_weights: torch.Tensor) -> torch.Tensor:
    """Attention each key receives: ``received_m = sum_n w_n A[n, m] = k'_m . (sum_n w_n q'_n / D_n)``.

    Parameters
    ----------
    q_feat : torch.Tensor
        ``(..., N, nb)``.
    k_feat : torch.Tensor
        ``(..., N, nb)``.
    query_weights : torch.Tensor
        ``(..., N)``: selects and weights the queries (1 for real tokens, 0 for padding); broadcasts
        over the head axis.

    Returns
    -------
    torch.Tensor
        ``(..., N)``.
    """
    weights = query_weights.to(q_feat.dtype) / row_normalisers(q_feat, k_feat)
    pooled = torch.matmul(weights.unsqueeze(-2), q_feat)  # (..., 1, nb): no (N, nb) temporary
    return torch.matmul(k_feat, pooled.transpose(-1, -2)).squeeze(-1)


def normalised_queries(q_feat: torch.Tensor, k_feat: torch.Tensor) -> torch.Tensor:
    """``q'_n / D_n``, so that ``A = normalised_queries @ k'^T``.

    Parameters
    ----------
    q_feat : torch.Tensor
        ``(..., N, nb)``.
    k_feat : torch.Tensor
        ``(..., N, nb)``.

    Returns
    -------
    torch.Tensor
        ``(..., N, nb)``.
    """
    return q_feat / row_normalisers(q_feat, k_feat).unsqueeze(-1)


def concat_heads(features: torch.Tensor) -> torch.Tensor:
    """``(B, H, N, nb)`` -> ``(B, N, H * nb)``: ``sum_h X_h Y_h^T = concat(X) concat(Y)^T``, one matmul for all heads.

    Parameters
    ----------
    features : torch.Tensor
        ``(B, H, N, nb)``.

    Returns
    -------
    torch.Tensor
        ``(B, N, H * nb)``.
    """
    batch, heads, length, nb = features.shape
    return features.permute(0, 2, 1, 3).reshape(batch, length, heads * nb)
