"""`evaluate` finds the predictions in every translate output, uses their recorded scale, refuses RNA."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from sctranslator import translate
from sctranslator.analysis import evaluate
from sctranslator.analysis.find_predictions import cap_names, read_predictions
from sctranslator.errors import InputDataError

DEMO = Path(str(resources.files("sctranslator") / "data" / "demo"))
N_CELLS = 60


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, Path]:
    """The bundled demo model on 60 real held-out PBMCs, written as Zarr, h5ad and h5mu."""
    root = tmp_path_factory.mktemp("demo-eval")
    rna = ad.read_h5ad(DEMO / "rna.h5ad")[:N_CELLS].copy()
    paths = {"zarr": root / "pred.zarr", "h5ad": root / "with_proteins.h5ad", "h5mu": root / "both.h5mu"}
    translate(rna, "demo", out=paths["zarr"], workers=1, write_h5ad=paths["h5ad"], write_mudata=paths["h5mu"])
    return paths


def test_every_translate_output_gives_the_same_scores(outputs) -> None:
    truth = DEMO / "protein.h5ad"
    reports = {kind: evaluate(path, truth, plots=False) for kind, path in outputs.items()}
    zarr = reports["zarr"]
    assert zarr["cells"]["evaluated"] == N_CELLS and len(zarr["model"]["per_protein"]) == 14
    for kind in ("h5ad", "h5mu"):
        assert reports[kind]["model"]["summary"] == zarr["model"]["summary"], kind
    assert "obsm['protein_predicted']" in reports["h5ad"]["predictions_from"]
    assert "modality 'prot_predicted'" in reports["h5mu"]["predictions_from"]


def test_the_recorded_scale_is_the_default(outputs) -> None:
    # The demo model was trained on CLR targets: translate records it, evaluate uses it.
    stored = ad.read_zarr(outputs["zarr"])
    assert stored.uns["sctranslator"]["settings"]["output_scaling"] == "clr"
    default = evaluate(outputs["zarr"], DEMO / "protein.h5ad", plots=False)
    clr = evaluate(outputs["zarr"], DEMO / "protein.h5ad", plots=False, scaling="clr")
    minmax = evaluate(outputs["zarr"], DEMO / "protein.h5ad", plots=False, scaling="minmax")
    assert default["scaling"] == "clr" and default["scaling_source"].startswith("recorded")
    assert default["model"]["summary"] == clr["model"]["summary"]
    assert default["model"]["summary"]["rmse"] != pytest.approx(minmax["model"]["summary"]["rmse"])


def test_gene_expression_given_as_predictions_is_refused() -> None:
    with pytest.raises(InputDataError, match="looks like gene expression"):
        evaluate(DEMO / "rna.h5ad", DEMO / "protein.h5ad", plots=False)


def test_a_plain_protein_table_is_still_accepted() -> None:
    truth = ad.read_h5ad(DEMO / "protein.h5ad")
    plain = ad.AnnData(X=np.log1p(np.asarray(truth.X.todense() if hasattr(truth.X, "todense") else truth.X)))
    plain.obs_names, plain.var_names = truth.obs_names, truth.var_names
    found = read_predictions(plain, truth.var_names)
    assert found.found_in.endswith("(X)") and found.scaling is None
    report = evaluate(plain, truth, plots=False)
    assert report["scaling"] == "minmax" and report["scaling_source"].startswith("default")


def test_long_name_lists_are_capped() -> None:
    names = [f"G{i}" for i in range(19_000)]
    text = cap_names(names)
    assert text.startswith("G0, G1") and text.endswith("... and 18,980 more") and "G25" not in text
    assert cap_names(["A", "B"]) == "A, B"


def test_measured_counts_in_obsm_are_not_taken_for_predictions(tmp_path) -> None:
    # scvi-tools' convention: a CITE-seq file with the MEASURED proteins in obsm['protein_expression'].
    import pandas as pd

    rna = ad.read_h5ad(DEMO / "rna.h5ad")
    truth = ad.read_h5ad(DEMO / "protein.h5ad")
    counts = truth.X.toarray() if hasattr(truth.X, "toarray") else np.asarray(truth.X)
    rna.obsm["protein_expression"] = pd.DataFrame(counts, index=rna.obs_names, columns=truth.var_names)
    rna.write_h5ad(tmp_path / "cite.h5ad")
    with pytest.raises(InputDataError, match="MEASURED protein counts"):
        evaluate(tmp_path / "cite.h5ad", truth, plots=False)


def test_a_small_gene_matrix_is_refused_too() -> None:
    rna = ad.read_h5ad(DEMO / "rna.h5ad")[:, :300].copy()  # 300 genes, hardly any named like a protein
    with pytest.raises(InputDataError, match="looks like gene expression"):
        evaluate(rna, DEMO / "protein.h5ad", plots=False)
