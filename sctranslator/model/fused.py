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
- the feed-forward half of the block runs on the same chunk right after its attention output.

Used only in inference mode (`torch.inference_mode()`, as the backends run), in eval mode, on
float32 weights held in plain nn.Linear layers, with no attention capture hook and no module hooks
on the block's parts, never while tracing or compiling; everything else (training, autograd,
exports, reduced precision, attention analysis) runs the eager block. `eager_blocks()` turns it off, for comparisons.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional

from sctranslator.model.favor_attention import FEATURE_EPS

if TYPE_CHECKING:
    from sctranslator.model.performer_blocks import PerformerBlock

# Tokens per chunk: 512 tokens x 8 heads x 266 features x 4 bytes = 4.4 MB of features, which
# stay in cache between the product that makes them, the exponential and the product that uses them.
CHUNK_TOKENS = 512

# Below this many tokens a block's features fit in cache anyway and chunking gains nothing: such
# blocks (small models, the decoder) keep the eager arithmetic and its rounding.
MIN_TOKENS = 2048

_state = threading.local()


@contextlib.contextmanager
def eager_blocks() -> Iterator[None]:
    """Within this context (this thread), Performer blocks run eagerly even in inference mode.

    Yields
    ------
    None
        Inside the context.
    """
    previous = getattr(_state, "disabled", False)
    _state.disabled = True
    try:
        yield
    finally:
        _state.disabled = previous


def applies(block: PerformerBlock, h: torch.Tensor) -> bool:
    """Whether `block` may run chunked on `h` (see the module docstring for the conditions).

    Parameters
    ----------
    block : PerformerBlock
        The block.
    h : torch.Tensor
        ``(B, N, dim)`` hidden states.

    Returns
    -------
    bool
        True when the fused path applies.
    """
    if getattr(_state, "disabled", False) or block.training or not torch.is_inference_mode_enabled():
        return False
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or h.dim() != 3 or h.shape[1] < MIN_TOKENS:
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


def _key_context(attn: nn.Module, a: torch.Tensor, value_weights: torch.Tensor, chunk: int) -> torch.Tensor:
    """C' = sum_m k'_m (outer) [v_m * mask_m, count_m] for one cell: (H, nb, d + 1).

    `a` (N, dim): the normalised tokens; `value_weights` (N, d + 1): the mask repeated d times, then
    the key counts.
    """
    heads, d = attn.heads, attn.dim_head
    projection = attn.projection_matrix
    nb = projection.shape[0]
    scale = d**-0.25
    feature_map = (projection * scale).T.contiguous()  # (d, nb): u = k (c R)^T
    half = 0.5 * scale * scale
    length = a.shape[0]
    context: torch.Tensor | None = None
    weight_sum = torch.zeros(heads, d + 1, dtype=a.dtype, device=a.device)
    running = None
    extended = torch.empty(min(chunk, length), heads, d + 1, dtype=a.dtype, device=a.device)
    for start in range(0, length, chunk):
        stop = min(start + chunk, length)
        rows = a[start:stop]
        k = functional.linear(rows, attn.to_k.weight, attn.to_k.bias).view(-1, heads, d)
        v = functional.linear(rows, attn.to_v.weight, attn.to_v.bias).view(-1, heads, d)
        u = torch.matmul(k, feature_map)  # (t, H, nb)
        peak = u.amax(dim=(0, 2))  # (H,): this chunk's maximum per head
        offset = (k * k).sum(dim=-1, keepdim=True).mul_(half).add_(peak[None, :, None])
        u.sub_(offset).exp_()  # exp(u - |k|^2 c^2 / 2 - chunk max)
        vw = extended[: stop - start]
        vw[..., :d] = v
        vw[..., d] = 1.0
        vw.mul_(value_weights[start:stop, None, :])  # v zeroed at padding; key counts in column d
        weight_sum += vw.sum(dim=0)
        part = torch.bmm(u.permute(1, 2, 0), vw.transpose(0, 1))  # (H, nb, d + 1)
        if context is None:
            context, running = part, peak
        else:
            top = torch.maximum(running, peak)
            context.mul_(torch.exp(running - top)[:, None, None]).add_(part * torch.exp(peak - top)[:, None, None])
            running = top
    assert context is not None and running is not None
    # k' = r (exp(u - s - max) + eps): the eps part of sum k' (outer) [v, count] is eps * sum [v, count].
    return context.add_(weight_sum[:, None, :], alpha=FEATURE_EPS).mul_(nb**-0.5)


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
    projection = attn.projection_matrix
    nb = projection.shape[0]
    scale = d**-0.25
    feature_map = (projection * scale).T.contiguous()
    half = 0.5 * scale * scale
    log_ratio = 0.5 * math.log(nb)  # r * exp(x) = exp(x - ln sqrt(nb))
    floor = FEATURE_EPS * nb**-0.5
    batch, length, _ = h.shape
    a = block.attn_norm(h)
    out = torch.empty_like(h)
    counts = (torch.ones(length, dtype=h.dtype, device=h.device) if key_counts is None
              else key_counts.to(device=h.device, dtype=h.dtype))
    for b in range(batch):
        value_weights = mask[b].to(h.dtype)[:, None].expand(length, d + 1).clone()
        value_weights[:, d] = counts
        context = _key_context(attn, a[b], value_weights, chunk)  # (H, nb, d + 1)
        for start in range(0, length, chunk):
            stop = min(start + chunk, length)
            rows = a[b, start:stop]
            q = functional.linear(rows, attn.to_q.weight, attn.to_q.bias).view(-1, heads, d)
            u = torch.matmul(q, feature_map)  # (t, H, nb)
            offset = (q * q).sum(dim=-1, keepdim=True).mul_(half).add_(u.amax(dim=-1, keepdim=True)).add_(log_ratio)
            u.sub_(offset).exp_().add_(floor)  # q' = r (exp(u - s - max_f u) + eps)
            both = torch.bmm(u.transpose(0, 1), context)  # (H, t, d + 1): q' C and q' . sum k'
            heads_out = both[..., :d] / both[..., d:]
            merged = heads_out.transpose(0, 1).reshape(stop - start, heads * d)
            x = h[b, start:stop] + functional.linear(merged, attn.to_out.weight, attn.to_out.bias)
            ff = block.ff
            hidden = functional.gelu(functional.linear(block.ff_norm(x), ff.w1.weight, ff.w1.bias))
            out[b, start:stop] = torch.addmm(ff.w2.bias, hidden, ff.w2.weight.T).add_(x)
    return out
