"""A fine-tuned (panel) bundle answers proteins outside its panel, as the original's decoder does."""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch
from datafiles import PBMC, TINY_A, data_file

import sctranslator
from sctranslator.kernels import prepare_values
from sctranslator.plan import build_plan
from sctranslator.vocab import map_proteins

N_CELLS = 120
OUTSIDE = "CD2"  # not measured in the PBMC panel the bundle is fine-tuned on


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from sctranslator.train import finetune

    rna = ad.read_h5ad(data_file(PBMC / "rna.h5ad"))[:N_CELLS].copy()
    protein = ad.read_h5ad(PBMC / "protein.h5ad")[:N_CELLS].copy()
    folder = tmp_path_factory.mktemp("anyprotein")
    rna.write_h5ad(folder / "rna.h5ad")
    protein.write_h5ad(folder / "protein.h5ad")
    finetune(folder / "rna.h5ad", folder / "protein.h5ad", out=folder / "bundle", init=TINY_A, steps=2,
             batch_size=8, lr=1e-3, val_count=20, quiet=True, workers=1)
    return {"rna": rna[:16].copy(), "path": folder / "bundle", "panel": list(protein.var_names)}


def _direct(model: sctranslator.TranslatorModel, rna: ad.AnnData, name: str) -> np.ndarray:
    """The model's own forward with `name`'s token alone in a decoder window (the rest padding)."""
    plan = build_plan(rna.var, model, None)
    values = torch.from_numpy(prepare_values(rna.X, plan.column_slot, plan.position_real,
                                             normalize=plan.normalize, target_sum=plan.target_sum))
    n = values.shape[0]
    window = torch.zeros(model.config.max_proteins, dtype=torch.int64)
    window[0] = int(map_proteins([name]).token_ids[0])
    mask = torch.arange(model.config.max_proteins) < 1
    with torch.no_grad():
        out = model(values, torch.from_numpy(plan.gene_ids).expand(n, -1), window.expand(n, -1),
                    torch.from_numpy(plan.position_real).expand(n, -1), mask.expand(n, -1))
    return out[:, 0].numpy()


def test_outside_panel_protein_is_the_decoders_answer(bundle: dict, caplog: pytest.LogCaptureFixture) -> None:
    assert OUTSIDE not in bundle["panel"]
    model = sctranslator.load_model(bundle["path"])
    rna = bundle["rna"]
    full = sctranslator.translate(rna, bundle["path"], workers=1)
    with caplog.at_level(logging.WARNING, logger="sctranslator.plan"):
        mixed = sctranslator.translate(rna, bundle["path"], ["CD4", OUTSIDE], workers=1)
    warnings = [r.getMessage() for r in caplog.records if "trained panel" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0] and OUTSIDE in warnings[0]
    assert "CD4" not in warnings[0].split(":")[-1]
    assert list(mixed.var_names) == ["CD4", OUTSIDE]
    # The panel is still run whole in its trained window: its predictions do not move.
    np.testing.assert_allclose(mixed.X[:, 0], full[:, "CD4"].X[:, 0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(mixed.X[:, 1], _direct(model, rna, OUTSIDE), rtol=1e-5, atol=1e-6)
    assert list(mixed.uns["sctranslator"]["plan"]["untrained_proteins"]) == [OUTSIDE]
    assert len(full.uns["sctranslator"]["plan"]["untrained_proteins"]) == 0
    assert mixed.var.loc[OUTSIDE, "window"] == 1


def test_knockout_and_attention_accept_outside_proteins(bundle: dict, tmp_path: Path) -> None:
    from sctranslator.analysis.attention import interactions
    from sctranslator.analysis.knockout import knockout

    rna = bundle["rna"][:4].copy()
    read = build_plan(rna.var, sctranslator.load_model(bundle["path"]), None).column_slot >= 0
    totals = np.where(read, np.asarray(rna.X.sum(axis=0)).ravel(), -1)
    gene = str(rna.var_names[int(totals.argmax())])  # the most expressed gene the model reads
    effects = knockout(rna, bundle["path"], [gene], ["CD4", OUTSIDE], out=tmp_path / "ko.h5ad", quiet=True)
    assert list(effects.mean.columns) == ["CD4", OUTSIDE] and np.isfinite(effects.mean.to_numpy()).all()
    attention = interactions(rna, bundle["path"], ["CD4", OUTSIDE], quiet=True)
    assert list(attention.gene_to_protein.columns) == ["CD4", OUTSIDE]
    assert attention.adata.uns["sctranslator_attention"]["plan"]["untrained_proteins"] == [OUTSIDE]


def test_protein_pair_scaling_is_over_the_window_the_model_ran(bundle: dict) -> None:
    """A panel model runs its whole panel window: a pair's scaled score does not depend on what else is asked."""
    from sctranslator.analysis.attention import interactions

    panel = bundle["panel"]
    first, second = panel[0], panel[1]
    few = interactions(bundle["rna"][:4], bundle["path"], [first, second], kinds="protein-protein")
    many = interactions(bundle["rna"][:4], bundle["path"], [first, second, *panel[2:6], OUTSIDE],
                        kinds="protein-protein")
    for pair in ((first, second), (second, first)):
        assert np.isfinite(few.pairs.protein_scaled.loc[pair])
        np.testing.assert_allclose(few.pairs.protein_scaled.loc[pair], many.pairs.protein_scaled.loc[pair],
                                   rtol=1e-6)
        np.testing.assert_allclose(few.pairs.protein_to_protein.loc[pair], many.pairs.protein_to_protein.loc[pair],
                                   rtol=1e-6)
    # Two requested proteins still rank, since the scaling ran over the whole panel window.
    ranked = few.pairs.protein_pairs.set_index(["protein", "partner"])["scaled"]
    np.testing.assert_allclose(ranked.loc[(first, second)], many.pairs.protein_scaled.loc[first, second], rtol=1e-6)


def test_card_says_outside_panel_proteins_are_untrained(bundle: dict) -> None:
    card = (bundle["path"] / "card.md").read_text()
    line = next(line for line in card.splitlines() if "outside this panel" in line)
    assert "untrained" in line and "accuracy below does not cover them" in line and str(TINY_A) in line


def test_a_panel_protein_by_gene_name_beside_an_outside_one_keeps_the_request_order() -> None:
    """The demo's panel knows CD56; asked as its gene NCAM1 beside MS4A1 (outside the panel), the columns
    come back in the order asked, each equal to its lone run (this used to raise KeyError: 'CD56')."""
    rna = ad.read_h5ad(data_file(PBMC / "rna.h5ad"))[:16].copy()
    asked = ["MS4A1", "NCAM1"]
    both = sctranslator.translate(rna, "demo", asked, workers=1, quiet=True)
    assert list(both.var_names) == ["MS4A1", "CD56"]
    for column, name in enumerate(asked):
        alone = sctranslator.translate(rna, "demo", [name], workers=1, quiet=True)
        np.testing.assert_array_equal(np.asarray(both.X)[:, column], np.asarray(alone.X)[:, 0])
