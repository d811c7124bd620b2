"""Reduced compute precision (bf16 / fp16) for the torch backend, computed around a reference cell.

fp32 is exact (the published pipeline's dtype); bf16 and fp16 are opt-in. Rounding a layer's input
to bf16 (8 significant bits) is harmless for the weights but not for the activations: a cell's
encodings are mostly its genes' embeddings, the same in every cell, and what tells one cell from
the next is a small part of them, below bf16's resolution. Rounded directly, per-protein
predictions lose most of their correlation with fp32 across cells (measured: r down to 0.79 on real
cells with bf16).

So the dense layers that carry the arithmetic, the encoder's q/k/v/out projections and
feed-forward layers and the translator's first layer, compute around a reference cell: once per
gene layout the reference (every gene at the smallest scaled value, 1e-8, as an all-zero cell is
scaled) runs in fp32 and each layer keeps its input x_ref and output y_ref; then each cell's layer
output is y_ref + W_low (x - x_ref), the reduced-precision product taken only over the difference.
Its rounding error scales with the difference, not with the embedding. The residual stream,
LayerNorm, the attention's random features, maxima and sums over all tokens, the translator's
second layer and the decoder (about 5% of the work, and its input depends on the protein window)
stay fp32. Inputs and predictions are fp32 either way.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional

from sctranslator.errors import BackendError

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# The reference-cell layer values in use by this thread (a backend serves several threads, each
# possibly on its own gene layout): DeltaLinear -> (x_ref, y_ref), and whether to record them.
_active = threading.local()


def compute_dtype(precision: str, device: torch.device | str = "cpu") -> torch.dtype:
    """The torch dtype for a precision name on a device.

    On CPU bf16 needs AVX512-BF16 / AMX and fp16 AVX512-FP16 / AMX (as oneDNN reports them); on CUDA
    bf16 needs compute capability 8.0 or newer.

    Parameters
    ----------
    precision : {'fp32', 'bf16', 'fp16'}
        The precision.
    device : torch.device or str
        Where it runs.

    Returns
    -------
    torch.dtype
        The dtype.

    Raises
    ------
    BackendError
        An unknown name, or a reduced precision the device cannot run natively.
    """
    try:
        dtype = DTYPES[precision]
    except KeyError:
        raise BackendError(f"unknown precision {precision!r}; choose one of {tuple(DTYPES)}") from None
    device = torch.device(device)
    if dtype == torch.float32:
        return dtype
    if device.type == "cpu":
        supported = (torch.ops.mkldnn._is_mkldnn_bf16_supported() if dtype == torch.bfloat16
                     else torch.ops.mkldnn._is_mkldnn_fp16_supported())
        if not supported:
            raise BackendError(f"this processor has no native {precision} arithmetic (oneDNN reports none), so "
                               f"{precision} would be slower than fp32 here; use --precision fp32, or a CUDA device")
    elif device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise BackendError(f"{torch.cuda.get_device_name(device)} has no bf16 support; use --precision fp16 or fp32")
    return dtype


class DeltaLinear(nn.Module):
    """A dense layer computed in reduced precision around a reference input: ``y_ref + W_low (x - x_ref)``.

    Outside `reference_values` (no reference active) it is the plain fp32 layer.

    Parameters
    ----------
    weight : torch.Tensor
        The fp32 weight ``(out, in)``.
    bias : torch.Tensor or None
        The fp32 bias.
    dtype : torch.dtype
        bf16 or fp16.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__()
        self.weight = nn.Parameter(weight.detach(), requires_grad=False)  # fp32: reference runs and fallback
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.register_buffer("low_weight", weight.detach().to(dtype), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer.

        Parameters
        ----------
        x : torch.Tensor
            ``(..., in)`` fp32.

        Returns
        -------
        torch.Tensor
            ``(..., out)`` fp32.
        """
        references = getattr(_active, "references", None)
        if references is None or getattr(_active, "recording", False):
            y = functional.linear(x, self.weight, self.bias)
            if references is not None:
                references[self] = (x, y)
            return y
        x_ref, y_ref = references[self]
        return y_ref + functional.linear((x - x_ref).to(self.low_weight.dtype), self.low_weight).to(x.dtype)


@contextlib.contextmanager
def reference_values(references: dict[DeltaLinear, tuple[torch.Tensor, torch.Tensor]],
                     recording: bool = False) -> Iterator[None]:
    """Within the block, this thread's DeltaLinear layers use (or, `recording`, fill) `references`.

    Parameters
    ----------
    references : dict
        DeltaLinear -> (x_ref, y_ref).
    recording : bool
        Fill `references` from the reference cell's pass instead of using them.

    Yields
    ------
    None
        Inside the block.
    """
    previous = getattr(_active, "references", None), getattr(_active, "recording", False)
    _active.references, _active.recording = references, recording
    try:
        yield
    finally:
        _active.references, _active.recording = previous


def reduced_precision_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of a TranslatorModel whose encoder dense layers are DeltaLinear in `dtype`.

    The translator's first layer is built per gene layout (see `sctranslator.model.collapse`); the
    caller's model is untouched. For fp32, a plain copy.

    Parameters
    ----------
    model : torch.nn.Module
        A TranslatorModel.
    dtype : torch.dtype
        fp32, bf16 or fp16.

    Returns
    -------
    torch.nn.Module
        The copy.
    """
    converted = copy.deepcopy(model)
    if dtype == torch.float32:
        return converted
    for block in converted.enc.layers:
        for owner in (block.attn, block.ff):
            for name, child in list(owner.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(owner, name, DeltaLinear(child.weight, child.bias, dtype))
    return converted
