"""Where the committed test data lives (tests/data, made by scripts/make_test_data.py).

Every test reads real data from here, never from outside the repository. A missing file is a
failure with the fix in the message, not a skip: the data is part of the repository.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent / "data"
DATASETS = ROOT / "datasets"
FIXTURES = ROOT / "reference_model"
VOCAB = ROOT / "vocab"

PBMC = DATASETS / "pbmc10k_cite_10x"  # first 1,000 cells, 4,000 genes, 14 proteins
BMMC = DATASETS / "bmmc_cite_neurips2021"  # the whole 600-cell starter set
ECCITE = DATASETS / "pbmc_eccite_mimitou2019"  # first 20 cells, 19,521 genes, 49 proteins
TINY_A = FIXTURES / "tiny_a_official.pt"
TINY_B = FIXTURES / "tiny_b_official.pt"


def data_file(path: Path) -> Path:
    """`path` under tests/data, which must exist: a missing file fails the test, it is never skipped."""
    if not path.exists():
        pytest.fail(f"test data missing: {path}. It is committed under tests/data; restore it from git "
                    "or regenerate it with scripts/make_test_data.py", pytrace=False)
    return path
