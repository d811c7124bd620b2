"""Tests for sctranslator.kernels: preprocessing against the reference fixture, a plain numpy
reference and scanpy; the validation scan; the correlation metrics."""

from __future__ import annotations

import os
import tempfile

# numba reads NUMBA_CACHE_DIR when it is first imported, so set it before anything imports it.
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "sctranslator-numba-cache"))


import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import scipy.stats  # noqa: E402
from datafiles import FIXTURES, PBMC, data_file  # noqa: E402

from sctranslator.errors import InputDataError  # noqa: E402
from sctranslator.kernels import (  # noqa: E402
    TRUNCATED,
    UNMAPPED,
    normalize_block,
    pearson_columns,
    pearson_rows,
    prepare_values,
    scan_block,
)

EPS = 1e-8
MODES = ("none", "log1p", "total", "total_log1p")


# ---------------------------------------------------------------- numpy reference


def reference_values(x, column_slot, position_real, normalize="none", target_sum=1e4):
    """Plain numpy statement of the decided semantics, on a dense float64 copy of the block."""
    x = np.asarray(x, dtype=np.float64).copy()
    if normalize in ("total", "total_log1p"):
        totals = x.sum(axis=1)
        x *= np.where(totals != 0, target_sum / np.where(totals != 0, totals, 1), 1.0)[:, None]
    if normalize in ("log1p", "total_log1p"):
        x = np.log1p(x)
    length = position_real.shape[0]
    written = column_slot >= 0
    covered = np.zeros(length, bool)
    covered[column_slot[written]] = True
    scaling = x[:, column_slot != UNMAPPED]
    if (position_real & ~covered).any():
        scaling = np.hstack([scaling, np.zeros((x.shape[0], 1))])
    lo, hi = scaling.min(axis=1), scaling.max(axis=1)
    span = hi - lo
    safe = np.where(span > 0, span, 1.0)

    def scaled(values):
        fraction = np.where(span[:, None] > 0, (values - lo[:, None]) / safe[:, None], 0.0)
        return EPS + fraction * (1 - EPS)

    out = np.zeros((x.shape[0], length))
    out[:, position_real] = scaled(np.zeros((x.shape[0], 1)))
    out[:, column_slot[written]] = scaled(x[:, written])
    return out


def random_plan(rng, n_cols, length, n_unmapped, n_truncated, n_missing_real, n_padding):
    """column_slot/position_real with every kind of column and position in shuffled order."""
    n_written = n_cols - n_unmapped - n_truncated
    assert n_written + n_missing_real + n_padding == length
    codes = np.array([UNMAPPED] * n_unmapped + [TRUNCATED] * n_truncated + [0] * n_written)
    rng.shuffle(codes)
    real_positions = rng.permutation(length - n_padding)  # padding sits at the end, as in the model
    column_slot = codes.astype(np.int64)
    column_slot[codes == 0] = real_positions[:n_written]
    position_real = np.arange(length) < length - n_padding
    return column_slot, position_real


def random_counts(rng, n_rows, n_cols, density=0.3):
    stored = rng.random((n_rows, n_cols)) < density
    dense = rng.poisson(3.0, size=(n_rows, n_cols)).astype(np.float64) * stored
    dense[0] = 0.0  # all-zero cell
    dense[1] = 4.0  # constant cell with every value stored
    dense[2, :] = 0.0
    dense[2, 5] = 7.0  # a single stored value
    return dense


# ---------------------------------------------------------------- reference fixture


@pytest.mark.parametrize("case", ["pad", "truncate", "exact"])
@pytest.mark.parametrize("layout", ["dense", "csr"])
def test_reproduces_reference_preprocessing(case, layout):
    fixture = np.load(data_file(FIXTURES / "preprocess_cases.npz"))
    x = fixture[f"{case}__X"]
    length = int(fixture[f"{case}__length"])
    n_cols = x.shape[1]
    assert np.all(fixture[f"{case}__gene_token_ids"] != 0)  # every column is mapped
    column_slot = np.where(np.arange(n_cols) < length, np.arange(n_cols), TRUNCATED)
    position_real = np.arange(length) < min(n_cols, length)
    assert np.array_equal(position_real, fixture[f"{case}__mask"][0])

    block = x if layout == "dense" else sp.csr_matrix(x)
    values = prepare_values(block, column_slot, position_real)

    assert values.dtype == np.float32 and values.shape == (x.shape[0], length)
    np.testing.assert_allclose(values, fixture[f"{case}__values"], rtol=0, atol=1e-6)
    assert np.all(values[:, ~position_real] == 0.0)


