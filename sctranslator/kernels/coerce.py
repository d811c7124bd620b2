"""Turn whatever block of cells a caller hands us into arrays the numba kernels accept.

Kernels are compiled per dtype combination, so we funnel inputs into a small set of layouts:
CSR with float32/float64 data and int32/int64 indices, or C-ordered dense float32/float64.
Anything else is converted here, once per block, and the cost of doing so is documented.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from sctranslator.errors import InputDataError

_NATIVE_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_NATIVE_INDICES = (np.dtype(np.int32), np.dtype(np.int64))


@dataclass(frozen=True)
class CsrArrays:
    """The three arrays of a CSR block plus its shape (rows are cells, columns are genes).

    Parameters
    ----------
    data : numpy.ndarray
        float32 or float64 stored values, ``(nnz,)``.
    indices : numpy.ndarray
        int32 or int64 column of each stored value, ``(nnz,)``.
    indptr : numpy.ndarray
        Row starts into `data`, ``(n_cells + 1,)``.
    shape : tuple of int
        ``(n_cells, n_genes)``.
    """

    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    shape: tuple[int, int]


def kernel_float_dtype(dtype: np.dtype) -> np.dtype:
    """The float dtype the kernels see for input of `dtype`: float32 or float64.

    Parameters
    ----------
    dtype : numpy.dtype
        The stored dtype of the expression values.

    Returns
    -------
    numpy.dtype
        float32 for float32 and float16, float64 for float64, integers and booleans.

    Raises
    ------
    InputDataError
        A dtype that is not a real number type (strings, complex, objects).
    """
    if dtype in _NATIVE_FLOATS:
        return dtype
    if dtype == np.float16:
        return np.dtype(np.float32)
    if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
        return np.dtype(np.float64)  # integer counts are exact in float64
    raise InputDataError(
        f"expression values have dtype {dtype}, which is not a real number type; "
        "pass a float or integer matrix"
    )


def as_csr_arrays(block: sp.spmatrix | sp.sparray, *, canonical: bool) -> CsrArrays:
    """The CSR arrays of a scipy sparse block, converting only when needed.

    Each conversion is one O(nnz) copy: non-CSR formats (CSC, COO, ...) go through ``.tocsr()``;
    data of a dtype other than float32/float64 is cast; indices of a type other than int32/int64 are
    cast to int64. With `canonical`, a CSR block that may hold duplicate entries is copied and summed,
    because the min-max kernels read each stored entry as one gene's value.

    Parameters
    ----------
    block : scipy.sparse matrix or array
        Cells x genes.
    canonical : bool
        Sum duplicate entries (copying the block) when it may have some.

    Returns
    -------
    CsrArrays
        The block's data, indices, indptr and shape.

    Raises
    ------
    InputDataError
        A block that is not 2-D, or values of a non-numeric dtype.
    """
    if block.ndim != 2:
        raise InputDataError(f"expected a 2-D (cells x genes) matrix, got {block.ndim} dimensions")
    csr = block if block.format == "csr" else block.tocsr()
    if canonical and not csr.has_canonical_format:
        # Unsorted-but-unique indices would be fine; scipy cannot tell us cheaply, so copy.
        csr = csr.copy()
        csr.sum_duplicates()
    data = csr.data
    kernel_dtype = kernel_float_dtype(data.dtype)
    if data.dtype != kernel_dtype:
        data = data.astype(kernel_dtype)
    indices, indptr = csr.indices, csr.indptr
    if indices.dtype not in _NATIVE_INDICES:
        indices = indices.astype(np.int64)
    if indptr.dtype not in _NATIVE_INDICES:
        indptr = indptr.astype(np.int64)
    n_rows, n_cols = csr.shape
    return CsrArrays(data=data, indices=indices, indptr=indptr, shape=(int(n_rows), int(n_cols)))


def as_dense_array(block: np.ndarray) -> np.ndarray:
    """The block as a C-ordered float32/float64 2-D array.

    No copy for C-ordered float32/float64 input; Fortran-ordered or strided input is copied into C
    order, other numeric dtypes are cast (float16 -> float32, integers -> float64).

    Parameters
    ----------
    block : numpy.ndarray
        Cells x genes.

    Returns
    -------
    numpy.ndarray
        ``(n_cells, n_genes)``, float32 or float64, C-contiguous.

    Raises
    ------
    InputDataError
        A block that is not 2-D, or values of a non-numeric dtype.
    """
    array = np.asarray(block)
    if array.ndim != 2:
        raise InputDataError(f"expected a 2-D (cells x genes) matrix, got {array.ndim} dimensions")
    kernel_dtype = kernel_float_dtype(array.dtype)
    return np.ascontiguousarray(array, dtype=kernel_dtype)


def is_sparse(block: object) -> bool:
    """Whether `block` is a scipy sparse matrix or array.

    Parameters
    ----------
    block : object
        Anything.

    Returns
    -------
    bool
        True for any scipy sparse matrix or array.
    """
    return sp.issparse(block)
