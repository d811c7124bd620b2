"""Does the expression look like what the model expects? Warnings, not errors.

Two mistakes give plausible-looking but wrong predictions without any error:
- X already normalised / log-transformed (e.g. scanpy's normalize_total + log1p, with the counts
  kept in `.raw` or a layer) given to a model that normalises itself: it is normalised twice;
- raw counts given to a model that takes X as stored (published checkpoints, `normalize='none'`).
A few hundred cells from the start, middle and end of the input are sampled; counts are integers
(non-integer values mean a transform was applied), and log-scale data has a small maximum.
Every command that reads expression calls one of the two public functions below.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from sctranslator.engine.sources import Source
from sctranslator.plan import Plan

log = logging.getLogger(__name__)

SAMPLE_CELLS = 300  # cells sampled, in three slices
RAW_COUNT_MAX = 50.0  # integer data above this looks like raw counts
LOG_SCALE_MAX = 30.0  # log1p of any realistic normalised count is below this
NON_INTEGER_FRACTION = 0.01  # at least this share of non-zero values not integers: transformed data


@dataclass(frozen=True)
class ValueProfile:
    """The finite non-zero values of a sample: how many, the share that is not an integer, the max.

    Parameters
    ----------
    n_cells : int
        Cells sampled.
    n_values : int
        Finite non-zero values among them.
    non_integer_fraction : float
        Share of those values that are not integers.
    max : float
        The largest value.
    """

    n_cells: int
    n_values: int
    non_integer_fraction: float
    max: float

    @property
    def looks_like_counts(self) -> bool:
        """Whether the values look like raw counts: integers, some above the raw-count bound."""
        return self.n_values > 0 and self.non_integer_fraction == 0 and self.max > RAW_COUNT_MAX

    @property
    def looks_transformed(self) -> bool:
        """Whether the values look normalised or log-transformed: many are not integers."""
        return self.n_values > 0 and self.non_integer_fraction >= NON_INTEGER_FRACTION

    def describe(self) -> str:
        """What the values look like, for a warning.

        Returns
        -------
        str
            One phrase naming the evidence.
        """
        if self.looks_transformed:
            kind = "log-transformed" if self.max <= LOG_SCALE_MAX else "normalised"
            return (f"already {kind} ({self.non_integer_fraction:.0%} of the non-zero values are not integers, "
                    f"max {self.max:.3g}, in {self.n_cells} sampled cells)")
        return f"raw counts (integers up to {self.max:.0f}, in {self.n_cells} sampled cells)"


def profile_values(block: Any) -> ValueProfile:
    """Profile a CSR or dense block (NaN and Inf are left to the block checks).

    Parameters
    ----------
    block : numpy.ndarray or scipy.sparse matrix
        Cells x genes.

    Returns
    -------
    ValueProfile
        The block's value profile.
    """
    values = block.data if hasattr(block, "tocsr") else np.asarray(block).ravel()
    values = values[np.isfinite(values) & (values != 0)]
    if values.size == 0:
        return ValueProfile(int(block.shape[0]), 0, 0.0, 0.0)
    fraction = float(np.count_nonzero(np.mod(values, 1))) / values.size
    return ValueProfile(int(block.shape[0]), int(values.size), fraction, float(values.max()))


def sample_source(source: Source, cells: int = SAMPLE_CELLS) -> Any:
    """Up to `cells` rows of the source: a slice each from its start, middle and end.

    Parameters
    ----------
    source : Source
        The input.
    cells : int
        Rows to read at most.

    Returns
    -------
    numpy.ndarray or scipy.sparse matrix
        The sampled rows.
    """
    import scipy.sparse as sp

    n = source.n_obs
    size = max(1, cells // 3)
    starts = sorted({0, max(0, n // 2 - size // 2), max(0, n - size)})
    ranges, covered = [], 0
    for start in starts:  # clip each slice to the rows after the previous one
        start = max(start, covered)
        stop = min(n, start + size)
        if stop > start:
            ranges.append((start, stop))
            covered = stop
    blocks = [source.read_block(start, stop) for start, stop in ranges]
    if any(sp.issparse(b) for b in blocks):
        return sp.vstack([sp.csr_matrix(b) for b in blocks], format="csr")
    return np.concatenate(blocks) if blocks else np.zeros((0, source.n_vars))


def check_expression_scale(source: Source, plan: Plan, *, what: str = "X") -> str | None:
    """Warn (logging) when the input's expression does not look like what the plan's model expects.

    A model that normalises itself (``plan.normalize`` is not 'none') expects counts; one that takes X
    as stored should not get raw counts.

    Parameters
    ----------
    source : Source
        The input.
    plan : Plan
        The job's plan.
    what : str
        Names the matrix in the message.

    Returns
    -------
    str or None
        The warning's text, or None when all looks right.
    """
    if source.n_obs == 0:
        return None
    profile = profile_values(sample_source(source))
    name = f"{what} of {source.describe()}"
    if plan.normalize != "none" and profile.looks_transformed:
        message = (f"{name} looks {profile.describe()}, but the model normalises its input itself "
                   f"(normalize={plan.normalize}), so it would be normalised twice. Give raw counts: "
                   "--layer NAME for a layer of counts (e.g. --layer counts), --use-raw when they are kept "
                   "in .raw; or --normalize none if X is already what the model was trained on.")
    elif plan.normalize == "none" and profile.looks_like_counts:
        message = (f"{name} looks like {profile.describe()}, but the model takes X as stored (normalize=none). "
                   "Pass --normalize total_log1p for library-size normalisation and log1p first, or --layer "
                   "NAME for a normalised layer.")
    else:
        return None
    log.warning(message)
    return message


def check_counts_table(matrix: Any, *, what: str, advice: str) -> str | None:
    """Warn (logging) when a table that should hold raw counts (measured proteins) looks transformed.

    Parameters
    ----------
    matrix : numpy.ndarray or scipy.sparse matrix
        The table.
    what : str
        Names the table in the message.
    advice : str
        What to do.

    Returns
    -------
    str or None
        The warning's text, or None.
    """
    rows = min(int(matrix.shape[0]), SAMPLE_CELLS)
    profile = profile_values(matrix[:rows])
    if not profile.looks_transformed:
        return None
    message = f"{what} looks {profile.describe()}, but raw counts are expected: {advice}"
    log.warning(message)
    return message
