"""TranslatorModel: encoder (genes) -> sequence-axis translator -> decoder (proteins)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sctranslator.model.config import ModelConfig
from sctranslator.model.performer_blocks import PerformerStack
from sctranslator.model.translator import SequenceTranslator


def _full_mask(like: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.ones(like.shape[:2], dtype=torch.bool, device=like.device)
    return mask.to(device=like.device, dtype=torch.bool)


class TranslatorModel(nn.Module):
    """The scTranslator network, faithful to the published checkpoints.

    forward(values (B, L), gene_ids (B, L), protein_ids (B, P), masks) -> predictions (B, P).
    L and P may be shorter than the configured maxima only for the encoder/decoder blocks;
    the translator is positional, so inputs are always padded to exactly L and P.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.enc = PerformerStack(dim=config.dim, depth=config.enc_depth, heads=config.enc_heads,
                                  dim_head=config.enc_dim_head, nb_features=config.enc_nb_features,
                                  vocab_size=config.vocab_size, ff_mult=config.ff_mult)
        self.translator = SequenceTranslator(config.translator_layer_widths, config.initial_dropout)
        self.dec = PerformerStack(dim=config.dim, depth=config.dec_depth, heads=config.dec_heads,
                                  dim_head=config.dec_dim_head, nb_features=config.dec_nb_features,
                                  vocab_size=config.vocab_size, ff_mult=config.ff_mult)
        # Gene and protein panels (token ids) when the model was trained on fixed panels; set by
        # checkpoint I/O and the trainer, read by the engine's plan. None for published checkpoints.
        self.panel: dict[str, Any] | None = None
        self.eval()

    def encode(self, values: torch.Tensor, gene_ids: torch.Tensor,
               gene_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder output (B, L, dim)."""
        mask = _full_mask(gene_ids, gene_mask)
        h = self.enc.to_vector(values.to(self.enc.to_vector.weight.dtype).unsqueeze(-1))
        h = h + self.enc.pos_emb(gene_ids)
        return self.enc.run_blocks(h, mask, self.config.feature_redraw_interval)

    def translate_sequence(self, encodings: torch.Tensor) -> torch.Tensor:
        """(B, L, dim) -> (B, P, dim) along the sequence axis."""
        return self.translator(encodings.transpose(1, 2)).transpose(1, 2)

    def decode(self, translated: torch.Tensor, protein_ids: torch.Tensor,
               protein_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder output (B, P): the predicted relative protein abundance."""
        mask = _full_mask(protein_ids, protein_mask)
        h = translated + self.dec.pos_emb(protein_ids)
        h = self.dec.run_blocks(h, mask, self.config.feature_redraw_interval)
        return self.dec.to_out(h).squeeze(-1)

    def forward(self, values: torch.Tensor, gene_ids: torch.Tensor, protein_ids: torch.Tensor,
                gene_mask: torch.Tensor | None = None,
                protein_mask: torch.Tensor | None = None) -> torch.Tensor:
        encodings = self.encode(values, gene_ids, gene_mask)
        return self.decode(self.translate_sequence(encodings), protein_ids, protein_mask)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
