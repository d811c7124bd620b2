"""Write predictions back beside the RNA under keys of their own: an h5ad, a MuData, or the object.

Where predictions go (never over measured data): an AnnData gets `obsm[key]` (a DataFrame,
proteins as columns; default key `protein_predicted`), `uns[key]` (the provenance) and, with
embeddings, `obsm['X_' + key]`; a MuData gets a new modality `key` (default `prot_predicted`)
holding the predictions as X. `obsm['protein_expression']` is left alone: scvi-tools' totalVI keeps
the MEASURED protein counts there, as CITE-seq MuData files keep them in a `prot` modality. A
target that already exists is refused (`KeyConflictError`) unless the caller names the key
explicitly and asks to replace it (`check_keys`), before any work is done.

Both files are written element by element (see `h5copy`): the input is copied from its file (HDF5
object copies for .h5ad/.h5mu, row slabs for Zarr) or written from the caller's object without a
copy, and the predictions (and embeddings) go from the output store in row slabs. What is held in
memory at once: the obs and var tables (the MuData's global tables are built from them), one
non-matrix element of a Zarr input (a table, a categorical, an `uns` entry), and one slab of about
64 MiB.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
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
from sctranslator.engine.obs_tables import RENAMED_KEY, writable_obs, writable_var
from sctranslator.engine.sink import EMBEDDING_KEY
from sctranslator.engine.sources import Source, pick_modality
from sctranslator.errors import KeyConflictError, OptionError, StoreError

log = logging.getLogger(__name__)

DEFAULT_KEY = "protein_predicted"  # AnnData: obsm[key] (predictions), uns[key] (provenance)
DEFAULT_MODALITY = "prot_predicted"  # MuData: the predictions' modality
MEASURED_KEY = "protein_expression"  # scvi-tools' key for MEASURED protein counts; never a default of ours
PROVENANCE_KEY = "sctranslator"  # inside the predictions' own MuData modality (and in the store)


def embedding_key(key: str) -> str:
    """The obsm key of the embeddings that go with the predictions in ``obsm[key]``.

    Parameters
    ----------
    key : str
        The predictions' key.

    Returns
    -------
    str
        ``'X_' + key``.
    """
    return f"X_{key}"


def check_key_name(key: str | None) -> None:
    """Refuse a key no AnnData or MuData file can hold.

    Parameters
    ----------
    key : str or None
        The key asked for; None passes.

    Raises
    ------
    OptionError
        An empty key, or one holding '/'.
    """
    if key is None:
        return
    if not isinstance(key, str) or not key.strip() or "/" in key or key != key.strip():
        raise OptionError(f"--key {key!r} cannot name an obsm entry or a MuData modality: use a non-empty name "
                          "without '/' or surrounding spaces (e.g. protein_predicted)")


def anndata_targets(key: str, embeddings: bool) -> list[str]:
    """The paths a write-back into an AnnData sets, relative to the AnnData.

    Parameters
    ----------
    key : str
        The predictions' key.
    embeddings : bool
        Whether embeddings are written too.

    Returns
    -------
    list of str
        ``obsm/<key>``, ``uns/<key>`` and, with embeddings, ``obsm/X_<key>``.
    """
    return [f"obsm/{key}", f"uns/{key}"] + ([f"obsm/{embedding_key(key)}"] if embeddings else [])


def _is_mudata(data: Any) -> bool:
    return type(data).__name__ == "MuData" and hasattr(data, "mod")


def _is_mudata_group(root: Any) -> bool:
    """An h5py/zarr root laid out as a MuData (the test the sources use)."""
    return "mod" in root and "X" not in root and "obs" in root and hasattr(root["mod"], "keys")


@contextmanager
def _input_root(data: Any, source: Source) -> Iterator[Any]:
    """The input: an AnnData / MuData object, or its file's open h5py / zarr root group."""
    if isinstance(data, ad.AnnData) or _is_mudata(data):
        yield data
        return
    if source.path is None:
        raise StoreError("cannot write back: the input has no path")
    if hasattr(source, "storage_options"):  # in object storage: the source's own (fsspec) root group
        yield source._root()
        return
    if Path(source.path).is_dir():
        import zarr

        yield zarr.open_group(source.path, mode="r")
        return
    with h5py.File(source.path, "r") as root:
        yield root


