"""The decoder's outputs at chosen protein positions only, exactly as the whole decoder gives them there.

A protein window holds P = 1,000 decoder tokens however few proteins were asked for; the other
positions are padding whose predictions nobody reads. Every token of every decoder layer but the
last is still needed (the last layer's keys read all of them), but the last layer's output at a
position depends only on that position's query and residual and on sums over all tokens' keys
(the key-feature sum and maximum) and the real tokens' values (padding's values are zeroed). So
the last layer computes keys for every token, values for the real ones, and queries, the output
projection, the feed-forward and `to_out` for the chosen positions only: for 10 proteins that is
about 40% of the decoder's arithmetic fewer, with the same formulas (sums over zero rows dropped).

In inference mode on CPU with oneDNN (sctranslator.model.packed_linear) the layers before the last
run as model.fused's chunked block (one chunk of all P tokens) and the last layer with the same
packed products, per cell; otherwise the eager blocks and products.
"""

from __future__ import annotations

import torch
from torch import nn

from sctranslator.model import fused
from sctranslator.model.favor_attention import FEATURE_EPS, key_features, query_features
from sctranslator.model.network import TranslatorModel
from sctranslator.model.packed_linear import enabled
from sctranslator.model.performer_blocks import PerformerBlock

PACKED_MAX_CELLS = 4  # cells per call up to which the decoder runs cell by cell on packed products


def selected_outputs_apply(model: TranslatorModel) -> bool:
    """True when `decode_selected` gives what `model.decode` gives: eval mode, float32, no analysis hooks.

    Parameters
    ----------
    model : TranslatorModel
        The model whose decoder would run.

    Returns
    -------
    bool
        True in eval mode, float32, without analysis hooks.
    """
    if model.training or model.dec.to_out.weight.dtype != torch.float32:
        return False
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return False
    return all(block.attn.capture is None and not any(m._forward_hooks or m._forward_pre_hooks
                                                       for m in block.modules())
               for block in model.dec.layers)