# ---------------------------------------------------------------- numpy reference, random data


@pytest.mark.parametrize("normalize", MODES)
@pytest.mark.parametrize("data_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_matches_numpy_reference(normalize, data_dtype, index_dtype):
    rng = np.random.default_rng(7)
    column_slot, position_real = random_plan(
        rng, n_cols=60, length=70, n_unmapped=8, n_truncated=6, n_missing_real=9, n_padding=15
    )
    dense = random_counts(rng, 40, 60).astype(data_dtype)
    csr = sp.csr_matrix(dense)
    csr.indices = csr.indices.astype(index_dtype)
    csr.indptr = csr.indptr.astype(index_dtype)
    expected = reference_values(dense, column_slot, position_real, normalize)

    from_dense = prepare_values(dense, column_slot, position_real, normalize=normalize)
    from_csr = prepare_values(csr, column_slot, position_real, normalize=normalize)

    np.testing.assert_allclose(from_dense, expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(from_csr, from_dense)
    assert not np.isnan(from_csr).any()
    assert np.all(from_csr[:, ~position_real] == 0.0)


def test_implicit_zero_joins_min_max_only_when_a_scaling_column_is_unstored():
    # Row 0 stores every scaling column (min is 2), row 1 leaves one implicit zero (min is 0).
    column_slot = np.array([0, 1, TRUNCATED, UNMAPPED])
    position_real = np.array([True, True, False])
    dense = np.array([[2.0, 4.0, 3.0, 0.0], [2.0, 4.0, 0.0, 9.0]])
    values = prepare_values(sp.csr_matrix(dense), column_slot, position_real)
    np.testing.assert_allclose(values[0], [EPS, 1.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(values[1], [0.5, 1.0, 0.0], atol=1e-7)
    np.testing.assert_array_equal(values, prepare_values(dense, column_slot, position_real))


def test_missing_real_position_counts_as_zero():
    column_slot = np.array([0, 2])
    position_real = np.array([True, True, True, False])  # position 1 has no column
    values = prepare_values(np.array([[2.0, 4.0]]), column_slot, position_real)
    np.testing.assert_allclose(values[0], [0.5, EPS, 1.0, 0.0], atol=1e-7)


@pytest.mark.parametrize("layout", ["dense", "csr"])
@pytest.mark.parametrize("missing_real", [False, True])
def test_constant_and_all_zero_cells_give_eps(layout, missing_real):
    length = 8
    n_cols = 6
    column_slot = np.arange(n_cols)
    position_real = np.arange(length) < (n_cols + 1 if missing_real else n_cols)
    level = 0.0 if missing_real else 5.0  # with a missing gene only an all-zero cell is constant
    dense = np.vstack([np.zeros(n_cols), np.full(n_cols, level)])
    block = dense if layout == "dense" else sp.csr_matrix(dense)
    for normalize in MODES:
        values = prepare_values(block, column_slot, position_real, normalize=normalize)
        assert not np.isnan(values).any()
        np.testing.assert_array_equal(values[:, position_real], np.float32(EPS))
        np.testing.assert_array_equal(values[:, ~position_real], 0.0)


def test_other_sparse_layouts_and_non_canonical_csr_match_dense():
    rng = np.random.default_rng(3)
    column_slot, position_real = random_plan(
        rng, n_cols=30, length=32, n_unmapped=3, n_truncated=2, n_missing_real=4, n_padding=3
    )
    dense = random_counts(rng, 25, 30)
    expected = prepare_values(dense, column_slot, position_real, normalize="total_log1p")

    coo = sp.coo_matrix(dense)
    # Split every stored value into two duplicate entries and shuffle them: a valid but
    # non-canonical matrix whose duplicates must be summed before min/max.
    order = rng.permutation(2 * coo.nnz)
    rows = np.concatenate([coo.row, coo.row])[order]
    cols = np.concatenate([coo.col, coo.col])[order]
    halves = np.concatenate([coo.data * 0.25, coo.data * 0.75])[order]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=dense.shape[0]))])
    by_row = np.argsort(rows, kind="stable")
    duplicated = sp.csr_matrix((halves[by_row], cols[by_row], indptr), shape=dense.shape)
    assert not duplicated.has_canonical_format
    before = duplicated.data.copy()

    for block in (sp.csc_matrix(dense), coo, sp.csr_array(dense), duplicated, np.asfortranarray(dense)):
        got = prepare_values(block, column_slot, position_real, normalize="total_log1p")
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(duplicated.data, before)  # caller's matrix left alone


