"""Write predictions back beside the RNA: an h5ad with `obsm['protein_expression']`, or a MuData.

Both are written element by element (see `h5copy`): the RNA is copied from the input file (HDF5
object copies for .h5ad/.h5mu, row slabs for Zarr) or written from the caller's AnnData without a
copy, and the predictions (and embeddings) go from the output store in row slabs. What is held in
memory at once: the obs and var tables (the MuData's global tables are built from them), one
non-matrix element of a Zarr input (a table, a categorical, an `uns` entry), and one slab of about
64 MiB.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import pandas as pd

from sctranslator.engine.h5copy import (
    ANNDATA_ATTRS,
    copy_group,
    copy_rows,
    read_elem,
    write_anndata_elements,
    write_elem,
    write_frame_columns,
)
from sctranslator.engine.sink import EMBEDDING_KEY
from sctranslator.engine.sources import Source
from sctranslator.errors import StoreError

PROTEIN_KEY = "protein_expression"
PROVENANCE_KEY = "sctranslator"
PROTEIN_MODALITY = "prot"
# MuData needs var_names unique across modalities and protein names such as CD4 are also gene names,
# so the protein modality's var_names carry mudata's own modality prefix ("prot:CD4"); the bare names
# stay in prot.var['name'].
PROTEIN_PREFIX = f"{PROTEIN_MODALITY}:"


@contextmanager
def _rna_input(data: Any, source: Source) -> Iterator[Any]:
    """The RNA as an AnnData object (in-memory or backed inputs) or an open h5py/zarr AnnData group."""
    if isinstance(data, ad.AnnData):
        yield data
        return
    if type(data).__name__ == "MuData" and hasattr(data, "mod"):
        yield data.mod["rna"]
        return
    if source.path is None:
        raise StoreError("cannot write back: the input has no path")
    if Path(source.path).is_dir():
        import zarr

        root = zarr.open_group(source.path, mode="r")
        yield root["mod"]["rna"] if "mod" in root else root
        return
    with h5py.File(source.path, "r") as root:
        yield root["mod"]["rna"] if "mod" in root else root


def _table(rna: Any, key: str) -> pd.DataFrame:
    return getattr(rna, key) if isinstance(rna, ad.AnnData) else read_elem(rna[key])


def protein_frame(predictions: ad.AnnData) -> pd.DataFrame:
    """Cells x proteins DataFrame (in memory), the layout scvi-tools expects in obsm['protein_expression']."""
    return pd.DataFrame(predictions.X.compute() if hasattr(predictions.X, "compute") else predictions.X,
                        index=predictions.obs_names.astype(str), columns=predictions.var_names.astype(str))


def _staging(path: Path) -> Path:
    """Write next to the target and rename at the end: a failed write-back leaves no half file.

    The files are opened without HDF5's chunk cache (rdcc_nbytes=0; every write is a whole slab of
    chunks anyway): a write the disk refuses then fails at once as OSError, where a cached chunk
    would fail later, when flushed, and leave the HDF5 library to crash the process at exit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.partial-{os.getpid()}")


def write_h5ad_with_proteins(data: Any, source: Source, predictions: ad.AnnData, path: str | Path) -> Path:
    """Write the input RNA as an .h5ad with obsm['protein_expression'] (a DataFrame, proteins as columns),
    obsm['X_sctranslator'] when the predictions carry embeddings, and uns['sctranslator'] (provenance).

    An existing obsm/uns entry of the same name in the input is replaced; everything else is copied.
    Raises StoreError when the input cannot be read back or a protein name cannot be stored.
    """
    path = Path(path)
    embeddings = EMBEDDING_KEY in predictions.obsm
    ours = {f"obsm/{PROTEIN_KEY}", f"uns/{PROVENANCE_KEY}"} | ({f"obsm/{EMBEDDING_KEY}"} if embeddings else set())
    staging = _staging(path)
    try:
        with _rna_input(data, source) as rna, h5py.File(staging, "w", rdcc_nbytes=0) as out:
            if isinstance(rna, ad.AnnData):
                write_anndata_elements(rna, out, ours)
            else:
                copy_group(rna, out, ours)
            if "encoding-type" not in out.attrs:
                out.attrs.update(ANNDATA_ATTRS)
            for group in ("obsm", "uns"):
                if group not in out:
                    write_elem(out, group, {})
            write_frame_columns(out["obsm"], PROTEIN_KEY, predictions.X, predictions.obs_names,
                                predictions.var_names)
            if embeddings:
                copy_rows(predictions.obsm[EMBEDDING_KEY], out["obsm"], EMBEDDING_KEY)
            write_elem(out["uns"], PROVENANCE_KEY, predictions.uns[PROVENANCE_KEY])
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return path


def protein_var(predictions: ad.AnnData) -> pd.DataFrame:
    """The protein modality's var: prefixed names as the index, the bare names in 'name'."""
    var = predictions.var.copy()
    names = predictions.var_names.astype(str)
    var.insert(0, "name", pd.Categorical(names))
    if "gene" in var:  # stored as categoricals anyway; converting here keeps anndata from saying so
        var["gene"] = pd.Categorical(var["gene"].astype(str))
    var.index = pd.Index(PROTEIN_PREFIX + names, name=None)
    return var


def write_mudata_with_proteins(data: Any, source: Source, predictions: ad.AnnData, path: str | Path) -> Path:
    """Write a MuData (.h5mu) with the input as modality 'rna' and the predictions as modality 'prot'.

    prot.X holds the predictions (cells x proteins, float32), prot.var_names are 'prot:<protein>'
    (mudata needs names unique across modalities; the bare names are in prot.var['name']),
    prot.obsm['X_sctranslator'] the embeddings when computed, prot.uns['sctranslator'] the provenance.
    The file is made with mudata's writer (global obs/var and maps) and the matrices added in place;
    read it with `mudata.set_options(pull_on_update=False)` (mudata's coming default) to read it
    without warnings.
    """
    import mudata

    path = Path(path)
    staging = _staging(path)
    try:
        with _rna_input(data, source) as rna:
            obs, var = _table(rna, "obs"), _table(rna, "var")
            cells = pd.DataFrame(index=obs.index.copy())
            prot = ad.AnnData(obs=cells, var=protein_var(predictions),
                              uns={PROVENANCE_KEY: predictions.uns[PROVENANCE_KEY]})
            with mudata.set_options(pull_on_update=False):
                skeleton = mudata.MuData({"rna": ad.AnnData(obs=obs, var=var), PROTEIN_MODALITY: prot})
                skeleton.write_h5mu(str(staging))
            del skeleton, prot
            with h5py.File(staging, "r+", rdcc_nbytes=0) as out:
                target = out["mod"]["rna"]
                for key in list(target):  # the skeleton's empty elements make way for the input's
                    if key not in ("obs", "var"):
                        del target[key]
                if isinstance(rna, ad.AnnData):
                    write_anndata_elements(rna, target, {"obs", "var"})
                else:
                    copy_group(rna, target, {"obs", "var"})
                modality = out["mod"][PROTEIN_MODALITY]
                for key in ("X", f"obsm/{EMBEDDING_KEY}"):
                    if key in modality:  # whatever the skeleton wrote in place of the matrices
                        del modality[key]
                copy_rows(predictions.X, modality, "X")
                if EMBEDDING_KEY in predictions.obsm:
                    copy_rows(predictions.obsm[EMBEDDING_KEY], modality["obsm"], EMBEDDING_KEY)
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return path

