"""Named model configurations for training from scratch ("published", "small", "tiny")."""

from __future__ import annotations

from typing import Any

from sctranslator.errors import CheckpointError
from sctranslator.model import ModelConfig
from sctranslator.vocab import vocabulary_size

# Sizes only; sequence lengths (L, P) follow the training data unless given as overrides.
PRESETS: dict[str, dict[str, Any]] = {
    "published": {},
    "small": {"dim": 32, "enc_depth": 2, "enc_heads": 4, "enc_dim_head": 16, "dec_depth": 1, "dec_heads": 4,
              "dec_dim_head": 16},
    "tiny": {"dim": 16, "enc_depth": 1, "enc_heads": 2, "enc_dim_head": 8, "dec_depth": 1, "dec_heads": 2,
             "dec_dim_head": 8},
}


def preset_config(name: str, *, n_genes: int, n_proteins: int, **overrides: Any) -> ModelConfig:
    """The preset `name` sized for a panel of `n_genes` genes and `n_proteins` proteins.

    "published" keeps the published L = 20,000, P = 1,000 and the 85,500-row embeddings (so its
    weights can be swapped with a published checkpoint's); the smaller presets use L = n_genes,
    P = n_proteins and an embedding table just large enough for the vocabulary (smaller bundles).
    """
    if name not in PRESETS:
        raise CheckpointError(f"unknown model configuration {name!r}; choose one of {sorted(PRESETS)}")
    settings = dict(PRESETS[name])
    if name != "published":
        settings.update(max_genes=n_genes, max_proteins=n_proteins, vocab_size=vocabulary_size() + 1)
    settings.update(overrides)
    return ModelConfig.sized(**settings)
