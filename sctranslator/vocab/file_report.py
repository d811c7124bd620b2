"""The printable vocabulary report of an .h5ad file (what `sctranslator vocab INPUT.h5ad` prints)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sctranslator.errors import InputDataError, VocabularyError
from sctranslator.vocab.genes import map_genes
from sctranslator.vocab.proteins import map_proteins


def _var_names(path: str | Path, column: str | None = None) -> np.ndarray:
    """The var index (or one var column) of an .h5ad, read without loading X."""
    import anndata  # imported here: only this entry point needs it

    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"{path}: no such file; pass the path of an .h5ad file")
    try:
        adata = anndata.read_h5ad(path, backed="r")
    except Exception as error:  # anndata/h5py raise many kinds for a file that is not an .h5ad
        raise InputDataError(f"{path}: cannot be read as .h5ad ({error})") from error
    try:
        if column is None:
            return adata.var_names.to_numpy()
        if column not in adata.var.columns:
            raise VocabularyError(
                f"{path}: var has no column {column!r}; columns are: {', '.join(map(str, adata.var.columns))}")
        return adata.var[column].to_numpy()
    finally:
        adata.file.close()


def mapping_report_for_file(path: str | Path, *, column: str | None = None, id_type: str = "auto",
                            proteins: str | Path | Sequence[str] | None = None,
                            gene_mapping: str = "original") -> str:
    """Map an RNA .h5ad's genes (var index, or var[column]) and optionally a protein panel.

    proteins: a protein .h5ad (its var names are the panel) or a list of panel names.
    gene_mapping: "original" (what published checkpoints see, the default) or "extended".
    Returns the printable report.
    """
    where = f"var[{column!r}]" if column else "var index"
    genes = map_genes(_var_names(path, column), id_type=id_type, mapping=gene_mapping)
    sections = [f"# {path} ({where}, {gene_mapping} gene mapping)", genes.report.to_text()]
    if proteins is not None:
        if isinstance(proteins, str | Path):
            names, label = _var_names(proteins), str(proteins)
        else:
            names, label = list(proteins), "given list"
        sections += [f"# proteins: {label}", map_proteins(names).report.to_text()]
    return "\n\n".join(sections)
