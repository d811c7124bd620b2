"""Resumable partial results of a knockout job: one atomically written file per block of cells.

The job directory sits beside the output (`.<name>.knockout-job`). It records the job's identity
(model, input, plan, genes, semantics, grouping); a re-run with the same identity skips the blocks
already committed, a different one is refused unless `overwrite`. A block's file is written under a
temporary name and renamed into place, so it either exists complete or not at all (kill -9 safe).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from sctranslator.engine.sink import block_ranges
from sctranslator.errors import StoreError

JOB_FILE = "job.json"


def job_dir_for(out: Path) -> Path:
    return out.parent / f".{out.name}.knockout-job"


@dataclass
class KnockoutStore:
    path: Path
    n_obs: int
    block_rows: int

    @classmethod
    def open(cls, out: Path, *, identity: dict[str, Any], n_obs: int, block_rows: int,
             overwrite: bool) -> KnockoutStore:
        """Create the job directory, or reopen it for resume when it belongs to the same job."""
        path = job_dir_for(out)
        recorded = cls._read(path)
        if recorded is not None and recorded["identity"] == identity and not overwrite:
            return cls(path, n_obs, int(recorded["block_rows"]))
        if not overwrite and (recorded is not None or out.exists()):
            what = "was written by a different model, input or settings" if recorded is not None else "exists"
            raise StoreError(f"{out} {what}; refusing to mix results. Choose another --out, or pass --overwrite.")
        if path.exists():
            shutil.rmtree(path)
        (path / "blocks").mkdir(parents=True)
        record = {"identity": identity, "block_rows": block_rows, "n_obs": n_obs}
        _atomic_write(path / JOB_FILE, lambda f: f.write(json.dumps(record, indent=2, default=str).encode()))
        return cls(path, n_obs, block_rows)

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        try:
            return json.loads((path / JOB_FILE).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def blocks(self) -> list[tuple[int, int]]:
        return block_ranges(self.n_obs, self.block_rows)

    def _block_file(self, index: int) -> Path:
        return self.path / "blocks" / f"{index:09d}.npz"

    def pending(self) -> list[int]:
        return [i for i in range(len(self.blocks())) if not self._block_file(i).exists()]

    def commit(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        _atomic_write(self._block_file(index), lambda f: np.savez(f, **arrays))

    def load(self, index: int) -> dict[str, np.ndarray]:
        with np.load(self._block_file(index)) as data:
            return {key: data[key] for key in data.files}


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through a temporary file in the same directory, then rename: readers see all or nothing."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:  # a handle, so numpy adds no ".npz" to the name
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
