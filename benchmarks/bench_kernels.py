"""Benchmark `prepare_values` against an equivalent scanpy + numpy pipeline on real data.

    python benchmarks/bench_kernels.py [--repeats 5] [--tiles 7] [--data PATH]

Data: pbmc10k_cite_10x rna.h5ad (6,855 cells x 4,000 genes, CSR float32), and the same matrix
stacked `--tiles` times (~48k cells). Two plans, both with L = 20,000 model positions:

* ``padded``: the 4,000 genes fill the first positions, the rest is padding;
* ``panel``: 10% of the columns unmapped, the rest scattered into a fixed 20,000-gene panel
  whose other genes are missing (real positions counting as 0).

The baseline does what a user would write without our kernels, on the same cores:
scanpy normalize_total + log1p on a copy, then dense numpy min-max and column gather/pad.
Each timing is the median of `--repeats` runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "sctranslator-numba-cache"))

import anndata  # noqa: E402
import numba  # noqa: E402
import numpy as np  # noqa: E402
import scanpy as sc  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from sctranslator.kernels import UNMAPPED, prepare_values  # noqa: E402

DEFAULT_DATA = "/work/shared/data/pbmc10k_cite_10x/rna.h5ad"
LENGTH = 20_000
EPS = 1e-8


def make_plan(name: str, n_cols: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if name == "padded":
        return np.arange(n_cols, dtype=np.int64), np.arange(LENGTH) < n_cols
    column_slot = rng.permutation(LENGTH)[:n_cols].astype(np.int64)
    column_slot[rng.random(n_cols) < 0.10] = UNMAPPED
    return column_slot, np.ones(LENGTH, bool)


def baseline(x: sp.csr_matrix, column_slot: np.ndarray, position_real: np.ndarray, normalize: str) -> np.ndarray:
    """scanpy + numpy version of prepare_values (same semantics, including the constant-cell rule)."""
    adata = anndata.AnnData(x.copy())
    if normalize == "total_log1p":
        sc.pp.normalize_total(adata, target_sum=1e4)
        sc.pp.log1p(adata)
    scaling = adata.X[:, column_slot != UNMAPPED].toarray().astype(np.float64)
    written = column_slot >= 0
    covered = np.zeros(LENGTH, bool)
    covered[column_slot[written]] = True
    lo, hi = scaling.min(axis=1), scaling.max(axis=1)
    if (position_real & ~covered).any():
        lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    span = hi - lo
    scale = np.divide(1 - EPS, span, out=np.zeros_like(span), where=span > 0)[:, None]
    out = np.zeros((x.shape[0], LENGTH), np.float32)
    out[:, position_real] = (EPS - lo[:, None] * scale).astype(np.float32)
    scaled_columns = written[column_slot != UNMAPPED]  # written columns within the scaling set
    out[:, column_slot[written]] = EPS + (scaling[:, scaled_columns] - lo[:, None]) * scale
    return out


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: numba compilation / cache load, page-in
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
        del result
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tiles", type=int, default=7, help="stack the dataset this many times (0: skip)")
    args = parser.parse_args()

    x = anndata.read_h5ad(args.data).X.tocsr()
    datasets = [x]
    if args.tiles > 1:
        datasets.append(sp.vstack([x] * args.tiles, format="csr"))
    rng = np.random.default_rng(0)
    plans = {name: make_plan(name, x.shape[1], rng) for name in ("padded", "panel")}

    print(f"numba threads: {numba.get_num_threads()}, CPU cores: {os.cpu_count()}, L = {LENGTH}")
    print()
    print("| cells | plan | normalize | method | median s | cells/s | speed-up vs baseline |")
    print("| ---: | --- | --- | --- | ---: | ---: | ---: |")
    for block in datasets:
        n = block.shape[0]
        out = np.empty((n, LENGTH), np.float32)
        for plan_name, (column_slot, position_real) in plans.items():
            if n > x.shape[0] and plan_name != "padded":
                continue  # the large case is about size; one plan is enough
            for normalize in ("total_log1p", "none"):
                ours = prepare_values(block, column_slot, position_real, normalize=normalize)
                reference = baseline(block, column_slot, position_real, normalize)
                max_diff = float(np.abs(ours - reference).max())
                assert max_diff < 1e-6, f"results differ by {max_diff}"
                del ours, reference

                methods = {
                    "scanpy + numpy (baseline)": lambda b=block, s=column_slot, r=position_real, m=normalize: (
                        baseline(b, s, r, m)
                    ),
                    "prepare_values": lambda b=block, s=column_slot, r=position_real, m=normalize: (
                        prepare_values(b, s, r, normalize=m)
                    ),
                    "prepare_values, reused out": lambda b=block, s=column_slot, r=position_real, m=normalize, o=out: (
                        prepare_values(b, s, r, normalize=m, out=o)
                    ),
                }
                base_seconds = None
                for method, run in methods.items():
                    seconds = median_seconds(run, args.repeats)
                    base_seconds = base_seconds or seconds
                    print(
                        f"| {n} | {plan_name} | {normalize} | {method} | {seconds:.3f} | "
                        f"{n / seconds:,.0f} | {base_seconds / seconds:.1f}x |",
                        flush=True,
                    )
        del out, block


if __name__ == "__main__":
    main()
