"""`evaluate`: score predicted protein abundance against measured protein counts.

The measured counts are scaled per cell with `scale_targets(..., scaling)` over the truth's FULL
protein panel (isotype controls and proteins the prediction lacks included) before the shared
proteins are picked out: that is what a model trained on this panel was trained against
("minmax" is the original's target), and it keeps a cell's scaled values independent of which
proteins a particular prediction happens to cover. Predictions are compared as they are, without
rescaling: Pearson / Spearman per protein do not care (affine / monotone per protein), while
RMSE, the cosine score and per-cell Pearson do, so those are only meaningful when the model
predicts on the same scale as `scaling`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sctranslator.errors import InputDataError, StoreError
from sctranslator.modalities import pick_protein_modality
from sctranslator.options import TARGET_SCALINGS, TargetScaling, check_choices  # noqa: F401  (re-exported)
from sctranslator.outputs import claim_output, one_writer, write_identity
from sctranslator.util.atomic import install_dir, staging_dir
from sctranslator.util.storage import check_not_folded, is_url, parse_storage_options, refuse_remote

if TYPE_CHECKING:
    import anndata as ad

# This module must stay cheap to import: the package binds `evaluate` eagerly (a submodule of the
# same name would otherwise shadow the function), so anndata, numba kernels and the vocabulary
# are imported inside the functions.

log = logging.getLogger(__name__)

OUTPUT_KIND = "evaluate"


def _is_mudata_zarr(path: Path) -> bool:
    """Whether the Zarr store at `path` is a MuData (mudata.write_zarr), not an AnnData."""
    import zarr

    root = zarr.open_group(str(path), mode="r")
    return root.attrs.get("encoding-type") == "MuData" or ("mod" in root and "X" not in root)


def read_table(source: str | Path | ad.AnnData, what: str, modality: str | None = None,
               storage_options: dict[str, Any] | None = None) -> ad.AnnData:
    """An AnnData from an object, a Zarr store, an .h5ad file, or a MuData's protein modality.

    Parameters
    ----------
    source : str, pathlib.Path or AnnData
        An AnnData / MuData object, a .zarr directory, an .h5ad file, an .h5mu file or MuData Zarr store.
    what : str
        Names it in messages ("predictions", "truth").
    modality : str or None
        A MuData's modality; None: 'prot', else the one protein-named modality.
    storage_options : dict or None
        fsspec options for a URL.

    Returns
    -------
    AnnData
        The table.

    Raises
    ------
    StoreError
        It cannot be read.
    InputDataError
        A MuData whose protein modality is not clear.
    """
    import anndata as ad

    from sctranslator.analysis.table_locations import read_soma_proteins, read_url_table
    from sctranslator.engine.sources.soma import soma_uri

    if isinstance(source, str | os.PathLike):
        check_not_folded(source, what=what)
        if is_url(source):
            return read_table(read_url_table(str(source), what, storage_options), f"{what} {source}", modality)
        uri = soma_uri(source)
        if uri is not None:
            return read_soma_proteins(uri, what, modality)
    if isinstance(source, ad.AnnData):
        if modality is not None:
            raise InputDataError(f"{what} is an AnnData, not a MuData: it has no modality {modality!r}; "
                                 "leave out the modality option")
        return source
    if hasattr(source, "mod"):
        return _protein_modality(source, what, modality)
    path = Path(source)
    if not path.exists():
        raise StoreError(f"{what} {path} does not exist")
    try:
        if path.suffix == ".h5mu":
            import mudata

            with mudata.set_options(pull_on_update=False):  # mudata 0.3 warns on every read otherwise
                table = mudata.read_h5mu(path)
        elif path.is_dir() or path.suffix == ".zarr":
            if _is_mudata_zarr(path):
                import mudata

                with mudata.set_options(pull_on_update=False):
                    table = mudata.read_zarr(str(path))
            else:
                table = ad.read_zarr(path)
        else:
            table = ad.read_h5ad(path)
    except Exception as error:  # anndata/zarr/h5py raise many types for a malformed store
        raise StoreError(f"cannot read {what} {path} as AnnData: {type(error).__name__}: {error}") from error
    return read_table(table, f"{what} {path}", modality)


def _protein_modality(data: Any, what: str, modality: str | None) -> ad.AnnData:
    """The modality of a MuData holding measured proteins: the one asked, else 'prot', else the only
    modality named like proteins; anything else is refused with the modalities listed."""
    modality = pick_protein_modality(data.mod, modality, what)
    table = data.mod[modality]
    if table.var_names.str.startswith(f"{modality}:").all() and "name" in table.var:
        table = table.copy()  # names kept unique across modalities ("prot:CD4"); the bare ones are in var
        table.var_names = table.var["name"].astype(str).to_numpy()
    return table


def _dense(matrix: Any) -> np.ndarray:
    return np.asarray(matrix.toarray() if hasattr(matrix, "toarray") else matrix, dtype=np.float64)


def _as_baseline_table(baseline: str | Path | ad.AnnData | np.ndarray, pred: ad.AnnData, truth_names: Any,
                       scaling: str, storage_options: dict[str, Any] | None = None) -> ad.AnnData:
    """The baseline's predictions, found as `pred`'s are; an array is taken in the prediction's order."""
    import anndata as ad
    import pandas as pd

    from sctranslator.analysis.find_predictions import read_predictions

    if not isinstance(baseline, np.ndarray):
        found = read_predictions(baseline, truth_names, what="baseline predictions", storage_options=storage_options)
        if found.scaling is not None and found.scaling != scaling:
            log.warning("the baseline's outputs are on the %s scale (recorded by translate) but the measured counts "
                        "are scaled by %s; its RMSE, cosine and per-cell r compare values on different scales",
                        found.scaling, scaling)
        return found.table
    if baseline.shape != pred.shape:
        raise InputDataError(f"a baseline array must have the prediction's shape {pred.shape} (same cells and "
                             f"proteins, same order); got {baseline.shape}. Pass an AnnData to match by name.")
    return ad.AnnData(X=np.asarray(baseline, dtype=np.float32), obs=pd.DataFrame(index=pred.obs_names.copy()),
                      var=pd.DataFrame(index=pred.var_names.copy()))


