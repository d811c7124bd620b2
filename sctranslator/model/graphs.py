"""The model as the two graphs an export serves: encoder + translator, and decoder.

The encoder and translator do not depend on the proteins, so a runtime computes them once per
cell and runs only the decoder once per window of P proteins. The encoder side takes a collapsed
token layout (sctranslator.graph.token_layout): padding computed once, counted by `token_counts`, and
the translator's first layer built from the tokens' columns (the last token takes the sum of the
columns of every position not listed), so padded and unpadded layouts run the same graph.

    EncoderGraph: values (B, N) f32, gene_ids (B, N) i64, gene_mask (B, N) bool,
                  token_counts (N,) f32, token_positions (N,) i64  ->  translated (B, P, dim) f32
    DecoderGraph: translated (B, P, dim) f32, protein_ids (B, P) i64, protein_mask (B, P) bool
                  ->  predictions (B, P) f32

Inputs and outputs stay float32 whatever the weights' dtype (fp16/bf16 graphs cast inside).
"""

from __future__ import annotations

import torch
from torch import nn

from sctranslator.model.network import TranslatorModel


class EncoderGraph(nn.Module):
    """The exported encoder graph: encoder blocks over a collapsed token layout, then the translator.

    Parameters
    ----------
    model : TranslatorModel
        The model.
    """

    def __init__(self, model: TranslatorModel):
        super().__init__()
        self.model = model
        weight = model.translator.layer(0).weight
        # Summed in float64 once and kept in float32 whatever the weights' dtype: the last token's
        # column is this minus the listed columns' sum, a difference of two sums over up to L columns
        # that fp16/bf16 would cancel badly.
        with torch.no_grad():
            sums = weight.detach().double().sum(dim=1).float()
        self.register_buffer("fc0_column_sums", sums, persistent=False)

    def forward(self, values: torch.Tensor, gene_ids: torch.Tensor, gene_mask: torch.Tensor,
                token_counts: torch.Tensor, token_positions: torch.Tensor) -> torch.Tensor:
        """Encode a batch over its token layout and translate it to the protein sequence.

        Parameters
        ----------
        values : torch.Tensor
            float32 ``(B, N)`` token values.
        gene_ids : torch.Tensor
            int64 ``(B, N)``.
        gene_mask : torch.Tensor
            bool ``(B, N)``.
        token_counts : torch.Tensor
            int64 ``(N,)`` positions each token stands for.
        token_positions : torch.Tensor
            int64 ``(N,)`` each token's position in L.

        Returns
        -------
        torch.Tensor
            ``(B, P, dim)`` translated sequence.
        """
        enc = self.model.enc
        dtype = enc.to_vector.weight.dtype
        h = enc.to_vector(values.to(dtype).unsqueeze(-1)) + enc.pos_emb(gene_ids)
        h = enc.run_blocks(h, gene_mask, None, token_counts)  # (B, N, dim)
        channels = h.transpose(1, 2)  # (B, dim, N)
        first = self.model.translator.layer(0)
        listed = first.weight.index_select(1, token_positions[:-1])  # (fc0 out, N - 1)
        # The positions the last token stands for; the sums in float32 (see __init__).
        last_column = (self.fc0_column_sums - listed.float().sum(dim=1)).to(listed.dtype)
        x = torch.matmul(channels[..., :-1], listed.T) + channels[..., -1:] * last_column + first.bias
        return self.model.translator.after_first(x).transpose(1, 2).float()


class DecoderGraph(nn.Module):
    """The exported decoder graph: protein embeddings plus the translated sequence, decoder blocks, outputs.

    Parameters
    ----------
    model : TranslatorModel
        The model.
    """

    def __init__(self, model: TranslatorModel):
        super().__init__()
        self.model = model

    def forward(self, translated: torch.Tensor, protein_ids: torch.Tensor, protein_mask: torch.Tensor) -> torch.Tensor:
        """Decode one window of P proteins.

        Parameters
        ----------
        translated : torch.Tensor
            ``(B, P, dim)``.
        protein_ids : torch.Tensor
            int64 ``(B, P)``.
        protein_mask : torch.Tensor
            bool ``(B, P)``.

        Returns
        -------
        torch.Tensor
            ``(B, P)`` predictions.
        """
        dtype = self.model.dec.pos_emb.weight.dtype
        return self.model.decode(translated.to(dtype), protein_ids, protein_mask).float()
