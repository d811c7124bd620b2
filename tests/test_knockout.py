"""Pseudo-knockout: equals translating edited copies of the data, resumes, refuses bad requests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import sctranslator
import sctranslator.analysis.knockout as knockout_module
from sctranslator.analysis.knockout import knockout
from sctranslator.errors import InputDataError, StoreError, VocabularyError
from sctranslator.model import ModelConfig, TranslatorModel, save_model
from sctranslator.plan import build_plan
from sctranslator.vocab import map_genes

PROTEINS = ["CD3", "CD4", "CD8a", "CD14", "CD19", "CD45RA", "HLA-DR", "CD11c"]
N_CELLS = 40


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sctranslator", *args]


@pytest.fixture(scope="module")
def bmmc(data_dir: Path) -> ad.AnnData:
    rna = ad.read_h5ad(data_dir / "bmmc_cite_neurips2021" / "rna.h5ad")
    return rna[np.r_[0:20, 400:420]].copy()


@pytest.fixture(scope="module")
def tiny(fixtures_dir: Path) -> TranslatorModel:
    return sctranslator.load_model(fixtures_dir / "tiny_a_official.pt")


@pytest.fixture(scope="module")
def chosen_genes(bmmc: ad.AnnData, tiny: TranslatorModel) -> list[str]:
    """A gene at an early model position (drop shifts 50+ genes) and one past L that is some cell's highest
    (knocking it out changes only that cell's min-max scaling)."""
    plan = build_plan(bmmc.var, tiny, PROTEINS)
    early = bmmc.var_names[int(np.flatnonzero(plan.column_slot == 3)[0])]
    beyond = np.flatnonzero(plan.column_slot == -2)
    truncated = bmmc.var_names[int(beyond[np.argmax(bmmc.X[:, beyond].max(axis=0).toarray())])]
    return [str(early), str(truncated)]


def assert_close(actual: np.ndarray, expected: np.ndarray, scale: np.ndarray) -> None:
    """Equal to 1e-6 relative to the size of the predictions (float32 rounding of values ~30 is ~2e-6)."""
    tolerance = 1e-6 * max(1.0, float(np.abs(scale).max()))
    np.testing.assert_allclose(actual, expected, atol=tolerance, rtol=0)


def translated(rna: ad.AnnData, model: TranslatorModel) -> np.ndarray:
    return np.asarray(sctranslator.translate(rna, model, PROTEINS, block_cells=N_CELLS, batch_size=8).X,
                      dtype=np.float64)


def edited(rna: ad.AnnData, gene: str, semantics: str) -> ad.AnnData:
    if semantics == "drop":
        return rna[:, rna.var_names != gene].copy()
    copy = rna.copy()
    dense = copy.X.toarray()
    dense[:, copy.var_names.get_loc(gene)] = 0
    copy.X = sp.csr_matrix(dense)
    return copy


@pytest.fixture(scope="module")
def drop_run(bmmc: ad.AnnData, tiny: TranslatorModel, chosen_genes: list[str],
             tmp_path_factory: pytest.TempPathFactory) -> knockout_module.KnockoutResult:
    out = tmp_path_factory.mktemp("ko") / "drop.h5ad"
    return knockout(bmmc, tiny, chosen_genes, PROTEINS, out=out, block_cells=15, batch_size=6, per_cell=True,
                    groupby="cell_type")


@pytest.mark.parametrize("semantics", ["drop", "zero"])
def test_knockout_equals_translating_an_edited_copy(semantics: str, bmmc: ad.AnnData, tiny: TranslatorModel,
                                                    chosen_genes: list[str], drop_run, tmp_path: Path) -> None:
    if semantics == "drop":
        result = drop_run
        assert result.semantics == "drop"  # the default for a published checkpoint
    else:
        result = knockout(bmmc, tiny, chosen_genes, PROTEINS, out=tmp_path / "zero.zarr", semantics="zero",
                          block_cells=15, batch_size=6, per_cell=True)
    base = translated(bmmc, tiny)
    per_cell = result.per_cell.X.reshape(N_CELLS, len(chosen_genes), len(PROTEINS))
    assert_close(result.per_cell.obsm["baseline"], base, base)
    for g, gene in enumerate(chosen_genes):
        expected = translated(edited(bmmc, gene, semantics), tiny) - base
        assert np.abs(expected).max() > 1e-4  # the knockout does change something
        assert_close(per_cell[:, g], expected, base)
        assert_close(result.mean.loc[gene].to_numpy(), expected.mean(axis=0), base)
        assert_close(result.std.loc[gene].to_numpy(), expected.std(axis=0, ddof=1), base)


def test_group_statistics_and_files(drop_run, bmmc: ad.AnnData, chosen_genes: list[str]) -> None:
    result = drop_run
    per_cell = result.per_cell.X.reshape(N_CELLS, len(chosen_genes), len(PROTEINS)).astype(np.float64)
    labels = bmmc.obs["cell_type"].astype(str).to_numpy()
    group = "G/M prog" if "G/M prog" in set(labels) else labels[0]
    chosen = per_cell[labels == group]
    key = f"mean:{group}".replace("/", "_")  # '/' is a path separator in h5ad/zarr
    np.testing.assert_allclose(result.adata.layers[key], chosen.mean(axis=0), atol=1e-5)
    assert result.n_cells[group] == chosen.shape[0] and result.n_cells["all"] == N_CELLS
    table = result.effects
    row = table[(table.gene == chosen_genes[0]) & (table.protein == "CD4") & (table.group == group)]
    assert row["mean"].item() == pytest.approx(chosen[:, 0, PROTEINS.index("CD4")].mean(), abs=1e-6)
    for path in result.files.values():
        assert path.exists()
    written = ad.read_h5ad(result.files["anndata"])
    np.testing.assert_allclose(written.layers["std"], result.std.to_numpy(), rtol=1e-6)


@pytest.mark.slow
def test_kill_9_then_rerun_resumes_and_equals_an_uninterrupted_run(data_dir: Path, tmp_path: Path) -> None:
    """A real `sctranslator knockout` process killed with SIGKILL after some blocks are committed: the
    re-run keeps those blocks (their files untouched) and its result equals an uninterrupted run's."""
    torch.manual_seed(3)
    # Big enough that the job takes seconds, so it can be killed half way (as tests/test_resume.py).
    model = TranslatorModel(ModelConfig.sized(dim=32, enc_depth=2, dec_depth=1, enc_heads=4, dec_heads=2,
                                              enc_dim_head=16, dec_dim_head=8, max_genes=1024, max_proteins=16))
    bundle = save_model(model, tmp_path / "model")
    rna = ad.read_h5ad(data_dir / "pbmc10k_cite_10x" / "rna.h5ad")
    n_obs = 192
    cells = ad.concat([rna] * -(-n_obs // rna.n_obs))[:n_obs].copy()
    cells.obs_names = [f"cell{i}" for i in range(n_obs)]
    data = tmp_path / "rna.h5ad"
    cells.write_h5ad(data)
    plan = build_plan(cells.var, model, ["CD3", "CD4"])
    genes = ",".join(str(cells.var_names[int(np.flatnonzero(plan.column_slot == slot)[0])]) for slot in (2, 40))
    common = ["--model", str(bundle), "--genes", genes, "--proteins", "CD3,CD4,CD8a,CD14", "--block-cells", "16",
              "--batch-size", "8", "--workers", "1", "--per-cell", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "interrupted.h5ad"
    process = subprocess.Popen(cli("knockout", str(data), "--out", str(out), *common), env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    blocks = tmp_path / f".{out.name}.knockout-job" / "blocks"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if blocks.is_dir() and len([n for n in os.listdir(blocks) if not n.startswith(".")]) >= 3:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the job finished before it could be killed; make it bigger"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    committed = {name: (blocks / name).stat().st_mtime_ns for name in os.listdir(blocks) if not name.startswith(".")}
    n_blocks = n_obs // 16
    assert 3 <= len(committed) < n_blocks and not out.exists()

    rerun = subprocess.run(cli("knockout", str(data), "--out", str(out), *common), env=env, capture_output=True,
                           text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resumed: {len(committed)} block(s) committed by an earlier run were kept, " \
           f"{n_blocks - len(committed)} computed" in rerun.stdout
    assert {name: (blocks / name).stat().st_mtime_ns for name in committed} == committed  # not recomputed

    clean = tmp_path / "clean.h5ad"
    subprocess.run(cli("knockout", str(data), "--out", str(clean), *common), env=env, check=True, capture_output=True)
    resumed, uninterrupted = ad.read_h5ad(out), ad.read_h5ad(clean)
    for key in ("mean", "std"):
        np.testing.assert_array_equal(resumed.layers[key], uninterrupted.layers[key])
    per_cell = [ad.read_h5ad(tmp_path / f"{name}_per_cell.h5ad") for name in ("interrupted", "clean")]
    np.testing.assert_array_equal(per_cell[0].X, per_cell[1].X)
    assert np.abs(per_cell[0].X).max() > 0


def test_other_settings_on_the_same_output_are_refused_unless_overwrite(bmmc: ad.AnnData, tiny: TranslatorModel,
                                                                         chosen_genes: list[str],
                                                                         tmp_path: Path) -> None:
    out = tmp_path / "ko.h5ad"
    first = knockout(bmmc, tiny, chosen_genes, PROTEINS, out=out, block_cells=10, quiet=True)
    assert first.run["blocks_computed"] == 4
    again = knockout(bmmc, tiny, chosen_genes, PROTEINS, out=out, block_cells=10, quiet=True)
    assert again.run == {**again.run, "blocks_computed": 0, "blocks_skipped": 4}  # all committed: nothing redone
    np.testing.assert_array_equal(again.adata.layers["mean"], first.adata.layers["mean"])
    with pytest.raises(StoreError, match="different"):
        knockout(bmmc, tiny, chosen_genes[:1], PROTEINS, out=out, block_cells=10)
    replaced = knockout(bmmc, tiny, chosen_genes[:1], PROTEINS, out=out, block_cells=10, overwrite=True, quiet=True)
    assert replaced.mean.shape == (1, len(PROTEINS))


def test_unknown_and_unmapped_genes_are_named(bmmc: ad.AnnData, tiny: TranslatorModel, tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match="NOT_A_GENE"):
        knockout(bmmc, tiny, ["NOT_A_GENE"], PROTEINS, out=tmp_path / "a.h5ad")
    unmapped = str(bmmc.var_names[np.flatnonzero(map_genes(bmmc.var_names).token_ids == 0)[0]])
    with pytest.raises(VocabularyError, match=unmapped):
        knockout(bmmc, tiny, [unmapped], PROTEINS, out=tmp_path / "b.h5ad")
    with pytest.raises(InputDataError, match="semantics"):
        knockout(bmmc, tiny, [str(bmmc.var_names[0])], PROTEINS, out=tmp_path / "c.h5ad", semantics="remove")


def test_panel_models_default_to_zero(bmmc: ad.AnnData, fixtures_dir: Path, tmp_path: Path) -> None:
    model = sctranslator.load_model(fixtures_dir / "tiny_a_official.pt")
    tokens = map_genes(bmmc.var_names).token_ids
    panel = tokens[tokens > 0][::-1][:40]  # a fixed gene panel in its own order
    model.panel = {"genes": {"token_ids": [int(t) for t in panel]}}
    gene = str(bmmc.var_names[np.flatnonzero(tokens == panel[5])[0]])
    result = knockout(bmmc[:12], model, [gene], PROTEINS, out=tmp_path / "panel.h5ad", per_cell=True)
    assert result.semantics == "zero"
    base = translated(bmmc[:12].copy(), model)
    expected = translated(edited(bmmc[:12].copy(), gene, "zero"), model) - base
    assert_close(result.per_cell.X, expected, base)


def test_command_line_handler(bmmc: ad.AnnData, tmp_path: Path, fixtures_dir: Path, chosen_genes: list[str],
                              capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from sctranslator.analysis.commands import define_knockout

    data = tmp_path / "rna.h5ad"
    bmmc[:8].copy().write_h5ad(data)
    (tmp_path / "genes.txt").write_text(f"{chosen_genes[0]}  # early position\n")
    parser = argparse.ArgumentParser()
    handler = define_knockout(parser)
    args = parser.parse_args([str(data), "--model", str(fixtures_dir / "tiny_a_official.pt"), "--genes",
                              f"@{tmp_path / 'genes.txt'}", "--proteins", "CD3,CD4", "--out",
                              str(tmp_path / "ko.zarr"), "--semantics", "zero", "--quiet"])
    assert handler(args) == 0
    assert "Knocked out 1 gene(s) (zero) in 8 cells" in capsys.readouterr().out
    assert ad.read_zarr(tmp_path / "ko.zarr").shape == (1, 2)


@pytest.mark.parametrize("selection", [{"cells": "picked", "max_cells": 3}, {"obs_query": "group"}],
                         ids=["cells+max_cells", "obs_query"])
def test_cell_selection_is_translates(selection: dict, bmmc: ad.AnnData, tiny: TranslatorModel,
                                      chosen_genes: list[str], tmp_path: Path) -> None:
    """--cells / --obs-query / --max-cells pick the same cells for knockout and attention as for translate."""
    labels = bmmc.obs["cell_type"].astype(str)
    given = dict(selection)
    if "cells" in given:
        given["cells"] = [str(bmmc.obs_names[i]) for i in (31, 2, 17, 5, 22)]  # not in the input's order
    if "obs_query" in given:
        given["obs_query"] = f"cell_type == {labels.iloc[0]!r}"
    translated = sctranslator.translate(bmmc, tiny, PROTEINS, quiet=True, **given)
    names = list(translated.obs_names)
    assert 0 < len(names) < N_CELLS
    recorded = translated.uns["sctranslator"]["settings"]["cell_selection"]
    ko = knockout(bmmc, tiny, chosen_genes[:1], PROTEINS, out=tmp_path / "ko.h5ad", per_cell=True, quiet=True,
                  **given)
    assert list(ko.per_cell.obs_names) == names
    assert ko.adata.uns["sctranslator_knockout"]["cell_selection"] == recorded
    attention = sctranslator.interactions(bmmc, tiny, PROTEINS, quiet=True, **given)
    subset = sctranslator.interactions(bmmc[names].copy(), tiny, PROTEINS, quiet=True)
    assert attention.n_cells["all"] == len(names)
    assert attention.adata.uns["sctranslator_attention"]["cell_selection"] == recorded
    np.testing.assert_allclose(attention.gene_to_protein.to_numpy(), subset.gene_to_protein.to_numpy(), rtol=1e-6)


def test_progress_moves_per_batch_not_per_block(bmmc: ad.AnnData, fixtures_dir: Path, chosen_genes: list[str],
                                                tmp_path: Path) -> None:
    """One block of 12 cells in batches of 3, two genes (3 forwards per cell): the bar counts cells as their
    forwards finish, batch by batch, within the block (a bar per block would jump from 0 to 12)."""
    data = tmp_path / "rna.h5ad"
    bmmc[:12].copy().write_h5ad(data)
    env = {**os.environ, "TQDM_MININTERVAL": "0", "TQDM_MINITERS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cli("knockout", str(data), "--model", str(fixtures_dir / "tiny_a_official.pt"), "--genes",
                              ",".join(chosen_genes), "--proteins", "CD3,CD4", "--out", str(tmp_path / "ko.h5ad"),
                              "--block-cells", "12", "--batch-size", "3", "--workers", "1"),
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    counts = [int(n) for n in re.findall(r"knockout x2:.*?\b(\d+)/12\b", done.stderr)]
    assert counts[-1] == 12 and counts == sorted(counts)
    assert set(range(1, 12)) <= set(counts), counts  # every cell counted as its batch finished
