"""Resumable partial results of an analysis job (knockout, attention): one atomically written file per block.

The job directory sits beside the output (`.<name>.<kind>-job`) and is a block ledger
(`engine.ledger`): it records the job's identity (model, input, plan and the job's settings);
a re-run with the same identity skips the blocks already committed, a different one is refused
unless `overwrite`. Each block's results (statistics, sums) are its ledger file (.npz), written
under a temporary name and renamed into place, so it exists complete or not at all (kill -9 safe).
The job's result is assembled from every block's file once all are committed.

Once the output is written, the ledger is marked finished (`mark_finished`). A finished ledger whose
output is gone (its user deleted it) protects nothing: the next run removes it and starts afresh,
whatever its settings. An unfinished one (an interrupted run: no output yet) is resumed by the same
settings and refused to others, so that its committed blocks are not lost by accident. A ledger
written before ledgers were marked (no kind in its record) counts as finished when every block is
committed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sctranslator.engine.ledger import BLOCKS_DIR, JOB_FILE, Ledger, read_record
from sctranslator.errors import StoreError
from sctranslator.outputs import foreign_output_error
from sctranslator.util.atomic import remove_path
from sctranslator.util.folder_contents import is_temporary

BLOCK_SUFFIX = ".npz"
_BLOCK_NAME = re.compile(r"^\d+" + re.escape(BLOCK_SUFFIX) + "$")


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
            The job directory exists but holds no job record, or it is the stale ledger of a deleted
            output but holds something else too (then it is kept).
        StoreError
            `out` or an unfinished job directory belong to a job with other settings (without
            `overwrite`).
        """
        path = job_dir if job_dir is not None else job_dir_for(out, kind)
        recorded = read_record(path)
        if recorded is None and (path.exists() or path.is_symlink()):
            raise foreign_output_error(path, f"exists but holds no {kind} job record")
        present = out.exists() or out.is_symlink()
        if recorded is not None and not present and _finished(path, recorded):
            _remove_stale(path, kind)  # its output was deleted: nothing left to protect or resume
            recorded = None
        if not overwrite and recorded is not None and recorded.get("identity") != identity:
            if present:
                raise StoreError(f"{out} was written by a different model, input or settings; refusing to mix "
                                 "results. Choose another --out, or pass --overwrite.")
            raise StoreError(f"{path} holds the committed blocks of an unfinished {kind} job with a different "
                             f"model, input or settings (its output {out} was never written). Re-run that job's "
                             "command to finish it, choose another --out, or pass --overwrite to discard those "
                             "blocks and start this job")
        if not overwrite and recorded is None and present:
            raise StoreError(f"{out} exists; refusing to mix results. Choose another --out, or pass --overwrite.")
        if overwrite and recorded is not None and recorded.get("identity") != identity:
            _check_ours(path, kind)  # --overwrite replaces the ledger whole: only when all of it is ours
        ledger, _ = Ledger.open(path, identity=identity, n_obs=n_obs, block_rows=block_rows, suffix=BLOCK_SUFFIX,
                                replace=overwrite, extra={"kind": kind})
        return cls(ledger)

    def mark_finished(self) -> None:
        """Record that the job's output is written: if that output is later deleted, the ledger is stale."""
        self.ledger.update_record({"finished": True})

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


def _finished(path: Path, recorded: dict[str, Any]) -> bool:
    """Whether the ledger's output was written: marked so, or (a ledger from before outputs were marked,
    with no kind in its record) every block committed."""
    if recorded.get("finished"):
        return True
    if "kind" in recorded:
        return False  # this version marks a written output; complete but unmarked: killed while writing it
    try:
        return not Ledger.reopen(path, suffix=BLOCK_SUFFIX).pending()
    except (StoreError, OSError, KeyError, TypeError, ValueError):
        return False


def _check_ours(path: Path, kind: str) -> None:
    """Refuse to delete or replace the ledger at `path` unless it is recognisably ours: a job record of
    `kind` (or of no kind, written before ledgers named theirs) and nothing but block files and
    temporaries."""
    recorded = read_record(path) or {}
    if path.is_symlink() or not path.is_dir() or recorded.get("kind", kind) != kind:
        raise foreign_output_error(path, f"is not the job ledger of a {kind} output")
    for entry in path.iterdir():
        if entry.name not in (JOB_FILE, BLOCKS_DIR) and not is_temporary(entry.name):
            raise foreign_output_error(path, f"is a {kind} job ledger but also holds {entry.name}")
    blocks = path / BLOCKS_DIR
    for entry in blocks.iterdir() if blocks.is_dir() else ():
        if not (entry.is_file() and _BLOCK_NAME.match(entry.name)) and not is_temporary(entry.name):
            raise foreign_output_error(path, f"is a {kind} job ledger but also holds {BLOCKS_DIR}/{entry.name}")


def _remove_stale(path: Path, kind: str) -> None:
    """Delete the finished ledger of a deleted output, once `_check_ours` finds it ours."""
    _check_ours(path, kind)
    remove_path(path)
