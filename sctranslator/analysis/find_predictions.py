"""Find the predicted proteins in whatever a user hands to `evaluate`, and refuse what is not one.

Accepted: translate's Zarr output (X = predictions), an AnnData / .h5ad with the predictions in
`obsm[key]` (translate's `--write-h5ad` / `inplace=True`: `obsm['protein_predicted']` by default,
or any key whose `uns[key]` holds translate's provenance), a MuData / .h5mu with the predictions'
modality (`prot_predicted` by default, or any modality carrying translate's provenance), or a plain
cells x proteins AnnData (the ridge baseline, another tool's output). `obsm['protein_expression']`
and a `prot` modality hold MEASURED proteins by convention (scvi-tools, CITE-seq files); they are
read as predictions only when they carry translate's provenance (files written by sctranslator
before the keys of their own). A gene-expression matrix given as predictions is refused with a
named error instead of being scored as if its genes were proteins.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sctranslator.errors import InputDataError, StoreError
from sctranslator.util.storage import is_url

if TYPE_CHECKING:
    import anndata as ad

log = logging.getLogger(__name__)

PREDICTED_KEY = "protein_predicted"  # translate's default obsm key (engine.writeback.DEFAULT_KEY)
PREDICTED_MODALITY = "prot_predicted"  # translate's default MuData modality
PROTEIN_KEY = "protein_expression"  # MEASURED counts (scvi-tools); predictions only in older write-backs
PROTEIN_MODALITY = "prot"  # MEASURED proteins in CITE-seq MuData; predictions only in older write-backs
# More columns than any antibody panel in use (TotalSeq-A's largest is ~280; scTranslator queries
# go to a few thousand), yet far fewer than a transcriptome.
_MAX_UNMATCHED_COLUMNS = 5000
_MIN_UNMATCHED_GENES = 100


@dataclass
class Predictions:
    """A cells x proteins AnnData, where it was found, and the scale its values are on (if recorded).

    Parameters
    ----------
    table : AnnData
        Cells x proteins.
    found_in : str
        Where in the input it was found (X of a store, obsm[key], a modality).
    scaling : str or None
        The per-cell scale translate recorded; None: unknown.
    record : dict or None
        translate's provenance, when present.
    """

    table: ad.AnnData
    found_in: str
    scaling: str | None
    record: dict[str, Any] | None = None  # translate's provenance (uns['sctranslator']), if any


def _read_file(path: Path, what: str) -> Any:
    import anndata as ad

    if not path.exists():
        raise StoreError(f"{what} {path} does not exist")
    try:
        if path.suffix == ".h5mu":
            import mudata

            with mudata.set_options(pull_on_update=False):  # mudata 0.3 warns on every read otherwise
                return mudata.read_h5mu(path)
        if path.is_dir() or path.suffix == ".zarr":
            return ad.read_zarr(path)
        return ad.read_h5ad(path)
    except Exception as error:  # anndata/zarr/h5py/mudata raise many types for a malformed store
        raise StoreError(f"cannot read {what} {path}: {type(error).__name__}: {error}") from error


def _recorded_scaling(uns: Any) -> str | None:
    record = uns.get("sctranslator") if hasattr(uns, "get") else None
    if not isinstance(record, dict):
        return None
    scaling = record.get("output_scaling") or record.get("settings", {}).get("output_scaling")
    return str(scaling) if scaling else None


def _is_provenance(record: Any) -> bool:
    """Whether `record` is translate's provenance (what it writes to uns['sctranslator'] / uns[key])."""
    return isinstance(record, dict) and "settings" in record and "model" in record


def _from_obsm(table: ad.AnnData, where: str, key: str, provenance: Any) -> ad.AnnData:
    import anndata as ad
    import pandas as pd

    frame = table.obsm[key]
    if isinstance(frame, pd.DataFrame):
        values, names = frame.to_numpy(dtype=np.float32), frame.columns.astype(str)
    else:
        raise InputDataError(f"{where}: obsm['{key}'] is a {type(frame).__name__} without protein names; "
                             "store it as a pandas DataFrame with proteins as columns")
    return ad.AnnData(X=values, obs=pd.DataFrame(index=table.obs_names.copy()), var=pd.DataFrame(index=names),
                      uns={"sctranslator": provenance if isinstance(provenance, dict) else {}})


def _predicted_obsm_key(obj: ad.AnnData, label: str) -> str | None:
    """The obsm key holding translate's predictions: the default, else the one key whose uns[key] is
    translate's provenance, else (older write-backs) 'protein_expression' beside uns['sctranslator']."""
    if PREDICTED_KEY in obj.obsm:
        return PREDICTED_KEY
    marked = sorted(k for k in obj.obsm if _is_provenance(obj.uns.get(k)))
    if len(marked) > 1:
        raise InputDataError(f"{label} holds several translate predictions (obsm {marked}); give the one to score "
                             "as an AnnData, e.g. anndata.AnnData(adata.obsm[KEY])")
    if marked:
        return marked[0]
    if PROTEIN_KEY in obj.obsm and _is_provenance(obj.uns.get("sctranslator")):
        return PROTEIN_KEY
    return None


