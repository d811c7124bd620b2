"""Pre-LayerNorm Performer blocks and the stacks (encoder, decoder) built from them."""

from __future__ import annotations

import torch
from torch import nn

from sctranslator.model import fused
from sctranslator.model.favor_attention import FavorSelfAttention, is_meta


class FeedForward(nn.Module):
    """The feed-forward layer: dim -> mult * dim -> dim with exact (erf) GELU.

    Parameters
    ----------
    dim : int
        Model width.
    mult : int
        Hidden width as a multiple of `dim`.
    dropout : float
        Dropout in training.
    device : torch.device, str or None
        Where the weights are made ("meta": shapes only).
    """

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0, *, device: torch.device | str | None = None):
        super().__init__()
        self.w1 = nn.Linear(dim, dim * mult, device=device)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.w2 = nn.Linear(dim * mult, dim, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer to every token.

        Parameters
        ----------
        x : torch.Tensor
            ``(B, N, dim)``.

        Returns
        -------
        torch.Tensor
            ``(B, N, dim)``.
        """
        return self.w2(self.dropout(self.act(self.w1(x))))


class PerformerBlock(nn.Module):
    """One Performer block: ``h = h + Attn(LN(h), mask)``, then ``h = h + FF(LN(h))``.

    Parameters
    ----------
    dim : int
        Model width.
    heads : int
        Attention heads.
    dim_head : int
        Head width.
    nb_features : int
        Random features per head.
    ff_mult : int
        Feed-forward width as a multiple of `dim`.
    device : torch.device, str or None
        Where the weights are made ("meta": shapes only).
    """

    def __init__(self, dim: int, heads: int, dim_head: int, nb_features: int, ff_mult: int = 4, *,
                 device: torch.device | str | None = None):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim, device=device)
        self.attn = FavorSelfAttention(dim, heads, dim_head, nb_features, device=device)
        self.ff_norm = nn.LayerNorm(dim, device=device)
        self.ff = FeedForward(dim, ff_mult, device=device)

    def forward(self, h: torch.Tensor, mask: torch.Tensor, key_counts: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the block.

        Parameters
        ----------
        h : torch.Tensor
            ``(B, N, dim)`` hidden states.
        mask : torch.Tensor
            bool ``(B, N)`` or ``(N,)``: real tokens.
        key_counts : torch.Tensor or None
            ``(N,)`` tokens each position stands for (padding collapse).

        Returns
        -------
        torch.Tensor
            ``(B, N, dim)``.
        """
        if fused.applies(self, h):  # inference: the same block computed chunk by chunk (model.fused)
            return fused.fused_block(self, h, mask, key_counts)
        h = h + self.attn(self.attn_norm(h), mask, key_counts)
        return h + self.ff(self.ff_norm(h))


class PerformerStack(nn.Module):
    """Token embedding + Performer blocks, shared by the encoder (genes) and decoder (proteins).

    ``to_vector`` lifts a scalar value to `dim` (used by the encoder), ``pos_emb`` embeds token ids,
    ``to_out`` maps each token back to a scalar (used by the decoder). Each side carries the other's
    unused layer too, as the published checkpoints do, so conversions keep every tensor.

    Parameters
    ----------
    dim : int
        Model width.
    depth : int
        Blocks.
    heads : int
        Attention heads.
    dim_head : int
        Head width.
    nb_features : int
        Random features per head.
    vocab_size : int
        Rows of the token embedding.
    ff_mult : int
        Feed-forward width as a multiple of `dim`.
    device : torch.device, str or None
        Where the weights are made ("meta": shapes only).
    """

    def __init__(self, *, dim: int, depth: int, heads: int, dim_head: int, nb_features: int,
                 vocab_size: int, ff_mult: int = 4, device: torch.device | str | None = None):
        super().__init__()
        self.to_vector = nn.Linear(1, dim, device=device)
        if is_meta(device):
            # nn.Embedding zeroes its padding row, which on the meta device costs seconds of torch imports
            self.pos_emb = nn.Embedding(vocab_size, dim, padding_idx=0, _weight=torch.empty((vocab_size, dim),
                                                                                           device=device))
        else:
            self.pos_emb = nn.Embedding(vocab_size, dim, padding_idx=0, device=device)
        self.layers = nn.ModuleList(
            PerformerBlock(dim, heads, dim_head, nb_features, ff_mult, device=device) for _ in range(depth)
        )
        self.to_out = nn.Linear(dim, 1, device=device)
        self.forward_calls = 0

    def attention_layers(self) -> list[FavorSelfAttention]:
        """The attention layer of every block, in order.

        Returns
        -------
        list of FavorSelfAttention
            One per block.
        """
        return [block.attn for block in self.layers]

    def run_blocks(self, h: torch.Tensor, mask: torch.Tensor, redraw_interval: int | None,
                   key_counts: torch.Tensor | None = None) -> torch.Tensor:
        """Run every block, redrawing the random features every `redraw_interval` training calls.

        Parameters
        ----------
        h : torch.Tensor
            ``(B, N, dim)``.
        mask : torch.Tensor
            bool ``(B, N)`` or ``(N,)``.
        redraw_interval : int or None
            Training forward calls between redraws; None: never.
        key_counts : torch.Tensor or None
            ``(N,)`` tokens each position stands for.

        Returns
        -------
        torch.Tensor
            ``(B, N, dim)``.
        """
        if self.training and redraw_interval is not None:
            # The reference counts forward calls in training mode and redraws all random
            # features of the stack once the count reaches the interval.
            if self.forward_calls >= redraw_interval:
                for attn in self.attention_layers():
                    attn.redraw_features()
                self.forward_calls = 0
            else:
                self.forward_calls += 1
        for block in self.layers:
            h = block(h, mask, key_counts)
        return h
