"""finetune and evaluate reading object storage (a real S3 API server, moto_server on 127.0.0.1) and
TileDB-SOMA experiments: every run equals the same run on the local files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch
from datafiles import PBMC, TINY_A, data_file

import sctranslator
from sctranslator.errors import UnsupportedStorageError

N_CELLS = 120
TRAIN = {"init": TINY_A, "steps": 2, "batch_size": 8, "val_count": 16, "block_cells": 32, "shuffle_blocks": 2,
         "seed": 5, "allow_empty_cells": True, "quiet": True, "workers": 1}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """120 real PBMC cells: RNA and proteins as h5ad files and Zarr stores, and the RNA with its proteins
    in obsm (one file holding both)."""
    rna = ad.read_h5ad(data_file(PBMC / "rna.h5ad"))[:N_CELLS].copy()
    protein = ad.read_h5ad(data_file(PBMC / "protein.h5ad"))[:N_CELLS].copy()
    root = tmp_path_factory.mktemp("pair")
    rna.write_h5ad(root / "rna.h5ad")
    rna.write_zarr(root / "rna.zarr")
    protein.write_h5ad(root / "protein.h5ad")
    protein.write_zarr(root / "protein.zarr")
    both = rna.copy()
    both.obsm["protein_expression"] = protein.to_df()
    both.write_h5ad(root / "both.h5ad")
    return {"rna.h5ad": root / "rna.h5ad", "rna.zarr": root / "rna.zarr", "protein.h5ad": root / "protein.h5ad",
            "protein.zarr": root / "protein.zarr", "both.h5ad": root / "both.h5ad"}


@pytest.fixture(scope="module")
def bucket(s3_server, pair: dict[str, Path]) -> str:  # noqa: ANN001
    """The same files and stores in a bucket of the S3 server."""
    url = s3_server.bucket("paired")
    fs = s3_server.filesystem()
    for name, local in pair.items():
        fs.put(str(local), f"{url}/{name}", recursive=local.is_dir())
    return url


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-7, msg=name)


def test_finetune_from_s3_equals_finetune_from_local_files(pair: dict[str, Path], bucket: str,
                                                           tmp_path: Path) -> None:
    local = sctranslator.finetune(pair["rna.h5ad"], pair["protein.h5ad"], out=tmp_path / "local", **TRAIN)
    expected = _weights(local)
    moved = _assert_moved_from(TINY_A, expected)
    assert moved, "two training steps left the weights where they started: the comparison proves nothing"
    for rna, protein in (("rna.h5ad", "protein.h5ad"), ("rna.zarr", "protein.zarr")):
        remote = sctranslator.finetune(f"{bucket}/{rna}", f"{bucket}/{protein}", out=tmp_path / rna, **TRAIN)
        _assert_same_weights(_weights(remote), expected)
        # Two local runs differ by float reduction order too (weights ~1 ulp, predictions ~1e-6 relative).
        np.testing.assert_allclose(remote.validation.predictions, local.validation.predictions, rtol=1e-4, atol=1e-4)
        assert remote.validation.obs_names == local.validation.obs_names
    # Proteins kept in the RNA file's obsm are found there at a URL too.
    embedded_local = sctranslator.finetune(pair["both.h5ad"], out=tmp_path / "both_local", **TRAIN)
    embedded = sctranslator.finetune(f"{bucket}/both.h5ad", out=tmp_path / "both_remote", **TRAIN)
    _assert_same_weights(_weights(embedded), _weights(embedded_local))
    # The card names the URL; the bundle is local and translates like any other.
    card = (tmp_path / "rna.zarr" / "card.md").read_text()
    assert f"{bucket}/rna.zarr" in card


def _assert_moved_from(start: Path, trained: dict[str, torch.Tensor]) -> bool:
    initial = sctranslator.load_model(start).state_dict()
    return any(not torch.equal(initial[name], trained[name]) for name in initial if name in trained
               and initial[name].shape == trained[name].shape)


def test_cli_finetune_with_storage_options_and_local_only_outputs(s3_server, pair: dict[str, Path], bucket: str,  # noqa: ANN001
                                                                  tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env["OMP_NUM_THREADS"] = "1"
    options = json.dumps({"key": "testing", "secret": "testing", "endpoint_url": s3_server.endpoint})
    common = ["--init", str(TINY_A), "--steps", "2", "--batch-size", "8", "--val-count", "16", "--block-cells", "32",
              "--shuffle-blocks", "2", "--seed", "5", "--allow-empty-cells", "--quiet", "--workers", "1"]
    done = subprocess.run([sys.executable, "-m", "sctranslator", "finetune", "--rna", f"{bucket}/rna.h5ad",
                           "--protein", f"{bucket}/protein.h5ad", "--storage-options", options, "--out",
                           str(tmp_path / "cli"), *common], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    local = sctranslator.finetune(pair["rna.h5ad"], pair["protein.h5ad"], out=tmp_path / "api", **TRAIN)
    _assert_same_weights(_weights(sctranslator.load_model(tmp_path / "cli")), _weights(local))
    # Outputs stay local: a URL as --out is one named error before any work, and nothing is written.
    refused = subprocess.run([sys.executable, "-m", "sctranslator", "finetune", "--rna", f"{bucket}/rna.h5ad",
                              "--protein", f"{bucket}/protein.h5ad", "--out", f"{bucket}/model", *common],
                             env={**os.environ, **s3_server.env}, capture_output=True, text=True, cwd=tmp_path,
                             timeout=300)
    assert refused.returncode == 2, refused.stderr
    assert "error: UnsupportedStorageError: --out" in refused.stderr and "local" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert not s3_server.filesystem().exists(f"{bucket}/model")
    with pytest.raises(UnsupportedStorageError, match="--work-dir"):
        sctranslator.finetune(pair["rna.h5ad"], pair["protein.h5ad"], out=tmp_path / "w",
                              work_dir=f"{bucket}/work", **TRAIN)
    assert not (tmp_path / "w").exists()


def test_evaluate_from_s3_equals_local(s3_server, pair: dict[str, Path], bucket: str, tmp_path: Path) -> None:  # noqa: ANN001
    proteins = ["CD3", "CD4", "CD14", "CD19"]
    common = {"normalize": "total_log1p", "allow_empty_cells": True, "quiet": True}
    sctranslator.translate(pair["rna.h5ad"], TINY_A, proteins, out=tmp_path / "pred.zarr", **common)
    sctranslator.translate(pair["rna.h5ad"], TINY_A, proteins[:3], out=tmp_path / "base.zarr", **common)
    fs = s3_server.filesystem()
    for name in ("pred.zarr", "base.zarr"):
        fs.put(str(tmp_path / name), f"{bucket}/{name}", recursive=True)
    expected = sctranslator.evaluate(tmp_path / "pred.zarr", pair["protein.h5ad"], baseline=tmp_path / "base.zarr",
                                     out=tmp_path / "local_report", plots=False)
    for truth in ("protein.h5ad", "protein.zarr"):
        report = sctranslator.evaluate(f"{bucket}/pred.zarr", f"{bucket}/{truth}", baseline=f"{bucket}/base.zarr",
                                       out=tmp_path / f"report_{truth}", plots=False)
        assert report["cells"] == expected["cells"]
        assert report["model"] == expected["model"] and report["baseline"] == expected["baseline"]
        written = json.loads((tmp_path / f"report_{truth}" / "report.json").read_text())
        assert written["model"]["summary"] == expected["model"]["summary"]
    with pytest.raises(UnsupportedStorageError, match="--out"):
        sctranslator.evaluate(f"{bucket}/pred.zarr", f"{bucket}/protein.h5ad", out=f"{bucket}/report")
    assert not fs.exists(f"{bucket}/report")


@pytest.fixture(scope="module")
def soma_experiment(pair: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> str:
    """A local TileDB-SOMA experiment of the same cells: ms['RNA'] written by from_anndata, and the
    proteins as a second measurement ms['prot'] over the same obs (X['raw'], names in var_id)."""
    import pyarrow as pa
    import scipy.sparse as sp
    import tiledbsoma
    import tiledbsoma.io as soma_io

    uri = str(tmp_path_factory.mktemp("soma") / "cite")
    soma_io.from_h5ad(uri, str(pair["rna.h5ad"]), measurement_name="RNA", X_layer_name="raw")
    protein = ad.read_h5ad(pair["protein.h5ad"])
    counts = sp.coo_matrix(protein.X)
    with tiledbsoma.Experiment.open(uri, "w") as experiment:
        measurement = experiment.ms.add_new_collection("prot", tiledbsoma.Measurement)
        var = pa.table({"soma_joinid": np.arange(protein.n_vars, dtype=np.int64),
                        "var_id": [str(name) for name in protein.var_names]})
        measurement.add_new_dataframe("var", schema=var.schema, index_column_names=["soma_joinid"],
                                      domain=[(0, protein.n_vars - 1)]).write(var)
        layer = measurement.add_new_collection("X").add_new_sparse_ndarray("raw", type=pa.float32(),
                                                                            shape=protein.shape)
        layer.write(pa.table({"soma_dim_0": counts.row.astype(np.int64), "soma_dim_1": counts.col.astype(np.int64),
                              "soma_data": counts.data.astype(np.float32)}))
    return uri


def test_finetune_and_evaluate_read_a_soma_experiments_protein_measurement(pair: dict[str, Path], soma_experiment: str,
                                                                          tmp_path: Path) -> None:
    local = sctranslator.finetune(pair["rna.h5ad"], pair["protein.h5ad"], out=tmp_path / "local", **TRAIN)
    # RNA and proteins from the experiment's two measurements, then RNA from it and proteins from a file.
    both = sctranslator.finetune(soma_experiment, out=tmp_path / "soma", **TRAIN)
    _assert_same_weights(_weights(both), _weights(local))
    assert "measurement 'prot'" in (tmp_path / "soma" / "card.md").read_text()
    mixed = sctranslator.finetune(soma_experiment, pair["protein.h5ad"], out=tmp_path / "mixed", **TRAIN)
    _assert_same_weights(_weights(mixed), _weights(local))
    # evaluate takes the measured proteins from the experiment as from the file.
    pred = sctranslator.translate(pair["rna.h5ad"], TINY_A, ["CD3", "CD4", "CD14", "CD19"],
                                  out=tmp_path / "pred.zarr", normalize="total_log1p", allow_empty_cells=True,
                                  quiet=True)
    assert pred.n_obs == N_CELLS
    expected = sctranslator.evaluate(tmp_path / "pred.zarr", pair["protein.h5ad"], plots=False)
    report = sctranslator.evaluate(tmp_path / "pred.zarr", soma_experiment, plots=False)
    assert report["model"] == expected["model"] and report["cells"] == expected["cells"]
    from sctranslator.errors import InputDataError

    with pytest.raises(InputDataError, match="no modality 'ADT'"):
        sctranslator.evaluate(tmp_path / "pred.zarr", soma_experiment, truth_modality="ADT", plots=False)