def decode_selected(model: TranslatorModel, translated: torch.Tensor, protein_ids: torch.Tensor,
                    protein_mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """`model.decode(translated, protein_ids, protein_mask)[:, keep]`, computing the last layer at `keep` only.

    Parameters
    ----------
    model : TranslatorModel
        The model (see `selected_outputs_apply` for when this holds).
    translated : torch.Tensor
        ``(B, P, dim)`` float32, the translator's output.
    protein_ids : torch.Tensor
        ``(B, P)`` int64 protein token ids.
    protein_mask : torch.Tensor
        ``(P,)`` bool, the real protein positions, the same for every cell.
    keep : torch.Tensor
        ``(K,)`` int64, the positions whose outputs are wanted.

    Returns
    -------
    torch.Tensor
        (B, K) float32: the decoder's outputs at `keep`.
    """
    batch = translated.shape[0]
    mask = protein_mask.expand(batch, -1)
    h = translated + model.dec.pos_emb(protein_ids)
    *earlier, last = model.dec.layers
    # The packed path works cell by cell: it pays for a few large cells (the default CPU path gives
    # each stream one cell), not for hundreds of small ones, where the per-cell loop costs more than
    # oneDNN saves (a tiny model at batch 512 ran 4x slower).
    packed_path = (batch <= PACKED_MAX_CELLS and enabled(h.device)
                   and all(fused.applies(block, h, min_tokens=0) for block in model.dec.layers))
    for block in earlier:
        # One chunk of all P tokens: the chunked block's arithmetic with oneDNN's products (model.fused).
        h = fused.fused_block(block, h, mask, chunk=h.shape[1]) if packed_path else block(h, mask)
    real = torch.nonzero(protein_mask).reshape(-1)
    if packed_path:
        return torch.stack([_last_layer_packed(model, last, h[b], real, keep) for b in range(batch)])
    attn = last.attn
    a = last.attn_norm(h)
    projection = attn.projection_matrix
    k_feat = key_features(attn.split_heads(attn.to_k(a)).float(), projection)  # (B, H, P, nb): every token
    key_sum = k_feat.sum(dim=-2)  # (B, H, nb)
    v = attn.split_heads(attn.to_v(a.index_select(1, real))).float()  # padding's values are zero: real rows only
    context = torch.matmul(k_feat.index_select(2, real).transpose(-1, -2), v)  # (B, H, nb, d)
    q_feat = query_features(attn.split_heads(attn.to_q(a.index_select(1, keep))).float(), projection)
    out = torch.matmul(q_feat, context) / torch.matmul(q_feat, key_sum.unsqueeze(-1))  # (B, H, K, d)
    out = out.transpose(1, 2).reshape(batch, keep.numel(), attn.heads * attn.dim_head)
    x = h.index_select(1, keep) + attn.to_out(out.to(h.dtype))
    x = x + last.ff(last.ff_norm(x))
    return model.dec.to_out(x).squeeze(-1)


def _last_layer_packed(model: TranslatorModel, block: PerformerBlock, h: torch.Tensor, real: torch.Tensor,
                       keep: torch.Tensor) -> torch.Tensor:
    """One cell's last decoder layer and output at `keep`, with packed products (as model.fused computes them).

    `h` (P, dim). The key features of every token (their sum and maximum), the values of the real
    tokens (padding's are zero), queries, output projection and feed-forward at `keep` only. The
    factor r = nb^-1/2 of both feature maps cancels in the attention's ratio and is left out.
    """
    attn = block.attn
    heads, d = attn.heads, attn.dim_head
    nb = attn.projection_matrix.shape[0]
    constants = fused.prepared(block)
    padded = constants.features.plain.shape[0]
    half = 0.5 * d**-0.5
    tokens = h.shape[0]
    a = block.attn_norm(h)
    k = constants.to_k(a)
    u = constants.features(k.view(-1, d)).view(tokens, heads, padded)
    offset = k.view(tokens, heads, d).pow(2).sum(dim=-1, keepdim=True).mul_(half)
    u.sub_(offset.add_(u.amax(dim=(0, 2))[None, :, None])).clamp_min_(fused.EXP_FLOOR).exp_()
    values = constants.values(a.index_select(0, real)).view(-1, heads, d + 1)[..., :d]  # (R, H, d)
    context = torch.empty(heads, padded, d + 1, dtype=h.dtype, device=h.device)
    torch.bmm(u.index_select(0, real).permute(1, 2, 0), values.transpose(0, 1), out=context[..., :d])
    context[..., d] = u.sum(dim=0)  # the key sum runs over every token, padding included
    # k' = r (exp(.) + eps): the eps parts, eps * sum of the real values and eps * P.
    context[..., :d].add_(values.sum(dim=0)[:, None, :], alpha=FEATURE_EPS)
    context[..., d].add_(FEATURE_EPS * tokens)
    context[:, nb:] = 0.0  # the repeated feature columns (model.fused.prepared)
    floor = context.sum(dim=1, keepdim=True).mul_(FEATURE_EPS)  # the eps part of q' (H, 1, d + 1)
    q = constants.to_q(a.index_select(0, keep))
    chosen = keep.numel()
    uq = constants.features(q.view(-1, d)).view(chosen, heads, padded)
    offset = q.view(chosen, heads, d).pow(2).sum(dim=-1, keepdim=True).mul_(half)
    uq.sub_(offset.add_(uq.amax(dim=-1, keepdim=True))).clamp_min_(fused.EXP_FLOOR).exp_()
    both = torch.baddbmm(floor, uq.transpose(0, 1), context)  # (H, K, d + 1)
    merged = (both[..., :d] / both[..., d:]).transpose(0, 1).reshape(chosen, heads * d)
    x = constants.to_out(merged).add_(h.index_select(0, keep))
    x = constants.w2(constants.w1(block.ff_norm(x), gelu=True)).add_(x)
    return model.dec.to_out(x).squeeze(-1)
