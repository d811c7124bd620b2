"""Honest evaluation: too few shared cells refused, training cells recognised, finetune keeps its start's scales."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import anndata as ad
import pytest
from datafiles import PBMC, TINY_A, data_file

from sctranslator.analysis import evaluate
from sctranslator.analysis.commands import format_report
from sctranslator.errors import InputDataError

N_CELLS = 200
PANEL = ["CD3", "CD4", "CD14", "CD19"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Real PBMC cells, a bundle fine-tuned on them (40 held out), and its predictions for the first 100."""
    from sctranslator import translate
    from sctranslator.train import finetune

    folder = tmp_path_factory.mktemp("honest")
    rna = ad.read_h5ad(data_file(PBMC / "rna.h5ad"))[:N_CELLS].copy()
    protein = ad.read_h5ad(PBMC / "protein.h5ad")[:N_CELLS].copy()
    rna.write_h5ad(folder / "rna.h5ad")
    protein.write_h5ad(folder / "protein.h5ad")
    model = finetune(folder / "rna.h5ad", folder / "protein.h5ad", init=TINY_A, out=folder / "bundle", steps=2,
                     batch_size=8, val_count=40, quiet=True, workers=1, target_scaling="clr")
    pred = folder / "pred.zarr"
    translate(rna[:100].copy(), folder / "bundle", PANEL, out=pred, workers=1)
    return {"folder": folder, "rna": rna, "protein": protein, "model": model, "pred": pred}


def test_bundle_records_its_training_and_validation_cells(data):
    config = json.loads((data["folder"] / "bundle" / "config.json").read_text())
    cells = config["cells"]
    assert cells["train"]["cells"] == N_CELLS - 40 and cells["val"]["cells"] == 40
    val_names = set(data["model"].validation.obs_names)
    from sctranslator.model.cells import read_cells, seen_in, split_summary

    assert cells["val"] == split_summary(sorted(val_names))
    splits = read_cells(data["folder"] / "bundle")
    names = data["rna"].obs_names
    in_val = seen_in(names, splits["val"])
    assert set(names[in_val]) == val_names
    assert not (seen_in(names, splits["train"]) & in_val).any()
    assert seen_in(names, splits["train"]).sum() == N_CELLS - 40


def test_scoring_training_cells_is_warned_about_and_labelled(data, caplog):
    caplog.set_level(logging.WARNING, logger="sctranslator.analysis.evaluate")
    report = evaluate(data["pred"], data["protein"], plots=False)  # the bundle is found through the store's record
    seen = report["training_cells"]
    names = ad.read_zarr(data["pred"]).obs_names
    val_names = set(data["model"].validation.obs_names)
    expected_val = sum(name in val_names for name in names)
    assert seen["checked"] and seen["scored"] == 100
    assert seen["in_validation"] == expected_val and seen["in_training"] == 100 - expected_val > 0
    assert seen["unseen"] == 0 and "NOT A HELD-OUT SCORE" in seen["label"]
    assert "were used to train the model" in caplog.text
    assert format_report(report).splitlines()[0].startswith("*** NOT A HELD-OUT SCORE")

    # Only the held-out cells: no warning, labelled as held out.
    held = data["protein"][sorted(val_names)].copy()
    caplog.clear()
    report = evaluate(data["pred"], held, plots=False, min_matched=0)
    assert report["training_cells"]["in_training"] == 0
    assert report["training_cells"]["in_validation"] == report["cells"]["matched"] == expected_val
    assert report["training_cells"]["label"].startswith("held-out") and "train the model" not in caplog.text


def test_another_model_at_the_recorded_path_is_not_trusted(data, tmp_path):
    import shutil

    from sctranslator import translate
    from sctranslator.train import finetune

    finetune(data["folder"] / "rna.h5ad", data["folder"] / "protein.h5ad", init=TINY_A, out=tmp_path / "bundle",
             steps=1, batch_size=8, val_count=40, quiet=True, workers=1)
    pred = tmp_path / "pred.zarr"
    translate(data["rna"][:50].copy(), tmp_path / "bundle", PANEL, out=pred, workers=1)
    assert evaluate(pred, data["protein"], plots=False)["training_cells"]["checked"]
    # The same path now holds another training run's bundle (other weights, other split).
    shutil.rmtree(tmp_path / "bundle")
    shutil.copytree(data["folder"] / "bundle", tmp_path / "bundle")
    seen = evaluate(pred, data["protein"], plots=False)["training_cells"]
    assert not seen["checked"] and "not the model that made these predictions" in seen["note"]


def test_a_model_without_a_record_is_said_to_be_unchecked(data):
    report = evaluate(data["pred"], data["protein"], plots=False, model=data["folder"] / "bundle")
    assert report["training_cells"]["checked"]
    with pytest.raises(InputDataError, match="not a model bundle"):
        evaluate(data["pred"], data["protein"], plots=False, model=data["folder"])
    from sctranslator import translate

    other = data["folder"] / "pred_published.zarr"
    translate(data["rna"][:20].copy(), TINY_A, PANEL, out=other, workers=1)
    report = evaluate(other, data["protein"], plots=False)
    assert not report["training_cells"]["checked"] and "not checked" in report["training_cells"]["note"]


