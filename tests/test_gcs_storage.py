"""gs:// inputs and outputs against a real GCS JSON API server on 127.0.0.1 (gcp-storage-emulator, dev extra).

gcsfs reaches it through STORAGE_EMULATOR_HOST, as it would reach Google Cloud Storage through its
default endpoint; every run is compared with the same run on local files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from datafiles import PBMC, TINY_A, data_file

import sctranslator
from sctranslator.engine.output_reader import open_predictions

pytest.importorskip("gcp_storage_emulator", reason="the dev extra's gcp-storage-emulator is not installed")

PROTEINS = ["CD3", "CD4", "CD14"]
ANON = {"token": "anon", "project": "test"}
COMMON = {"normalize": "total_log1p", "allow_empty_cells": True, "quiet": True, "storage_options": ANON}


@pytest.fixture(scope="module")
def gcs_server():  # noqa: ANN201 - gcs_server.GcsServer
    from gcs_server import GcsServer

    server = GcsServer.start()
    previous = {key: os.environ.get(key) for key in server.env}
    os.environ.update(server.env)  # before gcsfs is imported: it reads its settings then
    pytest.importorskip("gcsfs", reason="the gcs extra's gcsfs is not installed")
    try:
        yield server
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@pytest.fixture(scope="module")
def local_h5ad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gcs-local") / "cells.h5ad"
    ad.read_h5ad(data_file(PBMC / "rna.h5ad"))[:60].copy().write_h5ad(path)
    return path


def test_input_and_output_on_gs_equal_local(gcs_server, local_h5ad: Path, tmp_path: Path) -> None:  # noqa: ANN001
    bucket = gcs_server.bucket("gs-atlas")
    gcs_server.filesystem().put_file(str(local_h5ad), f"{bucket}/in/cells.h5ad")
    local = sctranslator.translate(local_h5ad, TINY_A, PROTEINS, out=tmp_path / "local.zarr",
                                   **{k: v for k, v in COMMON.items() if k != "storage_options"})
    remote = sctranslator.translate(f"{bucket}/in/cells.h5ad", TINY_A, PROTEINS, out=f"{bucket}/out/cells.zarr",
                                    **COMMON)
    np.testing.assert_array_equal(np.asarray(remote.X), np.asarray(local.X))
    reread = open_predictions(f"{bucket}/out/cells.zarr", storage_options=ANON)
    np.testing.assert_array_equal(np.asarray(reread.X), np.asarray(local.X))
    assert list(reread.obs_names) == list(local.obs_names)
    assert not Path("gs:").exists() and not (tmp_path / "gs:").exists()


def test_collection_from_and_to_gs_on_the_command_line(gcs_server, local_h5ad: Path, tmp_path: Path) -> None:  # noqa: ANN001
    bucket = gcs_server.bucket("gs-collection")
    fs = gcs_server.filesystem()
    fs.put_file(str(local_h5ad), f"{bucket}/in/a.h5ad")
    out = f"{bucket}/preds"
    command = [sys.executable, "-m", "sctranslator", "translate", f"{bucket}/in/a.h5ad", str(local_h5ad), "--out",
               out, "--model", str(TINY_A), "--proteins", ",".join(PROTEINS), "--normalize", "total_log1p",
               "--allow-empty-cells", "--quiet", "--storage-options", json.dumps(ANON)]
    done = subprocess.run(command, env={**os.environ, **gcs_server.env, "OMP_NUM_THREADS": "1"}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    fs.invalidate_cache()
    record = json.loads(fs.cat_file(f"{out}/collection.json"))
    assert [(e["store"], e["status"]) for e in record["inputs"]] == [("a.zarr", "done"), ("cells.zarr", "done")]
    local = sctranslator.translate(local_h5ad, TINY_A, PROTEINS, **{k: v for k, v in COMMON.items()
                                                                    if k != "storage_options"})
    for name in ("a.zarr", "cells.zarr"):
        stored = open_predictions(f"{out}/{name}", storage_options=ANON)
        np.testing.assert_array_equal(np.asarray(stored.X), np.asarray(local.X))
    assert os.listdir(tmp_path) == []  # nothing local, no folder named 'gs:'