def _predicted_modality(obj: Any, label: str) -> str:
    """The MuData modality holding translate's predictions (never a measured 'prot')."""
    names = list(obj.mod)
    if PREDICTED_MODALITY in obj.mod:
        return PREDICTED_MODALITY
    marked = sorted(n for n in names if _is_provenance(obj.mod[n].uns.get("sctranslator")))
    if len(marked) == 1:
        return marked[0]
    if marked:
        raise InputDataError(f"{label} holds several translate predictions (modalities {marked}); give the one "
                             "to score as an AnnData (mdata['NAME'])")
    raise InputDataError(f"{label} is a MuData without translate's predictions (no '{PREDICTED_MODALITY}' "
                         f"modality, none with translate's provenance; it has {sorted(names)}); a '{PROTEIN_MODALITY}' "
                         "modality holds MEASURED proteins: give it as --truth, and the predictions' modality "
                         "as an AnnData")


def read_predictions(source: Any, truth_names: Any = None, what: str = "predictions",
                     storage_options: dict[str, Any] | None = None) -> Predictions:
    """The predictions inside `source` (see the module docstring for where they are looked for).

    Parameters
    ----------
    source : str, pathlib.Path, AnnData or MuData
        translate's output or a write-back file (a path or URL), or any cells x proteins table.
    truth_names : sequence of str or None
        The measured proteins' names: they let a plain AnnData be recognised as gene expression (most
        of its columns match no measured protein and there are far more of them than proteins).
    what : str
        Names the input in messages.
    storage_options : dict or None
        fsspec options for a URL (s3://, gs://, http(s)://).

    Returns
    -------
    Predictions
        The table and where it was found.

    Raises
    ------
    StoreError
        An unreadable input.
    InputDataError
        No predictions found, or gene expression given as predictions.
    """
    import anndata as ad

    label = str(source) if isinstance(source, str | Path) else f"the in-memory {what}"
    if isinstance(source, str) and is_url(source):
        from sctranslator.analysis.table_locations import read_url_table

        obj = read_url_table(source, what, storage_options)
    else:
        obj = _read_file(Path(source), what) if isinstance(source, str | Path) else source
    if hasattr(obj, "mod"):  # a MuData
        name = _predicted_modality(obj, label)
        prot = obj.mod[name]
        if "name" in prot.var and all(str(n).startswith(f"{name}:") for n in prot.var_names):
            # translate's MuData keeps names unique across modalities ("prot_predicted:CD4"); bare names in var.
            prot = prot.copy()
            prot.var_names = prot.var["name"].astype(str).to_numpy()
        scaling = _recorded_scaling(prot.uns) or _recorded_scaling(obj.uns)
        return Predictions(prot, f"{label} (modality '{name}')", scaling, _record(prot.uns) or _record(obj.uns))
    if not isinstance(obj, ad.AnnData):
        raise InputDataError(f"{label} is a {type(obj).__name__}; expected an AnnData, a MuData or a path")
    scaling = _recorded_scaling(obj.uns)
    if _is_provenance(obj.uns.get("sctranslator")) and {"token_id", "window"} <= set(obj.var.columns):
        # translate's own output (store or returned AnnData): X is the predictions, whatever obsm
        # entries the input carried into it (measured proteins, an earlier run's predictions).
        return Predictions(obj, f"{label} (X)", scaling, _record(obj.uns))
    key = _predicted_obsm_key(obj, label)
    if key is not None:
        provenance = obj.uns.get(key) if key != PROTEIN_KEY else obj.uns.get("sctranslator")
        table = _from_obsm(obj, label, key, provenance)
        wrapped = {"sctranslator": provenance} if isinstance(provenance, dict) else {}
        return Predictions(table, f"{label} (obsm['{key}'])", _recorded_scaling(wrapped), _record(wrapped))
    if PROTEIN_KEY in obj.obsm and "sctranslator" not in obj.uns:
        raise InputDataError(
            f"{label}: obsm['{PROTEIN_KEY}'] without sctranslator provenance holds MEASURED protein counts "
            f"(scvi-tools' totalVI convention), not predictions; translate writes its predictions to "
            f"obsm['{PREDICTED_KEY}']. "
            "Give translate's output as --pred (its --out store, or the --write-h5ad / --write-mudata file), and "
            "these measured counts as --truth")
    if scaling is None and "sctranslator" not in obj.uns:
        _refuse_gene_expression(obj, truth_names, label)
    return Predictions(obj, f"{label} (X)", scaling, _record(obj.uns))


def _record(uns: Any) -> dict[str, Any] | None:
    record = uns.get("sctranslator") if hasattr(uns, "get") else None
    return record if isinstance(record, dict) and record else None


def _refuse_gene_expression(table: ad.AnnData, truth_names: Any, label: str) -> None:
    if truth_names is None:
        return
    from sctranslator.analysis.matching import match_proteins

    matched = len(match_proteins(table.var_names, truth_names).pairs)
    unmatched = table.n_vars - matched
    # Gene expression: many columns, few of them named like a measured protein (a protein table
    # from another tool has about as many matches as the measured panel allows).
    if unmatched > _MAX_UNMATCHED_COLUMNS or (unmatched > max(_MIN_UNMATCHED_GENES, 4 * matched)):
        raise InputDataError(
            f"{label} looks like gene expression, not predicted proteins: X has {table.n_vars:,} columns and only "
            f"{matched} of them match a measured protein, and it has no obsm['{PREDICTED_KEY}'] nor sctranslator "
            "provenance. Give translate's output (the --out Zarr store, or the --write-h5ad / --write-mudata "
            "file), or an AnnData whose X holds the predicted proteins")


def cap_names(names: list[str], limit: int = 20) -> str:
    """Names for a message: 'A, B, C' for short lists; the first `limit` and '... and N more' for long ones.

    Parameters
    ----------
    names : list of str
        The names.
    limit : int
        Most names shown.

    Returns
    -------
    str
        The text.
    """
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit])} ... and {len(names) - limit:,} more"