def _no_shared_proteins(pred: ad.AnnData, truth: ad.AnnData) -> InputDataError:
    return InputDataError(
        f"no protein of the predictions ({pred.var_names[:8].tolist()}...) matches one of the truth "
        f"({truth.var_names[:8].tolist()}...), by name or by encoding gene; rename them or check the files")


@one_writer
def evaluate(pred: str | Path | ad.AnnData, truth: str | Path | ad.AnnData, *, out: str | Path | None = None,
             scaling: TargetScaling | None = None, plots: bool = True,
             baseline: str | Path | ad.AnnData | np.ndarray | None = None,
             cosine_batch_size: int | None = None, overwrite: bool = False, min_matched: float = 0.5,
             truth_modality: str | None = None, model: str | Path | None = None,
             storage_options: str | dict[str, Any] | None = None, quiet: bool = False) -> dict[str, Any]:
    """Compare predictions with measured proteins; return (and with `out`, write) the report.

    Cells are matched by obs_names, proteins by name, spelling, or unique encoding gene (see
    `sctranslator.analysis.matching`); model and baseline are scored on the cells and proteins all
    three share.

    Parameters
    ----------
    pred : str, pathlib.Path or AnnData
        translate's output: its Zarr store, the ``--write-h5ad`` file (obsm['protein_predicted'], or
        the key it was given), the ``--write-mudata`` file (modality 'prot_predicted', or the key); or
        any cells x proteins AnnData / MuData. A gene expression matrix given here is refused.
    truth : str, pathlib.Path or AnnData
        Measured protein counts (cells x proteins, raw counts) as .h5ad, .zarr or AnnData, or a
        CITE-seq MuData (object, .h5mu or MuData Zarr store; see `truth_modality`), any of these at
        an s3://, gs:// or http(s):// URL, or a TileDB-SOMA experiment (its protein measurement). One
        that looks already normalised or log-transformed is warned about.
    out : str, pathlib.Path or None
        A directory for report.json and, with `plots`, scatter.png and pearson.png.
    scaling : {'minmax', 'clr', 'log1p'} or None
        Per-cell scaling of the truth before scoring; None: the scale translate recorded for the
        model's outputs, else minmax (the original's training target).
    plots : bool
        Also write the figures.
    baseline : str, pathlib.Path, AnnData, numpy.ndarray or None
        A second prediction to score side by side (matched by name, or an array of the prediction's
        shape, cells x proteins in its order).
    cosine_batch_size : int or None
        Cells per batch for the cosine score; None: all at once.
    overwrite : bool
        Replace an earlier evaluate report at `out` (nothing else is ever replaced).
    min_matched : float
        Least fraction of the smaller side's cells that must match by name (predictions of one dataset
        scored against the measurements of another share only barcodes that repeat by chance); 0
        accepts any overlap.
    truth_modality : str or None
        The modality of a MuData `truth` holding the measured proteins; None: 'prot', else the one
        modality named like proteins.
    model : str, pathlib.Path or None
        The bundle that made the predictions; None: the one translate recorded, when it is still
        there. Scored cells among its training cells are counted, warned about and labelled in the
        report (``report['training_cells']``).
    storage_options : str, dict or None
        fsspec options (or their JSON) for `pred`, `truth` and `baseline` at s3://, gs:// or
        http(s):// URLs; the report itself stays local.
    wait : bool
        When another job is writing `out`, wait for it instead of refusing.
    quiet : bool
        No progress bar (as for `translate`); by default one on stderr counts the steps (reading the
        truth and the predictions, scaling, scoring, writing).

    Returns
    -------
    dict
        The report: per-protein Pearson, Spearman and RMSE; summaries; the cells and proteins matched
        or left out; the scaling and where it came from.

    Raises
    ------
    OptionError
        `scaling` outside its choices.
    InputDataError
        No shared cells or proteins, or too few shared cells (`min_matched`); duplicated obs names; a
        baseline array of the wrong shape; gene expression given as predictions; a MuData truth whose
        protein modality is not clear.
    StoreError
        An input that cannot be read.
    OutputConflictError
        `out` holds something else, or is or overlaps an input.
    """
    check_choices(scaling=scaling)
    storage_options = parse_storage_options(storage_options)
    refuse_remote("evaluate", reason="evaluate writes its report to a local directory (inputs may be URLs); write "
                  "it locally, then copy it with your storage tool", out=out)
    refuse_remote("evaluate", reason="the model bundle is read from a local path; copy it to a local path first",
                  model=model)
    _check_input_locations(pred=pred, truth=truth, baseline=baseline)
    if out is not None:
        claim_output(out, OUTPUT_KIND, inputs=(pred, truth, baseline), overwrite=overwrite)
    if not 0.0 <= float(min_matched) <= 1.0:
        raise InputDataError(f"min_matched must be a fraction between 0 and 1; got {min_matched}")
    from sctranslator.util.progress import progress_bar

    steps = 4 + (baseline is not None) + (out is not None)  # truth, predictions, [baseline], scaling, scores, [files]
    with progress_bar(total=steps, desc="evaluate", unit="step", disable=quiet) as bar:
        return _evaluate(pred, truth, bar, out=out, scaling=scaling, plots=plots, baseline=baseline,
                         cosine_batch_size=cosine_batch_size, min_matched=min_matched, truth_modality=truth_modality,
                         model=model, storage_options=storage_options)


