"""Per-batch attention quantities: encoder and decoder received attention, gene-to-protein scores.

Definitions (A_lh: the implied row-normalised attention of layer l, head h; the means run over
all H heads and all layers of a stack, as the original scTranslator script averages them):

- encoder attention received by gene position m:  r_m = mean_lh sum_{n real} A_lh[n, m]
- decoder attention received by protein position j: the same over real protein queries
- gene-to-protein, as the original `enc2dec_weights`:  G[i, j] = sum_k T(A_enc[i, :])[k] A_dec[k, j]
  with A_enc = mean_lh A_lh of the encoder (L x L), T the model's translator MLP applied to each
  row (L -> P, biases and ReLU included), A_dec = mean_lh of the decoder (P x P); i a real gene
  (query), j a real protein. k runs over all P decoder positions and the translator reads all L
  key positions, padding included, exactly as the original's dense matrices do.

Nothing of size L x L (or P x P) is formed: the translator's first layer is linear, so
W0 A_enc[i, :] = mean_lh (q'_i / D_i) (W0 k')^T is computed from the (L x nb) features and an
(nb x H1) product per head; the decoder factor is ((T / D) q') k'^T. Peak memory per cell is
O(L x (H1 + nb)) plus one block of `row_block` genes x P.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sctranslator.analysis.attention.math import concat_heads, normalised_queries, received_attention
from sctranslator.analysis.attention.trace import LayerCallback, capture_features
from sctranslator.model import TranslatorModel


@dataclass
class EncoderPass:
    """What one encoder pass leaves for the interaction scores.

    Parameters
    ----------
    encodings : torch.Tensor
        ``(B, L, dim)``.
    gene_received : torch.Tensor
        ``(B, n_rows)``: attention received by the traced gene rows.
    first_layer : torch.Tensor
        ``(B, n_rows, H1)``: ``W0 A_enc[i, :]^T`` for the traced rows, bias not added.
    """
    encodings: torch.Tensor  # (B, L, dim)
    gene_received: torch.Tensor  # (B, n_rows): attention received by the traced gene rows
    first_layer: torch.Tensor  # (B, n_rows, H1): W0 A_enc[i, :]^T for the traced rows, bias not added


@dataclass
class DecoderPass:
    """What one decoder pass (one protein window) leaves for the interaction scores.

    Parameters
    ----------
    protein_received : torch.Tensor
        ``(B, P)``.
    queries : torch.Tensor
        ``(B, P, layers * H * nb)``: q'/D of every layer and head, concatenated.
    keys : torch.Tensor
        ``(B, P, layers * H * nb)``: k' likewise.
    """
    protein_received: torch.Tensor  # (B, P)
    queries: torch.Tensor  # (B, P, layers * H * nb): q'/D of every layer and head, concatenated
    keys: torch.Tensor  # (B, P, layers * H * nb): k' likewise


def encoder_pass(model: TranslatorModel, values: torch.Tensor, gene_ids: torch.Tensor, gene_mask: torch.Tensor,
                 rows: torch.Tensor, *, row_block: int = 2048, as_published: bool = False,
                 also: LayerCallback | None = None) -> EncoderPass:
    """Run the encoder, accumulating received attention and the translator's first layer for `rows`.

    Parameters
    ----------
    model
        The model (eval mode, under `torch.inference_mode`).
    values, gene_ids, gene_mask
        (B, L) prepared values, token ids and mask.
    rows
        (n_rows,) int64 the positions traced.
    row_block
        Rows at a time through the per-head products.
    as_published
        Features from the post-residual state (see `capture_features`).
    also
        `also(layer, q', k')`, when given, sees each layer's features too (e.g. for gene-gene rows).

    Returns
    -------
    EncoderPass
        The encodings (B, L, dim), received attention (B, n_rows) and the translator's first layer
        (B, n_rows, H1), means over heads and layers.
    """
    stack = model.enc
    weight = model.translator.layer(0).weight  # (H1, L)
    batch = values.shape[0]
    received = torch.zeros(batch, rows.shape[0], dtype=torch.float32, device=values.device)
    first = torch.zeros(batch, rows.shape[0], weight.shape[0], dtype=torch.float32, device=values.device)
    query_weights = gene_mask.to(torch.float32)[:, None, :]
    n_heads = stack.layers[0].attn.heads if len(stack.layers) else 1

    def on_layer(index: int, q_feat: torch.Tensor, k_feat: torch.Tensor) -> None:
        received.add_(received_attention(q_feat, k_feat, query_weights).sum(dim=1)[:, rows])
        # (B, H, nb, H1) -> (B, H * nb, H1), heads-major like concat_heads
        projected = torch.matmul(k_feat.transpose(-1, -2), weight.T).reshape(batch, -1, weight.shape[0])
        for lo in range(0, rows.shape[0], row_block):
            chunk = rows[lo:lo + row_block]
            queries = normalised_queries(q_feat[:, :, chunk], k_feat)
            first[:, lo:lo + chunk.shape[0]].add_(torch.matmul(concat_heads(queries), projected))
        if also is not None:
            also(index, q_feat, k_feat)

    with capture_features(stack, on_layer, as_published=as_published):
        encodings = model.encode(values, gene_ids, gene_mask)
    scale = 1.0 / (n_heads * max(1, len(stack.layers)))
    return EncoderPass(encodings, received.mul_(scale), first.mul_(scale))


def decoder_pass(model: TranslatorModel, translated: torch.Tensor, protein_ids: torch.Tensor,
                 protein_mask: torch.Tensor, *, as_published: bool = False) -> DecoderPass:
    """Run the decoder on one protein window, keeping its features for the gene-to-protein product.

    Parameters
    ----------
    model
        The model (eval mode).
    translated
        (B, P, dim) the translator's output.
    protein_ids, protein_mask
        (B, P) the window's token ids and mask.
    as_published
        Features from the post-residual state.

    Returns
    -------
    DecoderPass
        Received attention (B, P) and the concatenated, pre-scaled query and key features.
    """
    stack = model.dec
    received = torch.zeros(translated.shape[:2], dtype=torch.float32, device=translated.device)
    queries: list[torch.Tensor] = []
    keys: list[torch.Tensor] = []

    def on_layer(_: int, q_feat: torch.Tensor, k_feat: torch.Tensor) -> None:
        received.add_(received_attention(q_feat, k_feat, protein_mask.to(torch.float32)[:, None, :]).sum(dim=1))
        queries.append(concat_heads(normalised_queries(q_feat, k_feat)))
        keys.append(concat_heads(k_feat))

    with capture_features(stack, on_layer, as_published=as_published):
        model.decode(translated, protein_ids, protein_mask)
    n_terms = stack.layers[0].attn.heads * len(stack.layers)
    return DecoderPass(received / n_terms, torch.cat(queries, dim=-1) / n_terms, torch.cat(keys, dim=-1))


def translate_rows(model: TranslatorModel, first_layer: torch.Tensor) -> torch.Tensor:
    """Finish the translator MLP from its first layer's pre-activation (bias added here).

    Parameters
    ----------
    model
        The model.
    first_layer
        (..., H1) the first layer's product without its bias.

    Returns
    -------
    torch.Tensor
        (..., P) the translator's output.
    """
    translator = model.translator
    x = first_layer + translator.layer(0).bias
    for i in range(1, translator.depth):
        x = translator.layer(i)(translator.act(x))  # ReLU between layers, none after the last
    return x


def gene_to_protein_block(translated_rows: torch.Tensor, decoders: list[DecoderPass]) -> torch.Tensor:
    """G rows for one block of genes over every protein window.

    Parameters
    ----------
    translated_rows
        (B, r, P) the translated encoder attention rows of r genes.
    decoders
        One `DecoderPass` per protein window.

    Returns
    -------
    torch.Tensor
        (B, r, W * P) gene-to-protein scores.
    """
    return torch.cat([torch.matmul(torch.matmul(translated_rows, d.queries), d.keys.transpose(1, 2))
                      for d in decoders], dim=-1)
