"""Run the encoder or decoder block by block and hand each layer's FAVOR+ features to a callback.

The blocks are evaluated exactly as `PerformerBlock.forward` does (eval mode: dropout is the
identity), but the attention's query/key features are computed once and shared between the
forward pass and the analysis, so tracing costs about one forward pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sctranslator.model.attention import key_features, linear_attention, query_features
from sctranslator.model.blocks import PerformerBlock, PerformerStack

# (layer index, q' (B, H, N, nb), k' (B, H, N, nb)) -> None
LayerCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


def _features(block: PerformerBlock, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    attn = block.attn
    q, k, v = attn.project(block.attn_norm(h), mask)
    projection = attn.projection_matrix
    return query_features(q, projection), key_features(k, projection), v


def trace_stack(stack: PerformerStack, h: torch.Tensor, mask: torch.Tensor, on_layer: LayerCallback, *,
                as_published: bool = False) -> torch.Tensor:
    """Run `stack`'s blocks on the embedded tokens `h` (B, N, dim); returns the stack's output.

    `as_published` reproduces a quirk of the original attention script: it records each layer's
    attention from a second call made on the hidden state *after* that layer's attention residual,
    LN(h + Attn(LN(h))), rather than from the attention's actual input LN(h).
    """
    mask = mask.to(dtype=torch.bool, device=h.device)
    for index, block in enumerate(stack.layers):
        attn = block.attn
        q_feat, k_feat, v = _features(block, h, mask)
        out = linear_attention(q_feat, k_feat, v)
        batch, _, length, _ = out.shape
        h = h + attn.to_out(out.transpose(1, 2).reshape(batch, length, attn.heads * attn.dim_head))
        if as_published:
            q_feat, k_feat, _ = _features(block, h, mask)
        on_layer(index, q_feat, k_feat)
        del q_feat, k_feat, v, out  # the callback keeps what it needs; free the (B, H, N, nb) tensors now
        h = h + block.ff(block.ff_norm(h))
    return h


def embed_genes(stack: PerformerStack, values: torch.Tensor, gene_ids: torch.Tensor) -> torch.Tensor:
    """The encoder's input tokens, as `TranslatorModel.encode` builds them."""
    h = stack.to_vector(values.to(stack.to_vector.weight.dtype).unsqueeze(-1))
    return h + stack.pos_emb(gene_ids)
