"""The returned AnnData's uns is built from the provenance just written, and equals a fresh read of the store."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import sctranslator
from sctranslator.engine.obs_tables import RENAMED_KEY
from sctranslator.engine.output_reader import open_predictions
from sctranslator.engine.sink import ZarrSink
from sctranslator.engine.stored_uns import NotStorable, as_stored

PROTEINS = ["CD3", "CD4", "CD8a", "CD14"]
OPTIONS = {"allow_empty_cells": True, "block_cells": 16, "batch_size": 8, "quiet": True}


def same(left: Any, right: Any, where: str = "uns") -> None:
    """Deep equality: dict keys in the same order, the same types, arrays of the same dtype."""
    assert type(left) is type(right), f"{where}: {type(left).__name__} != {type(right).__name__}"
    if isinstance(left, dict):
        assert list(left) == list(right), f"{where}: keys {list(left)} != {list(right)}"
        for key in left:
            same(left[key], right[key], f"{where}/{key}")
    elif isinstance(left, np.ndarray):
        assert left.dtype == right.dtype and left.shape == right.shape, f"{where}: {left.dtype} != {right.dtype}"
        assert np.array_equal(left, right, equal_nan=left.dtype.kind == "f"), where
    elif isinstance(left, float) and math.isnan(left):
        assert math.isnan(right), where
    else:
        assert left == right, f"{where}: {left!r} != {right!r}"


def fresh_uns(store: Path) -> dict[str, Any]:
    return ad.read_zarr(store).uns


def same_as_store(uns: dict[str, Any], store: Path) -> None:
    """`uns` equals a fresh read of `store`; translate returns its run record as computed (keys in the order
    they were made), as it always has, so that one entry is compared in key order."""
    fresh = fresh_uns(store)
    run, stored_run = uns["sctranslator"]["run"], fresh["sctranslator"]["run"]
    same({key: run[key] for key in sorted(run)}, stored_run, "uns/sctranslator/run")

    def without_run(record: dict[str, Any]) -> dict[str, Any]:
        return {**record, "sctranslator": {k: v for k, v in record["sctranslator"].items() if k != "run"}}

    same(without_run(uns), without_run(fresh))


@pytest.fixture(scope="module")
def model_path(fixtures_dir: Path) -> Path:
    return fixtures_dir / "tiny_a_official.pt"


@pytest.fixture(scope="module")
def cells(data_dir: Path) -> ad.AnnData:
    real = ad.read_h5ad(data_dir / "pbmc10k_cite_10x" / "rna.h5ad")[:40].copy()
    real.obs["batch/lane"] = "L1"  # a column stored under another name: its record goes into uns
    return real


def test_single_input_uns_equals_the_store(cells: ad.AnnData, model_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "in.h5ad"
    cells.write_h5ad(path)
    result = sctranslator.translate(path, model_path, PROTEINS, out=tmp_path / "one.zarr", embeddings=True,
                                    **OPTIONS)
    assert RENAMED_KEY in result.uns["sctranslator"]
    same_as_store(result.uns, tmp_path / "one.zarr")
    assert list(result.obs.columns) == list(cells.obs.columns)  # names restored from the uns record


def test_collection_uns_equals_each_store(cells: ad.AnnData, model_path: Path, tmp_path: Path) -> None:
    paths = []
    for index, part in enumerate((cells[:25], cells[25:, ::2])):
        paths.append(tmp_path / f"part{index}.h5ad")
        part.copy().write_h5ad(paths[-1])
    results = sctranslator.translate([str(p) for p in paths], model_path, PROTEINS, out=tmp_path / "coll",
                                     **OPTIONS)
    for index, result in enumerate(results):
        same_as_store(result.uns, tmp_path / "coll" / f"part{index}.zarr")
    # the two inputs have different genes: their plans (and provenance) differ
    assert results[0].uns["sctranslator"]["plan"] != results[1].uns["sctranslator"]["plan"]


def _open(path: Path, uns: dict[str, Any]) -> ZarrSink:
    obs = pd.DataFrame(index=pd.Index([f"c{i}" for i in range(4)]))
    var = pd.DataFrame(index=pd.Index(["p0", "p1"], name="protein"))
    return ZarrSink.open(path, identity={"test": 1}, obs=obs, var=var, uns=uns, block_rows=2)


def _fill(sink: ZarrSink) -> None:
    for index, (start, stop) in enumerate(sink.blocks()):
        sink.write_block(index, np.zeros((stop - start, 2), dtype=np.float32))


def test_every_value_kind_reads_back_as_derived(tmp_path: Path) -> None:
    record = {"text": "x", "number": 3, "big": 2**40, "fraction": 0.1, "single": np.float32(0.1), "flag": True,
              "numpy_flag": np.bool_(False), "numpy_int": np.int32(-7), "nothing": None, "nan": float("nan"),
              "names": ["a", "bb"], "numbers": [1, 2, 3], "floats": [0.5, 1.0], "empty_list": [],
              "mixed": [1, "a"], "flags": [True, False], "nested_list": [[1, 2], [3, 4]],
              "array": np.arange(3, dtype=np.uint16), "strings": np.array(["p", "q"]), "zero_d": np.array(5.0),
              "empty": {}, "inner": {"b": 1, "a": {"z": "deep", "y": [0.25]}}, "B_upper": 1, "_under": 2}
    sink = _open(tmp_path / "s.zarr", {"sctranslator": record, "other": {"k": "v"}})
    _fill(sink)
    sink.finish(run={"seconds": np.float64(1.5), "cells": 4, "blocks_per_worker": {"w": 2}})
    known = sink.known_uns()
    assert known is not None
    same(known, fresh_uns(tmp_path / "s.zarr"))
    same(sink.read().uns, fresh_uns(tmp_path / "s.zarr"))
    # A resumed store holds an earlier run's provenance: its uns is read, not derived.
    resumed = _open(tmp_path / "s.zarr", {"sctranslator": {"text": "another run"}})
    assert resumed.known_uns() is None
    assert resumed.read().uns["sctranslator"]["text"] == "x"


def test_values_without_a_derived_form_are_read_from_the_store(tmp_path: Path) -> None:
    with pytest.raises(NotStorable):
        as_stored({"when": pd.Timestamp("2020-01-01")})
    with pytest.raises(NotStorable):
        as_stored({1: "a key that is not a string"})
    table = pd.DataFrame({"a": [1, 2]})
    sink = _open(tmp_path / "t.zarr", {"sctranslator": {"table": table}})
    assert sink.known_uns() is None
    _fill(sink)
    sink.finish()
    pd.testing.assert_frame_equal(open_predictions(sink.path).uns["sctranslator"]["table"], table)
    pd.testing.assert_frame_equal(sink.read().uns["sctranslator"]["table"], table)


def test_recorded_versions_are_the_installed_ones_and_each_record_its_own(cells: ad.AnnData, model_path: Path,
                                                                         tmp_path: Path) -> None:
    from importlib import metadata

    from sctranslator.engine import translate as translate_module

    sctranslator.translate(cells, model_path, PROTEINS, **OPTIONS)
    translate_module._versions()["anndata"] = "changed by a caller"  # the versions are found once, handed out copied
    second = sctranslator.translate(cells, model_path, PROTEINS, **OPTIONS)
    versions = second.uns["sctranslator"]["versions"]
    assert versions["anndata"] == metadata.version("anndata") and versions["zarr"] == metadata.version("zarr")
    assert versions["sctranslator"] == sctranslator.__version__