def test_too_few_shared_cells_are_refused_with_both_counts(data):
    # Another dataset's measurements whose names repeat 11 of ours by chance.
    stranger = data["protein"].copy()
    stranger.obs_names = [name if i < 11 else f"other-{i}" for i, name in enumerate(stranger.obs_names)]
    with pytest.raises(InputDataError, match=r"only 11 cell names .* 100 predicted .* 200 measured"):
        evaluate(data["pred"], stranger, plots=False)
    # Predictions for a subset of the measured cells are the normal case: the smaller side counts.
    assert evaluate(data["pred"], data["protein"], plots=False)["cells"]["matched"] == 100
    # Measured for a subset of the predicted cells too (60 of 100 predicted, all 60 measured match).
    assert evaluate(data["pred"], data["protein"][40:100].copy(), plots=False)["cells"]["matched"] == 60
    assert evaluate(data["pred"], stranger, plots=False, min_matched=0)["cells"]["matched"] == 11


def test_duplicate_cell_names_are_refused_with_the_fix(data):
    twice = ad.concat([data["protein"][:50], data["protein"][:50]])
    with pytest.raises(InputDataError, match=r"repeat 50 name.*prefix each sample's barcodes"):
        evaluate(data["pred"], twice, plots=False)


def test_truth_as_a_cite_seq_mudata(data, tmp_path):
    mudata = pytest.importorskip("mudata")
    both = mudata.MuData({"rna": data["rna"], "prot": data["protein"]})
    both.write_h5mu(tmp_path / "cite.h5mu")
    want = evaluate(data["pred"], data["protein"], plots=False)
    got = evaluate(data["pred"], tmp_path / "cite.h5mu", plots=False)
    assert got["model"]["summary"] == want["model"]["summary"]
    adt = mudata.MuData({"gex": data["rna"], "ADT": data["protein"]})
    assert evaluate(data["pred"], adt, plots=False)["model"]["summary"] == want["model"]["summary"]
    renamed = mudata.MuData({"gex": data["rna"], "ab_counts": data["protein"], "hto": data["protein"][:, :2]})
    renamed.write_h5mu(tmp_path / "renamed.h5mu")
    with pytest.raises(InputDataError, match=r"modalities .*--truth-modality"):
        evaluate(data["pred"], tmp_path / "renamed.h5mu", plots=False)
    got = evaluate(data["pred"], tmp_path / "renamed.h5mu", plots=False, truth_modality="ab_counts")
    assert got["model"]["summary"] == want["model"]["summary"]
    with pytest.raises(InputDataError, match="no modality 'adt'"):
        evaluate(data["pred"], tmp_path / "renamed.h5mu", plots=False, truth_modality="adt")


def test_finetune_from_a_bundle_keeps_its_scaling_unless_asked(data, tmp_path):
    from sctranslator.model import load_model
    from sctranslator.train import finetune

    start = load_model(data["folder"] / "bundle")
    assert start.preprocessing["target_scaling"] == "clr"
    options = {"steps": 1, "batch_size": 8, "val_count": 40, "quiet": True, "workers": 1}
    kept = finetune(data["folder"] / "rna.h5ad", data["folder"] / "protein.h5ad", init=data["folder"] / "bundle",
                    out=tmp_path / "kept", **options)
    assert kept.preprocessing == start.preprocessing
    config = json.loads((tmp_path / "kept" / "config.json").read_text())
    assert config["preprocessing"]["target_scaling"] == "clr"
    assert config["preprocessing_from"] == {"normalize": "the --init model", "target_sum": "the --init model",
                                            "target_scaling": "the --init model"}
    assert "target_scaling taken from the --init model" in (tmp_path / "kept" / "card.md").read_text()
    asked = finetune(data["folder"] / "rna.h5ad", data["folder"] / "protein.h5ad", init=data["folder"] / "bundle",
                     out=tmp_path / "asked", target_scaling="log1p", **options)
    assert asked.preprocessing["target_scaling"] == "log1p"
    assert json.loads((tmp_path / "asked" / "config.json").read_text())["preprocessing_from"]["target_scaling"] == \
        "asked"
    # The packaged demo model was trained on CLR targets: --init demo keeps them.
    demo = finetune(data["folder"] / "rna.h5ad", data["folder"] / "protein.h5ad", init="demo",
                    out=tmp_path / "demo", **options)
    assert demo.preprocessing["target_scaling"] == load_model("demo").preprocessing["target_scaling"] == "clr"


