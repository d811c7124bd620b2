"""Resumable partial results of an analysis job (knockout, attention): one atomically written file per block.

The job directory sits beside the output (`.<name>.<kind>-job`) and is a block ledger
(`engine.ledger`): it records the job's identity (model, input, plan and the job's settings);
a re-run with the same identity skips the blocks already committed, a different one is refused
unless `overwrite`. Each block's results (statistics, sums) are its ledger file (.npz), written
under a temporary name and renamed into place, so it exists complete or not at all (kill -9 safe).
The job's result is assembled from every block's file once all are committed.
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


def job_dir_for(out: Path, kind: str = "knockout") -> Path:
    """The job directory of the output `out` of a `kind` job: ``.<name>.<kind>-job`` beside it.

    Parameters
    ----------
    out : pathlib.Path
        The job's output.
    kind : str
        The job's kind.

    Returns
    -------
    pathlib.Path
        The directory.
    """
    return out.parent / f".{out.name}.{kind}-job"


@dataclass
class BlockResults:
    """The block ledger of an analysis job whose blocks store arrays (a `engine.pipeline.BlockSink`).

    Parameters
    ----------
    ledger : Ledger
        The job's ledger (blocks stored as .npz).
    """

    ledger: Ledger

    @property
    def path(self) -> Path:
        """The job directory."""
        return self.ledger.path

    @property
    def n_obs(self) -> int:
        """Cells of the job."""
        return self.ledger.n_obs

    @classmethod
    def open(cls, out: Path, *, identity: dict[str, Any], n_obs: int, block_rows: int,
             overwrite: bool, kind: str = "knockout", job_dir: Path | None = None) -> BlockResults:
        """Create the job directory, or reopen it for resume when it belongs to the same job.

        Parameters
        ----------
        out
            The job's output; the caller has claimed it (see `sctranslator.outputs`): an existing
            `out` is an output of ours of this kind.
        identity
            What the blocks' results depend on (model, input, plan, settings).
        n_obs, block_rows
            Cells of the job and per block (a resumed job keeps its recorded block size).
        overwrite
            Replace a job of another identity instead of refusing.
        kind
            The job kind, in the directory's name and the messages.
        job_dir
            Where the ledger lives (default: `job_dir_for(out, kind)`).

        Returns
        -------
        BlockResults

        Raises
        ------
        OutputConflictError
            The job directory exists but holds no job record.
        StoreError
            `out` or the job directory belong to a job with other settings (without `overwrite`).
        """
        path = job_dir if job_dir is not None else job_dir_for(out, kind)
        recorded = read_record(path)
        if recorded is None and (path.exists() or path.is_symlink()):
            raise foreign_output_error(path, f"exists but holds no {kind} job record")
        if not overwrite and (recorded is not None or out.exists()) and (
                recorded is None or recorded.get("identity") != identity):
            what = "was written by a different model, input or settings" if recorded is not None else "exists"
            raise StoreError(f"{out} {what}; refusing to mix results. Choose another --out, or pass --overwrite.")
        ledger, _ = Ledger.open(path, identity=identity, n_obs=n_obs, block_rows=block_rows, suffix=BLOCK_SUFFIX,
                                replace=overwrite)
        return cls(ledger)

    def blocks(self) -> list[tuple[int, int]]:
        """Row range of each block.

        Returns
        -------
        list of tuple of int
            ``[start, stop)`` per block.
        """
        return self.ledger.blocks()

    def pending(self) -> list[int]:
        """The blocks still to compute, in order.

        Returns
        -------
        list of int
            Block indices.
        """
        return self.ledger.pending()

    def block_done(self, index: int) -> bool:
        """Whether block `index` is committed (a task run again skips it).

        Parameters
        ----------
        index : int
            The block.

        Returns
        -------
        bool
            True when committed.
        """
        return self.ledger.block_file(index).exists()

    def commit(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        """Store a block's statistics atomically: the file exists complete or not at all.

        Parameters
        ----------
        index : int
            The block.
        arrays : dict of str to numpy.ndarray
            Its statistics.
        """
        self.ledger.commit(index, lambda handle: np.savez(handle, **arrays))

    def load(self, index: int) -> dict[str, np.ndarray]:
        """The statistics committed for a block.

        Parameters
        ----------
        index : int
            The block.

        Returns
        -------
        dict of str to numpy.ndarray
            Its statistics.
        """
        with np.load(self.ledger.block_file(index)) as data:
            return {key: data[key] for key in data.files}
