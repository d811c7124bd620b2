"""Pre-LayerNorm Performer blocks and the stacks (encoder, decoder) built from them."""

from __future__ import annotations

import torch
from torch import nn

from sctranslator.model import fused
from sctranslator.model.attention import FavorSelfAttention


class FeedForward(nn.Module):
    """dim -> mult*dim -> dim with exact (erf) GELU."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.w1 = nn.Linear(dim, dim * mult)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.w2 = nn.Linear(dim * mult, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.dropout(self.act(self.w1(x))))


class PerformerBlock(nn.Module):
    """h = h + Attn(LN(h), mask); h = h + FF(LN(h))."""

    def __init__(self, dim: int, heads: int, dim_head: int, nb_features: int, ff_mult: int = 4):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = FavorSelfAttention(dim, heads, dim_head, nb_features)
        self.ff_norm = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, ff_mult)

    def forward(self, h: torch.Tensor, mask: torch.Tensor, key_counts: torch.Tensor | None = None) -> torch.Tensor:
        if fused.applies(self, h):  # inference: the same block computed chunk by chunk (model.fused)
            return fused.fused_block(self, h, mask, key_counts)
        h = h + self.attn(self.attn_norm(h), mask, key_counts)
        return h + self.ff(self.ff_norm(h))


class PerformerStack(nn.Module):
    """Token embedding + Performer blocks, shared by the encoder (genes) and decoder (proteins).

    `to_vector` lifts a scalar value to `dim` (used by the encoder), `pos_emb` embeds token ids,
    `to_out` maps each token back to a scalar (used by the decoder). Each side carries the
    other's unused layer too, as the published checkpoints do, so conversions keep every tensor.
    """

    def __init__(self, *, dim: int, depth: int, heads: int, dim_head: int, nb_features: int,
                 vocab_size: int, ff_mult: int = 4):
        super().__init__()
        self.to_vector = nn.Linear(1, dim)
        self.pos_emb = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.layers = nn.ModuleList(
            PerformerBlock(dim, heads, dim_head, nb_features, ff_mult) for _ in range(depth)
        )
        self.to_out = nn.Linear(dim, 1)
        self.forward_calls = 0

    def attention_layers(self) -> list[FavorSelfAttention]:
        return [block.attn for block in self.layers]

    def run_blocks(self, h: torch.Tensor, mask: torch.Tensor, redraw_interval: int | None,
                   key_counts: torch.Tensor | None = None) -> torch.Tensor:
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
