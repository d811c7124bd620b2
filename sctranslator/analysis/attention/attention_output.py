"""Tables, AnnData and figures for the attention / interaction analysis."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from sctranslator.analysis.attention.groups import layer_key
from sctranslator.analysis.plots import save_heatmap
from sctranslator.outputs import write_identity
from sctranslator.util.atomic import install_dir, staging_dir

OUTPUT_KIND = "attention"


def minmax_columns_then_rows(matrix: pd.DataFrame) -> pd.DataFrame:
    """The original's ``attention_normalize``: min-max scale each column, then each row (constant -> 0).

    Parameters
    ----------
    matrix : pandas.DataFrame
        Genes x proteins.

    Returns
    -------
    pandas.DataFrame
        The scaled matrix.
    """
    values = matrix.to_numpy(dtype=np.float64)

    def scale(x: np.ndarray, axis: int) -> np.ndarray:
        lo, hi = x.min(axis=axis, keepdims=True), x.max(axis=axis, keepdims=True)
        span = np.where(hi > lo, hi - lo, 1.0)
        return (x - lo) / span

    return pd.DataFrame(scale(scale(values, 0), 1), index=matrix.index, columns=matrix.columns)


# Below this relative gap between a protein's best and k-th gene, the ranking says nothing a
# biologist could use (the scores differ in the fourth significant figure or later).
MIN_RELATIVE_SPREAD = 1e-3


def top_genes(matrix: pd.DataFrame, scaled: pd.DataFrame, top_k: int) -> pd.DataFrame:
    """For each protein, its `top_k` genes by gene-to-protein score (highest first), as a long table.

    Besides the raw score and the original's min-max scaled value, ``fold_over_mean`` is the score
    relative to the protein's mean score over all genes (1.0 = an average gene; NaN where that mean is
    not positive), and ``separates_genes`` is False for every row of a protein whose top-k scores lie
    within MIN_RELATIVE_SPREAD of each other: such a ranking is an ordering of near-ties.

    Parameters
    ----------
    matrix : pandas.DataFrame
        Genes x proteins mean scores.
    scaled : pandas.DataFrame
        The same, scaled.
    top_k : int
        Genes per protein.

    Returns
    -------
    pandas.DataFrame
        protein, gene, rank, score, scaled, fold_over_mean, separates_genes.
    """
    rows = []
    k = min(top_k, matrix.shape[0])
    for protein in matrix.columns:
        values = matrix[protein].to_numpy(dtype=np.float64)
        mean = float(np.mean(values)) if values.size else 0.0
        order = np.argsort(-values, kind="stable")[:k]
        best, worst = values[order[0]], values[order[-1]]
        spread = abs(best - worst) / max(abs(mean), np.finfo(np.float64).tiny)
        separates = bool(spread >= MIN_RELATIVE_SPREAD)
        for rank, i in enumerate(order, start=1):
            gene = matrix.index[i]
            rows.append({"protein": protein, "rank": rank, "gene": gene, "score": float(values[i]),
                         # A ratio to the mean means something only for a positive mean.
                         "fold_over_mean": float(values[i] / mean) if mean > 0 else float("nan"),
                         "scaled": float(scaled.at[gene, protein]), "separates_genes": separates})
    return pd.DataFrame(rows, columns=["protein", "rank", "gene", "score", "fold_over_mean", "scaled",
                                       "separates_genes"])


def interaction_anndata(matrix: pd.DataFrame | None, scaled: pd.DataFrame | None, gene_received: pd.DataFrame,
                        protein_received: pd.DataFrame, group_matrices: dict[str, np.ndarray],
                        gene_obs: pd.DataFrame, protein_var: pd.DataFrame, uns: dict) -> ad.AnnData:
    """The interactions AnnData: genes x proteins, X the mean score, layers 'scaled' and 'mean:<group>'.

    Parameters
    ----------
    matrix : pandas.DataFrame or None
        Genes x proteins mean scores (no X without it).
    scaled : pandas.DataFrame or None
        The same, scaled.
    gene_received : pandas.DataFrame
        Attention received per gene, per group.
    protein_received : pandas.DataFrame
        Attention received per protein, per group.
    group_matrices : dict of str to numpy.ndarray
        Group -> its mean scores.
    gene_obs : pandas.DataFrame
        The genes' annotations.
    protein_var : pandas.DataFrame
        The proteins' annotations.
    uns : dict
        Provenance.

    Returns
    -------
    AnnData
        Genes x proteins.
    """
    obs = gene_obs.copy()
    for column in gene_received.columns:
        obs[layer_key("received", column)] = gene_received[column].to_numpy()
    var = protein_var.copy()
    for column in protein_received.columns:
        var[layer_key("received", column)] = protein_received[column].to_numpy()
    if matrix is None or scaled is None:  # gene-protein not asked for
        return ad.AnnData(obs=obs, var=var, uns=uns)
    layers = {"scaled": scaled.to_numpy(dtype=np.float32)}
    layers.update({layer_key("mean", name): m.astype(np.float32) for name, m in group_matrices.items()})
    return ad.AnnData(X=matrix.to_numpy(dtype=np.float32), obs=obs, var=var, layers=layers, uns=uns)


def write_interaction_files(directory: str | Path, adata: ad.AnnData, matrix: pd.DataFrame | None,
                            top: pd.DataFrame | None, gene_received: pd.DataFrame, protein_received: pd.DataFrame,
                            top_k: int, extra: Callable[[Path], dict[str, str]] | None = None) -> dict[str, Path]:
    """Write interactions.h5ad, gene_to_protein.csv, top_genes.csv, gene_attention.csv, protein_attention.csv and a PNG.

    The folder is written aside, marked as an attention output and renamed into place whole (over an
    earlier attention output the caller has claimed). Without a gene-protein `matrix` its three files
    are left out.

    Parameters
    ----------
    directory : str or pathlib.Path
        The output folder.
    adata : AnnData
        The interactions AnnData.
    matrix : pandas.DataFrame or None
        Genes x proteins mean scores.
    top : pandas.DataFrame or None
        The top_genes table.
    gene_received : pandas.DataFrame
        Attention received per gene.
    protein_received : pandas.DataFrame
        Attention received per protein.
    top_k : int
        Genes per protein.
    extra : callable or None
        ``extra(staging)`` writes more files into the folder and returns their names by key.

    Returns
    -------
    dict of str to pathlib.Path
        Key -> file written.
    """
    directory = Path(directory)
    names = {
        "anndata": "interactions.h5ad",
        "gene_to_protein": "gene_to_protein.csv",
        "top_genes": "top_genes.csv",
        "gene_attention": "gene_attention.csv",
        "protein_attention": "protein_attention.csv",
        "heatmap": "gene_to_protein.png",
    }
    if matrix is None or top is None:
        for key in ("gene_to_protein", "top_genes", "heatmap"):
            del names[key]
    with staging_dir(directory) as staging:
        files = {key: staging / name for key, name in names.items()}
        adata.write_h5ad(files["anndata"])
        gene_received.to_csv(files["gene_attention"], index_label="gene")
        protein_received.to_csv(files["protein_attention"], index_label="protein")
        if matrix is not None and top is not None:
            matrix.to_csv(files["gene_to_protein"], index_label="gene")
            top.to_csv(files["top_genes"], index=False)
            # Show the union of every protein's few best genes: a full L x P heatmap is unreadable.
            shown = list(dict.fromkeys(top.loc[top["rank"] <= min(top_k, 5), "gene"]))[:60]
            save_heatmap(minmax_columns_then_rows(matrix).loc[shown], files["heatmap"],
                         title="gene-to-protein attention (min-max scaled)", colorbar="scaled score")
        if extra is not None:
            names.update(extra(staging))
        write_identity(staging, OUTPUT_KIND)
        install_dir(staging, directory)
    return {key: directory / name for key, name in names.items()}
