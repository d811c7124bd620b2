"""Knockout results as an AnnData (genes x proteins), CSV tables, a heatmap and per-cell effects."""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from sctranslator.analysis.plots import save_heatmap
from sctranslator.engine.obs_tables import RENAMED_KEY, writable_obs
from sctranslator.errors import InputDataError
from sctranslator.outputs import write_identity
from sctranslator.util.atomic import atomic_write_path, install_dir, staging_dir

OUTPUT_KIND = "knockout"

OUTPUT_SUFFIXES = (".h5ad", ".zarr")


def check_out_path(out: str | Path | None) -> Path:
    """The knockout output path, checked.

    Parameters
    ----------
    out
        The `--out` given: a path ending in .h5ad or .zarr.

    Returns
    -------
    Path

    Raises
    ------
    InputDataError
        No `out`, or one with another suffix.
    """
    if out is None:
        raise InputDataError("knockout needs an output: give --out (out=) ending in .h5ad or .zarr")
    path = Path(out)
    if path.suffix not in OUTPUT_SUFFIXES:
        raise InputDataError(f"knockout output {path} must end in .h5ad or .zarr")
    return path


def sibling(out: Path, tag: str, suffix: str) -> Path:
    """A file written beside the output: out = ko.h5ad -> ko_<tag><suffix>.

    Parameters
    ----------
    out
        The knockout output.
    tag, suffix
        What the file holds ("effects") and its suffix (".csv").

    Returns
    -------
    Path
    """
    return out.with_name(f"{out.stem}_{tag}{suffix}")


def output_siblings(out: Path) -> list[Path]:
    """The files written beside `out`: they belong to the knockout output at `out`.

    Parameters
    ----------
    out
        The knockout output.

    Returns
    -------
    list of Path
        The effects and mean tables, the heatmap and the per-cell file.
    """
    return [sibling(out, "effects", ".csv"), sibling(out, "mean", ".csv"), sibling(out, "heatmap", ".png"),
            sibling(out, "per_cell", out.suffix)]


def write_anndata_atomically(adata: ad.AnnData, path: Path) -> None:
    """Write under a temporary name, mark as a knockout output, and rename over any previous output.

    obs goes through `writable_obs` (missing values kept, '/' in column names escaped and recorded
    in uns['obs_columns_renamed']); the caller's object is not changed.

    Parameters
    ----------
    adata
        What to write.
    path
        An .h5ad file or a .zarr store.
    """
    obs, renamed = writable_obs(adata.obs)
    if obs is not adata.obs:  # a new AnnData over the same arrays, nothing copied
        uns = {**adata.uns, RENAMED_KEY: renamed} if renamed else adata.uns
        adata = ad.AnnData(X=adata.X, obs=obs, var=adata.var, uns=uns, obsm=adata.obsm, varm=adata.varm,
                           layers=adata.layers)
    if path.suffix == ".zarr":
        with staging_dir(path) as staging:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # anndata's note about the zarr v2 default
                adata.write_zarr(staging)
            write_identity(staging, OUTPUT_KIND)
            install_dir(staging, path)
        return

    def write(tmp: Path) -> None:
        adata.write_h5ad(tmp)
        write_identity(tmp, OUTPUT_KIND)

    atomic_write_path(path, write)


def effects_table(genes: list[str], proteins: list[str], groups: list[str], counts: np.ndarray,
                  means: np.ndarray, stds: np.ndarray) -> pd.DataFrame:
    """The long table: one row per (group, gene, protein) with n_cells, mean and std.

    Parameters
    ----------
    genes, proteins, groups
        The names along each axis ('all' first among the groups).
    counts
        (groups,) cells per group.
    means, stds
        (groups, genes, proteins) mean change and its sample standard deviation.

    Returns
    -------
    pandas.DataFrame
        Columns gene, protein, group, n_cells, mean, std.
    """
    n_groups, n_genes, n_proteins = means.shape
    return pd.DataFrame({
        "gene": np.tile(np.repeat(genes, n_proteins), n_groups),
        "protein": np.tile(proteins, n_groups * n_genes),
        "group": np.repeat(groups, n_genes * n_proteins),
        "n_cells": np.repeat(counts, n_genes * n_proteins),
        "mean": means.reshape(-1),
        "std": stds.reshape(-1),
    })


def write_knockout_files(out: Path, adata: ad.AnnData, effects: pd.DataFrame, mean: pd.DataFrame,
                         per_cell: ad.AnnData | None, semantics: str) -> dict[str, Path]:
    """Write the knockout output and its siblings, each atomically.

    Parameters
    ----------
    out
        The output (.h5ad or .zarr): the genes x proteins AnnData.
    adata, effects, mean
        The AnnData, the long table and the genes x proteins mean change.
    per_cell
        Every cell's changes (written as `<stem>_per_cell<suffix>`), or None.
    semantics
        "drop" or "zero", named in the heatmap's title.

    Returns
    -------
    dict
        What was written: anndata, effects, mean, heatmap (and per_cell) -> path.
    """
    files = {"anndata": out, "effects": sibling(out, "effects", ".csv"), "mean": sibling(out, "mean", ".csv"),
             "heatmap": sibling(out, "heatmap", ".png")}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_anndata_atomically(adata, out)
    atomic_write_path(files["effects"], lambda tmp: effects.to_csv(tmp, index=False))
    atomic_write_path(files["mean"], lambda tmp: mean.to_csv(tmp, index_label="gene"))
    atomic_write_path(files["heatmap"], lambda tmp: save_heatmap(
        mean, tmp, diverging=True, colorbar="mean change in prediction",
        title=f"pseudo-knockout ({semantics}): knocked-out minus unperturbed"))
    if per_cell is not None:
        files["per_cell"] = sibling(out, "per_cell", out.suffix)
        write_anndata_atomically(per_cell, files["per_cell"])
    return files
