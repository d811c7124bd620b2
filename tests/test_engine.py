"""The translate job end to end on real data: sources, plan, kernels, backends, sink, resume, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import sctranslator
import sctranslator.errors
from sctranslator.errors import CoverageError, InputDataError, StoreError, UnknownProteinError
from sctranslator.model import ModelConfig, TranslatorModel, save_model
from sctranslator.plan import build_plan
from sctranslator.vocab import map_genes, map_proteins

PROTEINS = ["CD3", "CD4", "CD8a", "CD14", "CD16", "CD19", "CD45RA", "PD-1", "TIGIT", "CD127"]
N_CELLS = 240


@pytest.fixture(scope="module")
def rna(data_dir: Path) -> ad.AnnData:
    full = ad.read_h5ad(data_dir / "pbmc10k_cite_10x" / "rna.h5ad")
    return full[:N_CELLS].copy()


@pytest.fixture(scope="module")
def rna_path(rna: ad.AnnData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rna") / "rna.h5ad"
    rna.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def tiny_model(fixtures_dir: Path) -> TranslatorModel:
    return sctranslator.load_model(fixtures_dir / "tiny_a_official.pt")


def reference_predictions(rna: ad.AnnData, model: TranslatorModel, proteins: list[str]) -> np.ndarray:
    """The original pipeline written plainly: map, keep order, min-max per cell, first L, pad, predict."""
    tokens = map_genes(rna.var_names, mapping="original").token_ids
    keep = np.flatnonzero(tokens > 0)
    x = rna.X[:, keep].toarray().astype(np.float64)
    lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
    scaled = 1e-8 + (x - lo) / (hi - lo) * (1 - 1e-8)
    length, width = model.config.max_genes, model.config.max_proteins
    n = min(length, keep.size)
    values = np.zeros((rna.n_obs, length), np.float32)
    values[:, :n] = scaled[:, :n]
    genes = np.zeros(length, np.int64)
    genes[:n] = tokens[keep][:n]
    gene_mask = np.arange(length) < n
    protein_tokens = map_proteins(proteins).token_ids
    out = []
    for lo_p in range(0, len(proteins), width):
        window = protein_tokens[lo_p:lo_p + width]
        ids = np.zeros(width, np.int64)
        ids[: window.size] = window
        with torch.no_grad():
            pred = model(torch.from_numpy(values), torch.from_numpy(genes).expand(rna.n_obs, -1),
                         torch.from_numpy(ids).expand(rna.n_obs, -1),
                         torch.from_numpy(gene_mask).expand(rna.n_obs, -1),
                         torch.from_numpy(np.arange(width) < window.size).expand(rna.n_obs, -1))
        out.append(pred.numpy()[:, : window.size])
    return np.concatenate(out, axis=1)


def translate(data: object, model: object, proteins: list[str] | None, **options: object) -> ad.AnnData:
    """`sctranslator.translate` on these real cells, whose cell 159 has no counts in any of the tiny
    model's 64 genes: an empty cell for it, predicted as a constant cell when allowed."""
    return sctranslator.translate(data, model, proteins, **{"allow_empty_cells": True, **options})


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def baseline(rna_path: Path, tiny_model: TranslatorModel) -> ad.AnnData:
    return translate(rna_path, tiny_model, PROTEINS, block_cells=1000, batch_size=8)


def test_matches_the_original_pipeline_written_plainly(baseline: ad.AnnData, rna: ad.AnnData,
                                                       tiny_model: TranslatorModel) -> None:
    expected = reference_predictions(rna, tiny_model, PROTEINS)
    assert baseline.shape == (N_CELLS, len(PROTEINS))
    assert list(baseline.var_names) == PROTEINS
    assert list(baseline.obs_names) == list(rna.obs_names)
    assert baseline.X.dtype == np.float32
    assert relative_error(baseline.X, expected) <= 1e-5
    assert np.isfinite(baseline.X).all()
    assert baseline.var.loc["CD3", "gene"] == "CD3E"
    assert baseline.uns["sctranslator"]["run"]["empty_cells"] == 1
    with pytest.raises(InputDataError, match=r"1 empty cell\(s\) with no counts in any of the 64 genes.*row 159"):
        sctranslator.translate(rna, tiny_model, PROTEINS)


