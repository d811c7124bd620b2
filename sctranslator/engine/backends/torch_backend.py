"""The `torch` backend: the PyTorch model in eval mode without autograd, on CPU or CUDA.

The only backend with cell embeddings: it sees the encoder's outputs, exported graphs do not.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from sctranslator.engine.backends.base import BackendSpec, Batch
from sctranslator.engine.backends.compiled import compiled_model
from sctranslator.engine.backends.cuda_staging import device_values, pipelined, stager_for
from sctranslator.engine.backends.device_memory import batch_cells_for_device
from sctranslator.errors import BackendError
from sctranslator.model import TranslatorModel
from sctranslator.model.collapse import PaddingCollapse


def cell_embedding(encodings: torch.Tensor, gene_mask: torch.Tensor) -> torch.Tensor:
    """A cell's embedding: the mean of its encoder outputs over real gene tokens, (B, L, dim) -> (B, dim)."""
    weights = gene_mask.to(encodings.dtype).unsqueeze(-1)
    return (encodings * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class TorchBackend:
    """PyTorch in eval mode without autograd, on CPU or CUDA.

    The encoder and translator do not depend on the proteins, so they run once per batch and
    only the decoder runs once per protein window.
    """

    name = "torch"
    supports_embeddings = True

    def __init__(self, model: TranslatorModel, device: str = "cpu", *, collapse_padding: bool = True,
                 compile: bool = False):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(f"--device {device} asked for, but PyTorch sees no CUDA device")
        self.device = torch.device(device)
        current = next(model.parameters()).device
        # nn.Module.to moves in place: never move the caller's model, move a copy.
        self.model = (model if current == self.device else copy.deepcopy(model).to(self.device)).eval()
        self.collapse_padding = collapse_padding
        self._collapses: dict[bytes, PaddingCollapse | None] = {}
        # -- GPU hooks (cuda_staging.py, compiled.py, device_memory.py) --
        self.stager = stager_for(self.device)
        if compile:
            self.model = compiled_model(self.model, owned=self.model is not model)

    @classmethod
    def from_spec(cls, spec: BackendSpec) -> TorchBackend:
        if spec.threads:
            torch.set_num_threads(spec.threads)
        return cls(spec.load_model(), spec.device, collapse_padding=bool(spec.options.get("collapse_padding", True)),
                   compile=bool(spec.options.get("compile", False)))

    def _collapse_for(self, batch: Batch) -> PaddingCollapse | None:
        """The padding collapse of the batch's gene layout (built once per layout), if it applies."""
        if not self.collapse_padding:
            return None
        key = hashlib.sha1(np.ascontiguousarray(batch.gene_ids).tobytes()
                           + np.ascontiguousarray(batch.gene_mask).tobytes()).digest()
        if key not in self._collapses:
            if len(self._collapses) > 8:  # a process serves few plans; never grow without bound
                self._collapses.clear()
            self._collapses[key] = PaddingCollapse.for_layout(self.model, batch.gene_ids, batch.gene_mask)
        collapse = self._collapses[key]
        return collapse if collapse is not None and collapse.values_fit(batch.values) else None

    def predict(self, batch: Batch) -> np.ndarray:
        return self.predict_with_embeddings(batch, embeddings=False)[0]

    @torch.inference_mode()
    def predict_with_embeddings(self, batch: Batch, embeddings: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictions (B, W * P) and, if asked, cell embeddings (B, dim): see `cell_embedding`."""
        return self.stager.fetch(self.forward(batch, embeddings)).result()

    # -- GPU hooks: a block's batches pipelined (cuda_staging.py); cells per call from device memory --
    @torch.inference_mode()
    def predict_batches(self, batches: Iterable[Batch], embeddings: bool = False
                        ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """predict_with_embeddings for each batch, in order; on CUDA batch k+1 is copied while batch k runs.
        (The decorator enters inference mode at each resumption of the generator only.)"""
        yield from pipelined(self.forward, batches, embeddings, self.stager)

    def cells_per_call(self, batch: Batch) -> int | None:
        """Cells per call that fit the device's free memory (CUDA), None elsewhere."""
        if self.device.type != "cuda":
            return None
        return batch_cells_for_device(self.model, batch, self.device, collapsed=self._collapse_for(batch) is not None)

    @torch.inference_mode()
    def forward(self, batch: Batch, embeddings: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Launch one batch: predictions (B, W * P) and embeddings (B, dim) or None, as device tensors."""
        device = self.device
        collapse = self._collapse_for(batch)
        if collapse is not None:  # padded positions computed once (exact; see model.collapse)
            positions = collapse.real_positions.cpu().numpy()
            values = device_values(batch, device, collapse.real_positions)
            size = values.shape[0]
            encodings = collapse.encode_real(self.model, values)
            translated = collapse.translate(self.model, encodings)
            encodings = collapse.real_encodings(encodings)
            gene_mask = torch.from_numpy(np.ascontiguousarray(batch.gene_mask[positions])).to(device).expand(size, -1)
        else:
            values = device_values(batch, device)
            size = values.shape[0]
            genes = torch.from_numpy(batch.gene_ids).to(device).expand(size, -1)
            gene_mask = torch.from_numpy(batch.gene_mask).to(device).expand(size, -1)
            encodings = self.model.encode(values, genes, gene_mask)
            translated = self.model.translate_sequence(encodings)
        outputs = []
        for window in range(batch.protein_ids.shape[0]):
            proteins = torch.from_numpy(batch.protein_ids[window]).to(device).expand(size, -1)
            protein_mask = torch.from_numpy(batch.protein_mask[window]).to(device).expand(size, -1)
            outputs.append(self.model.decode(translated, proteins, protein_mask))
        predictions = torch.cat(outputs, dim=1)
        embedding = cell_embedding(encodings, gene_mask) if embeddings else None
        return predictions, embedding

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
