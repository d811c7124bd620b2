"""FAVOR+ (softmax-kernel random-feature) linear self-attention, non-causal.

Numerically the Performer attention that scTranslator's checkpoints were trained with; see
docs: per-token query maxima, per-(cell, head) key maxima, eps = 1e-4 after the exponential,
values zeroed at padded positions and nothing else masked.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

FEATURE_EPS = 1e-4


def is_meta(device: torch.device | str | None) -> bool:
    """Whether `device` is the meta device (tensors with shapes and no data).

    Parameters
    ----------
    device : torch.device, str or None
        A device; None: the default (not meta).

    Returns
    -------
    bool
        True for "meta".
    """
    return device is not None and torch.device(device).type == "meta"


def orthogonal_random_features(nb_features: int, dim_head: int, *, generator: torch.Generator | None = None,
                               device: torch.device | str | None = None) -> torch.Tensor:
    """A Gaussian orthogonal random matrix with Gaussian-norm rows, for FAVOR+ attention.

    Rows come in orthogonal blocks of dim_head (QR of a square Gaussian); each row is then rescaled by
    the norm of an independent Gaussian vector, so rows are distributed like Gaussian rows but mutually
    orthogonal within a block.

    Parameters
    ----------
    nb_features : int
        Rows.
    dim_head : int
        Columns.
    generator : torch.Generator or None
        The random source.
    device : torch.device, str or None
        Where to make it.

    Returns
    -------
    torch.Tensor
        ``(nb_features, dim_head)``.
    """
    blocks = []
    remaining = nb_features
    while remaining > 0:
        square = torch.randn((dim_head, dim_head), generator=generator)
        q, _ = torch.linalg.qr(square, mode="reduced")
        rows = q.T
        blocks.append(rows[: min(remaining, dim_head)])
        remaining -= dim_head
    matrix = torch.cat(blocks)
    norms = torch.randn((nb_features, dim_head), generator=generator).norm(dim=1)
    return (norms[:, None] * matrix).to(device)


def _positive_features(x: torch.Tensor, projection: torch.Tensor, max_dims: tuple[int, ...]) -> torch.Tensor:
    """r * (exp(u - |x|^2 c^2 / 2 - max u) + eps) with u = (c x) R^T, c = d^-1/4, r = nb^-1/2.

    Written to touch the large (..., N, nb) tensor as few times as possible: the data scaling is
    folded into the small projection, and r into the exponent (r * exp(a) = exp(a + ln r)).
    Without autograd the remaining element-wise steps run in place.
    """
    normaliser = x.shape[-1] ** -0.25
    nb = projection.shape[0]
    u = torch.matmul(x, (projection * normaliser).T)
    half_sq_norm = (x * x).sum(dim=-1, keepdim=True) * (0.5 * normaliser**2)
    offset = half_sq_norm + u.amax(dim=max_dims, keepdim=True).detach() + 0.5 * math.log(nb)
    floor = FEATURE_EPS * nb**-0.5
    if torch.is_grad_enabled():
        return torch.exp(u - offset) + floor
    return u.sub_(offset).exp_().add_(floor)


def query_features(q: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """Positive random features of queries, stabilised per token.

    Parameters
    ----------
    q : torch.Tensor
        ``(..., N, d)`` queries.
    projection : torch.Tensor
        ``(nb, d)`` random features.

    Returns
    -------
    torch.Tensor
        ``(..., N, nb)``.
    """
    return _positive_features(q, projection, (-1,))


def key_features(k: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """Positive random features of keys; the stabilising maximum runs over every token and feature of a (cell, head).

    Parameters
    ----------
    k : torch.Tensor
        ``(B, H, N, d)`` keys.
    projection : torch.Tensor
        ``(nb, d)`` random features.

    Returns
    -------
    torch.Tensor
        ``(B, H, N, nb)``.
    """
    return _positive_features(k, projection, (-1, -2))


def linear_attention(q_feat: torch.Tensor, k_feat: torch.Tensor, v: torch.Tensor,
                     key_counts: torch.Tensor | None = None) -> torch.Tensor:
    """Linear attention: ``out_n = (q'_n C) / (q'_n . sum_m k'_m)`` with ``C = sum_m k'_m (outer) v_m``.

    Parameters
    ----------
    q_feat : torch.Tensor
        ``(B, H, N, nb)`` query features.
    k_feat : torch.Tensor
        ``(B, H, N, nb)`` key features.
    v : torch.Tensor
        ``(B, H, N, d)`` values.
    key_counts : torch.Tensor or None
        ``(N,)``: how many identical tokens each position stands for (padding collapse). They weight
        the key sum only: a collapsed position is always a padded one, whose value vector is zero.

    Returns
    -------
    torch.Tensor
        ``(B, H, N, d)``.
    """
    if key_counts is None:
        key_sum = k_feat.sum(dim=-2)  # (B, H, nb)
    else:
        key_sum = torch.matmul(key_counts.to(k_feat.dtype), k_feat)  # (N,) @ (B, H, N, nb) -> (B, H, nb)
    context = torch.matmul(k_feat.transpose(-1, -2), v)  # (B, H, nb, d)
    denominator = torch.matmul(q_feat, key_sum.unsqueeze(-1))  # (B, H, N, 1)
    return torch.matmul(q_feat, context) / denominator


class FavorSelfAttention(nn.Module):
    """Multi-head FAVOR+ self-attention with biased q/k/v/out projections.

    Parameters
    ----------
    dim : int
        Model width.
    heads : int
        Heads, H.
    dim_head : int
        Head width, d.
    nb_features : int
        Random features per head.
    dropout : float
        Dropout on the output in training.
    device : torch.device, str or None
        Where the weights are made; "meta": shapes only, nothing drawn (a skeleton to load weights into).
    """

    def __init__(self, dim: int, heads: int, dim_head: int, nb_features: int, dropout: float = 0.0, *,
                 device: torch.device | str | None = None):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.to_q = nn.Linear(dim, inner, device=device)
        self.to_k = nn.Linear(dim, inner, device=device)
        self.to_v = nn.Linear(dim, inner, device=device)
        self.to_out = nn.Linear(inner, dim, device=device)
        self.dropout = nn.Dropout(dropout)
        if is_meta(device):  # a QR on the meta device costs a second of torch imports; loading replaces it
            features = torch.empty((nb_features, dim_head), device=device)
        else:
            features = orthogonal_random_features(nb_features, dim_head, device=device)
        self.register_buffer("projection_matrix", features)
        # Analysis hook, None in normal use: when set, every forward call hands it the query and key
        # features (B, H, N, nb) it computed, so tracing attention shares the model's own forward
        # pass (see sctranslator.analysis.attention.trace). The callback must not modify them.
        self.capture: Callable[[torch.Tensor, torch.Tensor], None] | None = None

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, H * d)`` -> ``(B, H, N, d)``.

        Parameters
        ----------
        x : torch.Tensor
            ``(B, N, H * d)``.

        Returns
        -------
        torch.Tensor
            ``(B, H, N, d)``, a view.
        """
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, self.dim_head).transpose(1, 2)

    def project(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-head queries, keys and values; values zeroed at padded positions.

        Parameters
        ----------
        x : torch.Tensor
            ``(B, N, dim)``.
        mask : torch.Tensor
            bool ``(B, N)`` or ``(N,)``: real positions.

        Returns
        -------
        tuple of torch.Tensor
            q, k, v, each ``(B, H, N, d)``.
        """
        q = self.split_heads(self.to_q(x))
        k = self.split_heads(self.to_k(x))
        v = self.split_heads(self.to_v(x))
        v = v.masked_fill(~mask[:, None, :, None], 0.0)
        return q, k, v

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # The random features stay float32 whatever dtype the model is cast to: a bf16/fp16 copy of
        # R would be a different (rounded) feature map, not the same one computed faster.
        kept = self.projection_matrix
        super()._apply(fn, recurse)
        if self.projection_matrix.dtype != torch.float32 and kept.dtype == torch.float32:
            self.projection_matrix = kept.to(self.projection_matrix.device)
        return self

    def forward(self, x: torch.Tensor, mask: torch.Tensor, key_counts: torch.Tensor | None = None) -> torch.Tensor:
        """Self-attention over the tokens of each cell.

        Parameters
        ----------
        x : torch.Tensor
            ``(B, N, dim)``.
        mask : torch.Tensor
            bool ``(B, N)`` or ``(N,)``: real positions.
        key_counts : torch.Tensor or None
            ``(N,)`` tokens each position stands for (padding collapse); None: one each.

        Returns
        -------
        torch.Tensor
            ``(B, N, dim)``.
        """
        q, k, v = self.project(x, mask)
        # A bf16/fp16 model runs its projections in that dtype, but the feature maps, their maxima
        # and the key and context sums over all (up to 20,000) tokens in float32: exp() of a
        # rounded argument and long low-precision sums are where reduced precision goes wrong.
        q, k, v = q.float(), k.float(), v.float()
        projection = self.projection_matrix
        q_feat, k_feat = query_features(q, projection), key_features(k, projection)
        if self.capture is not None:
            self.capture(q_feat, k_feat)
        out = linear_attention(q_feat, k_feat, v, key_counts)
        batch, _, length, _ = out.shape
        out = out.transpose(1, 2).reshape(batch, length, self.heads * self.dim_head)
        return self.dropout(self.to_out(out.to(x.dtype)))

    @torch.no_grad()
    def redraw_features(self, generator: torch.Generator | None = None) -> None:
        """Draw new random features (training's feature redraw).

        Parameters
        ----------
        generator : torch.Generator or None
            The random source.
        """
        fresh = orthogonal_random_features(self.projection_matrix.shape[0], self.dim_head, generator=generator)
        self.projection_matrix.copy_(fresh)