@pytest.mark.parametrize(("block_cells", "batch_size"), [(1, 1), (7, 3), (64, 64), (100, 1)])
def test_blocks_and_batches_do_not_change_predictions(rna_path: Path, tiny_model: TranslatorModel,
                                                      baseline: ad.AnnData, block_cells: int,
                                                      batch_size: int) -> None:
    result = translate(rna_path, tiny_model, PROTEINS, block_cells=block_cells, batch_size=batch_size,
                                    workers=2)
    np.testing.assert_allclose(result.X, baseline.X, rtol=1e-5, atol=1e-6)


def test_onnxruntime_backend_agrees_with_torch(rna_path: Path, tiny_model: TranslatorModel,
                                               baseline: ad.AnnData, tmp_path: Path) -> None:
    result = translate(rna_path, tiny_model, PROTEINS, backend="onnxruntime", block_cells=120,
                                    batch_size=5, backend_options={}, out=tmp_path / "ort.zarr")
    assert relative_error(result.X, baseline.X) <= 1e-5
    assert result.uns["sctranslator"]["settings"]["backend"] == "onnxruntime"


def test_every_source_kind_gives_the_same_predictions(rna: ad.AnnData, tiny_model: TranslatorModel,
                                                      baseline: ad.AnnData, tmp_path: Path) -> None:
    import mudata

    stores = {}
    for fmt in (2, 3):
        with ad.settings.override(zarr_write_format=fmt):
            rna.write_zarr(tmp_path / f"v{fmt}.zarr")
        stores[f"zarr-v{fmt}"] = tmp_path / f"v{fmt}.zarr"
    dense = rna.copy()
    dense.X = dense.X.toarray()
    dense.write_zarr(tmp_path / "dense.zarr", chunks=(17, 1000))
    stores["zarr-dense"] = tmp_path / "dense.zarr"
    mudata.MuData({"rna": rna}).write(str(tmp_path / "both.h5mu"))
    stores["h5mu"] = tmp_path / "both.h5mu"
    stores["memory-csc"] = ad.AnnData(sp.csc_matrix(rna.X), obs=rna.obs, var=rna.var)
    for name, data in stores.items():
        result = translate(data, tiny_model, PROTEINS, block_cells=50)
        np.testing.assert_allclose(result.X, baseline.X, rtol=1e-5, atol=1e-6, err_msg=name)


def test_more_proteins_than_p_run_in_windows_and_the_last_is_padded(rna_path: Path,
                                                                    tiny_model: TranslatorModel) -> None:
    many = ["CD3", "CD4", "CD8a", "CD14", "CD16", "CD19", "CD45RA", "PD-1", "TIGIT", "CD127", "CD25", "CD56",
            "CD45RO", "CD15", "HLA-DR", "CD27", "CD28", "CD38", "CD69", "CD62L"]  # 20 > P = 16
    result = translate(rna_path, tiny_model, many, block_cells=500)
    assert result.shape == (N_CELLS, 20)
    assert list(result.var["window"]) == [0] * 16 + [1] * 4
    rna = ad.read_h5ad(rna_path)
    np.testing.assert_allclose(result.X, reference_predictions(rna, tiny_model, many), rtol=1e-5, atol=1e-6)
    windows = np.asarray(result.uns["sctranslator"]["plan"]["protein_windows"])
    assert windows.shape == (2, 16) and (windows[1, 4:] == 0).all()


def test_writes_an_anndata_zarr_store_with_provenance(rna_path: Path, tiny_model: TranslatorModel,
                                                      tmp_path: Path, baseline: ad.AnnData) -> None:
    out = tmp_path / "pred.zarr"
    translate(rna_path, tiny_model, PROTEINS, out=out, block_cells=64,
                           write_h5ad=tmp_path / "with_prot.h5ad", write_mudata=tmp_path / "both.h5mu")
    stored = ad.read_zarr(out)
    np.testing.assert_array_equal(stored.X, baseline.X)
    info = stored.uns["sctranslator"]
    assert info["plan"]["mode"] == "reference"
    assert info["model"]["config"]["max_genes"] == 64
    assert 0.9 < float(info["plan"]["coverage"]["fraction"]) <= 1.0
    back = ad.read_h5ad(tmp_path / "with_prot.h5ad")
    frame = back.obsm["protein_predicted"]
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == PROTEINS
    np.testing.assert_array_equal(frame.to_numpy(), baseline.X)
    import mudata

    both = mudata.read_h5mu(tmp_path / "both.h5mu")
    assert set(both.mod) == {"rna", "prot_predicted"}
    np.testing.assert_array_equal(both["prot_predicted"].X, baseline.X)


