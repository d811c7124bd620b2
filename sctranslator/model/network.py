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

    Inputs are always padded to exactly L genes and P proteins: the translator between encoder and
    decoder is positional.

    Parameters
    ----------
    config : ModelConfig
        The sizes.
    device : torch.device, str or None
        Where the weights are made, randomly initialised; "meta": shapes only (see `skeleton`).
    """

    def __init__(self, config: ModelConfig, *, device: torch.device | str | None = None):
        super().__init__()
        self.config = config
        self.enc = PerformerStack(dim=config.dim, depth=config.enc_depth, heads=config.enc_heads,
                                  dim_head=config.enc_dim_head, nb_features=config.enc_nb_features,
                                  vocab_size=config.vocab_size, ff_mult=config.ff_mult, device=device)
        self.translator = SequenceTranslator(config.translator_layer_widths, config.initial_dropout, device=device)
        self.dec = PerformerStack(dim=config.dim, depth=config.dec_depth, heads=config.dec_heads,
                                  dim_head=config.dec_dim_head, nb_features=config.dec_nb_features,
                                  vocab_size=config.vocab_size, ff_mult=config.ff_mult, device=device)
        # Gene and protein panels (token ids) when the model was trained on fixed panels; set by
        # checkpoint I/O and the trainer, read by the engine's plan. None for published checkpoints.
        self.panel: dict[str, Any] | None = None
        self.eval()

    @classmethod
    def skeleton(cls, config: ModelConfig) -> TranslatorModel:
        """The network's structure without weights (on the meta device), to load a checkpoint into.

        Nothing is allocated or drawn: initialising 117 M parameters only to overwrite them took about
        as long as loading them. `sctranslator.model.bundle.load_state_strictly` fills it.

        Parameters
        ----------
        config : ModelConfig
            The sizes.

        Returns
        -------
        TranslatorModel
            In eval mode, every parameter and buffer on the meta device.
        """
        return cls(config, device="meta")

    def encode(self, values: torch.Tensor, gene_ids: torch.Tensor,
               gene_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Run the gene encoder.

        Parameters
        ----------
        values : torch.Tensor
            float32 ``(B, L)`` prepared expression values.
        gene_ids : torch.Tensor
            int64 ``(B, L)`` gene tokens.
        gene_mask : torch.Tensor or None
            bool ``(B, L)``: real positions; None: all.

        Returns
        -------
        torch.Tensor
            ``(B, L, dim)`` encodings.
        """
        mask = _full_mask(gene_ids, gene_mask)
        h = self.enc.to_vector(values.to(self.enc.to_vector.weight.dtype).unsqueeze(-1))
        h = h + self.enc.pos_emb(gene_ids)
        return self.enc.run_blocks(h, mask, self.config.feature_redraw_interval)

    def translate_sequence(self, encodings: torch.Tensor) -> torch.Tensor:
        """Map the gene sequence onto the protein sequence along the sequence axis.

        Parameters
        ----------
        encodings : torch.Tensor
            ``(B, L, dim)``.

        Returns
        -------
        torch.Tensor
            ``(B, P, dim)``.
        """
        return self.translator(encodings.transpose(1, 2)).transpose(1, 2)

    def decode(self, translated: torch.Tensor, protein_ids: torch.Tensor,
               protein_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Run the protein decoder.

        Parameters
        ----------
        translated : torch.Tensor
            ``(B, P, dim)`` from `translate_sequence`.
        protein_ids : torch.Tensor
            int64 ``(B, P)`` protein tokens.
        protein_mask : torch.Tensor or None
            bool ``(B, P)``: real positions; None: all.

        Returns
        -------
        torch.Tensor
            ``(B, P)`` predicted relative protein abundance.
        """
        mask = _full_mask(protein_ids, protein_mask)
        h = translated + self.dec.pos_emb(protein_ids)
        h = self.dec.run_blocks(h, mask, self.config.feature_redraw_interval)
        return self.dec.to_out(h).squeeze(-1)

    def forward(self, values: torch.Tensor, gene_ids: torch.Tensor, protein_ids: torch.Tensor,
                gene_mask: torch.Tensor | None = None,
                protein_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Predict proteins from genes: `encode`, `translate_sequence`, `decode`.

        Parameters
        ----------
        values : torch.Tensor
            float32 ``(B, L)`` prepared expression values (per-cell min-max scaled).
        gene_ids : torch.Tensor
            int64 ``(B, L)``.
        protein_ids : torch.Tensor
            int64 ``(B, P)``.
        gene_mask : torch.Tensor or None
            bool ``(B, L)``; None: all real.
        protein_mask : torch.Tensor or None
            bool ``(B, P)``; None: all real.

        Returns
        -------
        torch.Tensor
            ``(B, P)`` predictions on the model's target scale.
        """
        encodings = self.encode(values, gene_ids, gene_mask)
        return self.decode(self.translate_sequence(encodings), protein_ids, protein_mask)

    def n_parameters(self) -> int:
        """Number of parameters.

        Returns
        -------
        int
            All parameters, trainable or not.
        """
        return sum(p.numel() for p in self.parameters())