def _modalities(root: Any) -> dict[str, Any]:
    """{name: AnnData or group} of a MuData input; {} for an AnnData."""
    if _is_mudata(root):
        return dict(root.mod)
    if not isinstance(root, ad.AnnData) and _is_mudata_group(root):
        names = [str(n) for n in root["mod"]]
        order = [n.decode() if isinstance(n, bytes) else str(n) for n in root["mod"].attrs.get("mod-order", [])]
        names = [n for n in order if n in names] + [n for n in names if n not in order]  # mudata's order
        return {name: root["mod"][name] for name in names}
    return {}


def rna_modality(root: Any, modality: str | None) -> str | None:
    """The modality translate read, chosen as the sources choose it.

    Parameters
    ----------
    root : object
        The input's root group (h5py or zarr) or in-memory object.
    modality : str or None
        The modality asked for.

    Returns
    -------
    str or None
        The modality; None for an AnnData input.
    """
    names = _modalities(root)
    return pick_modality(names, modality, where="the MuData") if names else None


def _rna(root: Any, modality: str | None) -> Any:
    name = rna_modality(root, modality)
    return root if name is None else _modalities(root)[name]


def _has(container: Any, path: str) -> bool:
    """Whether `path` ("obsm/x", "uns/y", "mod/z") exists in an AnnData/MuData object or a group."""
    group, _, name = path.partition("/")
    if isinstance(container, ad.AnnData) or _is_mudata(container):
        mapping = getattr(container, group, None)
        return mapping is not None and name in mapping
    return group in container and hasattr(container[group], "keys") and name in container[group]


def check_keys(data: Any, source: Source, *, modality: str | None, key: str | None, replace: bool,
               embeddings: bool, h5ad: bool, mudata: bool, inplace: bool) -> None:
    """Refuse, before any work, a write-back that would replace something the input holds.

    An existing target is replaced only when `key` is given and `replace` is set.

    Parameters
    ----------
    data : object
        The input as given.
    source : Source
        The opened input.
    modality : str or None
        The MuData modality translate reads.
    key : str or None
        Where the predictions go; None: DEFAULT_KEY in an AnnData, DEFAULT_MODALITY in a MuData.
    replace : bool
        Replace what is there under `key`.
    embeddings : bool
        Embeddings are written too.
    h5ad : bool
        An h5ad write-back is asked for.
    mudata : bool
        A MuData write-back is asked for.
    inplace : bool
        The predictions go onto `data`.

    Raises
    ------
    OptionError
        `replace` without `key`, a key without a write-back, or a key that cannot be stored.
    KeyConflictError
        A target that exists (measured proteins included), or a key naming the RNA modality.
    """
    check_key_name(key)
    if replace and key is None:
        raise OptionError("--replace-key (replace_key=True) needs the key it may replace: name it with --key "
                          "KEY (key=...); the default keys are never replaced")
    if not (h5ad or mudata or inplace):
        if key is not None or replace:
            raise OptionError("--key / --replace-key name where --write-h5ad, --write-mudata or inplace=True put "
                              "the predictions; without one of those the predictions are X of --out. Drop them, "
                              "or add a write-back")
        return
    with _input_root(data, source) as root:
        rna = _rna(root, modality)
        checks: list[tuple[Any, str, str]] = []
        if h5ad or (inplace and not _is_mudata(data)):
            where = "the input" if rna is root else f"the input's modality '{rna_modality(root, modality)}'"
            checks += [(rna, path, where) for path in anndata_targets(key or DEFAULT_KEY, embeddings)]
        if mudata or (inplace and _is_mudata(data)):
            name = key or DEFAULT_MODALITY
            rna_name = rna_modality(root, modality) or "rna"
            if name == rna_name:
                raise KeyConflictError(f"--key {name!r} names the RNA modality the predictions are made from; "
                                       "choose another name for the predictions' modality. Nothing was written")
            if _modalities(root):
                checks.append((root, f"mod/{name}", "the input MuData"))
        for container, path, where in checks:
            if not _has(container, path) or replace:
                continue
            group, _, name = path.partition("/")
            what = {"obsm": f"obsm['{name}']", "uns": f"uns['{name}']", "mod": f"the modality '{name}'"}[group]
            measured = {(f"obsm/{MEASURED_KEY}"): " (scvi-tools keeps MEASURED protein counts there)",
                        "mod/prot": " (CITE-seq MuData files keep the MEASURED proteins there)"}.get(path, "")
            if key is None:
                fix = "choose another key with --key NAME (key=...)"
            else:
                fix = (f"choose another --key, or pass --replace-key (replace_key=True) to replace {what} "
                       "on purpose")
            raise KeyConflictError(f"{where} already has {what}{measured}; predictions never replace it unasked: "
                                   f"{fix}. Nothing was written")


