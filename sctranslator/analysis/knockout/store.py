"""Resumable partial results of a knockout job: one atomically written file per block of cells.

The job directory sits beside the output (`.<name>.knockout-job`) and is a block ledger
(`engine.ledger`): it records the job's identity (model, input, plan, genes, semantics, grouping);
a re-run with the same identity skips the blocks already committed, a different one is refused
unless `overwrite`. Each block's statistics are its ledger file (.npz), written under a temporary
name and renamed into place, so it exists complete or not at all (kill -9 safe).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sctranslator.engine.ledger import Ledger, read_record
from sctranslator.errors import StoreError
from sctranslator.outputs import foreign_output_error

BLOCK_SUFFIX = ".npz"


def job_dir_for(out: Path) -> Path:
    return out.parent / f".{out.name}.knockout-job"


@dataclass
class KnockoutStore:
    ledger: Ledger

    @property
    def path(self) -> Path:
        return self.ledger.path

    @property
    def n_obs(self) -> int:
        return self.ledger.n_obs

    @classmethod
    def open(cls, out: Path, *, identity: dict[str, Any], n_obs: int, block_rows: int,
             overwrite: bool) -> KnockoutStore:
        """Create the job directory, or reopen it for resume when it belongs to the same job.

        The caller has claimed `out` (see `sctranslator.outputs`): an existing `out` is a
        knockout output of ours.
        """
        path = job_dir_for(out)
        recorded = read_record(path)
        if recorded is None and (path.exists() or path.is_symlink()):
            raise foreign_output_error(path, "exists but holds no knockout job record")
        if not overwrite and (recorded is not None or out.exists()) and (
                recorded is None or recorded.get("identity") != identity):
            what = "was written by a different model, input or settings" if recorded is not None else "exists"
            raise StoreError(f"{out} {what}; refusing to mix results. Choose another --out, or pass --overwrite.")
        ledger, _ = Ledger.open(path, identity=identity, n_obs=n_obs, block_rows=block_rows, suffix=BLOCK_SUFFIX,
                                replace=overwrite)
        return cls(ledger)

    def blocks(self) -> list[tuple[int, int]]:
        return self.ledger.blocks()

    def pending(self) -> list[int]:
        return self.ledger.pending()

    def block_done(self, index: int) -> bool:
        """Whether block `index` is committed (a task run again skips it)."""
        return self.ledger.block_file(index).exists()

    def commit(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        """Store block `index`'s statistics atomically: the file exists complete or not at all."""
        self.ledger.commit(index, lambda handle: np.savez(handle, **arrays))

    def load(self, index: int) -> dict[str, np.ndarray]:
        """The statistics committed for block `index`."""
        with np.load(self.ledger.block_file(index)) as data:
            return {key: data[key] for key in data.files}
