"""A real `sctranslator translate` process killed with SIGKILL resumes without redoing finished blocks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

from sctranslator.model import ModelConfig, TranslatorModel, save_model

PROTEINS = "CD3,CD4,CD8a,CD14,CD16,CD19,CD45RA,PD-1,TIGIT,CD127"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sctranslator", *args]


@pytest.mark.slow
def test_kill_9_then_rerun_completes_identically(data_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(3)
    # Big enough that the job takes seconds, so it can be killed half way.
    model = TranslatorModel(ModelConfig.sized(dim=32, enc_depth=2, dec_depth=1, enc_heads=4, dec_heads=2,
                                              enc_dim_head=16, dec_dim_head=8, max_genes=1024, max_proteins=16))
    bundle = save_model(model, tmp_path / "model")
    data = tmp_path / "rna.h5ad"
    real = ad.read_h5ad(data_dir / "pbmc10k_cite_10x" / "rna.h5ad")
    n_obs = 1600  # the committed real cells, repeated (with new names) up to this many
    cells = ad.concat([real] * -(-n_obs // real.n_obs))[:n_obs].copy()
    cells.obs_names = [f"cell{i}" for i in range(n_obs)]
    cells.write_h5ad(data)
    common = ["--model", str(bundle), "--proteins", PROTEINS, "--block-cells", "32", "--batch-size", "16",
              "--workers", "1", "--quiet"]
    out = tmp_path / "interrupted.zarr"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(cli("translate", str(data), "--out", str(out), *common), env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    markers = out / ".sctranslator-job" / "blocks"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if markers.is_dir() and len(os.listdir(markers)) >= 4:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the job finished before it could be killed; make it bigger"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    committed = {name for name in os.listdir(markers) if name.isdigit()}
    n_blocks = -(-n_obs // 32)
    assert 4 <= len(committed) < n_blocks
    partial = ad.read_zarr(out)
    assert np.isnan(partial.X).any(), "uncommitted rows are still empty"

    rerun = subprocess.run(cli("translate", str(data), "--out", str(out), *common), env=env,
                           capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    record = json.loads((out / ".sctranslator-job" / "job.json").read_text())
    assert record["complete"] is True
    assert record["last_run"]["blocks_skipped"] == len(committed)
    assert record["last_run"]["blocks_computed"] == n_blocks - len(committed)

    clean = tmp_path / "clean.zarr"
    subprocess.run(cli("translate", str(data), "--out", str(clean), *common), env=env, check=True,
                   capture_output=True)
    resumed, uninterrupted = ad.read_zarr(out), ad.read_zarr(clean)
    assert resumed.shape == (n_obs, 10) and not np.isnan(resumed.X).any()
    np.testing.assert_array_equal(resumed.X, uninterrupted.X)
    assert list(resumed.obs_names) == list(uninterrupted.obs_names)
