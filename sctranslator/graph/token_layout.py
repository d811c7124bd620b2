"""The collapsed token layout of one gene layout: the tokens an encoder actually has to compute.

In the published pipeline every padded position (value 0, gene id 0, mask False) is the same token,
so the encoder computes it once and counts it L - n times (see sctranslator.model.collapse for why
that is exact). A layout lists the positions computed as tokens of their own, in order, then one
last token that stands for every position not listed before it:

- with padding: the n real positions, then the first padded position (value 0, id 0, mask False),
  standing for all L - n padded positions;
- without padding: the L positions, the last one standing for itself.

The exported encoder graph takes the gathered inputs plus `token_counts` (how many positions each
token stands for) and `token_positions` (each token's position, whose translator column it uses;
the last token takes the sum of the columns of every position not listed). numpy only: the
onnxruntime and Triton clients build layouts without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class TokenLayout:
    """Which positions of an L-wide layout the encoder computes, and how many positions each stands for.

    The padding collapse: every padding position of a cell (id 0, mask False, value 0) computes the
    same thing, so one token stands for all of them.

    Parameters
    ----------
    positions : numpy.ndarray
        int64 ``(N,)``: the computed positions, ascending.
    counts : numpy.ndarray
        int64 ``(N,)``: how many positions each token stands for (1, except a shared padding token).
    length : int
        L.
    """

    positions: np.ndarray  # int64 (N,): position of each token; the last one is a representative
    counts: np.ndarray  # float32 (N,): 1 for every token but the last; the last: L - (N - 1)
    length: int  # L

    @property
    def tokens(self) -> int:
        """N: the tokens computed per cell."""
        return int(self.positions.shape[0])

    @property
    def collapsed(self) -> bool:
        """True when the last token stands for more than one position."""
        return bool(self.counts[-1] > 1)

    @cached_property
    def represented(self) -> np.ndarray:
        """(L - N + 1,) int64: the positions the last token stands for (padding, when collapsed)."""
        keep = np.ones(self.length, dtype=bool)
        keep[self.positions[:-1]] = False
        return np.flatnonzero(keep)

    def fits(self, values: np.ndarray) -> bool:
        """Whether the layout holds for a batch's values.

        Parameters
        ----------
        values : numpy.ndarray
            ``(B, L)`` model values.

        Returns
        -------
        bool
            True when every cell is 0 wherever the last token stands for several positions (they are all
            padding); a padded-looking position holding a value does not fit.
        """
        return not self.collapsed or not np.any(np.asarray(values)[:, self.represented])

    def gather(self, row_or_rows: np.ndarray) -> np.ndarray:
        """The tokens' entries of a per-position array (values, gene ids, masks).

        Parameters
        ----------
        row_or_rows : numpy.ndarray
            ``(L,)`` or ``(B, L)``.

        Returns
        -------
        numpy.ndarray
            ``(N,)`` or ``(B, N)``.
        """
        return np.ascontiguousarray(np.take(row_or_rows, self.positions, axis=-1))

    def encoder_inputs(self, values: np.ndarray, gene_ids: np.ndarray, gene_mask: np.ndarray) -> dict[str, np.ndarray]:
        """The encoder graph's five inputs for a batch.

        Parameters
        ----------
        values : numpy.ndarray
            float32 ``(B, L)`` model values.
        gene_ids : numpy.ndarray
            int64 ``(L,)`` (shared by the batch) or ``(B, L)``.
        gene_mask : numpy.ndarray
            bool ``(L,)`` or ``(B, L)``.

        Returns
        -------
        dict of str to numpy.ndarray
            ``(B, N)`` values, gene ids and mask, plus the token counts and positions.
        """
        values = np.asarray(values)
        batch = values.shape[0]
        tokens = self.tokens

        def rows(array: np.ndarray, dtype: type[np.generic]) -> np.ndarray:
            taken = self.gather(np.asarray(array))
            return np.ascontiguousarray(np.broadcast_to(taken, (batch, tokens)), dtype=dtype)

        return {"values": rows(values, np.float32), "gene_ids": rows(gene_ids, np.int64),
                "gene_mask": rows(gene_mask, np.bool_), "token_counts": self.counts,
                "token_positions": self.positions}

    @classmethod
    def full(cls, length: int) -> TokenLayout:
        """Every position its own token (no collapse).

        Parameters
        ----------
        length : int
            L.

        Returns
        -------
        TokenLayout
            N = L tokens.
        """
        return cls(positions=np.arange(length, dtype=np.int64), counts=np.ones(length, dtype=np.float32),
                   length=length)

    @classmethod
    def for_batch(cls, gene_ids: np.ndarray, gene_mask: np.ndarray, values: np.ndarray) -> TokenLayout:
        """The layout of a batch whose gene ids and mask may differ per cell.

        Parameters
        ----------
        gene_ids : numpy.ndarray
            int64 ``(B, L)`` or ``(L,)``.
        gene_mask : numpy.ndarray
            bool ``(B, L)`` or ``(L,)``.
        values : numpy.ndarray
            ``(B, L)`` model values.

        Returns
        -------
        TokenLayout
            `for_layout` when every cell has the same ids and mask, else the full layout (cells padded
            differently share no pad token).
        """
        gene_ids = np.asarray(gene_ids)
        gene_mask = np.asarray(gene_mask, dtype=bool)
        if gene_ids.ndim == 1 and gene_mask.ndim == 1:
            return cls.for_layout(gene_ids, gene_mask, values)
        ids = np.atleast_2d(gene_ids)
        mask = np.atleast_2d(gene_mask)
        if (ids == ids[:1]).all() and (mask == mask[:1]).all():
            return cls.for_layout(ids[0], mask[0], values)
        return cls.full(int(ids.shape[-1]))

    @classmethod
    def for_layout(cls, gene_ids: np.ndarray, gene_mask: np.ndarray, values: np.ndarray | None = None) -> TokenLayout:
        """The layout of one gene layout: padding (mask False, id 0) collapses into one token.

        Parameters
        ----------
        gene_ids : numpy.ndarray
            int64 ``(L,)``.
        gene_mask : numpy.ndarray
            bool ``(L,)``.
        values : numpy.ndarray or None
            ``(B, L)``: padding must also be 0 in every cell; a padded-looking position holding a value is
            computed as its own token.

        Returns
        -------
        TokenLayout
            Every position its own token when there is no padding.
        """
        gene_ids = np.asarray(gene_ids)
        gene_mask = np.asarray(gene_mask, dtype=bool)
        length = int(gene_ids.shape[0])
        padded = ~gene_mask & (gene_ids == 0)
        if values is not None:
            padded &= ~np.any(np.asarray(values) != 0, axis=0)
        real = np.flatnonzero(~padded)
        pads = np.flatnonzero(padded)
        positions = np.concatenate([real, pads[:1]]).astype(np.int64)
        counts = np.ones(positions.shape[0], dtype=np.float32)
        counts[-1] = length - (positions.shape[0] - 1)
        return cls(positions=positions, counts=counts, length=length)
