"""Pinned host buffers, a side copy stream and a one-batch-deep pipeline for the torch backend on CUDA.

`pipelined` runs a block's batches so the device never waits for the host: while batch k
computes, batch k+1's values are copied into pinned host memory and on to the device on a side
stream, and batch k's results come back into pinned memory on the compute stream; the host waits
for batch k's results only once batch k+1 is launched. Forward launches are serialised per
backend (`Stager.lock`), so one forward's activations are on the device at a time, which is what
the batch sizing (device_memory.py) assumes, whichever worker thread launches them.

On CPU the same calls degrade to plain arrays: `HostStager` stages nothing and fetches tensors as
numpy arrays, so the torch backend runs one code path on every device.

The torch backend uses three things: `stager_for(device)`, `device_values(batch, device, columns)`
for its input values, and `pipelined(forward, batches, embeddings, stager)` for a block.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sctranslator.engine.backends.base import Batch

Outputs = tuple[torch.Tensor, torch.Tensor | None]  # predictions (B, W * P), embeddings (B, dim) or None
Results = tuple[np.ndarray, np.ndarray | None]


@dataclass
class StagedBatch(Batch):
    """A Batch whose values are also on the device (or on their way there, until `ready`).

    Parameters
    ----------
    values : numpy.ndarray
        float32 ``(B, L)`` on the host.
    gene_ids : numpy.ndarray
        int64 ``(L,)``.
    gene_mask : numpy.ndarray
        bool ``(L,)``.
    protein_ids : numpy.ndarray
        int64 ``(W, P)``.
    protein_mask : numpy.ndarray
        bool ``(W, P)``.
    device_values : torch.Tensor or None
        The values on the device.
    ready : torch.cuda.Event or None
        Recorded once the copy is done.
    """

    device_values: torch.Tensor | None = None  # float32 (B, L) on the device
    ready: torch.cuda.Event | None = None  # recorded on the copy stream after the copy


def device_values(batch: Batch, device: torch.device, columns: torch.Tensor | None = None) -> torch.Tensor:
    """The batch's float32 values on `device`, all of them or some columns.

    A StagedBatch's device copy is used when it lives on `device`: the current stream waits for its
    copy, without blocking the host; anything else is copied from the host here.

    Parameters
    ----------
    batch : Batch
        The batch.
    device : torch.device
        Where.
    columns : torch.Tensor or None
        An int64 index of columns on `device`; None: all.

    Returns
    -------
    torch.Tensor
        ``(B, L)``, or ``(B, n)`` for `columns`.
    """
    staged = getattr(batch, "device_values", None)
    if staged is not None and staged.device.type == "cuda" and _same_device(staged.device, device):
        stream = torch.cuda.current_stream(device)
        stream.wait_event(batch.ready)
        staged.record_stream(stream)  # allocated on the copy stream: keep it until this stream is done
        return staged if columns is None else staged.index_select(1, columns)
    values = batch.values if columns is None else batch.values[:, columns.cpu().numpy()]
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(device)


def _same_device(actual: torch.device, wanted: torch.device) -> bool:
    """True when a tensor on `actual` is on `wanted` ('cuda' without an index means the current device)."""
    if actual.type != wanted.type:
        return False
    index = wanted.index
    if index is None and wanted.type == "cuda":
        index = torch.cuda.current_device()
    return index is None or actual.index == index


class Pending:
    """Results on their way to the host; `result` waits for them (a no-op once they are there).

    Parameters
    ----------
    tensors : tuple
        The predictions ``(B, W * P)`` and embeddings ``(B, dim)`` or None.
    done : torch.cuda.Event or None
        Recorded once the copies are done; None: already on the host.
    """

    def __init__(self, tensors: Outputs, done: torch.cuda.Event | None = None):
        self._tensors = tensors
        self._done = done

    def result(self) -> Results:
        """Wait for the copies and give the results as numpy arrays.

        Returns
        -------
        tuple of (numpy.ndarray, numpy.ndarray or None)
            The predictions and the embeddings (or None).
        """
        if self._done is not None:
            self._done.synchronize()
        predictions, embeddings = self._tensors
        return predictions.numpy(), (embeddings.numpy() if embeddings is not None else None)


class HostStager:
    """CPU: batches are used as they are, results are read directly."""

    def __init__(self) -> None:
        self.lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()

    def stage(self, batch: Batch | None) -> Batch | None:
        """A CPU batch needs no staging.

        Parameters
        ----------
        batch : Batch or None
            The batch.

        Returns
        -------
        Batch or None
            `batch` itself.
        """
        return batch

    def fetch(self, outputs: Outputs) -> Pending:
        """CPU results are already on the host.

        Parameters
        ----------
        outputs : tuple
            The predictions and embeddings tensors.

        Returns
        -------
        Pending
            Done at once.
        """
        predictions, embeddings = outputs
        return Pending((predictions.float().cpu(), embeddings.float().cpu() if embeddings is not None else None))


class CudaStager:
    """CUDA: values go through pinned buffers on a side stream; results come back into pinned buffers.

    Parameters
    ----------
    device : torch.device
        The CUDA device.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.copy_stream = torch.cuda.Stream(device)
        self.lock: contextlib.AbstractContextManager[Any] = threading.Lock()

    def stage(self, batch: Batch | None) -> StagedBatch | None:
        """Start copying a batch's values to the device; returns at once (the copy runs on the side stream).

        Parameters
        ----------
        batch : Batch or None
            The batch; None passes through.

        Returns
        -------
        StagedBatch or None
            The batch with its device copy on the way.
        """
        if batch is None:
            return None
        # PyTorch's caching host allocator recycles pinned blocks, and keeps one until the copies
        # that read it have finished.
        pinned = torch.empty(batch.values.shape, dtype=torch.float32, pin_memory=True)
        np.copyto(pinned.numpy(), batch.values, casting="same_kind")
        with torch.cuda.stream(self.copy_stream):
            on_device = torch.empty(batch.values.shape, dtype=torch.float32, device=self.device)
            on_device.copy_(pinned, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self.copy_stream)
        return StagedBatch(batch.values, batch.gene_ids, batch.gene_mask, batch.protein_ids, batch.protein_mask,
                           device_values=on_device, ready=ready)

    def fetch(self, outputs: Outputs) -> Pending:
        """Queue the copies of `outputs` into pinned host memory on the current stream; no waiting.

        Parameters
        ----------
        outputs : tuple
            The predictions and embeddings tensors on the device.

        Returns
        -------
        Pending
            The results on their way.
        """
        host = []
        for tensor in outputs:
            if tensor is None:
                host.append(None)
                continue
            buffer = torch.empty(tensor.shape, dtype=torch.float32, pin_memory=True)
            buffer.copy_(tensor.float(), non_blocking=True)
            host.append(buffer)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))
        return Pending((host[0], host[1]), done)


