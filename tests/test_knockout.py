"""Pseudo-knockout: equals translating edited copies of the data, resumes, refuses bad requests."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import sctranslator
import sctranslator.analysis.knockout as knockout_module
from sctranslator.analysis.knockout import knockout
from sctranslator.errors import InputDataError, StoreError, VocabularyError
from sctranslator.model import TranslatorModel
from sctranslator.plan import build_plan
from sctranslator.vocab import map_genes

PROTEINS = ["CD3", "CD4", "CD8a", "CD14", "CD19", "CD45RA", "HLA-DR", "CD11c"]
N_CELLS = 40


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


def test_resume_after_interruption_gives_identical_results(bmmc: ad.AnnData, tiny: TranslatorModel,
                                                           chosen_genes: list[str], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    full = knockout(bmmc, tiny, chosen_genes, PROTEINS, out=tmp_path / "full.h5ad", block_cells=10, per_cell=True)
    real = knockout_module._compute_block
    calls = []

    def failing(job, start, stop):
        calls.append(start)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed during the third block
        return real(job, start, stop)

    monkeypatch.setattr(knockout_module, "_compute_block", failing)
    out = tmp_path / "resumed.h5ad"
    with pytest.raises(KeyboardInterrupt):
        knockout(bmmc, tiny, chosen_genes, PROTEINS, out=out, block_cells=10, per_cell=True)
    calls.clear()
    monkeypatch.setattr(knockout_module, "_compute_block", lambda job, a, b: (calls.append(a), real(job, a, b))[1])
    resumed = knockout(bmmc, tiny, chosen_genes, PROTEINS, out=out, block_cells=10, per_cell=True)
    assert calls == [20, 30]  # only the two blocks that were not committed
    np.testing.assert_array_equal(resumed.adata.layers["mean"], full.adata.layers["mean"])
    np.testing.assert_array_equal(resumed.adata.layers["std"], full.adata.layers["std"])
    np.testing.assert_array_equal(resumed.per_cell.X, full.per_cell.X)
    # Other settings on the same output are refused, unless asked to overwrite.
    with pytest.raises(StoreError, match="different"):
        knockout(bmmc, tiny, chosen_genes[:1], PROTEINS, out=out, block_cells=10)
    again = knockout(bmmc, tiny, chosen_genes[:1], PROTEINS, out=out, block_cells=10, overwrite=True)
    assert again.mean.shape == (1, len(PROTEINS))


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