def _evaluate(pred: str | Path | ad.AnnData, truth: str | Path | ad.AnnData, bar: Any, *, out: str | Path | None,
              scaling: TargetScaling | None, plots: bool, baseline: str | Path | ad.AnnData | np.ndarray | None,
              cosine_batch_size: int | None, min_matched: float, truth_modality: str | None,
              model: str | Path | None, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """evaluate's work once its options are checked and `out` is claimed; `bar` advances one step per stage."""
    from sctranslator.analysis.find_predictions import read_predictions
    from sctranslator.analysis.matching import match_cells, match_proteins
    from sctranslator.engine.input_checks import check_counts_table
    from sctranslator.kernels import scale_targets

    truth_table = read_table(truth, "protein truth", truth_modality, storage_options)
    bar.update()
    found = read_predictions(pred, truth_table.var_names, storage_options=storage_options)
    bar.update()
    pred_table = found.table
    scaling, scaling_source = _choose_scaling(scaling, found.scaling)
    log.info("predictions from %s; measured counts scaled by %s (%s)", found.found_in, scaling, scaling_source)
    check_counts_table(truth_table.X, what="the protein truth",
                       advice=f"evaluate scales measured counts itself (--scaling {scaling}); give the raw "
                              "protein counts (e.g. the protein .h5ad as read from the count matrix)")
    cells = match_cells(pred_table.obs_names, truth_table.obs_names)
    _enough_cells(cells, float(min_matched))
    proteins = match_proteins(pred_table.var_names, truth_table.var_names)
    if not proteins.pairs:
        raise _no_shared_proteins(pred_table, truth_table)

    pred_rows = cells.pred
    truth_rows = cells.truth
    truth_cols = np.array([p.truth_index for p in proteins.pairs])
    pred_cols = np.array([p.pred_index for p in proteins.pairs])
    names = [p.pred for p in proteins.pairs]
    baseline_report: dict[str, Any] | None = None
    baseline_values = None
    if baseline is not None:
        base_table = _as_baseline_table(baseline, pred_table, truth_table.var_names, scaling, storage_options)
        # Keep only what all three share, so model and baseline are scored on identical values.
        base_cells = match_cells(base_table.obs_names, pred_table.obs_names[pred_rows])
        base_proteins = match_proteins(base_table.var_names, names)
        if not base_proteins.pairs:
            raise InputDataError(f"no baseline protein ({base_table.var_names[:8].tolist()}) matches the "
                                 f"proteins being evaluated ({names[:8]})")
        keep_cells = base_cells.truth  # positions within the matched cells, in the prediction's order
        order = np.argsort(keep_cells)
        keep_cells, base_rows = keep_cells[order], base_cells.pred[order]
        base_pairs = sorted(base_proteins.pairs, key=lambda p: p.truth_index)  # the model's protein order
        keep_proteins = np.array([p.truth_index for p in base_pairs])
        base_cols = np.array([p.pred_index for p in base_pairs])
        pred_rows, truth_rows = pred_rows[keep_cells], truth_rows[keep_cells]
        pred_cols, truth_cols = pred_cols[keep_proteins], truth_cols[keep_proteins]
        names = [names[k] for k in keep_proteins]
        baseline_values = _dense(base_table.X[base_rows][:, base_cols])
        baseline_report = {"cells": base_table.n_obs, "proteins": base_proteins.report()}
        bar.update()

    truth_scaled = scale_targets(truth_table.X[truth_rows], scaling)[:, truth_cols].astype(np.float64)
    pred_values = _dense(pred_table.X[pred_rows][:, pred_cols])
    bar.update()
    by_name = {p.pred: p for p in proteins.pairs}
    report: dict[str, Any] = {
        "scaling": scaling,
        "scaling_source": scaling_source,
        "predictions_from": found.found_in,
        "cells": {"pred": cells.n_pred, "truth": cells.n_truth, "matched": cells.n_matched,
                  "evaluated": int(len(pred_rows))},
        "proteins": proteins.report(),
        "model": _scored(pred_values, truth_scaled, names, by_name, cosine_batch_size),
    }
    report["training_cells"] = training_overlap(pred_table.obs_names[pred_rows], model, found.record)
    if baseline_values is not None:
        report["baseline"] = _scored(baseline_values, truth_scaled, names, by_name, cosine_batch_size)
        report["baseline"]["matching"] = baseline_report
        report["comparison"] = _comparison(report["model"], report["baseline"])
    bar.update()
    log.info("evaluated %d cells (%d of %d prediction cells matched) x %d proteins", len(pred_rows),
             cells.n_matched, cells.n_pred, len(names))
    if out is not None:
        report["files"] = _write(Path(out), report, truth_scaled, pred_values, baseline_values, names, plots)
        bar.update()
    return report


def _check_input_locations(**inputs: Any) -> None:
    """Refuse, before any work, an input URL of a scheme this package cannot read (or whose extra is
    missing) and a pathlib.Path made from a URL; each keyword is a flag name and its value."""
    from sctranslator.util.storage import check_location

    for name, location in inputs.items():
        if isinstance(location, str | os.PathLike):
            check_not_folded(location, what=f"--{name}")
            check_location(location, what=f"--{name}")


def _enough_cells(cells: Any, min_matched: float) -> None:
    """Refuse a cell overlap too small to be the same cells (see `evaluate`'s `min_matched`)."""
    smaller = min(cells.n_pred, cells.n_truth)
    if cells.n_matched >= min_matched * smaller:
        return
    raise InputDataError(
        f"only {cells.n_matched} cell names are shared between the {cells.n_pred} predicted and the "
        f"{cells.n_truth} measured cells, fewer than {min_matched:.0%} of the smaller side ({smaller}): these look "
        "like different datasets whose barcodes repeat by chance. Give the measurements of the cells that were "
        "translated (barcodes often need a sample prefix or suffix to match), or --min-matched 0 (min_matched=0) to "
        "score the overlap anyway")


def training_overlap(names: Any, model: str | Path | None, record: dict[str, Any] | None) -> dict[str, Any]:
    """How many of the scored cells the model was trained or validated on, from its bundle.

    Warns when scored cells were training cells.

    Parameters
    ----------
    names : sequence of str
        The scored cells' names.
    model : str, pathlib.Path or None
        The bundle; None: the one translate recorded in `record`, if it is still there.
    record : dict or None
        The predictions' ``uns['sctranslator']``.

    Returns
    -------
    dict
        Counts of training and held-out cells among the scored ones, and the bundle used.
    """
    from sctranslator.model.bundle import CONFIG_FILE
    from sctranslator.model.cells import read_cells, seen_in

    recorded = ((record or {}).get("model") or {}).get("source")
    source = model if model is not None else recorded
    result: dict[str, Any] = {"checked": False, "bundle": str(source) if source else None}
    if source is None or not (Path(source) / CONFIG_FILE).is_file():
        if model is not None:
            raise InputDataError(f"--model {model} is not a model bundle directory (no {CONFIG_FILE}); give the "
                                 "bundle finetune wrote")
        result["note"] = ("not checked: the predictions name no model bundle that is still on disk; pass --model "
                          "BUNDLE to check whether scored cells were used in training")
        return result
    splits = read_cells(source)
    recorded_fingerprint = ((record or {}).get("model") or {}).get("fingerprint")
    if splits is not None and recorded_fingerprint and not _same_model(source, recorded_fingerprint):
        result["note"] = (f"not checked: the bundle at {source} is not the model that made these predictions (its "
                          "weights differ from the fingerprint translate recorded); pass --model with that bundle")
        log.warning("training cells %s", result["note"])
        return result
    if splits is None:
        result["note"] = ("not checked: this model records no training cells (published checkpoints and bundles "
                          "made before sctranslator recorded them)")
        return result
    # Cells that trained or validated a model it was fine-tuned from (`ancestor_*`) count as this one's.
    empty = np.zeros(0, dtype=np.uint64)
    trained = seen_in(names, splits.get("train", empty)) | seen_in(names, splits.get("ancestor_train", empty))
    held = (seen_in(names, splits.get("val", empty)) | seen_in(names, splits.get("ancestor_val", empty))) & ~trained
    result.update(checked=True, scored=int(len(trained)), in_training=int(trained.sum()),
                  in_validation=int(held.sum()), unseen=int(len(trained) - trained.sum() - held.sum()))
    if result["in_training"]:
        result["label"] = (f"NOT A HELD-OUT SCORE: {result['in_training']} of the {result['scored']} scored cells "
                           "were used to train the model")
        log.warning("%s (bundle %s); evaluate held-out cells only for an honest estimate", result["label"], source)
    else:
        result["label"] = "held-out: no scored cell was used to train the model"
    return result


def _same_model(bundle: str | Path, fingerprint: str) -> bool:
    """True when the bundle's weights and configuration are those translate fingerprinted."""
    from sctranslator.model import load_model
    from sctranslator.model.identity import model_fingerprint

    return model_fingerprint(load_model(bundle)) == fingerprint


def _choose_scaling(asked: str | None, recorded: str | None) -> tuple[str, str]:
    """The scaling to put the measured counts on, and why: asked > recorded by translate > minmax."""
    if asked is not None:
        if recorded is not None and recorded != asked:
            log.warning("the model's outputs are on the %s scale (recorded by translate) but --scaling %s was "
                        "asked; RMSE, cosine and per-cell r compare values on different scales", recorded, asked)
        return asked, "asked"
    if recorded is not None:
        if recorded not in TARGET_SCALINGS:
            raise InputDataError(f"the predictions record an unknown output scaling {recorded!r}; pass --scaling "
                                 f"one of {TARGET_SCALINGS}")
        return recorded, "recorded by translate: the model's training targets"
    return "minmax", "default (the original scTranslator's targets; no scale recorded with the predictions)"


def _scored(values: np.ndarray, truth: np.ndarray, names: list[str], pairs: dict[str, Any],
            cosine_batch_size: int | None) -> dict[str, Any]:
    from sctranslator.analysis.metrics import compute_metrics

    metrics = compute_metrics(values, truth, names, cosine_batch_size=cosine_batch_size)
    for row in metrics["per_protein"]:
        row["truth_name"] = pairs[row["protein"]].truth
        row["gene"] = pairs[row["protein"]].gene
    return metrics


def _comparison(model: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """Model minus baseline, per summary and per protein (positive: the model is better, RMSE aside)."""
    def delta(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    keys = ("mean_protein_pearson", "median_protein_pearson", "mean_protein_spearman", "mean_cell_pearson",
            "cosine", "rmse")
    return {
        "summary_delta": {k: delta(model["summary"][k], baseline["summary"][k]) for k in keys},
        "pearson_delta": {m["protein"]: delta(m["pearson"], b["pearson"])
                          for m, b in zip(model["per_protein"], baseline["per_protein"], strict=True)},
        "proteins_model_better": sum(1 for m, b in zip(model["per_protein"], baseline["per_protein"], strict=True)
                                     if m["pearson"] is not None and b["pearson"] is not None
                                     and m["pearson"] > b["pearson"]),
    }


def _write(out: Path, report: dict[str, Any], truth: np.ndarray, pred: np.ndarray, baseline: np.ndarray | None,
           names: list[str], plots: bool) -> list[str]:
    """Write the report folder aside, mark it as ours, and rename it into place whole."""
    written = [str(out / "report.json")]
    with staging_dir(out) as staging:
        if plots:
            from sctranslator.analysis import plots as figures  # matplotlib only when figures are asked for

            panels = [("model", pred, [row["pearson"] for row in report["model"]["per_protein"]])]
            if baseline is not None:
                panels.append(("baseline", baseline, [row["pearson"] for row in report["baseline"]["per_protein"]]))
            figures.scatter_grid(staging / "scatter.png", truth, panels, names, scaling=report["scaling"])
            figures.correlation_bars(staging / "pearson.png", names, [(label, r) for label, _, r in panels],
                                     scaling=report["scaling"])
            written += [str(out / "scatter.png"), str(out / "pearson.png")]
        (staging / "report.json").write_text(json.dumps({**report, "files": written}, indent=2, allow_nan=False))
        write_identity(staging, OUTPUT_KIND)
        install_dir(staging, out)
    return written
