"""Accuracy of the PCA + ridge baseline: pbmc10k held-out cells, and pbmc10k -> ECCITE cross-dataset.

    python benchmarks/bench_baseline.py [--data /work/shared/data] [--out DIR]

pbmc10k: fitted on all but a seeded 500-cell held-out split (`heldout_split(n, 500, seed=0)`, the
split the trainer's demo uses), scored on those 500 cells, with min-max and CLR targets.
ECCITE (Mimitou 2019, 500 cells): the same pbmc10k-trained model predicts every ECCITE cell; its
proteins are paired with ECCITE's by name or encoding gene through `evaluate`. ECCITE targets are
scaled over ECCITE's own 49-protein panel, so min-max cross-dataset numbers mix two panels' per-cell
scaling (per-protein Pearson is what to read there). Prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("NUMBA_CACHE_DIR", "/tmp/nc")

import anndata as ad  # noqa: E402
import pandas as pd  # noqa: E402

from sctranslator.analysis import RidgeBaseline, evaluate, heldout_split  # noqa: E402
from sctranslator.analysis.metrics import compute_metrics  # noqa: E402
from sctranslator.kernels import scale_targets  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SCALINGS = ("minmax", "clr")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _table(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _summary_rows(reports: dict[str, dict]) -> list[list[str]]:
    keys = ("mean_protein_pearson", "median_protein_pearson", "mean_protein_spearman", "mean_cell_pearson",
            "cosine", "rmse")
    return [[key] + [_fmt(reports[s]["summary"][key]) for s in reports] for key in keys]


def _per_protein_rows(reports: dict[str, dict]) -> list[list[str]]:
    first = next(iter(reports.values()))["per_protein"]
    rows = []
    for j, row in enumerate(first):
        rows.append([row["protein"]] + [_fmt(reports[s]["per_protein"][j]["pearson"]) for s in reports])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, help="also write evaluate() reports + figures here")
    args = parser.parse_args()

    rna = ad.read_h5ad(args.data / "pbmc10k_cite_10x" / "rna.h5ad")
    protein = ad.read_h5ad(args.data / "pbmc10k_cite_10x" / "protein.h5ad")
    eccite_rna = ad.read_h5ad(args.data / "pbmc_eccite_mimitou2019" / "rna.h5ad")
    eccite_truth = ad.read_h5ad(args.data / "pbmc_eccite_mimitou2019" / "protein.h5ad")
    train, test = heldout_split(rna.n_obs, 500, seed=0)
    print(f"pbmc10k: {rna.n_obs} cells x {rna.n_vars} genes, {protein.n_vars} proteins; "
          f"train {train.size}, held out {test.size} (seed 0)\n")

    held, cross = {}, {}
    for scaling in SCALINGS:
        targets = scale_targets(protein.X, scaling)
        started = time.perf_counter()
        model = RidgeBaseline().fit(rna.X[train], targets[train], rna.var_names, protein.var_names)
        fit_s = time.perf_counter() - started
        held[scaling] = compute_metrics(model.predict(rna.X[test], rna.var_names), targets[test], protein.var_names)
        print(f"{scaling}: fit {fit_s:.1f}s, CV alpha = {model.alpha_:g}")

        started = time.perf_counter()
        predicted = model.predict(eccite_rna.X, eccite_rna.var_names)
        table = ad.AnnData(X=predicted, obs=pd.DataFrame(index=eccite_rna.obs_names.copy()),
                           var=pd.DataFrame(index=pd.Index(model.proteins_, name="protein")))
        out = args.out / f"eccite_{scaling}" if args.out else None
        cross[scaling] = evaluate(table, eccite_truth, scaling=scaling, out=out, plots=out is not None)
        print(f"  ECCITE: gene coverage {model.gene_coverage(eccite_rna.var_names):.1%}, "
              f"predict + evaluate {time.perf_counter() - started:.1f}s")

    print("\n### pbmc10k held-out (500 cells): per-protein Pearson\n")
    print(_table(_per_protein_rows(held), ["protein", *SCALINGS]))
    print("\n### pbmc10k held-out: summary\n")
    print(_table(_summary_rows(held), ["metric", *SCALINGS]))

    models = {s: cross[s]["model"] for s in SCALINGS}
    matched = cross[SCALINGS[0]]["proteins"]
    names = [f"{pair['pred']} -> {pair['truth']} (by {pair['by']})" for pair in matched["matched"]]
    rows = [[name] + cells[1:] for name, cells in zip(names, _per_protein_rows(models), strict=True)]
    print(f"\n### pbmc10k -> ECCITE ({cross[SCALINGS[0]]['cells']['evaluated']} cells, "
          f"{len(rows)} shared proteins): per-protein Pearson\n")
    print(_table(rows, ["pbmc10k -> ECCITE protein", *SCALINGS]))
    print("\n### pbmc10k -> ECCITE: summary\n")
    print(_table(_summary_rows(models), ["metric", *SCALINGS]))
    if matched["ambiguous"]:
        print("\nnot compared (one gene, several antibodies): "
              + "; ".join(f"{a['pred']} vs {a['truth']}" for a in matched["ambiguous"]))
    print(f"not measured in ECCITE: {', '.join(matched['unmatched_pred'])}")


if __name__ == "__main__":
    main()
