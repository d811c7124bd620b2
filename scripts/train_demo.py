"""Train the bundled demo model and its ridge baseline; write them with 500 held-out cells as package data.

    python scripts/train_demo.py [--seed 0] [--epochs 3] [--out sctranslator/data/demo]

Trains a small scTranslator from scratch on CPU on the training split of the 10x PBMC CITE-seq
data (/work/shared/data/pbmc10k_cite_10x), holds out 500 seeded cells, fits the PCA + ridge
baseline on the same training cells and target scaling, and reports both on the held-out cells
and, without retraining, on the ECCITE-seq PBMCs for the proteins the panels share.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc

import sctranslator
from sctranslator.analysis.baseline import RidgeBaseline
from sctranslator.analysis.matching import match_proteins
from sctranslator.analysis.metrics import pearson_per_protein
from sctranslator.kernels import normalize_block, scale_targets
from sctranslator.train import finetune, split_cells

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TRAIN_DATA = SHARED / "pbmc10k_cite_10x"
CROSS_DATA = SHARED / "pbmc_eccite_mimitou2019"
HELD_OUT = 500


def select_genes(rna: ad.AnnData, train: np.ndarray, n_genes: int) -> list[str] | None:
    """The n most variable genes of the training cells (log-normalised), in the data's order."""
    if not n_genes or n_genes >= rna.n_vars:
        return None
    logged = ad.AnnData(normalize_block(rna.X[train], "total_log1p"), var=pd.DataFrame(index=rna.var_names))
    sc.pp.highly_variable_genes(logged, n_top_genes=n_genes, flavor="seurat")
    return [str(g) for g in rna.var_names[logged.var["highly_variable"].to_numpy()]]


def write_cells(adata: ad.AnnData, path: Path) -> None:
    adata = ad.AnnData(X=adata.X.tocsr().astype(np.float32), obs=pd.DataFrame(index=adata.obs_names),
                       var=pd.DataFrame(index=adata.var_names))
    adata.write_h5ad(path, compression="gzip")


def score_table(proteins: list[str], model_r: np.ndarray, baseline_r: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"protein": proteins, "model_r": np.round(model_r, 4), "baseline_r": np.round(baseline_r, 4)})