def test_integer_and_float16_data_are_accepted():
    rng = np.random.default_rng(5)
    column_slot, position_real = random_plan(
        rng, n_cols=12, length=14, n_unmapped=2, n_truncated=1, n_missing_real=2, n_padding=3
    )
    counts = random_counts(rng, 10, 12)
    expected = reference_values(counts, column_slot, position_real, "total_log1p")
    for block in (counts.astype(np.int32), sp.csr_matrix(counts.astype(np.int64)), counts.astype(np.float16)):
        got = prepare_values(block, column_slot, position_real, normalize="total_log1p")
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_out_buffer_is_filled_and_returned():
    rng = np.random.default_rng(11)
    column_slot, position_real = random_plan(
        rng, n_cols=20, length=24, n_unmapped=2, n_truncated=2, n_missing_real=3, n_padding=5
    )
    dense = random_counts(rng, 9, 20)
    out = np.full((9, 24), np.nan, np.float32)
    got = prepare_values(sp.csr_matrix(dense), column_slot, position_real, out=out)
    assert got is out
    np.testing.assert_allclose(out, reference_values(dense, column_slot, position_real), atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        prepare_values(dense, column_slot, position_real, out=np.empty((9, 23), np.float32))
    with pytest.raises(ValueError, match="float32"):
        prepare_values(dense, column_slot, position_real, out=np.empty((9, 24), np.float64))


def test_inputs_are_not_modified():
    rng = np.random.default_rng(2)
    dense = random_counts(rng, 8, 10)
    csr = sp.csr_matrix(dense)
    data_before = csr.data.copy()
    prepare_values(csr, np.arange(10), np.ones(10, bool), normalize="total_log1p")
    prepare_values(dense, np.arange(10), np.ones(10, bool), normalize="total_log1p")
    normalize_block(csr, "total_log1p")
    normalize_block(dense, "total_log1p")
    np.testing.assert_array_equal(csr.data, data_before)
    np.testing.assert_array_equal(dense, csr.toarray())


@pytest.mark.parametrize(
    ("column_slot", "position_real", "message"),
    [
        (np.array([0, 1]), np.array([True, True, True]), "3 columns"),
        (np.array([0, 1, 2]), np.array([True, True, False]), "padding"),
        (np.array([0, 1, 3]), np.array([True, True, True]), "position"),
        (np.array([0, 1, -3]), np.array([True, True, True]), "position"),
        (np.array([0.0, 1.0, 2.0]), np.array([True, True, True]), "integer"),
    ],
)
def test_inconsistent_plans_are_rejected(column_slot, position_real, message):
    with pytest.raises(ValueError, match=message):
        prepare_values(np.ones((2, 3)), column_slot, position_real)


def test_unusable_inputs_raise_named_errors():
    with pytest.raises(InputDataError):
        prepare_values(np.ones((2, 3), np.complex128), np.arange(3), np.ones(3, bool))
    with pytest.raises(InputDataError):
        prepare_values(np.ones(3), np.arange(3), np.ones(3, bool))
    with pytest.raises(ValueError, match="normalize"):
        prepare_values(np.ones((2, 3)), np.arange(3), np.ones(3, bool), normalize="cpm")
    with pytest.raises(ValueError, match="target_sum"):
        prepare_values(np.ones((2, 3)), np.arange(3), np.ones(3, bool), normalize="total", target_sum=0)


def test_empty_block():
    values = prepare_values(sp.csr_matrix((0, 4)), np.arange(4), np.ones(5, bool))
    assert values.shape == (0, 5) and values.dtype == np.float32


def test_concurrent_calls_from_threads_agree():
    # The engine may prepare the next block on a worker thread while the model runs (nogil kernels).
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(12)
    column_slot, position_real = random_plan(
        rng, n_cols=200, length=260, n_unmapped=20, n_truncated=10, n_missing_real=90, n_padding=0
    )
    blocks = [sp.csr_matrix(random_counts(rng, 300, 200)) for _ in range(6)]
    serial = [prepare_values(b, column_slot, position_real, normalize="total_log1p") for b in blocks]
    with ThreadPoolExecutor(max_workers=3) as pool:
        threaded = list(pool.map(
            lambda b: prepare_values(b, column_slot, position_real, normalize="total_log1p"), blocks
        ))
    for got, expected in zip(threaded, serial, strict=True):
        np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------- normalisation vs scanpy


@pytest.fixture(scope="module")
def pbmc_block():
    anndata = pytest.importorskip("anndata")
    adata = anndata.read_h5ad(data_file(PBMC / "rna.h5ad"))
    return adata[:300].copy()


@pytest.mark.parametrize("normalize", ["total", "log1p", "total_log1p"])
def test_normalisation_matches_scanpy(pbmc_block, normalize):
    sc = pytest.importorskip("scanpy")
    expected = pbmc_block.copy()
    if normalize in ("total", "total_log1p"):
        sc.pp.normalize_total(expected, target_sum=1e4)
    if normalize in ("log1p", "total_log1p"):
        sc.pp.log1p(expected)
    expected_dense = expected.X.toarray()

    got_csr = normalize_block(pbmc_block.X, normalize, target_sum=1e4)
    got_dense = normalize_block(pbmc_block.X.toarray(), normalize, target_sum=1e4)

    assert sp.issparse(got_csr) and got_csr.dtype == pbmc_block.X.dtype
    np.testing.assert_allclose(got_csr.toarray(), expected_dense, rtol=1e-5, atol=0)
    np.testing.assert_allclose(got_dense, expected_dense, rtol=1e-5, atol=0)


def test_prepare_values_with_normalisation_equals_scanpy_then_scaling(pbmc_block):
    sc = pytest.importorskip("scanpy")
    expected = pbmc_block.copy()
    sc.pp.normalize_total(expected, target_sum=1e4)
    sc.pp.log1p(expected)
    rng = np.random.default_rng(0)
    n_cols = pbmc_block.n_vars
    column_slot, position_real = random_plan(
        rng, n_cols, length=4500, n_unmapped=500, n_truncated=300, n_missing_real=1300, n_padding=0
    )
    got = prepare_values(pbmc_block.X, column_slot, position_real, normalize="total_log1p")
    reference = reference_values(expected.X.toarray(), column_slot, position_real)
    np.testing.assert_allclose(got, reference, rtol=0, atol=1e-6)


def test_normalize_block_inplace():
    dense = np.array([[1.0, 3.0], [0.0, 0.0]])
    csr = sp.csr_matrix(dense)
    assert normalize_block(csr, "total", target_sum=4.0, inplace=True) is csr
    np.testing.assert_allclose(csr.toarray(), [[1.0, 3.0], [0.0, 0.0]])  # totals: 4 -> unchanged
    assert normalize_block(dense, "total_log1p", target_sum=8.0, inplace=True) is dense
    np.testing.assert_allclose(dense, [[np.log1p(2.0), np.log1p(6.0)], [0.0, 0.0]])


# ---------------------------------------------------------------- validation scan


def _dirty_block():
    dense = np.random.default_rng(4).poisson(2.0, size=(12, 15)).astype(np.float64) + 1.0
    dense[3, 7] = np.nan
    dense[5, 2] = np.nan
    dense[5, 1] = np.nan
    dense[1, 10] = np.inf
    dense[8, 0] = -np.inf
    dense[4, 4] = -2.0
    dense[4, 9] = -1.0
    dense[9, 3] = -0.5
    dense[2] = 0.0
    dense[6] = 0.0
    dense[11, :2] = [1.0, -1.0]  # sums to zero: counts as empty by the total rule
    dense[11, 2:] = 0.0
    return dense


def _check_dirty_scan(scan):
    assert (scan.n_rows, scan.n_columns) == (12, 15)
    assert scan.n_nan == 3 and scan.first_nan == (3, 7)
    assert scan.n_inf == 2 and scan.first_inf == (1, 10)
    assert scan.n_negative == 4 and scan.first_negative == (4, 4)
    assert scan.n_empty_rows == 3 and scan.first_empty_row == 2
    assert not scan.is_clean


@pytest.mark.parametrize("layout", ["dense", "csr", "csc", "float32"])
def test_scan_finds_injected_problems(layout):
    dense = _dirty_block()
    block = {
        "dense": dense,
        "csr": sp.csr_matrix(dense),
        "csc": sp.csc_matrix(dense),
        "float32": sp.csr_matrix(dense.astype(np.float32)),
    }[layout]
    _check_dirty_scan(scan_block(block))


def test_scan_reports_lowest_column_with_unsorted_indices():
    csr = sp.csr_matrix(_dirty_block())
    for row in range(csr.shape[0]):  # reverse each row's entries
        start, end = csr.indptr[row], csr.indptr[row + 1]
        csr.indices[start:end] = csr.indices[start:end][::-1].copy()
        csr.data[start:end] = csr.data[start:end][::-1].copy()
    csr.has_sorted_indices = False
    _check_dirty_scan(scan_block(csr))


@pytest.mark.parametrize("layout", ["dense", "csr"])
def test_scan_empty_rows_count_only_used_columns(layout):
    dense = np.random.default_rng(5).poisson(1.0, size=(10, 8)).astype(np.float64) + 1.0
    used = np.zeros(8, bool)
    used[[1, 4, 6]] = True
    dense[2, used] = 0.0  # counts only in columns the caller does not use
    dense[7] = 0.0  # no counts at all
    dense[5, 0] = np.nan  # bad values are found in every column, used or not
    block = sp.csr_matrix(dense) if layout == "csr" else dense
    scan = scan_block(block, used)
    assert scan.n_empty_rows == 2 and scan.first_empty_row == 2 and scan.empty_rows.tolist() == [2, 7]
    assert scan.n_nan == 1 and scan.first_nan == (5, 0)
    everything = scan_block(block)
    assert everything.empty_rows.tolist() == [7]
    with pytest.raises(ValueError, match="used_columns"):
        scan_block(block, used[:5])


def test_scan_clean_block_and_error_message():
    clean = scan_block(sp.csr_matrix(np.ones((4, 3))))
    assert clean.is_clean and clean.problems() == []

    scan = scan_block(_dirty_block())
    assert "3 NaN value(s), first at (row 3, column 7)" in scan.problems()
    assert len(scan.problems(allow_negative=True, allow_empty_rows=True)) == 2


# ---------------------------------------------------------------- metrics


def test_pearson_columns_matches_scipy():
    rng = np.random.default_rng(9)
    a = rng.normal(size=(200, 150))
    b = 0.5 * a + rng.normal(size=(200, 150))
    b[:, 3] = 2.5  # constant column -> NaN
    a[:, 8] = 0.1  # constant in the other matrix too
    got = pearson_columns(a, b)
    for j in range(a.shape[1]):
        if j in (3, 8):
            assert np.isnan(got[j])
        else:
            assert got[j] == pytest.approx(scipy.stats.pearsonr(a[:, j], b[:, j]).statistic, abs=1e-12)
    np.testing.assert_allclose(pearson_columns(a.astype(np.float32), b.astype(np.float32)), got, atol=1e-5)


def test_pearson_rows_matches_numpy_corrcoef():
    rng = np.random.default_rng(10)
    a = rng.normal(size=(120, 70))
    b = -0.3 * a + rng.normal(size=(120, 70))
    a[5] = 0.0
    got = pearson_rows(a, b)
    assert np.isnan(got[5])
    for i in np.flatnonzero(np.arange(a.shape[0]) != 5):
        assert got[i] == pytest.approx(np.corrcoef(a[i], b[i])[0, 1], abs=1e-12)


def test_pearson_edge_cases():
    assert np.isnan(pearson_columns(np.ones((1, 3)), np.ones((1, 3)))).all()
    np.testing.assert_allclose(pearson_rows(np.array([[1.0, 2.0, 3.0]]), np.array([[2.0, 4.0, 6.0]])), [1.0])
    with pytest.raises(ValueError, match="same shape"):
        pearson_rows(np.ones((2, 3)), np.ones((3, 2)))


def test_pearson_with_nan_in_data_is_nan_not_minus_one() -> None:
    from sctranslator.kernels import pearson_columns, pearson_rows

    a = np.array([[1.0, 2.0], [2.0, np.nan], [3.0, 1.0]])
    b = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    columns = pearson_columns(a, b)
    assert columns[0] == pytest.approx(1.0) and np.isnan(columns[1])
    assert np.isnan(pearson_rows(a, b)[1])
