"""Paired RNA + protein training data: where the two matrices come from and which cells pair up.

The RNA stays behind an engine `Source` (read in row blocks, never sliced per cell); the protein
table is small (cells x tens of antibodies) and is held in memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sctranslator.engine.sources import Source, open_source
from sctranslator.errors import InputDataError, StoreError
from sctranslator.modalities import pick_protein_modality

DEFAULT_PROTEIN_KEY = "protein_expression"

Data = str | os.PathLike | ad.AnnData | Any  # Any: a MuData (no mudata import needed to accept one)


@dataclass
class PairedData:
    """Cells measured in both modalities, in RNA row order."""

    source: Source  # the RNA matrix, served in row blocks
    rows: np.ndarray  # int64 (n_cells,): RNA source row of each paired cell, increasing
    obs: pd.DataFrame  # obs of the paired cells (index = cell names)
    proteins: np.ndarray  # float64 (n_cells, n_proteins): measured counts as stored
    protein_names: list[str]
    origin: dict[str, Any] = field(default_factory=dict)  # where each part came from (for the card)

    @property
    def n_cells(self) -> int:
        return int(self.rows.shape[0])


def _is_mudata(data: Any) -> bool:
    return type(data).__name__ == "MuData" and hasattr(data, "mod")


def _describe(data: Any) -> str:
    return str(data) if isinstance(data, str | os.PathLike) else f"in-memory {type(data).__name__}"


def _open_group(path: Path) -> Any:
    """The root group of an HDF5 file (h5ad/h5mu) or a zarr store, read-only."""
    if path.is_dir():
        import zarr

        return zarr.open_group(str(path), mode="r")
    if not path.exists():
        raise StoreError(f"{path}: no such file or directory")
    return h5py.File(path, "r")


def _read_elem(group: Any, key: str) -> Any:
    from anndata.io import read_elem

    return read_elem(group[key])


def _as_dense(matrix: Any) -> np.ndarray:
    array = matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
    return np.asarray(array, dtype=np.float64)


def _table_from_anndata(adata: ad.AnnData) -> tuple[np.ndarray, list[str], pd.Index]:
    return _as_dense(adata.X), [str(n) for n in adata.var_names], pd.Index(adata.obs_names.astype(str))


def _table_from_obsm(value: Any, uns: dict[str, Any], key: str,
                     obs_names: pd.Index) -> tuple[np.ndarray, list[str], pd.Index]:
    """A protein table kept in obsm: a DataFrame (columns = names) or an array + names in uns."""
    if isinstance(value, pd.DataFrame):
        return _as_dense(value.to_numpy()), [str(c) for c in value.columns], obs_names
    names = uns.get(f"{key}_names", uns.get("protein_names"))
    if names is None:
        raise InputDataError(f"obsm[{key!r}] is an array without protein names: store them in "
                             f"uns['{key}_names'] (or make obsm[{key!r}] a DataFrame)")
    matrix = _as_dense(value)
    if len(names) != matrix.shape[1]:
        raise InputDataError(f"obsm[{key!r}] has {matrix.shape[1]} columns but uns names {len(names)} proteins")
    return matrix, [str(n) for n in names], obs_names


def _protein_from_path(path: Path) -> tuple[np.ndarray, list[str], pd.Index]:
    if path.is_dir():
        return _table_from_anndata(ad.read_zarr(path))
    if not path.exists():
        raise StoreError(f"{path}: no such protein file")
    return _table_from_anndata(ad.read_h5ad(path))


def _protein_modality(names: list[str], key: str, what: str) -> str:
    """The modality of a MuData holding the proteins: the one `--protein-key` names, else the one
    named like proteins (prot, protein, ADT, Antibody Capture..., any case; sctranslator.modalities)."""
    return pick_protein_modality(names, key if key in names else None, what,
                                 "--protein-key (protein_key=) naming the modality")


def _embedded_protein(rna: Data, source: Source, key: str) -> tuple[np.ndarray, list[str], pd.Index, str]:
    """The protein table stored with the RNA: a MuData modality, or an AnnData obsm entry."""
    if _is_mudata(rna):
        name = _protein_modality(list(rna.mod), key, "the MuData")
        return (*_table_from_anndata(rna.mod[name]), f"MuData modality {name!r}")
    if isinstance(rna, ad.AnnData):
        if key not in rna.obsm:
            raise InputDataError(f"no protein table given: pass protein=..., or keep it in obsm[{key!r}] "
                                 f"(this AnnData's obsm has {list(rna.obsm)})")
        return (*_table_from_obsm(rna.obsm[key], dict(rna.uns), key, source.obs_names), f"obsm[{key!r}]")
    path = Path(rna)
    group = _open_group(path)
    try:
        if "mod" in group:
            name = _protein_modality(list(group["mod"]), key, str(path))
            return (*_table_from_anndata(_read_elem(group, f"mod/{name}")), f"modality {name!r} of {path}")
        if "obsm" in group and key in group["obsm"]:
            uns = _read_elem(group, "uns") if "uns" in group else {}
            table = _table_from_obsm(_read_elem(group, f"obsm/{key}"), uns, key, source.obs_names)
            return (*table, f"obsm[{key!r}] of {path}")
        raise InputDataError(f"no protein table given and {path} holds none: pass protein=PATH, or keep the "
                             f"proteins in obsm[{key!r}] or a MuData 'prot' modality")
    finally:
        if isinstance(group, h5py.File):
            group.close()


def _match_cells(rna_names: pd.Index, protein_names: pd.Index) -> tuple[np.ndarray, np.ndarray]:
    """(RNA rows, protein rows) of the shared cells, in RNA order."""
    if len(rna_names) == len(protein_names) and rna_names.equals(protein_names):
        rows = np.arange(len(rna_names), dtype=np.int64)
        return rows, rows
    for what, names in (("RNA", rna_names), ("protein", protein_names)):
        if names.has_duplicates:
            repeated = names[names.duplicated()].unique()
            raise InputDataError(
                f"the {what} cell names (obs_names) repeat {len(repeated)} name(s) (e.g. {repeated[:5].tolist()}), "
                "so cells cannot be matched by name; give every cell a unique name the same way in both tables "
                "(e.g. prefix each sample's barcodes with its sample): obs_names_make_unique on one table alone "
                "would pair different cells")
    positions = protein_names.get_indexer(rna_names)
    rna_rows = np.flatnonzero(positions >= 0).astype(np.int64)
    if rna_rows.size == 0:
        raise InputDataError(
            f"the RNA ({len(rna_names)} cells, e.g. {list(rna_names[:3])}) and protein ({len(protein_names)} "
            f"cells, e.g. {list(protein_names[:3])}) tables share no cell names: pair the same cells "
            "(same obs_names, or the same cells in the same order with identical obs_names)"
        )
    smaller = min(len(rna_names), len(protein_names))
    if rna_rows.size < 0.5 * smaller:
        # As in evaluate: barcodes of two different datasets repeat by chance.
        raise InputDataError(
            f"only {rna_rows.size} cell names are shared between the {len(rna_names)} RNA and the "
            f"{len(protein_names)} protein cells, fewer than half of the smaller table: these look like different "
            "datasets whose barcodes repeat by chance. Pair the measurements of the same cells (select the shared "
            "cells first if this is meant)")
    return rna_rows, positions[rna_rows].astype(np.int64)


def load_paired(rna: Data, protein: Data | None = None, *, protein_key: str = DEFAULT_PROTEIN_KEY,
                layer: str | None = None, use_raw: bool = False, modality: str | None = None,
                missing_chunks: str = "error") -> PairedData:
    """Pair RNA with protein measurements.

    `rna`: an .h5ad/.h5mu path, an AnnData or MuData zarr store, or an in-memory AnnData/MuData.
    `protein`: a second .h5ad/zarr path or AnnData with the same cells; omitted when the proteins
    travel with the RNA (MuData 'prot' modality, or obsm[`protein_key`] as a DataFrame or an array
    with names in uns[f'{protein_key}_names']). Cells are paired by obs_names (identical lists
    pair row by row); cells measured in only one table are left out. `layer`, `use_raw`, `modality`
    and `missing_chunks` choose the RNA matrix as for `translate`.
    """
    source = open_source(rna, layer=layer, use_raw=use_raw, modality=modality, missing_chunks=missing_chunks)
    if protein is None:
        matrix, names, protein_obs, where = _embedded_protein(rna, source, protein_key)
    elif isinstance(protein, ad.AnnData):
        matrix, names, protein_obs = _table_from_anndata(protein)
        where = "in-memory AnnData"
    elif isinstance(protein, str | os.PathLike):
        matrix, names, protein_obs = _protein_from_path(Path(protein))
        where = str(protein)
    else:
        raise InputDataError(f"cannot read proteins from a {type(protein).__name__}: pass a path or an AnnData")
    if not np.isfinite(matrix).all() or (matrix < 0).any():
        raise InputDataError(f"protein counts from {where} must be finite and non-negative")
    rna_names = pd.Index(source.obs_names.astype(str))
    rna_rows, protein_rows = _match_cells(rna_names, pd.Index(protein_obs.astype(str)))
    obs = source.read_obs().iloc[rna_rows]
    obs.index = rna_names[rna_rows]
    origin = {"rna": _describe(rna), "protein": where, "rna_cells": int(source.n_obs),
              "protein_cells": int(matrix.shape[0]), "paired_cells": int(rna_rows.size),
              "genes": int(source.n_vars), "proteins": len(names)}
    return PairedData(source=source, rows=rna_rows, obs=obs, proteins=matrix[protein_rows], protein_names=names,
                      origin=origin)
