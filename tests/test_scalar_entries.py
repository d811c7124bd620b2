"""The run record's zarr files from per-type templates are byte for byte what anndata's write_elem writes."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import zarr
from anndata.io import write_elem

from sctranslator.engine.scalar_entries import scalar_entry_files


def by_write_elem(value: dict[str, Any]) -> tuple[dict[str, bytes], dict[str, Any]]:
    files: dict[str, Any] = {}
    store = zarr.storage.MemoryStore(files)
    write_elem(zarr.open_group(store, mode="a", zarr_format=2), "run", value)
    zarr.consolidate_metadata(store)
    entries = json.loads(files[".zmetadata"].to_bytes())["metadata"]
    return ({name[4:]: data.to_bytes() for name, data in files.items() if name.startswith("run/")},
            {name[4:]: entry for name, entry in entries.items() if name.startswith("run/")})


RECORDS = [
    {"blocks_computed": 8, "blocks_skipped": 0, "cells_computed": 2500, "empty_cells": 3, "seconds": 0.8123,
     "cells_per_second": 3077.6, "blocks_per_worker": {"local-0": 5, "local-1": 3}},
    {"zero": 0.0, "negative_zero": -0.0, "nan": float("nan"), "inf": float("-inf"), "yes": True, "no": False,
     "big": 2**62, "negative": -12, "empty": {}, "nested": {"deeper": {"x": 1.25}}},
    {"blocks_computed": 0, "blocks_skipped": 8, "cells_computed": 0, "empty_cells": 0, "seconds": 0.0,
     "cells_per_second": float("nan")},
]


@pytest.mark.parametrize("record", RECORDS)
def test_files_and_metadata_equal_write_elem(record: dict[str, Any]) -> None:
    for _ in range(2):  # the templates hold the previous value: every call is exact
        files, entries = scalar_entry_files(record)
        expected_files, expected_entries = by_write_elem(record)
        assert files == expected_files
        assert entries == expected_entries


def test_other_values_are_left_to_write_elem() -> None:
    for value in ({"name": "text"}, {"array": np.arange(3)}, {"numpy": np.int64(3)}, {"huge": 2**64},
                  {"a/b": 1}, {"none": None}, ["not", "a", "dict"]):
        assert scalar_entry_files(value) is None
