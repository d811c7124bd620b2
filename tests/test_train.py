"""The slim trainer: inputs, determinism, exact resume, freezing, DDP, bundle round trip, errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from datafiles import PBMC, TINY_A, data_file

N_CELLS = 240



@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A few hundred real PBMC cells as two h5ad files (and in memory)."""
    rna = ad.read_h5ad(data_file(PBMC / "rna.h5ad"))[:N_CELLS].copy()
    protein = ad.read_h5ad(PBMC / "protein.h5ad")[:N_CELLS].copy()
    folder = tmp_path_factory.mktemp("pair")
    rna.write_h5ad(folder / "rna.h5ad")
    protein.write_h5ad(folder / "protein.h5ad")
    return {"rna": rna, "protein": protein, "rna_path": folder / "rna.h5ad", "protein_path": folder / "protein.h5ad"}


def _quick(pair: dict, out: Path, **options) -> torch.nn.Module:
    from sctranslator.train import finetune

    settings = {"init": TINY_A, "steps": 4, "batch_size": 8, "lr": 1e-3, "val_count": 40, "quiet": True,
                "workers": 1, **options}
    return finetune(pair["rna_path"], pair["protein_path"], out=out, **settings)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_finetune_from_published_checkpoint_reduces_heldout_loss(pair, tmp_path):
    model = _quick(pair, tmp_path / "bundle", steps=12, val_every=4, metrics_log=tmp_path / "log.csv")
    log = pd.read_csv(tmp_path / "log.csv")
    assert list(log["step"]) == [4, 8, 12]
    assert log["val_loss"].iloc[-1] < 0.5 * log["val_loss"].iloc[0]
    assert model.panel["genes"]["token_ids"][:3] and len(model.panel["genes"]["token_ids"]) == model.config.max_genes
    assert model.panel["proteins"]["names"] == list(pair["protein"].var_names)
    assert model.preprocessing == {"normalize": "total_log1p", "target_sum": 1e4, "target_scaling": "minmax"}


def test_same_seed_same_weights_other_seed_differs(pair, tmp_path):
    a = _quick(pair, tmp_path / "a", seed=3)
    b = _quick(pair, tmp_path / "b", seed=3)
    c = _quick(pair, tmp_path / "c", seed=4)
    assert _same_weights(a, b)
    assert not _same_weights(a, c)


TWO_CALLS_ONE_PROCESS = """
import hashlib, sys
import anndata as ad, torch
import sctranslator

rna_path, protein_path, init, folder = sys.argv[1:]
rna = ad.read_h5ad(rna_path)[:48].copy()
protein = ad.read_h5ad(protein_path)[:48].copy()
callers = torch.get_num_threads()
for call in range(2):
    model = sctranslator.finetune(rna, protein, init=init, out=f"{folder}/call{call}", steps=3, batch_size=8,
                                  lr=1e-3, val_count=8, seed=5, workers=1, quiet=True)
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in model.state_dict().values())).hexdigest()
    print(digest, callers, torch.get_num_threads())
"""


