"""Learning-rate schedule: linear warm-up, then cosine or linear decay (or constant)."""

from __future__ import annotations

import math
from collections.abc import Callable

from sctranslator.errors import InputDataError
from sctranslator.options import DECAYS


def lr_factor(total_steps: int, warmup_steps: int, decay: str = "cosine",
              min_ratio: float = 0.0) -> Callable[[int], float]:
    """The learning-rate multiplier per optimizer step, for ``LambdaLR``: linear warm-up, then decay.

    Parameters
    ----------
    total_steps : int
        Steps of the run.
    warmup_steps : int
        Steps of linear warm-up.
    decay : {'cosine', 'linear', 'constant'}
        The decay after the warm-up.
    min_ratio : float
        The final multiplier.

    Returns
    -------
    callable
        step (0-based) -> multiplier of the base learning rate.
    """
    if decay not in DECAYS:
        raise InputDataError(f"unknown learning-rate decay {decay!r}; choose one of {DECAYS}")
    warmup_steps = max(0, min(warmup_steps, total_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if decay == "constant":
            return 1.0
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if decay == "cosine" else 1 - progress
        return min_ratio + (1 - min_ratio) * shape

    return factor
