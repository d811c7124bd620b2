"""The sequence-axis MLP that maps L gene positions onto P protein positions."""

from __future__ import annotations

import math

import torch
from torch import nn


def dropout_rates(depth: int, initial: float) -> list[float]:
    """Dropout after each hidden layer, as the original schedules it (training only).

    The first hidden layer uses `initial`; middle layer i uses ``1.1^(i+1) * initial`` in the first half
    and ``1.1^(depth-1-i) * initial`` in the second half, falling back to `initial` whenever the scaled
    rate would reach 1.

    Parameters
    ----------
    depth : int
        Layers.
    initial : float
        The first rate.

    Returns
    -------
    list of float
        One rate per hidden layer.
    """
    rates = [initial] if depth > 1 else []
    for i in range(1, depth - 1):
        if i < math.ceil(depth / 2):
            scaled = 1.1 ** (i + 1) * initial
        else:
            scaled = 1.1 ** (depth - 1 - i) * initial
        rates.append(scaled if scaled < 1 else initial)
    return rates


class SequenceTranslator(nn.Module):
    """Linear layers fc0, fc1, ... along the sequence axis, with ReLU between and none after the last.

    Input ``(B, C, L)`` -> output ``(B, C, P)``; the same MLP is applied to every channel.

    Parameters
    ----------
    widths : tuple of int
        L, the hidden widths, P.
    initial_dropout : float
        The first hidden layer's dropout (see `dropout_rates`).
    device : torch.device, str or None
        Where the weights are made ("meta": shapes only).
    """

    def __init__(self, widths: tuple[int, ...], initial_dropout: float = 0.1, *,
                 device: torch.device | str | None = None):
        super().__init__()
        self.depth = len(widths) - 1
        for i in range(self.depth):
            self.add_module(f"fc{i}", nn.Linear(widths[i], widths[i + 1], device=device))
        self.dropouts = nn.ModuleList(nn.Dropout(p) for p in dropout_rates(self.depth, initial_dropout))
        self.act = nn.ReLU()

    def layer(self, i: int) -> nn.Linear:
        """The i-th linear layer.

        Parameters
        ----------
        i : int
            Its index.

        Returns
        -------
        torch.nn.Linear
            fc{i}.
        """
        return getattr(self, f"fc{i}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map the sequence axis from L to P.

        Parameters
        ----------
        x : torch.Tensor
            ``(B, C, L)``.

        Returns
        -------
        torch.Tensor
            ``(B, C, P)``.
        """
        return self.after_first(self.layer(0)(x))

    def after_first(self, x: torch.Tensor) -> torch.Tensor:
        """Every step after fc0's affine map.

        Parameters
        ----------
        x : torch.Tensor
            ``(B, C, fc0 out)``.

        Returns
        -------
        torch.Tensor
            ``(B, C, P)``.
        """
        for i in range(1, self.depth):
            x = self.layer(i)(self.act(self.dropouts[i - 1](x)))
        return x
