"""The model's architecture as a serialisable dataclass."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from sctranslator.errors import CheckpointError

GENE_VOCAB_ROWS = 85_500  # embedding rows of the published checkpoints (row 0 = padding)


def default_nb_features(dim_head: int) -> int:
    """Random features per head, as the original chooses them: ``int(d * ln d)``.

    Parameters
    ----------
    dim_head : int
        d, the head width.

    Returns
    -------
    int
        The number of random features.
    """
    return int(dim_head * math.log(dim_head))


def translator_widths(max_genes: int, max_proteins: int, depth: int) -> tuple[int, ...]:
    """Hidden widths of the sequence-axis MLP: L -> ceil(L/f) -> ... -> P with f = (L/P)^(1/D).

    Parameters
    ----------
    max_genes : int
        L.
    max_proteins : int
        P.
    depth : int
        D, the translator's layers.

    Returns
    -------
    tuple of int
        The widths, L first and P last.
    """
    if depth < 1:
        raise CheckpointError(f"translator depth must be >= 1, got {depth}")
    factor = pow(max_genes / max_proteins, 1 / depth)
    return tuple(int(math.ceil(max_genes / factor**i)) for i in range(1, depth))


@dataclass(frozen=True)
class ModelConfig:
    """Every size of the scTranslator encoder, translator and decoder.

    The defaults are the published checkpoints' configuration (117.4 M parameters).

    Parameters
    ----------
    dim : int
        Embedding width.
    enc_depth : int
        Encoder blocks.
    enc_heads : int
        Encoder attention heads.
    enc_dim_head : int
        Encoder head width.
    enc_nb_features : int
        Encoder random features per head (Performer attention).
    dec_depth : int
        Decoder blocks.
    dec_heads : int
        Decoder attention heads.
    dec_dim_head : int
        Decoder head width.
    dec_nb_features : int
        Decoder random features per head.
    max_genes : int
        L, gene positions per cell.
    max_proteins : int
        P, protein positions per window.
    translator_depth : int
        Layers of the sequence-axis translator.
    translator_hidden : tuple of int
        Its hidden widths; () derives them from L, P and the depth.
    vocab_size : int
        Rows of the token embeddings.
    ff_mult : int
        Feed-forward width as a multiple of `dim`.
    initial_dropout : float
        Dropout on the embeddings in training.
    feature_redraw_interval : int or None
        Training steps between redraws of the random features; None: never.
    """

    dim: int = 128
    enc_depth: int = 2
    enc_heads: int = 8
    enc_dim_head: int = 64
    enc_nb_features: int = 266
    dec_depth: int = 2
    dec_heads: int = 8
    dec_dim_head: int = 64
    dec_nb_features: int = 266
    max_genes: int = 20_000  # L: encoder sequence length
    max_proteins: int = 1_000  # P: decoder sequence length
    translator_depth: int = 2
    translator_hidden: tuple[int, ...] = field(default=())  # derived from L, P, depth when empty
    vocab_size: int = GENE_VOCAB_ROWS
    ff_mult: int = 4
    # Training-only settings (no effect in eval mode).
    initial_dropout: float = 0.1
    feature_redraw_interval: int | None = 1000

    def __post_init__(self) -> None:
        if not self.translator_hidden:
            hidden = translator_widths(self.max_genes, self.max_proteins, self.translator_depth)
            object.__setattr__(self, "translator_hidden", hidden)
        object.__setattr__(self, "translator_hidden", tuple(int(w) for w in self.translator_hidden))
        if len(self.translator_hidden) != self.translator_depth - 1:
            raise CheckpointError(
                f"translator_hidden has {len(self.translator_hidden)} widths but translator_depth "
                f"{self.translator_depth} needs {self.translator_depth - 1}"
            )
        for name in ("dim", "enc_depth", "enc_heads", "enc_dim_head", "enc_nb_features", "dec_depth",
                     "dec_heads", "dec_dim_head", "dec_nb_features", "max_genes", "max_proteins"):
            if int(getattr(self, name)) < 1:
                raise CheckpointError(f"model configuration: {name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def sized(cls, **overrides: Any) -> ModelConfig:
        """A configuration whose random-feature counts follow the head widths unless given.

        Parameters
        ----------
        **overrides
            Fields to change.

        Returns
        -------
        ModelConfig
            The configuration.
        """
        for side in ("enc", "dec"):
            head = overrides.get(f"{side}_dim_head", getattr(cls, f"{side}_dim_head"))
            overrides.setdefault(f"{side}_nb_features", default_nb_features(int(head)))
        return cls(**overrides)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-able values.

        Returns
        -------
        dict
            Field -> value.
        """
        data = asdict(self)
        data["translator_hidden"] = list(self.translator_hidden)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """A configuration from `to_dict`'s output (unknown keys refused).

        Parameters
        ----------
        data : dict
            Field -> value.

        Returns
        -------
        ModelConfig
            The configuration.

        Raises
        ------
        CheckpointError
            Unknown or invalid fields.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"model configuration has unknown settings {unknown}; "
                                  "was it written by a newer sctranslator?")
        values = dict(data)
        if "translator_hidden" in values:
            values["translator_hidden"] = tuple(values["translator_hidden"])
        return cls(**values)

    @property
    def translator_layer_widths(self) -> tuple[int, ...]:
        """The translator's widths, L first and P last (given or derived)."""
        return (self.max_genes, *self.translator_hidden, self.max_proteins)
