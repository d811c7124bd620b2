"""Optional library-size normalisation of a block: ``log1p(x / total * target_sum)`` and variants.

The original scTranslator takes X as stored; whether a checkpoint expects raw counts or
log-normalised data is the user's call, so the transform is an explicit setting:

* ``"none"``: values as stored;
* ``"log1p"``: ``log1p(x)``;
* ``"total"``: ``x / total * target_sum``, total = sum of ALL the row's input columns
  (mapped or not), like ``scanpy.pp.normalize_total``;
* ``"total_log1p"``: both, like ``normalize_total`` followed by ``scanpy.pp.log1p``.

A row whose total is 0 is left as it is (divided by 1), as scanpy does.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sctranslator.kernels._preprocess_numba import normalize_csr_kernel, normalize_dense_kernel
from sctranslator.kernels.coerce import as_csr_arrays, as_dense_array, is_sparse
from sctranslator.options import NORMALIZE_MODES  # the one list of choices
from sctranslator.options import Normalize as NormalizeMode


def normalize_flags(normalize: str, target_sum: float) -> tuple[bool, bool]:
    """What a normalisation mode does: (divide by the total, take log1p).

    Parameters
    ----------
    normalize : str
        "none", "log1p", "total" or "total_log1p".
    target_sum : float
        Library size after dividing by the total; must be positive and finite.

    Returns
    -------
    tuple of bool
        (divide by total, take log1p).

    Raises
    ------
    ValueError
        An unknown mode, or a `target_sum` that is not a positive finite number.
    """
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"normalize must be one of {', '.join(NORMALIZE_MODES)}; got {normalize!r}")
    do_total = normalize in ("total", "total_log1p")
    if do_total and not (np.isfinite(target_sum) and target_sum > 0):
        raise ValueError(f"target_sum must be a positive finite number; got {target_sum!r}")
    return do_total, normalize in ("log1p", "total_log1p")


def normalize_block(
    block: np.ndarray | sp.spmatrix | sp.sparray,
    normalize: NormalizeMode = "total_log1p",
    *,
    target_sum: float = 1e4,
    inplace: bool = False,
) -> np.ndarray | sp.csr_matrix | sp.csr_array:
    """Library-size normalise and/or log1p a block of raw counts.

    Float32 data stays float32 (computed in float64, rounded once); other dtypes become float32 or
    float64 as in `sctranslator.kernels.coerce`. Sparse structure (indices, indptr) is shared with
    the input, not copied.

    Parameters
    ----------
    block : numpy.ndarray or scipy.sparse matrix or array
        ``(n_cells, n_genes)`` raw counts.
    normalize : {'none', 'log1p', 'total', 'total_log1p'}
        The mode.
    target_sum : float
        Counts per cell after dividing by the total.
    inplace : bool
        Overwrite the values of a float32/float64 CSR or C-ordered block and return it; ignored
        (a new block is returned) for any other block.

    Returns
    -------
    numpy.ndarray or scipy.sparse.csr_matrix or scipy.sparse.csr_array
        CSR for sparse input, a C-ordered array for dense input, ``(n_cells, n_genes)``.

    Raises
    ------
    ValueError
        An unknown mode or a bad `target_sum`.
    InputDataError
        A block that is not 2-D, or values of a non-numeric dtype.
    """
    do_total, do_log = normalize_flags(normalize, target_sum)
    if is_sparse(block):
        arrays = as_csr_arrays(block, canonical=False)  # sums of duplicates are still right
        in_place = inplace and block.format == "csr" and arrays.data is block.data
        out_data = arrays.data if in_place else np.empty_like(arrays.data)
        normalize_csr_kernel(arrays.data, arrays.indptr, do_total, do_log, float(target_sum), out_data)
        if in_place:
            return block
        csr_type = sp.csr_array if isinstance(block, sp.sparray) else sp.csr_matrix
        return csr_type((out_data, arrays.indices, arrays.indptr), shape=arrays.shape)

    dense = as_dense_array(block)
    out = dense if (inplace and dense is block) else np.empty_like(dense)
    normalize_dense_kernel(dense, do_total, do_log, float(target_sum), out)
    return out