def test_scratch_training_uses_the_documented_defaults(data, tmp_path):
    from sctranslator.train import finetune

    model = finetune(data["folder"] / "rna.h5ad", data["folder"] / "protein.h5ad", config="tiny", steps=1,
                     batch_size=8, val_count=40, quiet=True, workers=1, out=tmp_path / "scratch")
    assert model.preprocessing == {"normalize": "total_log1p", "target_sum": 1e4, "target_scaling": "minmax"}
    assert Path(tmp_path / "scratch" / "cells.npz").is_file()


def test_finetune_pairs_cells_by_name_only_when_they_are_the_same_cells(data):
    from sctranslator.train.paired import load_paired

    stranger = data["protein"].copy()
    stranger.obs_names = [name if i < 11 else f"other-{i}" for i, name in enumerate(stranger.obs_names)]
    with pytest.raises(InputDataError, match=r"only 11 cell names .* 200 RNA .* 200 protein"):
        load_paired(data["rna"], stranger)
    twice = ad.concat([data["protein"][:50], data["protein"][:50]])
    with pytest.raises(InputDataError, match=r"repeat 50 name.*alone would pair different cells"):
        load_paired(data["rna"], twice)
    # A protein table for a subset of the cells pairs that subset.
    assert load_paired(data["rna"], data["protein"][60:140].copy()).n_cells == 80


def test_the_demo_model_knows_its_training_cells(tmp_path):
    from sctranslator import translate
    from sctranslator.cli.demo import demo_root

    # The first pbmc10k cells of the test data include cells the demo model was trained on.
    rna = ad.read_h5ad(data_file(PBMC / "rna.h5ad"))[:60].copy()
    protein = ad.read_h5ad(PBMC / "protein.h5ad")
    translate(rna, "demo", out=tmp_path / "pbmc.zarr", workers=1)
    seen = evaluate(tmp_path / "pbmc.zarr", protein, plots=False)["training_cells"]
    assert seen["checked"] and seen["in_training"] > 0
    assert seen["in_training"] + seen["in_validation"] + seen["unseen"] == 60
    # The packaged demo cells are the 500 held out before training: never seen.
    with demo_root() as root:
        cells = ad.read_h5ad(root / "rna.h5ad")[:40].copy()
        translate(cells, "demo", out=tmp_path / "demo.zarr", workers=1)
        seen = evaluate(tmp_path / "demo.zarr", root / "protein.h5ad", plots=False)["training_cells"]
    assert seen["checked"] and seen["unseen"] == 40 and seen["in_training"] == seen["in_validation"] == 0


def test_a_bundle_finetuned_from_the_demo_knows_the_demo_training_cells(tmp_path):
    from sctranslator import translate
    from sctranslator.cli.demo import demo_root
    from sctranslator.model.cells import read_cells
    from sctranslator.train import finetune

    # Fine-tuned on the packaged demo cells (held out from the demo's training) ...
    with demo_root() as root:
        rna = ad.read_h5ad(root / "rna.h5ad")[:120].copy()
        protein = ad.read_h5ad(root / "protein.h5ad")[:120].copy()
    rna.write_h5ad(tmp_path / "rna.h5ad")
    protein.write_h5ad(tmp_path / "protein.h5ad")
    finetune(tmp_path / "rna.h5ad", tmp_path / "protein.h5ad", init="demo", out=tmp_path / "child", steps=1,
             batch_size=8, val_count=20, quiet=True, workers=1)
    splits = read_cells(tmp_path / "child")
    assert {"train", "val", "ancestor_train", "ancestor_val"} <= set(splits)
    config = json.loads((tmp_path / "child" / "config.json").read_text())
    assert config["cells"]["ancestors"]["train"]["cells"] == splits["ancestor_train"].size > 0
    # ... its predictions for cells the demo model was trained on are not a held-out score.
    pbmc = ad.read_h5ad(data_file(PBMC / "rna.h5ad"))[:60].copy()
    truth = ad.read_h5ad(PBMC / "protein.h5ad")
    translate(pbmc.copy(), "demo", out=tmp_path / "demo.zarr", workers=1)
    parent = evaluate(tmp_path / "demo.zarr", truth, plots=False)["training_cells"]
    translate(pbmc, tmp_path / "child", out=tmp_path / "child.zarr", workers=1)
    seen = evaluate(tmp_path / "child.zarr", truth, plots=False)["training_cells"]
    assert seen["checked"] and parent["in_training"] > 0
    # (barcodes repeat across 10x runs: some of the child's own training cells may share these names)
    assert seen["in_training"] >= parent["in_training"]
    assert seen["in_training"] + seen["in_validation"] >= parent["in_training"] + parent["in_validation"]
    assert seen["label"].startswith("NOT A HELD-OUT SCORE")
    # A grandchild inherits the whole lineage.
    finetune(tmp_path / "rna.h5ad", tmp_path / "protein.h5ad", init=tmp_path / "child", out=tmp_path / "grand",
             steps=1, batch_size=8, val_count=20, quiet=True, workers=1)
    grand = read_cells(tmp_path / "grand")
    assert set(splits["ancestor_train"]) | set(splits["train"]) == set(grand["ancestor_train"])
