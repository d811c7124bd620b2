"""Inference-time linear layers through oneDNN's matrix multiply, with the weights packed once.

PyTorch's float32 matrix multiplies on CPU go to MKL, which on processors other than Intel's runs
its AVX2 kernels; oneDNN, bundled with PyTorch, chooses its kernels by instruction set. On the
development machine (AMD EPYC, AVX-512, one thread) oneDNN ran the model's linear shapes at
180-205 GFLOP/s against MKL's 80-90 (`benchmarks/bench_stages.py` prints both). The formulas are
the same; only the order of the sums, so the rounding, differs (well within 1e-5).

A weight is packed into oneDNN's layout once and kept with its layer until the weight changes (its
version counter or storage). Used only where the callers already run inference-only code (the
chunked encoder block, the selected-outputs decoder, the collapsed translator), on float32 CPU
tensors, when PyTorch was built with oneDNN and `torch.backends.mkldnn` is enabled; `plain_matmuls()`
turns it off (for comparisons), and every caller falls back to `torch.nn.functional.linear`.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn
from torch.nn import functional

from sctranslator.util.thread_switch import ThreadSwitch

T = TypeVar("T")

_switch = ThreadSwitch()  # off inside `plain_matmuls()`, per thread
# Packed weights per layer, kept off the modules themselves (a module holding an mkldnn tensor could no
# longer be deep-copied or pickled, as reduced-precision copies and Dask workers do).
_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _operator() -> object | None:
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return None


_LINEAR = _operator()


@contextlib.contextmanager
def plain_matmuls() -> Iterator[None]:
    """Within this context (this thread), linear layers run through `torch.nn.functional.linear`.

    Yields
    ------
    None
        Inside the context.
    """
    with _switch.off():
        yield


def enabled(device: torch.device) -> bool:
    """Whether packed oneDNN linear layers run on `device` now (this thread).

    Parameters
    ----------
    device : torch.device
        Where the tensors live.

    Returns
    -------
    bool
        True on CPU with oneDNN available and enabled, outside `plain_matmuls()`.
    """
    return (device.type == "cpu" and _LINEAR is not None and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled and not _switch.is_off)


@dataclass(frozen=True)
class PackedLinear:
    """``x @ weight.T + bias`` (optionally followed by exact GELU) with the weight in oneDNN's layout.

    Parameters
    ----------
    key : tuple
        The source weight's identity, version and storage when packed.
    weight : torch.Tensor
        The packed ``(out, in)`` weight (an mkldnn tensor), or the plain weight when oneDNN is unavailable.
    bias : torch.Tensor or None
        ``(out,)``.
    plain : torch.Tensor
        The unpacked weight, for the fallback.
    """

    key: tuple
    weight: torch.Tensor
    bias: torch.Tensor | None
    plain: torch.Tensor

    def __call__(self, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
        """Apply the layer.

        Parameters
        ----------
        x : torch.Tensor
            ``(..., in)`` float32.
        gelu : bool
            Apply the exact (erf) GELU to the result, fused into the product.

        Returns
        -------
        torch.Tensor
            ``(..., out)``, a new tensor.
        """
        if self.weight.is_mkldnn and enabled(x.device):
            return _LINEAR(x, self.weight, self.bias, "gelu" if gelu else "none", [],  # type: ignore[operator]
                           "none" if gelu else "")
        out = functional.linear(x, self.plain, self.bias)
        return functional.gelu(out) if gelu else out


def tensors_key(*tensors: torch.Tensor | None) -> tuple:
    """Identity, storage and version of each tensor, and whether oneDNN runs now: what a packed weight depends on.

    Parameters
    ----------
    *tensors : torch.Tensor or None
        The tensors (None skipped).

    Returns
    -------
    tuple
        A comparable key.
    """
    # Inference tensors (made under inference mode) have no version counter and cannot change in place later.
    present = [t for t in tensors if t is not None]
    # Whether oneDNN runs now is part of the key: a layer packed while it was off is packed again once it is on.
    running = bool(present) and enabled(present[0].device)
    return (running, *((id(t), t.data_ptr(), 0 if t.is_inference() else t._version) for t in present))


def pack(weight: torch.Tensor, bias: torch.Tensor | None = None) -> PackedLinear:
    """Pack a float32 CPU weight ``(out, in)`` for `PackedLinear`.

    Parameters
    ----------
    weight : torch.Tensor
        ``(out, in)``.
    bias : torch.Tensor or None
        ``(out,)``.

    Returns
    -------
    PackedLinear
        The layer (unpacked when oneDNN cannot run it: another device or dtype, or no oneDNN).
    """
    key = tensors_key(weight, bias)
    weight = weight.detach()
    bias = None if bias is None else bias.detach().contiguous()
    packed = weight
    if enabled(weight.device) and weight.dtype == torch.float32 and weight.dim() == 2:
        packed = weight.contiguous().to_mkldnn()
    return PackedLinear(key, packed, bias, weight)


def packed(layer: nn.Linear) -> PackedLinear:
    """`pack` of an nn.Linear's weight and bias, cached on the layer until they change.

    Parameters
    ----------
    layer : torch.nn.Linear
        The layer.

    Returns
    -------
    PackedLinear
        Its packed form.
    """
    return cached_for(layer, tensors_key(layer.weight, layer.bias), lambda: pack(layer.weight, layer.bias))


def cached_for(owner: object, key: tuple, build: Callable[[], T]) -> T:
    """What `build()` returns, kept for `owner` (weakly) until `key` changes.

    Parameters
    ----------
    owner : object
        The module the value belongs to.
    key : tuple
        What the value was built from (identities and versions of weights).
    build : callable
        Makes the value.

    Returns
    -------
    object
        The cached or newly built value.
    """
    with _lock:
        entry = _cache.get(owner)
    if entry is not None and entry[0] == key:
        return entry[1]
    made = build()
    with _lock:
        _cache[owner] = (key, made)
    return made