def cross_dataset(bundle: Path, baseline: RidgeBaseline, panel: list[str], scaling: str, workers: int) -> pd.DataFrame:
    """Model and baseline on the ECCITE-seq PBMCs, proteins paired by name / gene, no retraining."""
    rna = ad.read_h5ad(CROSS_DATA / "rna.h5ad")
    protein = ad.read_h5ad(CROSS_DATA / "protein.h5ad")
    match = match_proteins(panel, list(protein.var_names))
    pred = sctranslator.translate(rna, bundle, workers=workers)
    model_cols = [p.pred_index for p in match.pairs]
    truth_cols = [p.truth_index for p in match.pairs]
    # Per-cell scaling over the shared proteins only (the model's own panel is not all measured there).
    truth = scale_targets(protein.X[:, truth_cols], scaling)
    model_r = pearson_per_protein(np.asarray(pred.X)[:, model_cols], truth)
    base_r = pearson_per_protein(baseline.predict(rna.X, list(rna.var_names))[:, model_cols], truth)
    table = score_table([f"{p.pred} ~ {p.truth}" for p in match.pairs], model_r, base_r)
    table["matched_by"] = [p.by for p in match.pairs]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=INT", help="configuration override")
    parser.add_argument("--n-genes", type=int, default=0, help="gene panel: most variable training genes (0 = all)")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--normalize", default="total_log1p")
    parser.add_argument("--target-scaling", default="minmax")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "sctranslator" / "data" / "demo")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/sctranslator-demo-training"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = {k: int(v) for k, v in (item.split("=") for item in args.set)}

    rna = ad.read_h5ad(TRAIN_DATA / "rna.h5ad")
    protein = ad.read_h5ad(TRAIN_DATA / "protein.h5ad")
    split = split_cells(rna.obs, val_count=HELD_OUT, seed=args.seed)  # the same draw finetune makes
    genes = select_genes(rna, split.train, args.n_genes)
    args.out.mkdir(parents=True, exist_ok=True)
    bundle = args.out / "model"
    held = rna.obs_names[split.val]
    # The 500 demo cells are never seen in training or model selection: the trainer gets only the
    # training cells and holds out its own validation cells from them for early stopping.
    args.work_dir.mkdir(parents=True, exist_ok=True)
    rna[split.train].write_h5ad(args.work_dir / "train_rna.h5ad")
    protein[split.train].write_h5ad(args.work_dir / "train_protein.h5ad")
    started = time.perf_counter()
    model = finetune(args.work_dir / "train_rna.h5ad", args.work_dir / "train_protein.h5ad", config=args.config,
                     config_overrides=overrides, out=bundle, genes=genes, val_count=HELD_OUT, seed=args.seed,
                     epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, normalize=args.normalize,
                     target_scaling=args.target_scaling, val_every=50, workers=args.workers,
                     work_dir=args.work_dir / "training", metrics_log=args.work_dir / "metrics.csv")
    train_seconds = time.perf_counter() - started
    assert not set(model.validation.obs_names) & set(held), "the demo cells leaked into model selection"
    panel = model.panel["proteins"]["names"]

    started = time.perf_counter()
    targets = scale_targets(protein[:, panel].X, args.target_scaling)
    baseline = RidgeBaseline(n_components=50, seed=args.seed).fit(rna.X[split.train], targets[split.train],
                                                                   list(rna.var_names), panel)
    baseline.save(args.out / "baseline.npz")
    baseline_seconds = time.perf_counter() - started
    write_cells(rna[held], args.out / "rna.h5ad")
    write_cells(protein[held], args.out / "protein.h5ad")

    predicted = sctranslator.translate(args.out / "rna.h5ad", bundle, workers=args.workers)
    model_r = pearson_per_protein(np.asarray(predicted.X), targets[split.val])
    baseline_r = pearson_per_protein(baseline.predict(rna.X[split.val], list(rna.var_names)), targets[split.val])
    heldout = score_table(panel, model_r, baseline_r)
    cross = cross_dataset(bundle, baseline, panel, args.target_scaling, args.workers)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    summary = {
        "seed": args.seed, "config": args.config, "overrides": overrides,
        "n_genes": len(model.panel["genes"]["symbols"]),
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "normalize": args.normalize,
        "target_scaling": args.target_scaling, "train_cells": int(split.train.size),
        "validation_cells_within_train": HELD_OUT, "heldout_cells": HELD_OUT,
        "train_seconds": round(train_seconds, 1), "baseline_seconds": round(baseline_seconds, 1),
        "steps": model.training_outcome.steps_done, "best_step": model.training_outcome.best_step,
        "parameters": model.n_parameters(), "demo_bytes": size,
        "heldout": {"model_mean_r": float(np.nanmean(model_r)), "baseline_mean_r": float(np.nanmean(baseline_r)),
                    "per_protein": heldout.to_dict(orient="records")},
        "cross_dataset": {"data": CROSS_DATA.name, "model_mean_r": float(np.nanmean(cross["model_r"])),
                          "baseline_mean_r": float(np.nanmean(cross["baseline_r"])),
                          "per_protein": cross.to_dict(orient="records")},
    }
    (args.out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(heldout.to_string(index=False))
    print(f"held-out mean r: model {summary['heldout']['model_mean_r']:.4f}, "
          f"baseline {summary['heldout']['baseline_mean_r']:.4f}")
    print(cross.to_string(index=False))
    print(f"cross-dataset mean r: model {summary['cross_dataset']['model_mean_r']:.4f}, "
          f"baseline {summary['cross_dataset']['baseline_mean_r']:.4f}")
    print(f"training {train_seconds:.0f} s; demo data {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
