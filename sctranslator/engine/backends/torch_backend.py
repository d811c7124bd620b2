"""The `torch` backend: the PyTorch model in eval mode without autograd, on CPU or CUDA.

The only backend with cell embeddings: it sees the encoder's outputs, exported graphs do not.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from sctranslator.engine.backends.base import BackendSpec, Batch
from sctranslator.engine.backends.capabilities import BackendCapabilities
from sctranslator.engine.backends.compiled import compiled_model
from sctranslator.engine.backends.cpu_streams import StreamPool
from sctranslator.engine.backends.cuda_staging import device_values, pipelined, stager_for
from sctranslator.engine.backends.device_memory import batch_cells_for_device
from sctranslator.errors import BackendError
from sctranslator.model import TranslatorModel
from sctranslator.model.collapse import PaddingCollapse
from sctranslator.model.precision import compute_dtype, reduced_precision_copy, reference_values
from sctranslator.model.selected_outputs import decode_selected, selected_outputs_apply
from sctranslator.options import PRECISIONS

_UNBUILT: Any = object()  # a layout whose collapse is not cached (None is cached: no collapse applies)


def cell_embedding(encodings: torch.Tensor, gene_mask: torch.Tensor) -> torch.Tensor:
    """Each cell's embedding: the mean of its encoder outputs over its real gene tokens.

    Parameters
    ----------
    encodings : torch.Tensor
        ``(B, L, dim)`` encoder outputs.
    gene_mask : torch.Tensor
        bool ``(B, L)`` or ``(L,)``: real gene positions.

    Returns
    -------
    torch.Tensor
        ``(B, dim)``.
    """
    weights = gene_mask.to(encodings.dtype).unsqueeze(-1)
    return (encodings * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class TorchBackend:
    """PyTorch in eval mode without autograd, on CPU or CUDA.

    The encoder and translator do not depend on the proteins, so they run once per batch and only the
    decoder runs once per protein window.

    Parameters
    ----------
    model : TranslatorModel
        The model (moved to `device`).
    device : str
        "cpu", "cuda" or "cuda:N".
    collapse_padding : bool
        Compute the padding positions of a cell once (exact; see `sctranslator.graph.token_layout`).
    precision : {'fp32', 'bf16', 'fp16'}
        fp32 is exact; bf16 / fp16 run the dense layers in that dtype (see
        `sctranslator.model.precision`).
    compile : bool
        Run the model's blocks through torch.compile.
    threads : int or None
        CPU threads of one block; None: whatever the process has.
    cpu_streams : bool
        On CPU, run a block of several batches as that many single-thread calls side by side
        (`sctranslator.engine.backends.cpu_streams`), else each call uses every thread.
    selected_outputs : bool
        The decoder's last layer computes only the real protein positions of each window (the
        padded ones come back NaN), for callers that read the real proteins only (translate).

    Raises
    ------
    BackendError
        CUDA asked for without CUDA, or a precision the device has no native arithmetic for.
    """

    name = "torch"
    capabilities = BackendCapabilities(
        embeddings=True, precisions={"cpu": PRECISIONS, "cuda": PRECISIONS},
        options=("collapse_padding", "compile", "cpu_streams", "selected_outputs"), optional_padding_collapse=True,
        memory_sized_batches=True, cpu_streams=True)
    supports_embeddings = capabilities.embeddings

    def __init__(self, model: TranslatorModel, device: str = "cpu", *, collapse_padding: bool = True,
                 precision: str = "fp32", compile: bool = False, threads: int | None = None,
                 cpu_streams: bool = True, selected_outputs: bool = False):
        """`precision`: fp32 (exact), or bf16 / fp16 (see sctranslator.model.precision; BackendError
        where the device has no native arithmetic for it). `compile`: torch.compile the blocks.
        `threads`: CPU threads of one block (None: whatever the process has); on CPU with
        `cpu_streams` a block of several batches runs them as that many single-thread calls side by
        side (engine.backends.cpu_streams), else each call uses them all. `selected_outputs`: the
        decoder's last layer computes only the real protein positions of each window (mask True;
        model.selected_outputs), the padded ones come back NaN; for callers that read the real
        proteins only (translate sets it)."""
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(f"--device {device} asked for, but PyTorch sees no CUDA device")
        self.device = torch.device(device)
        self.precision = precision
        dtype = compute_dtype(precision, self.device)
        current = next(model.parameters())
        # nn.Module.to converts in place: never move or cast the caller's model, convert a copy.
        self.dtype = dtype
        self.reduced = dtype != torch.float32
        if current.device == self.device and not self.reduced:
            self.model = model.eval()
        else:
            self.model = reduced_precision_copy(model, dtype).to(self.device).eval()
        self.collapse_padding = collapse_padding
        self.selected_outputs = selected_outputs and not compile
        # CPU threads of one block (from_spec); None: whatever the process has.
        self.threads: int | None = threads
        self.streams = (StreamPool(threads) if cpu_streams and threads and threads > 1 and self.device.type == "cpu"
                        else None)
        self._collapses: dict[bytes, PaddingCollapse | None] = {}
        self._building: dict[bytes, threading.Lock] = {}  # the layouts being built, each by one thread
        self._building_lock = threading.Lock()
        # -- GPU hooks (cuda_staging.py, compiled.py, device_memory.py) --
        self.stager = stager_for(self.device)
        if compile:
            self.model = compiled_model(self.model, owned=self.model is not model)

    @classmethod
    def from_spec(cls, spec: BackendSpec) -> TorchBackend:
        """Build the backend for `spec`: its model, device, precision and options.

        Parameters
        ----------
        spec : BackendSpec
            What to build (``options``: collapse_padding, compile).

        Returns
        -------
        TorchBackend
            The backend.

        Raises
        ------
        BackendError
            As the class.
        CheckpointError
            The model cannot be loaded.
        """
        if spec.threads:
            torch.set_num_threads(spec.threads)
        return cls(spec.load_model(), spec.device, collapse_padding=bool(spec.options.get("collapse_padding", True)),
                   precision=spec.precision, compile=bool(spec.options.get("compile", False)),
                   threads=spec.threads or None, cpu_streams=bool(spec.options.get("cpu_streams", True)),
                   selected_outputs=bool(spec.options.get("selected_outputs", False)))

    def _collapse_for(self, batch: Batch) -> PaddingCollapse | None:
        """The padding collapse of the batch's gene layout (built once per layout), if it applies.

        In reduced precision every layout gets one (with or without padding), with the reference
        cell's layer values for it (sctranslator.model.precision).
        """
        if not self.collapse_padding and not self.reduced:
            return None
        collapse = self._layout_collapse(batch.gene_ids, batch.gene_mask)
        if collapse is not None and collapse.values_fit(batch.values):
            return collapse
        if not self.reduced:
            return None
        # Values at padded positions (not from our engine): every position is its own token.
        return self._prepare(PaddingCollapse.for_layout(self.model, batch.gene_ids, batch.gene_mask,
                                                        batch.values, dtype=self.dtype))

    def _layout_collapse(self, gene_ids: np.ndarray, gene_mask: np.ndarray) -> PaddingCollapse | None:
        """The cached collapse of a gene layout, built by one thread while the others asking for it wait."""
        key = hashlib.sha1(np.ascontiguousarray(gene_ids).tobytes()
                           + np.ascontiguousarray(gene_mask).tobytes()).digest()
        collapse = self._collapses.get(key, _UNBUILT)
        if collapse is not _UNBUILT:
            return collapse
        with self._building_lock:
            building = self._building.setdefault(key, threading.Lock())
        with building:
            collapse = self._collapses.get(key, _UNBUILT)
            if collapse is _UNBUILT:
                # A process serves few layouts; never grow without bound (a reduced-precision layout
                # holds its reference cell's layer values: hundreds of MB at L = 20,000). Kept in a
                # local: another thread (a knockout's blocks cycle through many layouts) may clear the cache.
                collapse = self._prepare(PaddingCollapse.for_layout(self.model, gene_ids, gene_mask,
                                                                    dtype=self.dtype))
                if len(self._collapses) >= (2 if self.reduced else 8):
                    self._collapses.clear()
                self._collapses[key] = collapse
        with self._building_lock:
            if self._building.get(key) is building:
                del self._building[key]
        return collapse

    @torch.inference_mode()
    def prepare_layout(self, gene_ids: np.ndarray, gene_mask: np.ndarray) -> None:
        """Build the padding collapse of a gene layout now, before the first batch that has it.

        The engine calls it in a background thread while it creates the output store: for the
        full-size model the collapse (fc0's columns gathered and summed) takes about 0.4 s. On CPU
        only: a GPU's batches run on streams of their own, which a tensor made on another thread's
        stream would race.

        Parameters
        ----------
        gene_ids : numpy.ndarray
            int64 ``(L,)``: the layout's gene tokens.
        gene_mask : numpy.ndarray
            bool ``(L,)``: its real positions.
        """
        if self.device.type == "cpu" and (self.collapse_padding or self.reduced):
            self._layout_collapse(gene_ids, gene_mask)

    def _prepare(self, collapse: PaddingCollapse | None) -> PaddingCollapse | None:
        """Record a reduced-precision layout's reference cell (every gene at 1e-8, an all-zero cell scaled)."""
        if collapse is None or not self.reduced:
            return collapse
        reference = torch.full((1, collapse.real_positions.numel()), 1e-8, device=self.device)
        with torch.inference_mode(), reference_values(collapse.references, recording=True):
            collapse.translate(self.model, collapse.encode_real(self.model, reference))
        return collapse

    def predict(self, batch: Batch) -> np.ndarray:
        """Predict a batch's proteins.

        Parameters
        ----------
        batch : Batch
            The model inputs of B cells.

        Returns
        -------
        numpy.ndarray
            float32 ``(B, W * P)``.
        """
        return self.predict_with_embeddings(batch, embeddings=False)[0]

    @torch.inference_mode()
    def predict_with_embeddings(self, batch: Batch, embeddings: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Predict a batch and, if asked, the cells' embeddings (see `cell_embedding`).

        Parameters
        ----------
        batch : Batch
            The model inputs of B cells.
        embeddings : bool
            Also return the embeddings.

        Returns
        -------
        tuple of (numpy.ndarray, numpy.ndarray or None)
            Predictions ``(B, W * P)`` and embeddings ``(B, dim)`` or None.
        """
        return self.stager.fetch(self.forward(batch, embeddings)).result()

    # -- GPU hooks: a block's batches pipelined (cuda_staging.py); cells per call from device memory --
    @torch.inference_mode()
    def predict_batches(self, batches: Iterable[Batch], embeddings: bool = False
                        ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """`predict_with_embeddings` for each batch, in order; on CUDA batch k+1 is copied while batch k runs.

        The decorator enters inference mode at each resumption of the generator only.

        Parameters
        ----------
        batches : iterable of Batch
            The batches.
        embeddings : bool
            Also return embeddings.

        Yields
        ------
        tuple of (numpy.ndarray, numpy.ndarray or None)
            Each batch's predictions and embeddings (or None).
        """
        if self.streams is not None:
            yield from self.streams.run(self._call, batches, embeddings)
            return
        yield from pipelined(self.forward, batches, embeddings, self.stager)

    def _call(self, batch: Batch, embeddings: bool, threads: int) -> tuple[np.ndarray, np.ndarray | None]:
        """One batch on `threads` intra-op threads of the calling thread (a stream's pool thread)."""
        with torch.inference_mode():
            return self.stager.fetch(self.forward(batch, embeddings, threads=threads)).result()

    def cells_per_call(self, batch: Batch) -> int | None:
        """Cells per call that fit the device's free memory.

        Parameters
        ----------
        batch : Batch
            The model inputs of B cells.

        Returns
        -------
        int or None
            On CUDA the cells per call for this batch's gene layout; None elsewhere.
        """
        if self.device.type != "cuda":
            return None
        return batch_cells_for_device(self.model, batch, self.device, collapsed=self._collapse_for(batch) is not None,
                                      precision=self.precision)

    @torch.inference_mode()
    def forward(self, batch: Batch, embeddings: bool, threads: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Launch one batch on the device, without waiting for it.

        Parameters
        ----------
        batch : Batch
            The model inputs of B cells.
        embeddings : bool
            Also compute embeddings.
        threads : int or None
            Intra-op threads for this call; None: the backend's.

        Returns
        -------
        tuple of (torch.Tensor, torch.Tensor or None)
            Predictions ``(B, W * P)`` and embeddings ``(B, dim)`` or None, as device tensors.
        """
        threads = threads or self.threads
        if threads and torch.get_num_threads() != threads:
            # Numba's OpenMP kernels (prepare) share PyTorch's OpenMP runtime and reset its thread
            # count to every core: re-assert ours, or the blocks oversubscribe the cores.
            torch.set_num_threads(threads)
        device = self.device
        collapse = self._collapse_for(batch)
        if collapse is not None:  # padded positions computed once (exact; see model.collapse)
            values = device_values(batch, device, collapse.real_positions)
            size = values.shape[0]
            with reference_values(collapse.references) if self.reduced else nullcontext():
                encodings = collapse.encode_real(self.model, values)
                translated = collapse.translate(self.model, encodings)
            encodings = collapse.real_encodings(encodings)
            gene_mask = collapse.gene_mask.expand(size, -1)  # already on the device: no copy, no sync
        else:
            values = device_values(batch, device)
            size = values.shape[0]
            genes = torch.from_numpy(batch.gene_ids).to(device).expand(size, -1)
            gene_mask = torch.from_numpy(batch.gene_mask).to(device).expand(size, -1)
            encodings = self.model.encode(values, genes, gene_mask)
            translated = self.model.translate_sequence(encodings)
        outputs = []
        selected = self.selected_outputs and not self.reduced and selected_outputs_apply(self.model)
        for window in range(batch.protein_ids.shape[0]):
            proteins = torch.from_numpy(batch.protein_ids[window]).to(device).expand(size, -1)
            real = np.flatnonzero(batch.protein_mask[window])
            if selected and 0 < real.size < batch.protein_mask.shape[1]:
                # Only the real proteins' outputs are read: the padded positions' last layer is skipped.
                keep = torch.from_numpy(real).to(device)
                window_mask = torch.from_numpy(batch.protein_mask[window]).to(device)
                out = torch.full((size, batch.protein_mask.shape[1]), float("nan"), device=device)
                out[:, keep] = decode_selected(self.model, translated, proteins, window_mask, keep)
                outputs.append(out)
                continue
            protein_mask = torch.from_numpy(batch.protein_mask[window]).to(device).expand(size, -1)
            outputs.append(self.model.decode(translated, proteins, protein_mask))
        predictions = torch.cat(outputs, dim=1)
        embedding = cell_embedding(encodings, gene_mask) if embeddings else None
        return predictions, embedding

    def close(self) -> None:
        """Release the model and the CUDA staging buffers."""
        if self.streams is not None:
            self.streams.close()
        self.model = None  # type: ignore[assignment]
