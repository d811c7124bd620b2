"""Write predictions back beside the RNA: an h5ad with `obsm['protein_expression']`, or a MuData."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anndata as ad
import pandas as pd

from sctranslator.engine.sources import Source
from sctranslator.errors import StoreError


def _load_rna(data: Any, source: Source) -> ad.AnnData:
    """The whole input in memory: write-back copies it, so it is meant for datasets that fit."""
    if isinstance(data, ad.AnnData):
        return data.to_memory() if data.isbacked else data.copy()
    if source.path is None:
        raise StoreError("cannot write back: the input has no path")
    if source.kind == "mudata":
        import mudata

        return mudata.read_h5mu(source.path)["rna"].copy()
    if source.kind == "zarr":
        return ad.read_zarr(source.path)
    return ad.read_h5ad(source.path)


def protein_frame(predictions: ad.AnnData) -> pd.DataFrame:
    """Cells x proteins DataFrame, the layout scvi-tools expects in obsm['protein_expression']."""
    return pd.DataFrame(predictions.X, index=predictions.obs_names.astype(str),
                        columns=predictions.var_names.astype(str))


def write_h5ad_with_proteins(data: Any, source: Source, predictions: ad.AnnData, path: str | Path) -> Path:
    rna = _load_rna(data, source)
    rna.obsm["protein_expression"] = protein_frame(predictions).set_axis(rna.obs_names, axis=0)
    rna.uns["sctranslator"] = predictions.uns["sctranslator"]
    rna.write_h5ad(path)
    return Path(path)


def write_mudata_with_proteins(data: Any, source: Source, predictions: ad.AnnData, path: str | Path) -> Path:
    import mudata

    rna = _load_rna(data, source)
    prot = predictions.copy()
    prot.obs_names = rna.obs_names
    mudata.MuData({"rna": rna, "prot": prot}).write(str(path))
    return Path(path)