def _table(rna: Any, key: str) -> pd.DataFrame:
    return getattr(rna, key) if isinstance(rna, ad.AnnData) else read_elem(rna[key])


def protein_frame(predictions: ad.AnnData) -> pd.DataFrame:
    """The predictions as an in-memory cells x proteins DataFrame (the layout of ``obsm[key]``).

    Parameters
    ----------
    predictions : AnnData
        translate's result.

    Returns
    -------
    pandas.DataFrame
        Proteins as columns, cells as the index.
    """
    return pd.DataFrame(predictions.X.compute() if hasattr(predictions.X, "compute") else predictions.X,
                        index=predictions.obs_names.astype(str), columns=predictions.var_names.astype(str))


def _staging(path: Path) -> Path:
    """Write next to the target and rename at the end: a failed write-back leaves no half file.

    The files are opened without HDF5's chunk cache (rdcc_nbytes=0; every write is a whole slab of
    chunks anyway): a write the disk refuses then fails at once as OSError, where a cached chunk
    would fail later, when flushed, and leave the HDF5 library to crash the process at exit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.partial-{os.getpid()}")


def _provenance(predictions: ad.AnnData, renamed: dict[str, str] | None = None) -> dict[str, Any]:
    record = dict(predictions.uns[PROVENANCE_KEY])
    if renamed:
        record[RENAMED_KEY] = renamed
    return record


def write_h5ad_with_proteins(data: Any, source: Source, predictions: ad.AnnData, path: str | Path, *,
                             key: str | None = None, modality: str | None = None) -> Path:
    """Write the input RNA as an .h5ad with the predictions under keys of their own.

    ``obsm[key]`` holds the predictions (a DataFrame, proteins as columns), ``uns[key]`` the provenance
    and ``obsm['X_' + key]`` the embeddings when the predictions carry them. Everything else is
    copied, measured proteins included; an existing entry of those names is replaced (`check_keys`
    refused that up front unless asked).

    Parameters
    ----------
    data : object
        The input as given.
    source : Source
        The opened input.
    predictions : AnnData
        translate's result.
    path : str or pathlib.Path
        The .h5ad to write (a staged temporary; the caller installs it).
    key : str or None
        The predictions' key; None: 'protein_predicted'.
    modality : str or None
        The MuData modality translate read; None: as the sources choose it.

    Returns
    -------
    pathlib.Path
        `path`.

    Raises
    ------
    StoreError
        The input cannot be read back, or a protein name cannot be stored.
    """
    path = Path(path)
    key = key or DEFAULT_KEY
    embeddings = EMBEDDING_KEY in predictions.obsm
    staging = _staging(path)
    try:
        with _input_root(data, source) as root, h5py.File(staging, "w", rdcc_nbytes=0) as out:
            rna = _rna(root, modality)
            # Replacing (granted by check_keys) also drops the replaced run's embeddings, which
            # would otherwise sit beside predictions they do not belong to.
            ours = set(anndata_targets(key, embeddings or _has(rna, f"obsm/{key}")))
            renamed = None
            if isinstance(rna, ad.AnnData):
                renamed = write_anndata_elements(rna, out, ours)
            else:
                copy_group(rna, out, ours)
            if "encoding-type" not in out.attrs:
                out.attrs.update(ANNDATA_ATTRS)
            for group in ("obsm", "uns"):
                if group not in out:
                    write_elem(out, group, {})
            write_frame_columns(out["obsm"], key, predictions.X, predictions.obs_names, predictions.var_names)
            if embeddings:
                copy_rows(predictions.obsm[EMBEDDING_KEY], out["obsm"], embedding_key(key))
            write_elem(out["uns"], key, _provenance(predictions, renamed))
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return path


def protein_var(predictions: ad.AnnData, modality: str = DEFAULT_MODALITY) -> pd.DataFrame:
    """The predictions' modality var: ``'<modality>:<protein>'`` as the index, the bare names in 'name'.

    Parameters
    ----------
    predictions : AnnData
        translate's result.
    modality : str
        The modality's name.

    Returns
    -------
    pandas.DataFrame
        One row per protein.
    """
    var = predictions.var.copy()
    names = predictions.var_names.astype(str)
    var.insert(0, "name", pd.Categorical(names))
    if "gene" in var:  # stored as categoricals anyway; converting here keeps anndata from saying so
        var["gene"] = pd.Categorical(var["gene"].astype(str))
    var.index = pd.Index(f"{modality}:" + names, name=None)
    return var


def predictions_modality(predictions: ad.AnnData, obs_names: pd.Index, name: str, *,
                         with_values: bool) -> ad.AnnData:
    """The predictions as a MuData modality: X (when `with_values`), var, embeddings, provenance.

    Parameters
    ----------
    predictions : AnnData
        translate's result.
    obs_names : pandas.Index
        The MuData's cell names.
    name : str
        The modality's name.
    with_values : bool
        Include X (else it is added to the file afterwards, in place).

    Returns
    -------
    AnnData
        The modality.
    """
    x = None
    obsm = {}
    if with_values:
        x = np.asarray(predictions.X.compute() if hasattr(predictions.X, "compute") else predictions.X)
        if EMBEDDING_KEY in predictions.obsm:
            emb = predictions.obsm[EMBEDDING_KEY]
            obsm[EMBEDDING_KEY] = np.asarray(emb.compute() if hasattr(emb, "compute") else emb)
    return ad.AnnData(X=x, obs=pd.DataFrame(index=pd.Index(obs_names).copy()), var=protein_var(predictions, name),
                      obsm=obsm, uns={PROVENANCE_KEY: _provenance(predictions)})


def _clear(group: h5py.Group, keep: tuple[str, ...]) -> None:
    for name in list(group):  # the skeleton's empty elements make way for the input's
        if name not in keep:
            del group[name]


def _copy_into(member: Any, target: h5py.Group, skip: set[str]) -> None:
    if isinstance(member, ad.AnnData):
        write_anndata_elements(member, target, skip)
    else:
        copy_group(member, target, skip)


def _copy_global(root: Any, out: h5py.File, modalities: list[str], obs_index: pd.Index) -> None:
    """A MuData input's own global elements: uns, obsp, obsm/varm entries that are not modality
    masks, and its global obs when it lists the same cells in the same order."""
    is_object = _is_mudata(root)
    for group in ("uns", "obsp", "obsm"):
        if is_object:
            items = {k: v for k, v in dict(getattr(root, group, {}) or {}).items() if k not in modalities}
            for name, value in items.items():
                target = out.require_group(group)
                if name in target:
                    del target[name]
                write_elem(target, name, value)
        elif group in root:
            for name in root[group]:
                if name in modalities:
                    continue
                target = out.require_group(group)
                if name in target:
                    del target[name]
                if isinstance(root, h5py.Group):
                    root[group].copy(root[group][name], target, name=name)
                else:
                    copy_group(root[group], target, {n for n in root[group] if n != name})
    obs = root.obs if is_object else read_elem(root["obs"]) if "obs" in root else None
    if obs is not None and len(obs.columns) and pd.Index(obs.index).equals(obs_index):
        del out["obs"]
        write_elem(out, "obs", writable_obs(obs)[0])


def write_mudata_with_proteins(data: Any, source: Source, predictions: ad.AnnData, path: str | Path, *,
                               key: str | None = None, modality: str | None = None) -> Path:
    """Write a MuData (.h5mu): the input's modalities and the predictions as a new modality `key`.

    An AnnData input becomes modality 'rna'; a MuData input keeps every modality under its own name (a
    measured 'prot' included) and its global uns/obsm/obsp. The predictions' modality holds them as X
    (cells x proteins, float32); its var_names are ``'<key>:<protein>'`` (mudata needs names unique
    across modalities; the bare names are in var['name']), obsm['X_sctranslator'] the embeddings when
    computed, uns['sctranslator'] the provenance. Read it with
    ``mudata.set_options(pull_on_update=False)`` to read it without warnings.

    Parameters
    ----------
    data : object
        The input as given.
    source : Source
        The opened input.
    predictions : AnnData
        translate's result.
    path : str or pathlib.Path
        The .h5mu to write.
    key : str or None
        The new modality's name; None: 'prot_predicted'.
    modality : str or None
        The MuData modality translate read.

    Returns
    -------
    pathlib.Path
        `path`.

    Raises
    ------
    StoreError
        The input cannot be read back.
    """
    import mudata

    path = Path(path)
    key = key or DEFAULT_MODALITY
    staging = _staging(path)
    try:
        with _input_root(data, source) as root:
            members = _modalities(root) or {"rna": root}
            members = {name: member for name, member in members.items() if name != key}  # replaced (asked)
            tables = {}
            for name, member in members.items():
                obs = writable_obs(_table(member, "obs"))[0]
                tables[name] = ad.AnnData(obs=obs, var=writable_var(_table(member, "var")))
            prot = predictions_modality(predictions, tables[rna_modality(root, modality) or "rna"].obs_names, key,
                                        with_values=False)
            with mudata.set_options(pull_on_update=False):
                skeleton = mudata.MuData({**tables, key: prot})
                skeleton.write_h5mu(str(staging))
                obs_index = skeleton.obs_names.copy()
            del skeleton, prot, tables
            with h5py.File(staging, "r+", rdcc_nbytes=0) as out:
                for name, member in members.items():
                    target = out["mod"][name]
                    _clear(target, ("obs", "var"))
                    _copy_into(member, target, {"obs", "var"})
                if _modalities(root):
                    _copy_global(root, out, [*members, key], obs_index)
                target = out["mod"][key]
                for name in ("X", f"obsm/{EMBEDDING_KEY}"):
                    if name in target:  # whatever the skeleton wrote in place of the matrices
                        del target[name]
                copy_rows(predictions.X, target, "X")
                if EMBEDDING_KEY in predictions.obsm:
                    copy_rows(predictions.obsm[EMBEDDING_KEY], target["obsm"], EMBEDDING_KEY)
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return path


def set_inplace(data: Any, predictions: ad.AnnData, *, key: str | None = None, modality: str | None = None) -> None:
    """Put the predictions on the caller's object.

    An AnnData gets ``obsm[key]`` (a DataFrame), ``uns[key]`` and, with embeddings,
    ``obsm['X_' + key]``; a MuData gets a new modality `key`.

    Parameters
    ----------
    data : AnnData or MuData
        The caller's object.
    predictions : AnnData
        translate's result.
    key : str or None
        Where; None: 'protein_predicted' (AnnData) or 'prot_predicted' (MuData).
    modality : str or None
        The MuData modality translate read.
    """
    if _is_mudata(data):
        import mudata

        name = key or DEFAULT_MODALITY
        cells = data.mod[rna_modality(data, modality)].obs_names
        data.mod[name] = predictions_modality(predictions, cells, name, with_values=True)
        with mudata.set_options(pull_on_update=False):
            data.update()
        return
    key = key or DEFAULT_KEY
    frame = protein_frame(predictions)
    frame.index = data.obs_names
    if key in data.obsm:  # replacing (granted by check_keys): the old run's embeddings go with it
        data.obsm.pop(embedding_key(key), None)
    data.obsm[key] = frame
    if EMBEDDING_KEY in predictions.obsm:
        data.obsm[embedding_key(key)] = predictions.obsm[EMBEDDING_KEY].compute()
    data.uns[key] = _provenance(predictions)
