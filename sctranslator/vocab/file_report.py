"""The printable vocabulary report of a dataset (what `sctranslator vocab INPUT` prints)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sctranslator.errors import InputDataError, VocabularyError
from sctranslator.vocab.genes import map_genes
from sctranslator.vocab.proteins import map_proteins


def _column(var: pd.DataFrame, column: str | None, where: str) -> np.ndarray:
    """The var index, or one var column, of a var table."""
    if column is None:
        return var.index.to_numpy()
    if column not in var.columns:
        raise VocabularyError(
            f"{where}: var has no column {column!r}; columns are: {', '.join(map(str, var.columns))}")
    return var[column].to_numpy()


def _var_names(path: str | Path, column: str | None = None) -> np.ndarray:
    """The var index (or one var column) of an .h5ad, read without loading X."""
    import anndata  # imported here: only this entry point needs it

    path = Path(path)
    if not path.exists():
        raise InputDataError(f"{path}: no such file or directory")
    if path.is_dir() or path.suffix in (".zarr", ".h5mu"):
        raise InputDataError(f"{path}: give a Zarr store or MuData to the `sctranslator vocab` command, or open it "
                             "with sctranslator.engine.sources.open_source(path, modality=...) and pass that here")
    try:
        adata = anndata.read_h5ad(path, backed="r")
    except Exception as error:  # anndata/h5py raise many kinds for a file that is not an .h5ad
        raise InputDataError(f"{path}: cannot be read as .h5ad ({error})") from error
    try:
        return _column(adata.var, column, str(path))
    finally:
        adata.file.close()


def mapping_report_for_file(path: str | Path | Any, *, column: str | None = None, id_type: str = "auto",
                            proteins: str | Path | Sequence[str] | Any | None = None,
                            gene_mapping: str = "original") -> str:
    """Report how a dataset's genes (var index, or var[column]) and a protein panel map.

    Parameters
    ----------
    path : str, pathlib.Path or object with a ``var`` table
        An RNA .h5ad file, or anything with a `var` table: an AnnData, or the source
        `sctranslator.engine.sources.open_source` makes of any input translate reads (.zarr
        stores, a MuData's RNA modality, ...; the ``vocab`` command does that).
    column : str or None
        The var column holding the gene identifiers; None: the var index.
    id_type : str
        Kind of gene identifier, or "auto" to detect it.
    proteins : str, pathlib.Path, sequence of str, object with a ``var`` table, or None
        A protein .h5ad (its var names are the panel), an object with a `var` table, or a list of
        panel names; None: genes only.
    gene_mapping : {'original', 'extended'}
        "original" (what published checkpoints see) or "extended".

    Returns
    -------
    str
        The printable report, one section for the genes and one for the proteins.

    Raises
    ------
    VocabularyError
        An unknown `id_type` or `gene_mapping`, no identifiers, or `column` is not a var column.
    InputDataError
        `path` does not exist, or is a Zarr store or MuData file given as a path (give the command
        or an opened source instead).
    """
    where = f"var[{column!r}]" if column else "var index"
    if hasattr(path, "var"):
        label, identifiers = getattr(path, "label", None) or type(path).__name__, _column(path.var, column,
                                                                                           "the input")
    else:
        label, identifiers = str(path), _var_names(path, column)
    genes = map_genes(identifiers, id_type=id_type, mapping=gene_mapping)
    sections = [f"# {label} ({where}, {gene_mapping} gene mapping)", genes.report.to_text()]
    if proteins is not None:
        if hasattr(proteins, "var"):
            names, protein_label = list(proteins.var.index.astype(str)), getattr(proteins, "label", "given table")
        elif isinstance(proteins, str | Path):
            names, protein_label = _var_names(proteins), str(proteins)
        else:
            names, protein_label = list(proteins), "given list"
        sections += [f"# proteins: {protein_label}", map_proteins(names).report.to_text()]
    return "\n\n".join(sections)
