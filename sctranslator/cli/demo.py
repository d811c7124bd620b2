"""`sctranslator demo`: the bundled demo model on 500 held-out PBMCs, scored against the ridge baseline.

Everything comes from package data (`sctranslator/data/demo/`, made by scripts/train_demo.py); the
cells go through `sctranslator.translate`, exactly the path users take.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from sctranslator.errors import StoreError
from sctranslator.kernels import scale_targets
from sctranslator.outputs import claim_output, one_writer, write_identity
from sctranslator.util.atomic import install_dir, staging_dir

DEMO_FILES = ("rna.h5ad", "protein.h5ad", "baseline.npz", "demo.json")
MODEL_DIR = "model"
PREDICTIONS = "demo_predictions.zarr"
METRICS = "demo_metrics.csv"
OUTPUT_KIND = "demo"


@contextlib.contextmanager
def demo_root() -> Iterator[Path]:
    """The packaged demo folder as a real directory (copied out only if the package is zipped).

    Yields
    ------
    pathlib.Path
        The folder, valid inside the context.
    """
    root = resources.files("sctranslator") / "data" / "demo"
    if not root.is_dir() or not (root / MODEL_DIR).is_dir():
        raise StoreError("the demo data is missing from this installation (sctranslator/data/demo); "
                         "reinstall sctranslator, or run scripts/train_demo.py to make it")
    if isinstance(root, Path):
        yield root
        return
    with tempfile.TemporaryDirectory(prefix="sctranslator-demo-") as tmp:
        target = Path(tmp)
        for entry in (*DEMO_FILES, *(f"{MODEL_DIR}/{p.name}" for p in (root / MODEL_DIR).iterdir())):
            (target / entry).parent.mkdir(parents=True, exist_ok=True)
            with resources.as_file(root.joinpath(*entry.split("/"))) as path:
                shutil.copyfile(path, target / entry)
        yield target


def _baseline_predictions(root: Path, rna: ad.AnnData, proteins: list[str]) -> np.ndarray | None:
    from sctranslator.analysis.baseline import RidgeBaseline

    path = root / "baseline.npz"
    if not path.exists():
        return None
    baseline = RidgeBaseline.load(path)
    pred = baseline.predict(rna.X, list(rna.var_names))
    columns = [list(baseline.proteins_).index(p) for p in proteins]
    return pred[:, columns]


@one_writer
def run_demo(out: str | Path, *, workers: int | None = None, overwrite: bool = False,
             quiet: bool = False) -> dict[str, Any]:
    """Translate the demo cells into ``out/demo_predictions.zarr`` and score the model and the baseline.

    `out` is written aside and renamed into place whole; nothing but an earlier demo output is ever
    replaced.

    Parameters
    ----------
    out : str or pathlib.Path
        The demo's output directory.
    workers : int or None
        Blocks in flight; None: from the cores.
    overwrite : bool
        Replace an earlier demo output at `out`.
    quiet : bool
        No progress bar.
    wait : bool
        When another job is writing `out`, wait for it instead of refusing.

    Returns
    -------
    dict
        The evaluation report (per-protein and summary scores of model and baseline).

    Raises
    ------
    OutputConflictError
        `out` holds something that is not a demo output (or `overwrite` is not given).
    """
    import sctranslator
    from sctranslator.analysis.metrics import pearson_per_protein
    from sctranslator.model import load_model

    out = Path(out)
    with demo_root() as root:
        claim_output(out, OUTPUT_KIND, inputs=(root,), overwrite=overwrite)
        with staging_dir(out) as staging:
            predicted = sctranslator.translate(root / "rna.h5ad", root / MODEL_DIR,
                                               out=staging / PREDICTIONS, workers=workers, quiet=quiet)
            scaling = (load_model(root / MODEL_DIR).preprocessing or {}).get("target_scaling", "minmax")
            rna = ad.read_h5ad(root / "rna.h5ad")
            protein = ad.read_h5ad(root / "protein.h5ad")
            proteins = [str(p) for p in predicted.var_names]
            # The targets are scaled per cell over the model's protein panel, as in training.
            truth = scale_targets(protein[predicted.obs_names, proteins].X, scaling)
            model_r = pearson_per_protein(np.asarray(predicted.X), truth)
            baseline = _baseline_predictions(root, rna[predicted.obs_names], proteins)
            baseline_r = (pearson_per_protein(baseline, truth) if baseline is not None
                          else np.full(len(proteins), np.nan))
            provenance = json.loads((root / "demo.json").read_text()) if (root / "demo.json").exists() else {}
            n_cells = int(predicted.n_obs)
            del predicted  # its X may read from the staged store, which moves below
            table = pd.DataFrame({"protein": proteins, "model_r": model_r, "baseline_r": baseline_r})
            table.to_csv(staging / METRICS, index=False)
            write_identity(staging, OUTPUT_KIND)
            install_dir(staging, out)
    return {"table": table, "n_cells": n_cells, "target_scaling": scaling,
            "model_mean_r": float(np.nanmean(model_r)), "baseline_mean_r": float(np.nanmean(baseline_r))
            if baseline is not None else float("nan"), "predictions": str(out / PREDICTIONS),
            "metrics_file": str(out / METRICS), "provenance": provenance}


def format_table(report: dict[str, Any]) -> str:
    """The per-protein table with means, as the demo prints it.

    Parameters
    ----------
    report : dict
        `run_demo`'s report.

    Returns
    -------
    str
        The table.
    """
    table = report["table"]
    lines = [f"Demo: {report['n_cells']} held-out PBMCs (10x CITE-seq), per-protein Pearson r on "
             f"per-cell {report['target_scaling']}-scaled protein counts", "",
             f"{'protein':<10} {'model r':>8} {'baseline r':>11}"]
    for row in table.itertuples(index=False):
        lines.append(f"{row.protein:<10} {row.model_r:>8.3f} {row.baseline_r:>11.3f}")
    lines.append(f"{'mean':<10} {report['model_mean_r']:>8.3f} {report['baseline_mean_r']:>11.3f}")
    lines.append("baseline: ridge regression on 50 principal components of log-normalised RNA, same training cells")
    return "\n".join(lines)
