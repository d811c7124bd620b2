"""Exact padding collapse: the L - n padded gene positions computed once, as one token.

In the published pipeline every padded position holds value 0, gene id 0 and mask False, so its
encoder input is the same vector (to_vector's bias plus the all-zero padding embedding), and it
stays the same through every block: LayerNorm, the feed-forward and the query features act per
token; its value vector is zeroed, so it adds nothing to the attention context; its key features
enter only the key sum (which counts each of the L - n copies) and the per-(cell, head) key
maximum (a maximum does not depend on how often a value repeats). So the encoder can run on n + 1
tokens, the last one standing for L - n, and the translator's first layer, linear in its input
positions, takes the sum of its weight columns over the padded positions as that token's column.

The result equals the uncollapsed model up to float reassociation. A fine-tuned panel bundle's
missing genes are real zero-valued tokens (mask True, a gene id): they are never collapsed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from sctranslator.model.network import TranslatorModel
from sctranslator.model.packed_linear import enabled, pack, packed, tensors_key
from sctranslator.model.precision import DeltaLinear


@dataclass(frozen=True)
class PaddingCollapse:
    """The padding collapse for one gene layout (one plan): which positions stay, how many pads, fc0's columns.

    Parameters
    ----------
    real_positions : torch.Tensor
        int64 ``(n,)``: the positions that are not padding, in order.
    gene_ids : torch.Tensor
        int64 ``(n,)``: their tokens.
    gene_mask : torch.Tensor
        bool ``(n,)``: their mask (False only for valued "padding" in reduced precision).
    pad_count : int
        L - n: how many padded positions the last token stands for (0: no pad token).
    first_weight : torch.Tensor
        ``(fc0 out, tokens)``: fc0's columns of the real positions, then the pads' sum.
    key_counts : torch.Tensor
        ``(tokens,)``: 1 per real token, L - n for the pad token.
    pad_positions : numpy.ndarray
        int64 ``(L - n,)``: the collapsed positions.
    first_layer : DeltaLinear or None
        A reduced-precision model's fc0 over this layout; None: fp32.
    references : dict
        Its reference cell's layer values, filled by the backend.
    packed_first : dict
        `first_weight` packed for oneDNN, made on first use (sctranslator.model.packed_linear).
    """

    real_positions: torch.Tensor  # (n,) int64: the positions that are not padding, in order
    gene_ids: torch.Tensor  # (n,) int64: their token ids
    gene_mask: torch.Tensor  # (n,) bool: their mask (False only for valued "padding", reduced precision)
    pad_count: int  # L - n: how many padded positions the last token stands for (0: no pad token)
    first_weight: torch.Tensor  # (fc0 out, tokens): fc0's columns of the real positions, then the pads' sum
    key_counts: torch.Tensor  # (tokens,): 1 per real token, L - n for the pad token
    pad_positions: np.ndarray  # (L - n,) int64: the collapsed positions
    # A reduced-precision model's fc0 over this layout (sctranslator.model.precision.DeltaLinear); None: fp32
    first_layer: DeltaLinear | None = None
    # Its reference cell's layer values (DeltaLinear -> (x_ref, y_ref)), filled by the backend
    references: dict = field(default_factory=dict)
    # first_weight packed for oneDNN (sctranslator.model.packed_linear), made on first use
    packed_first: dict = field(default_factory=dict, compare=False, repr=False)

    def values_fit(self, values: np.ndarray) -> bool:
        """Whether every cell is 0 at the collapsed positions (they are padding).

        Parameters
        ----------
        values : numpy.ndarray
            ``(B, L)`` model values.

        Returns
        -------
        bool
            True when the collapse holds for this batch.
        """
        return not np.any(np.asarray(values)[:, self.pad_positions])

    @property
    def tokens(self) -> int:
        """Tokens computed per cell: the real positions plus one pad token when there is padding."""
        return int(self.real_positions.numel()) + (1 if self.pad_count else 0)

    @classmethod
    def for_layout(cls, model: TranslatorModel, gene_ids: np.ndarray, gene_mask: np.ndarray,
                   values: np.ndarray | None = None, *, dtype: torch.dtype | None = None) -> PaddingCollapse | None:
        """The collapse of a gene layout, or None when it has no padding.

        Padding is mask False and gene id 0; with `values` given, those positions must also be 0 in every
        cell (else None: the tokens would differ and nothing may be collapsed). With a reduced `dtype` a
        layout is always returned, with or without padding, and its fc0 computes in that dtype around a
        reference cell (`sctranslator.model.precision`).

        Parameters
        ----------
        model : TranslatorModel
            The model.
        gene_ids : numpy.ndarray
            int64 ``(L,)``.
        gene_mask : numpy.ndarray
            bool ``(L,)``.
        values : numpy.ndarray or None
            ``(B, L)`` model values to check.
        dtype : torch.dtype or None
            bf16 / fp16 for reduced precision; None: fp32.

        Returns
        -------
        PaddingCollapse or None
            The collapse.
        """
        gene_ids = np.asarray(gene_ids)
        gene_mask = np.asarray(gene_mask, dtype=bool)
        if gene_ids.shape[0] != model.config.max_genes:
            return None  # a shortened sequence: the translator needs exactly L positions anyway
        reduced = dtype is not None and dtype != torch.float32
        padded = ~gene_mask & (gene_ids == 0)
        if values is not None and np.any(np.asarray(values)[:, padded]):
            if not reduced:
                return None
            padded[:] = False  # valued "padding": every position is its own token
        pad_count = int(padded.sum())
        if pad_count < 2 and not reduced:
            return None  # nothing to gain
        device = model.translator.layer(0).weight.device
        real = torch.from_numpy(np.flatnonzero(~padded)).to(device)
        pads = torch.from_numpy(np.flatnonzero(padded)).to(device)
        fc0 = model.translator.layer(0)
        with torch.no_grad():
            if pad_count:
                first = torch.cat([fc0.weight.index_select(1, real),
                                   fc0.weight.index_select(1, pads).sum(dim=1, keepdim=True)], dim=1).contiguous()
            else:
                first = fc0.weight
        counts = torch.ones(first.shape[1], dtype=torch.float32, device=device)
        if pad_count:
            counts[-1] = pad_count
        first_layer = DeltaLinear(first, fc0.bias, dtype) if reduced else None
        return cls(real_positions=real, gene_ids=torch.from_numpy(gene_ids[~padded].astype(np.int64)).to(device),
                   gene_mask=torch.from_numpy(gene_mask[~padded]).to(device),
                   pad_count=pad_count, first_weight=first, key_counts=counts,
                   pad_positions=np.flatnonzero(padded), first_layer=first_layer)

    def encode(self, model: TranslatorModel, values: torch.Tensor) -> torch.Tensor:
        """Encoder output from full-width values: real tokens, then the pad token.

        Parameters
        ----------
        model : TranslatorModel
            The model.
        values : torch.Tensor
            ``(B, L)``.

        Returns
        -------
        torch.Tensor
            ``(B, tokens, dim)``.
        """
        real_values = values.index_select(1, self.real_positions)
        return self.encode_real(model, real_values)

    def encode_real(self, model: TranslatorModel, real_values: torch.Tensor) -> torch.Tensor:
        """Encoder output from the real positions' values only.

        Parameters
        ----------
        model : TranslatorModel
            The model.
        real_values : torch.Tensor
            ``(B, n)``.

        Returns
        -------
        torch.Tensor
            ``(B, tokens, dim)``.
        """
        batch = real_values.shape[0]
        dtype = model.enc.to_vector.weight.dtype
        h = model.enc.to_vector(real_values.to(dtype).unsqueeze(-1)) + model.enc.pos_emb(self.gene_ids)
        mask = self.gene_mask.expand(batch, -1)
        if self.pad_count:
            pad_token = model.enc.to_vector.bias + model.enc.pos_emb.weight[0]  # value 0, token id 0
            h = torch.cat([h, pad_token.to(h.dtype).expand(batch, 1, -1)], dim=1)
            mask = torch.cat([mask, torch.zeros(batch, 1, dtype=torch.bool, device=h.device)], dim=1)
        return model.enc.run_blocks(h, mask, model.config.feature_redraw_interval, self.key_counts)

    def translate(self, model: TranslatorModel, encodings: torch.Tensor) -> torch.Tensor:
        """Collapsed encodings -> the protein sequence, as the full translator would give.

        Parameters
        ----------
        model : TranslatorModel
            The model.
        encodings : torch.Tensor
            ``(B, tokens, dim)``.

        Returns
        -------
        torch.Tensor
            ``(B, P, dim)``.
        """
        if self.first_layer is None and _packed_translator_applies(model, encodings):
            return self._translate_packed(model, encodings)
        channels = encodings.transpose(1, 2)
        if self.first_layer is not None:
            first = self.first_layer(channels)
        else:
            first = nn.functional.linear(channels, self.first_weight, model.translator.layer(0).bias)
        return model.translator.after_first(first).transpose(1, 2)

    def _translate_packed(self, model: TranslatorModel, encodings: torch.Tensor) -> torch.Tensor:
        """`translate` with the layers' products through oneDNN (inference, float32, CPU)."""
        translator = model.translator
        bias = translator.layer(0).bias
        key = tensors_key(self.first_weight, bias)
        first = self.packed_first.get(key)
        if first is None:
            first = pack(self.first_weight, bias)
            self.packed_first.clear()
            self.packed_first[key] = first
        batch, tokens, dim = encodings.shape
        x = first(encodings.transpose(1, 2).reshape(batch * dim, tokens))  # (B * dim, fc0 out)
        for i in range(1, translator.depth):
            x = packed(translator.layer(i))(x.relu_())
        return x.view(batch, dim, -1).transpose(1, 2)

    def real_encodings(self, encodings: torch.Tensor) -> torch.Tensor:
        """The real tokens' rows of collapsed encodings (for cell embeddings).

        Parameters
        ----------
        encodings : torch.Tensor
            ``(B, tokens, dim)``.

        Returns
        -------
        torch.Tensor
            ``(B, n, dim)``.
        """
        return encodings[:, : self.real_positions.numel()]


def _packed_translator_applies(model: TranslatorModel, encodings: torch.Tensor) -> bool:
    """The translator's layers may run packed: inference mode, eval, float32 nn.Linear layers, ReLU, no hooks."""
    translator = model.translator
    if translator.training or not torch.is_inference_mode_enabled() or not enabled(encodings.device):
        return False
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    if encodings.dtype != torch.float32 or type(translator.act) is not nn.ReLU:
        return False
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return False
    layers = [translator.layer(i) for i in range(translator.depth)]
    return all(type(layer) is nn.Linear and layer.weight.dtype == torch.float32
               and not (layer._forward_hooks or layer._forward_pre_hooks) for layer in layers)