def test_rerun_into_same_output_skips_work_and_other_settings_refuse(rna_path: Path, tiny_model: TranslatorModel,
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "pred.zarr"
    first = translate(rna_path, tiny_model, PROTEINS, out=out, block_cells=64)
    again = translate(rna_path, tiny_model, PROTEINS, out=out, block_cells=64)
    assert again.uns["sctranslator"]["run"]["blocks_computed"] == 0
    np.testing.assert_array_equal(first.X, again.X)
    with pytest.raises(StoreError, match="different model, input or settings"):
        translate(rna_path, tiny_model, PROTEINS[:3], out=out)
    replaced = translate(rna_path, tiny_model, PROTEINS[:3], out=out, overwrite=True)
    assert replaced.shape == (N_CELLS, 3)


def test_model_with_gene_and_protein_panel(rna: ad.AnnData, tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = TranslatorModel(ModelConfig.sized(dim=8, enc_depth=1, dec_depth=1, enc_heads=2, dec_heads=2,
                                              enc_dim_head=4, dec_dim_head=4, max_genes=40, max_proteins=4))
    panel_symbols = ["MS4A1", "CD3E", "NOT_A_GENE_IN_DATA", "LYZ", "GNLY", "NKG7", "CD14", "FCGR3A"]
    tokens = map_genes(["MS4A1", "CD3E", "PTPRC", "LYZ", "GNLY", "NKG7", "CD14", "FCGR3A"]).token_ids
    model.panel = {"genes": {"token_ids": tokens.tolist(), "symbols": panel_symbols},
                   "proteins": {"names": ["CD19", "CD3", "CD14", "CD16"],
                                "token_ids": map_proteins(["CD19", "CD3", "CD14", "CD16"]).token_ids.tolist(),
                                "genes": ["CD19", "CD3E", "CD14", "FCGR3A"]}}
    bundle = save_model(model, tmp_path / "panel_model")
    plan = build_plan(rna.var, sctranslator.load_model(bundle), None, allow_low_coverage=True)
    assert plan.mode == "panel"
    assert plan.coverage["panel_genes"] == 8
    present = set(rna.var_names)
    expected_present = sum(g in present for g in ["MS4A1", "CD3E", "PTPRC", "LYZ", "GNLY", "NKG7", "CD14", "FCGR3A"])
    assert plan.coverage["panel_genes_in_data"] == expected_present
    full = translate(rna, bundle, None, allow_low_coverage=True)
    assert list(full.var_names) == ["CD19", "CD3", "CD14", "CD16"]
    picked = translate(rna, bundle, ["CD16", "CD3"], allow_low_coverage=True)
    np.testing.assert_allclose(picked.X, full.X[:, [3, 1]], rtol=1e-6)
    # Outside the panel: answered by the decoder in a window of its own (see tests/test_any_protein.py);
    # a name that maps to no protein is still refused.
    extra = translate(rna, bundle, ["CD3", "CD8a"], allow_low_coverage=True)
    np.testing.assert_allclose(extra.X[:, 0], full.X[:, 1], rtol=1e-6)
    assert list(extra.uns["sctranslator"]["plan"]["untrained_proteins"]) == ["CD8a"]
    with pytest.raises(UnknownProteinError, match="cannot be predicted"):
        translate(rna, bundle, ["IgG1"], allow_low_coverage=True)


def test_bad_inputs_raise_named_errors(rna: ad.AnnData, tiny_model: TranslatorModel, tmp_path: Path) -> None:
    def run(data, proteins=PROTEINS, **kwargs):
        return sctranslator.translate(data, tiny_model, proteins, **kwargs)

    broken = rna.copy()
    broken.X = broken.X.toarray()
    broken.X[5, 7] = np.nan
    with pytest.raises(InputDataError, match=r"NaN.*row 5"):
        run(broken)
    broken.X[5, 7] = np.inf
    with pytest.raises(InputDataError, match="infinite"):
        run(broken)
    broken.X[5, 7] = -1
    with pytest.raises(InputDataError, match="negative"):
        run(broken)
    broken.X[5, 7] = 0
    broken.X[9] = 0
    with pytest.raises(InputDataError, match=r"empty cell.*row 9.*--allow-empty-cells"):
        run(broken)
    assert np.isfinite(run(broken, allow_empty_cells=True).X).all()
    duplicated = rna.copy()
    duplicated.var_names = ["CD3E"] * 2 + list(rna.var_names[2:])
    with pytest.raises(InputDataError, match="more than once"):
        run(duplicated)
    unknown = rna.copy()
    unknown.var_names = [f"feature_{i}_x" for i in range(rna.n_vars)]
    with pytest.raises(CoverageError, match="0.0% of the dataset's genes"):
        run(unknown)
    with pytest.raises(UnknownProteinError, match="IgG1"):
        run(rna, ["CD3", "IgG1"])
    with pytest.raises(UnknownProteinError, match="NOTAPROTEIN"):
        run(rna, ["CD3", "NOTAPROTEIN"])
    with pytest.raises(StoreError, match="no such file or directory"):
        run(tmp_path / "missing.h5ad")
    truncated = tmp_path / "cut.h5ad"
    rna.write_h5ad(truncated)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    with pytest.raises(StoreError):
        run(truncated)
    store = tmp_path / "store.zarr"
    rna.write_zarr(store, chunks=(1000,))
    shutil.rmtree(store / "X" / "data") if (store / "X" / "data").is_dir() else None
    with pytest.raises(StoreError):
        run(store)


def test_embeddings_are_the_mean_encoding_over_real_genes(rna_path: Path, rna: ad.AnnData,
                                                          tiny_model: TranslatorModel, tmp_path: Path,
                                                          baseline: ad.AnnData) -> None:
    result = translate(rna_path, tiny_model, PROTEINS, out=tmp_path / "emb.zarr", block_cells=50,
                                    embeddings=True)
    embedding = result.obsm["X_sctranslator"]
    assert embedding.shape == (N_CELLS, tiny_model.config.dim)
    np.testing.assert_array_equal(result.X, baseline.X)
    # Brute force for a few cells: encode the plainly prepared input, average over real tokens.
    tokens = map_genes(rna.var_names, mapping="original").token_ids
    keep = np.flatnonzero(tokens > 0)[:64]
    mapped = rna.X[:5][:, np.flatnonzero(tokens > 0)].toarray().astype(np.float64)
    lo, hi = mapped.min(1, keepdims=True), mapped.max(1, keepdims=True)
    values = (1e-8 + (mapped - lo) / (hi - lo) * (1 - 1e-8))[:, :64].astype(np.float32)
    with torch.no_grad():
        encodings = tiny_model.encode(torch.from_numpy(values), torch.from_numpy(tokens[keep]).expand(5, -1))
    np.testing.assert_allclose(embedding[:5], encodings.mean(dim=1).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(sctranslator.errors.BackendError, match="torch backend"):
        translate(rna_path, tiny_model, PROTEINS, backend="onnxruntime", embeddings=True)


def test_runs_on_an_existing_dask_distributed_cluster(rna_path: Path, fixtures_dir: Path, baseline: ad.AnnData,
                                                      tmp_path: Path) -> None:
    from distributed import LocalCluster

    # A separate worker process: the job, the source and the model path travel to it by pickle.
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        result = translate(rna_path, fixtures_dir / "tiny_a_official.pt", PROTEINS,
                                        scheduler=cluster.scheduler_address, block_cells=60,
                                        out=tmp_path / "distributed.zarr")
    assert result.uns["sctranslator"]["run"]["blocks_computed"] == 4
    np.testing.assert_allclose(result.X, baseline.X, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_cuda_backends_agree_with_cpu(rna_path: Path, tiny_model: TranslatorModel, baseline: ad.AnnData,
                                      backend: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to PyTorch")
    if backend == "onnxruntime":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            pytest.skip("onnxruntime has no CUDA execution provider (install onnxruntime-gpu)")
    result = translate(rna_path, tiny_model, PROTEINS, backend=backend, device="cuda")
    assert relative_error(result.X, baseline.X) <= 1e-4


def test_auto_backend_is_resolved_and_recorded_with_the_path_it_took(baseline: ad.AnnData,
                                                                      tiny_model: TranslatorModel) -> None:
    settings = baseline.uns["sctranslator"]["settings"]
    assert (settings["backend"], settings["backend_requested"]) == ("torch", "auto")
    assert settings["backend_choice"].startswith("auto: torch on CPU")
    used = int(baseline.uns["sctranslator"]["plan"]["n_positions_used"])
    # The encoder computes the real positions plus one shared padding token, unless nothing is padded.
    expected = used + 1 if used < tiny_model.config.max_genes else used
    assert int(settings["encoder_tokens"]) == expected