def test_first_call_in_a_fresh_process_matches_later_calls(pair, tmp_path):
    # Numba's first parallel kernel starts its OpenMP pool and resets this thread's intra-op count
    # (shared with PyTorch) to Numba's; the first finetune of a process then trained with 2 threads.
    env = {**os.environ, "NUMBA_NUM_THREADS": "2"}  # 2 on any machine, so the reset is visible
    result = subprocess.run([sys.executable, "-c", TWO_CALLS_ONE_PROCESS, str(pair["rna_path"]),
                             str(pair["protein_path"]), str(TINY_A), str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (first, callers, after_first), (second, _, after_second) = (line.split() for line in
                                                                result.stdout.splitlines()[-2:])
    assert first == second  # bitwise equal weights
    assert after_first == after_second == callers  # the caller's thread count comes back


def test_resume_is_exact(pair, tmp_path):
    options = {"steps": 6, "accumulation": 2, "feature_redraw_interval": 2, "val_every": 2, "seed": 1}
    whole = _quick(pair, tmp_path / "whole", **options)
    stopped = _quick(pair, tmp_path / "parts", stop_after=3, **options)
    assert stopped.training_outcome.interrupted and not (tmp_path / "parts" / "config.json").exists()
    resumed = _quick(pair, tmp_path / "parts", resume=True, **options)
    assert resumed.training_outcome.steps_done == 6
    assert _same_weights(whole, resumed)
    from sctranslator.model import load_model

    assert _same_weights(load_model(tmp_path / "whole"), load_model(tmp_path / "parts"))


def test_resume_refuses_other_settings(pair, tmp_path):
    from sctranslator.errors import CheckpointError

    _quick(pair, tmp_path / "run", stop_after=1)
    with pytest.raises(CheckpointError, match="other data or settings"):
        _quick(pair, tmp_path / "run", resume=True, lr=5e-3)


def test_freezing_keeps_frozen_weights(pair, tmp_path):
    from sctranslator.model import load_model

    start = load_model(TINY_A).state_dict()
    trained = _quick(pair, tmp_path / "frozen", freeze=["embeddings", "encoder"]).state_dict()
    for key in start:
        if key.startswith("enc.") or key == "dec.pos_emb.weight":
            assert torch.equal(start[key], trained[key]), key
    assert not torch.equal(start["translator.fc0.weight"], trained["translator.fc0.weight"])
    assert not torch.equal(start["dec.to_out.weight"], trained["dec.to_out.weight"])


def test_bundle_round_trip_and_translate_reproduce_validation(pair, tmp_path):
    import sctranslator
    from sctranslator.model import load_model

    model = _quick(pair, tmp_path / "bundle", steps=6, target_scaling="clr")
    bundle = tmp_path / "bundle"
    assert {p.name for p in bundle.iterdir()} >= {"config.json", "model.safetensors", "panel.json", "card.md"}
    card = (bundle / "card.md").read_text()
    assert "Held-out accuracy" in card and "CD45RA" in card
    loaded = load_model(bundle)
    assert _same_weights(model, loaded) and loaded.panel == json.loads(json.dumps(model.panel))
    assert loaded.preprocessing["target_scaling"] == "clr"
    held = pair["rna"][model.validation.obs_names].copy()
    result = sctranslator.translate(held, bundle, batch_size=7, workers=1)
    assert list(result.var_names) == model.panel["proteins"]["names"]
    np.testing.assert_allclose(result.X, model.validation.predictions, rtol=1e-5, atol=1e-5)
    # The engine still selects requested proteins out of the whole trained panel.
    subset = sctranslator.translate(held, bundle, proteins=["CD8a", "CD4"], workers=1)
    columns = [model.panel["proteins"]["names"].index(n) for n in ("CD8a", "CD4")]
    np.testing.assert_allclose(subset.X, model.validation.predictions[:, columns], rtol=1e-5, atol=1e-5)


def test_scratch_preset_and_bf16(pair, tmp_path):
    model = _quick(pair, tmp_path / "scratch", init=None, config="tiny", precision="bf16", steps=2,
                   config_overrides={"dim": 8})
    assert model.config.dim == 8 and model.config.max_genes == len(model.panel["genes"]["token_ids"])
    assert model.config.max_proteins == 14
    assert np.isfinite(model.validation.predictions).all()


def test_inputs_mudata_obsm_zarr_and_name_matching(pair, tmp_path):
    import mudata

    from sctranslator.train import load_paired

    rna, protein = pair["rna"], pair["protein"]
    expected = protein.X.toarray() if hasattr(protein.X, "toarray") else np.asarray(protein.X)
    # MuData, in memory and as a file.
    mdata = mudata.MuData({"rna": rna, "prot": protein})
    mdata.write(tmp_path / "pair.h5mu")
    for source in (mdata, tmp_path / "pair.h5mu"):
        paired = load_paired(source)
        assert paired.protein_names == list(protein.var_names)
        np.testing.assert_array_equal(paired.proteins, expected)
    # obsm as a DataFrame, and as an array with names in uns.
    with_df = rna.copy()
    with_df.obsm["protein_expression"] = pd.DataFrame(expected, index=rna.obs_names, columns=protein.var_names)
    np.testing.assert_array_equal(load_paired(with_df).proteins, expected)
    with_array = rna.copy()
    with_array.obsm["adt"] = expected
    with_array.uns["adt_names"] = np.asarray(protein.var_names)
    with_array.write_h5ad(tmp_path / "with_array.h5ad")
    paired = load_paired(tmp_path / "with_array.h5ad", protein_key="adt")
    assert paired.protein_names == list(protein.var_names)
    # Zarr stores, protein cells shuffled and a few missing: matched by obs_names.
    rna.write_zarr(tmp_path / "rna.zarr")
    order = np.random.default_rng(0).permutation(N_CELLS)[: N_CELLS - 10]
    protein[order].copy().write_zarr(tmp_path / "protein.zarr")
    paired = load_paired(tmp_path / "rna.zarr", tmp_path / "protein.zarr")
    assert paired.n_cells == N_CELLS - 10
    np.testing.assert_array_equal(paired.rows, np.sort(order))
    np.testing.assert_array_equal(paired.proteins, expected[np.sort(order)])


def test_split_by_obs_column(pair, tmp_path):
    from sctranslator.train import finetune

    rna = pair["rna"].copy()
    rna.obs["donor"] = np.where(np.arange(N_CELLS) % 4 == 0, "d2", "d1")
    model = finetune(rna, pair["protein"], init=TINY_A, out=tmp_path / "b", steps=2, batch_size=8,
                     split_column="donor", val_values=["d2"], quiet=True)
    assert model.validation.obs_names == list(rna.obs_names[::4])


def test_bad_inputs_raise_named_errors(pair, tmp_path):
    from sctranslator.errors import InputDataError, UnknownProteinError
    from sctranslator.train import finetune

    other = pair["protein"].copy()
    other.obs_names = [f"x{i}" for i in range(N_CELLS)]
    with pytest.raises(InputDataError, match="share no cell names"):
        finetune(pair["rna"], other, init=TINY_A, out=tmp_path / "a", steps=1)
    odd = pair["protein"].copy()
    odd.var_names = [odd.var_names[0], "not-a-protein-xyz", *odd.var_names[2:]]
    with pytest.raises(UnknownProteinError, match="not-a-protein-xyz"):
        finetune(pair["rna"], odd, init=TINY_A, out=tmp_path / "b", steps=1)
    with pytest.raises(InputDataError, match="no column 'nope'"):
        finetune(pair["rna"], pair["protein"], init=TINY_A, out=tmp_path / "c", steps=1, split_column="nope",
                 val_values=["x"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, paths: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from sctranslator.train import finetune

    finetune(paths["rna"], paths["protein"], init=TINY_A, out=paths["out"], steps=8, batch_size=8, lr=1e-3,
             val_count=40, val_every=4, quiet=True, metrics_log=paths["log"])


def test_ddp_two_gloo_processes(pair, tmp_path):
    from safetensors.torch import load_file

    from sctranslator.model import load_model

    paths = {"rna": str(pair["rna_path"]), "protein": str(pair["protein_path"]), "out": str(tmp_path / "ddp"),
             "log": str(tmp_path / "ddp.jsonl")}
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), paths), nprocs=2, join=True)
    keys = load_file(tmp_path / "ddp" / "model.safetensors").keys()
    assert not any(k.startswith("module.") for k in keys)
    model = load_model(tmp_path / "ddp")
    records = [json.loads(line) for line in (tmp_path / "ddp.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 8]
    assert records[-1]["val_loss"] < records[0]["val_loss"] and np.isfinite(records[-1]["val_pearson"])
    assert "processes: 2" in (tmp_path / "ddp" / "card.md").read_text()
    assert model.panel["proteins"]["names"] == list(pair["protein"].var_names)


def test_finetune_command_line(pair, tmp_path, capsys):
    import argparse

    from sctranslator.train.command import define_finetune

    parser = argparse.ArgumentParser()
    handler = define_finetune(parser)
    args = parser.parse_args(["--rna", str(pair["rna_path"]), "--protein", str(pair["protein_path"]),
                              "--init", str(TINY_A), "--out", str(tmp_path / "cli"), "--steps", "2",
                              "--batch-size", "8", "--val-count", "40", "--freeze", "embeddings",
                              "--redraw-interval", "none", "--metrics-log", str(tmp_path / "m.csv"), "--quiet"])
    assert handler(args) == 0
    assert "held-out mean per-protein Pearson r" in capsys.readouterr().out
    from sctranslator.model import load_model

    assert load_model(tmp_path / "cli").config.feature_redraw_interval is None


def test_packaged_demo_runs_end_to_end(tmp_path):
    from sctranslator.cli.demo import demo_root, format_table, run_demo

    with demo_root() as root:  # the package's demo data (made by scripts/train_demo.py) is in the repository
        recorded = json.loads((root / "demo.json").read_text())
    report = run_demo(tmp_path / "demo", workers=1)
    assert report["n_cells"] == 500 and (tmp_path / "demo" / "demo_predictions.zarr").exists()
    assert report["model_mean_r"] == pytest.approx(recorded["heldout"]["model_mean_r"], abs=1e-3)
    assert report["baseline_mean_r"] == pytest.approx(recorded["heldout"]["baseline_mean_r"], abs=1e-3)
    assert "mean" in format_table(report)


def test_resume_with_nothing_saved_creates_nothing(pair, tmp_path):
    result = subprocess.run([sys.executable, "-m", "sctranslator", "finetune", "--rna", str(pair["rna_path"]),
                             "--protein", str(pair["protein_path"]), "--init", str(TINY_A), "--steps", "1",
                             "--out", str(tmp_path / "run"), "--resume"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "CheckpointError: nothing to resume" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither run/ nor run.training/
