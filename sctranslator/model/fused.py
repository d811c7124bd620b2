"""An inference-only Performer block that computes FAVOR+ attention in cache-sized token chunks.

Numerically the block of sctranslator.model.performer_blocks (the same formulas, summed in another order);
it exists for speed. The eager block materialises the (B, H, N, nb) query and key features (about
140 MB each for a 16k-gene cell), walks them several times, and runs its small per-head products
(inner width 64) on head-major copies. Here a chunk of tokens goes through every step while its
features are still in cache:

- one (tokens x heads, d) @ (d, nb) product per chunk gives the features of every head at once
  (the projection matrix is shared by the heads), in the token-major layout the projections give;
- keys: the per-(cell, head) maximum over all tokens is not known until the last chunk, so each
  chunk is exponentiated around its own maximum and the running sum of k' (outer) [v, count] is
  rescaled by exp(old max - new max) when the maximum grows (the online-softmax trick). The
  eps term of k' = r (exp(.) + eps) does not depend on the maximum and is added once at the end;
- [v, count] carries the key count (padding collapse) as a 65th column, so the normaliser
  q' . sum k' comes out of the same product as q' C, and no (N, 1) product runs on its own;
- the feed-forward half of the block runs on the same chunk right after its attention output;
- every product with a weight (projections, feature map, feed-forward, GELU fused in) runs through
  oneDNN with the weight packed once (sctranslator.model.packed_linear): about twice MKL's rate
  on the development machine's AMD EPYC; the feature map is padded to 272 columns (a multiple of
  16: whole vector widths) by repeating column 0, which leaves every maximum unchanged;
- the factor r = nb^-1/2 of q' and k' cancels in the ratio and is left out; the eps part of q'
  (q' = r (exp(.) + eps)) is added to q' C as eps * (column sums of C) instead of to every
  feature; exp() arguments are raised to -87 first (a smaller result is below eps's rounding, and
  denormal results take a 25x slower path);
- the key pass rescales its running sums only when a chunk raises a head's maximum, and adds each
  chunk's product into them in place; the query pass runs head by head, each head's features and
  its product with that head's context (packed per cell) on contiguous rows.

Used only in inference mode (`torch.inference_mode()`, as the backends run), in eval mode, on
float32 weights held in plain nn.Linear layers, with no attention capture hook and no module hooks
on the block's parts, never while tracing or compiling; everything else (training, autograd,
exports, reduced precision, attention analysis) runs the eager block. `eager_blocks()` turns it off, for comparisons.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from sctranslator.model.favor_attention import FEATURE_EPS
from sctranslator.model.packed_linear import PackedLinear, cached_for, pack, packed, tensors_key
from sctranslator.util.thread_switch import ThreadSwitch

if TYPE_CHECKING:
    from sctranslator.model.performer_blocks import PerformerBlock

# Tokens per chunk: 512 tokens x 8 heads x 266 features x 4 bytes = 4.4 MB of features, which
# stay in cache between the product that makes them, the exponential and the product that uses them.
CHUNK_TOKENS = 512

# Below this many tokens a block's features fit in cache anyway and chunking gains nothing: such
# blocks (small models, the decoder) keep the eager arithmetic and its rounding.
MIN_TOKENS = 2048

# Feature columns are padded to a multiple of this (see `prepared`).
_FEATURE_ALIGN = 16

# exp() arguments are raised to at least this: exp(-87) = 1.6e-38 is still a normal float, below it
# the exponential returns denormals or zero on a slow path (25x slower per element on this CPU), and
# a feature that small is lost beside the eps = 1e-4 added to every feature anyway.
EXP_FLOOR = -87.0

_switch = ThreadSwitch()  # off inside `eager_blocks()`, per thread


@contextlib.contextmanager
def eager_blocks() -> Iterator[None]:
    """Within this context (this thread), Performer blocks run eagerly even in inference mode.

    Yields
    ------
    None
        Inside the context.
    """
    with _switch.off():
        yield


def applies(block: PerformerBlock, h: torch.Tensor, min_tokens: int = MIN_TOKENS) -> bool:
    """Whether `block` may run chunked on `h` (see the module docstring for the conditions).

    Parameters
    ----------
    block : PerformerBlock
        The block.
    h : torch.Tensor
        ``(B, N, dim)`` hidden states.
    min_tokens : int
        Fewer tokens than this: False (the decoder, which calls `fused_block` itself, passes 0).

    Returns
    -------
    bool
        True when the fused path applies.
    """
    if _switch.is_off or block.training or not torch.is_inference_mode_enabled():
        return False
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or h.dim() != 3 or h.shape[1] < min_tokens:
        return False
    # Hooks on the block's parts (attention tracing) need the eager calls to see them.
    if any(m._forward_hooks or m._forward_pre_hooks for m in block.modules() if m is not block):
        return False
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return False
    attn = block.attn
    linears = (attn.to_q, attn.to_k, attn.to_v, attn.to_out, block.ff.w1, block.ff.w2)
    return (attn.capture is None and h.dtype == torch.float32 and h.dim() == 3
            and all(type(layer) is nn.Linear and layer.weight.dtype == torch.float32 for layer in linears)
            and type(block.ff.act) is nn.GELU and block.ff.act.approximate == "none")


@dataclass(frozen=True)
class Prepared:
    """A block's constants for the chunked path, built once per weights state (`prepared`).

    Parameters
    ----------
    features : PackedLinear
        ``k -> c k R^T`` with nb_pad output columns; those past nb repeat column 0 (every maximum
        is unchanged; their rows of the context are zeroed).
    to_q, to_k, to_out, w1, w2 : PackedLinear
        The block's linear layers.
    values : PackedLinear
        ``[v, 1]`` per head: each head's value rows then a zero row, bias 1 there (the count column).
    """

    features: PackedLinear
    to_q: PackedLinear
    to_k: PackedLinear
    values: PackedLinear
    to_out: PackedLinear
    w1: PackedLinear
    w2: PackedLinear


def _weights_key(block: PerformerBlock) -> tuple:
    attn = block.attn
    tensors = [attn.projection_matrix]
    for layer in (attn.to_q, attn.to_k, attn.to_v, attn.to_out, block.ff.w1, block.ff.w2):
        tensors += [layer.weight, layer.bias]
    return tensors_key(*tensors)


def prepared(block: PerformerBlock) -> Prepared:
    """The block's constants for the chunked path, kept until its weights change.

    Parameters
    ----------
    block : PerformerBlock
        The block.

    Returns
    -------
    Prepared
        The padded feature map and the block's layers, packed (`sctranslator.model.packed_linear`).
    """
    return cached_for(block, _weights_key(block), lambda: _prepare(block))


def _prepare(block: PerformerBlock) -> Prepared:
    attn = block.attn
    heads, d = attn.heads, attn.dim_head
    projection = attn.projection_matrix.detach()
    nb = projection.shape[0]
    # Feature products of width nb_pad (a multiple of 16) keep whole vector widths (266 columns ran
    # ~15% slower than 272 here); the repeated column leaves every maximum as it was.
    padded = -(-nb // _FEATURE_ALIGN) * _FEATURE_ALIGN
    columns = torch.cat([projection, projection[:1].expand(padded - nb, -1)]) if padded > nb else projection
    dim = attn.to_v.weight.shape[1]
    weight = attn.to_v.weight.detach().view(heads, d, dim)
    value_weight = torch.cat([weight, weight.new_zeros(heads, 1, dim)], dim=1).reshape(heads * (d + 1), dim)
    bias = attn.to_v.bias.detach().view(heads, d)
    value_bias = torch.cat([bias, bias.new_ones(heads, 1)], dim=1).reshape(-1)
    ff = block.ff
    return Prepared(features=pack((columns * d**-0.25).contiguous()), to_q=packed(attn.to_q), to_k=packed(attn.to_k),
                    values=pack(value_weight, value_bias), to_out=packed(attn.to_out), w1=packed(ff.w1),
                    w2=packed(ff.w2))


def _key_context(block: PerformerBlock, constants: Prepared, a: torch.Tensor, value_weights: torch.Tensor,
                 chunk: int) -> torch.Tensor:
    """C = sum_m exp(u_m - |k_m|^2 c^2 / 2 - max) (outer) [v_m * mask_m, count_m] + eps sum_m [v_m, count_m].

    For one cell: ``(H, nb_pad, d + 1)``, zero past row nb, k' up to the factor r = nb^-1/2, which
    cancels in the attention's ratio. `a` (N, dim): the normalised tokens; `value_weights`
    (N, d + 1): the mask repeated d times, then the key counts.
    """
    attn = block.attn
    heads, d = attn.heads, attn.dim_head
    nb = attn.projection_matrix.shape[0]
    padded = constants.features.plain.shape[0]
    half = 0.5 * d**-0.5
    length = a.shape[0]
    context = torch.zeros(heads, padded, d + 1, dtype=a.dtype, device=a.device)
    weight_sum = torch.zeros(heads, d + 1, dtype=a.dtype, device=a.device)
    running: torch.Tensor | None = None
    for start in range(0, length, chunk):
        stop = min(start + chunk, length)
        rows = a[start:stop]
        k = constants.to_k(rows)
        vw = constants.values(rows).view(-1, heads, d + 1)  # [v, 1] per head from one product
        vw.mul_(value_weights[start:stop, None, :])  # v zeroed at padding; key counts in column d
        weight_sum += vw.sum(dim=0)
        u = constants.features(k.view(-1, d)).view(-1, heads, padded)  # (t, H, nb_pad)
        peak = u.amax(dim=(0, 2))  # (H,): this chunk's maximum per head
        if running is None:
            top = peak
        else:
            top = torch.maximum(running, peak)
            if bool((top > running).any()):  # the maximum grew: rescale the sums so far (online softmax)
                context.mul_(torch.exp(running - top)[:, None, None])
        running = top
        offset = k.view(-1, heads, d).pow(2).sum(dim=-1, keepdim=True).mul_(half).add_(top[None, :, None])
        u.sub_(offset).clamp_min_(EXP_FLOOR).exp_()  # exp(u - |k|^2 c^2 / 2 - max so far)
        context.baddbmm_(u.permute(1, 2, 0), vw.transpose(0, 1))  # (H, nb_pad, d + 1)
    # k' = r (exp(u - s - max) + eps): the eps part of sum k' (outer) [v, count] is eps * sum [v, count].
    context[:, nb:] = 0.0  # the repeated columns' rows: their query features meet zeros
    context[:, :nb].add_(weight_sum[:, None, :], alpha=FEATURE_EPS)
    return context


def fused_block(block: PerformerBlock, h: torch.Tensor, mask: torch.Tensor,
                key_counts: torch.Tensor | None = None, *, chunk: int = CHUNK_TOKENS) -> torch.Tensor:
    """``h + Attn(LN1(h))``, then ``+ FF(LN2(.))``, as PerformerBlock.forward, computed chunk by chunk.

    Parameters
    ----------
    block : PerformerBlock
        The block.
    h : torch.Tensor
        float32 ``(B, N, dim)``.
    mask : torch.Tensor
        bool ``(B, N)``.
    key_counts : torch.Tensor or None
        ``(N,)`` tokens each position stands for.
    chunk : int
        Tokens per chunk.

    Returns
    -------
    torch.Tensor
        ``(B, N, dim)``, a new tensor.
    """
    attn = block.attn
    heads, d = attn.heads, attn.dim_head
    constants = prepared(block)
    half = 0.5 * d**-0.5
    batch, length, _ = h.shape
    a = block.attn_norm(h)
    out = torch.empty_like(h)
    counts = (torch.ones(length, dtype=h.dtype, device=h.device) if key_counts is None
              else key_counts.to(device=h.device, dtype=h.dtype))
    for b in range(batch):
        value_weights = mask[b].to(h.dtype)[:, None].expand(length, d + 1).clone()
        value_weights[:, d] = counts
        context = _key_context(block, constants, a[b], value_weights, chunk)  # (H, nb_pad, d + 1)
        # q' = r (exp(u - s - max_f u) + eps); r cancels in the ratio, and the eps part of q' C is
        # eps * (column sums of C): the bias of each head's product instead of added to every feature.
        floor = context.sum(dim=1).mul_(FEATURE_EPS)  # (H, d + 1)
        # Each head's q' C and q' . sum k' as one packed linear layer (weight C^T) over that head's
        # own contiguous features: ~1.3x faster per chunk here than one batched MKL product over all heads.
        per_head = [pack(context[i].T, floor[i]) for i in range(heads)]
        for start in range(0, length, chunk):
            stop = min(start + chunk, length)
            t = stop - start
            q = constants.to_q(a[b, start:stop]).view(t, heads, d)
            half_norms = q.pow(2).sum(dim=-1, keepdim=True).mul_(half)  # (t, H, 1)
            merged = torch.empty(t, heads, d, dtype=h.dtype, device=h.device)
            for i, layer in enumerate(per_head):
                u = constants.features(q[:, i])  # (t, nb_pad)
                u.sub_(half_norms[:, i].add(u.amax(dim=-1, keepdim=True))).clamp_min_(EXP_FLOOR).exp_()
                both = layer(u)  # (t, d + 1): q' C and q' . sum k'
                torch.div(both[:, :d], both[:, d:], out=merged[:, i])
            x = constants.to_out(merged.view(t, heads * d)).add_(h[b, start:stop])
            out[b, start:stop] = constants.w2(constants.w1(block.ff_norm(x), gelu=True)).add_(x)
    return out