Stager = HostStager | CudaStager


def stager_for(device: torch.device) -> Stager:
    """The stager for `device`: CudaStager on CUDA, HostStager elsewhere.

    Parameters
    ----------
    device : torch.device
        The backend's device.

    Returns
    -------
    HostStager or CudaStager
        The stager.
    """
    return CudaStager(device) if device.type == "cuda" else HostStager()


def pipelined(forward: Callable[[Batch, bool], Outputs], batches: Iterable[Batch], embeddings: bool,
              stager: Stager) -> Iterator[Results]:
    """Run batches with copies overlapped: batch k+1 is staged while batch k computes.

    Batch k's results are waited for only after batch k+1 has been launched.

    Parameters
    ----------
    forward : callable
        ``forward(batch, embeddings)`` launches one batch and returns its outputs as device tensors
        (it reads its values with `device_values`).
    batches : iterable of Batch
        The batches, in order.
    embeddings : bool
        Ask for embeddings too.
    stager : HostStager or CudaStager
        How values and results move.

    Yields
    ------
    tuple of (numpy.ndarray, numpy.ndarray or None)
        Each batch's predictions and embeddings (or None), in order.
    """
    source = iter(batches)
    upcoming = stager.stage(next(source, None))
    waiting: Pending | None = None
    while upcoming is not None:
        current = upcoming
        with stager.lock:
            outputs = forward(current, embeddings)
        fetched = stager.fetch(outputs)
        del outputs, current  # the device tensors go back to the allocator (stream-ordered)
        upcoming = stager.stage(next(source, None))
        if waiting is not None:
            yield waiting.result()
        waiting = fetched
    if waiting is not None:
        yield waiting.result()
