"""The command line's output: silent under --quiet, one error format, the ONNX export announced first."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import anndata as ad
import pytest

DEMO_RNA = Path(str(resources.files("sctranslator") / "data" / "demo" / "rna.h5ad"))


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sctranslator", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


@pytest.fixture(scope="module")
def small_rna(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rna") / "rna.h5ad"
    ad.read_h5ad(DEMO_RNA)[:30].copy().write_h5ad(path)
    return path


def test_quiet_prints_nothing_on_stderr(small_rna, tmp_path) -> None:
    result = _cli("translate", str(small_rna), "--model", "demo", "--out", str(tmp_path / "p.zarr"), "--quiet",
                  "--workers", "1", "--write-h5ad", str(tmp_path / "w.h5ad"), "--write-mudata",
                  str(tmp_path / "w.h5mu"), "--embeddings")
    assert result.returncode == 0, result.stderr
    # Only the package's own warnings (the plan's report of shared gene tokens here): no library
    # warnings (anndata, mudata, numba ...), no INFO lines, no progress bar.
    lines = result.stderr.splitlines()
    assert all(line.startswith("WARNING sctranslator.") for line in lines), result.stderr
    assert "Warning" not in result.stderr


def test_errors_have_one_format(small_rna, tmp_path) -> None:
    usage = _cli("translate", str(small_rna))
    assert usage.returncode == 2 and "error: UsageError:" in usage.stderr
    bad_choice = _cli("translate", str(small_rna), "--model", "demo", "--out", str(tmp_path / "x.zarr"),
                      "--backend", "nope")
    assert bad_choice.returncode == 2 and "error: UsageError:" in bad_choice.stderr
    ours = _cli("translate", str(tmp_path / "missing.h5ad"), "--model", "demo", "--out", str(tmp_path / "y.zarr"))
    assert ours.returncode == 2 and ours.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in ours.stderr


def test_onnx_export_is_announced_before_the_progress_bar(small_rna, tmp_path) -> None:
    result = _cli("translate", str(small_rna), "--model", "demo", "--out", str(tmp_path / "o.zarr"),
                  "--backend", "onnxruntime", "--workers", "1",
                  env={"SCTRANSLATOR_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    announced = result.stderr.index("exporting the model to ONNX")
    bar = re.search(r"(^|[\n\r])translate: ", result.stderr).start()  # the bar, not a logger named ...translate
    assert announced < bar
    assert "parameters; cached at" in result.stderr
