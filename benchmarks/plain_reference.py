"""The reference model's formulas written out plainly, as the original code computes them.

A stand-in for the original implementation in benchmarks (its code is not ours to ship): every step
of docs/reference-model.md as its own tensor operation, nothing in place, nothing fused or
collapsed, the projection matrix broadcast to every (cell, head), the normaliser inverted and
multiplied in, the whole model run once per protein window at batch 1. It reads the weights of a
TranslatorModel, and bench_fullsize.py checks that it gives that model's numbers.
"""

from __future__ import annotations

import torch
from torch.nn import functional

from sctranslator.model.network import TranslatorModel
from sctranslator.model.performer_blocks import PerformerStack

EPS = 1e-4


def _features(x: torch.Tensor, projection: torch.Tensor, is_query: bool) -> torch.Tensor:
    batch, heads = x.shape[:2]
    scale = x.shape[-1] ** -0.25
    ratio = projection.shape[0] ** -0.5
    per_head = projection.expand(batch, heads, *projection.shape)
    dash = torch.einsum("bhnd,bhfd->bhnf", scale * x, per_head)
    diagonal = ((x**2).sum(dim=-1) / 2.0 * scale**2).unsqueeze(-1)
    maximum = dash.amax(dim=-1, keepdim=True) if is_query else dash.amax(dim=(-1, -2), keepdim=True)
    return ratio * (torch.exp(dash - diagonal - maximum) + EPS)


def _attention(block: torch.nn.Module, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    attn = block.attn
    batch, length, _ = h.shape

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(batch, length, attn.heads, attn.dim_head).permute(0, 2, 1, 3)

    a = block.attn_norm(h)
    q, k, v = heads(attn.to_q(a)), heads(attn.to_k(a)), heads(attn.to_v(a))
    v = v.masked_fill(~mask[:, None, :, None], 0.0)
    q, k = _features(q, attn.projection_matrix, True), _features(k, attn.projection_matrix, False)
    k_sum = k.sum(dim=-2)
    inverse = 1.0 / torch.einsum("bhnf,bhf->bhn", q, k_sum)
    context = torch.einsum("bhnf,bhnd->bhfd", k, v)
    out = torch.einsum("bhfd,bhnf,bhn->bhnd", context, q, inverse)
    return attn.to_out(out.permute(0, 2, 1, 3).reshape(batch, length, -1))


def _stack(stack: PerformerStack, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    for block in stack.layers:
        h = _attention(block, h, mask) + h
        normed = block.ff_norm(h)
        h = block.ff.w2(functional.gelu(block.ff.w1(normed))) + h
    return h


@torch.inference_mode()
def plain_forward(model: TranslatorModel, values: torch.Tensor, gene_ids: torch.Tensor, protein_ids: torch.Tensor,
                  gene_mask: torch.Tensor, protein_mask: torch.Tensor) -> torch.Tensor:
    """Predictions (B, P) for full-width inputs (B, L) and one protein window (B, P)."""
    h = model.enc.to_vector(values.unsqueeze(-1)) + model.enc.pos_emb(gene_ids)
    encodings = _stack(model.enc, h, gene_mask)
    x = encodings.transpose(1, 2)
    translator = model.translator
    for i in range(translator.depth):
        x = translator.layer(i)(x)
        if i < translator.depth - 1:
            x = functional.relu(x)
    h = x.transpose(1, 2) + model.dec.pos_emb(protein_ids)
    return model.dec.to_out(_stack(model.dec, h, protein_mask)).squeeze(-1)
