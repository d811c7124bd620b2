"""Named model configurations for training from scratch ("published", "small", "tiny")."""

from __future__ import annotations

from typing import Any

from sctranslator.errors import CheckpointError
from sctranslator.model import ModelConfig
from sctranslator.options import Preset, check_choice
from sctranslator.vocab import vocabulary_size

# Sizes only; sequence lengths (L, P) follow the training data unless given as overrides.
# Keyed in the order of sctranslator.options.PRESETS (a test keeps the two equal).
PRESETS: dict[str, dict[str, Any]] = {
    "published": {},
    "small": {"dim": 32, "enc_depth": 2, "enc_heads": 4, "enc_dim_head": 16, "dec_depth": 1, "dec_heads": 4,
              "dec_dim_head": 16},
    "tiny": {"dim": 16, "enc_depth": 1, "enc_heads": 2, "enc_dim_head": 8, "dec_depth": 1, "dec_heads": 2,
             "dec_dim_head": 8},
}


def preset_config(name: Preset, *, n_genes: int | None = None, n_proteins: int | None = None,
                  **overrides: Any) -> ModelConfig:
    """The preset `name` sized for a panel of `n_genes` genes and `n_proteins` proteins.

    "published" keeps the published L = 20,000, P = 1,000 and the 85,500-row embeddings, so its
    weights can be swapped with a published checkpoint's; the smaller presets get an embedding table
    just large enough for the vocabulary (smaller bundles).

    Parameters
    ----------
    name : {'published', 'small', 'tiny'}
        The preset.
    n_genes : int or None
        L of "small" and "tiny" (ignored by "published").
    n_proteins : int or None
        P of "small" and "tiny" (ignored by "published").
    **overrides
        ModelConfig fields to change (e.g. ``dim=16``).

    Returns
    -------
    ModelConfig
        The configuration.

    Raises
    ------
    CheckpointError
        An unknown name, or a small preset without its panel sizes.
    """
    check_choice("model configuration", name, Preset, error=CheckpointError)
    settings = dict(PRESETS[name])
    if name != "published":
        genes = overrides.pop("max_genes", None) or n_genes
        proteins = overrides.pop("max_proteins", None) or n_proteins
        if not genes or not proteins:
            raise CheckpointError(f"the {name!r} configuration is sized by the data: give n_genes and n_proteins "
                                  "(or max_genes and max_proteins)")
        settings.update(max_genes=genes, max_proteins=proteins, vocab_size=vocabulary_size() + 1)
    settings.update(overrides)
    return ModelConfig.sized(**settings)
