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
    if isinstance(proteins, str | Path):
        proteins, protein_label = list(_var_names(proteins)), str(proteins)
    else:
        protein_label = "given list"
    return mapping_report(_var_names(path, column), f"{path} ({where}", id_type=id_type, proteins=proteins,
                          protein_label=protein_label, gene_mapping=gene_mapping)


def mapping_report(genes: Sequence[str] | np.ndarray, label: str, *, id_type: str = "auto",
                   proteins: Sequence[str] | None = None, protein_label: str = "given list",
                   gene_mapping: str = "original") -> str:
    """The printable report of how gene identifiers (and protein names) map onto model tokens.

    Parameters
    ----------
    genes
        The gene identifiers (a var index or var column).
    label
        Where they come from, for the heading.
    id_type, gene_mapping
        As for `map_genes`.
    proteins, protein_label
        Protein names to map too, and where they come from.
    """
    mapped = map_genes(np.asarray(genes), id_type=id_type, mapping=gene_mapping)
    sections = [f"# {label}, {gene_mapping} gene mapping)", mapped.report.to_text()]
    if proteins is not None:
        sections += [f"# proteins: {protein_label}", map_proteins(list(proteins)).report.to_text()]
    return "\n\n".join(sections)
