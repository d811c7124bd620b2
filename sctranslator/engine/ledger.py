"""The ledger of a resumable block job: which blocks of rows are done, for which job.

A ledger is a directory:

    <job dir>/job.json        the identity record: {"identity": {...}, "block_rows", "n_obs", ...}
    <job dir>/blocks/<index>  one file per committed block, created atomically (a marker, or the
                              block's own results), so it exists complete or not at all

A block is committed only after its results are safely stored (in the output store for the Zarr
sink, in the block file itself for the knockout store); a kill in between means the block is
computed again, never that a half-written block is taken as done. A re-run with the same identity
resumes from the committed blocks; a different identity is refused unless the caller replaces the
job. The ledger directory itself is built under a temporary name and renamed into place, so it
exists with its identity record or not at all. Used by `engine.sink.ZarrSink` and
`engine.block_results.BlockResults` (knockout, attention).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sctranslator.errors import StoreError
from sctranslator.util.atomic import atomic_write, atomic_write_text, install_dir, staging_dir

JOB_FILE = "job.json"
BLOCKS_DIR = "blocks"


def block_ranges(n_obs: int, block_rows: int) -> list[tuple[int, int]]:
    """Row ranges ``[start, stop)`` of `block_rows` rows covering `n_obs` rows (the last may be shorter).

    Parameters
    ----------
    n_obs : int
        Rows.
    block_rows : int
        Rows per block.

    Returns
    -------
    list of tuple of int
        One (start, stop) per block, in order.
    """
    if block_rows < 1:
        raise StoreError(f"block_rows must be >= 1, got {block_rows}")
    return [(start, min(start + block_rows, n_obs)) for start in range(0, n_obs, block_rows)]


def read_record(job_dir: str | Path) -> dict[str, Any] | None:
    """The identity record of the ledger at `job_dir`.

    Parameters
    ----------
    job_dir : str or pathlib.Path
        A job directory.

    Returns
    -------
    dict or None
        The record, or None when there is none (or it is unreadable).
    """
    try:
        record = json.loads((Path(job_dir) / JOB_FILE).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) and "identity" in record else None


def _dump(record: dict[str, Any]) -> str:
    return json.dumps(record, indent=2, default=str)


@dataclass
class Ledger:
    """A job directory's record and committed blocks. Picklable: holds only a path and sizes.

    Parameters
    ----------
    path : pathlib.Path
        The job directory.
    n_obs : int
        Rows of the job.
    block_rows : int
        Rows per block.
    suffix : str
        The block files' suffix ("" for plain markers, ".npz" for stored results).
    """

    path: Path
    n_obs: int
    block_rows: int
    suffix: str = ""

    # -- creation and resume -------------------------------------------------------------------
    @classmethod
    def create(cls, job_dir: str | Path, *, identity: dict[str, Any], n_obs: int, block_rows: int,
               suffix: str = "", extra: dict[str, Any] | None = None) -> Ledger:
        """Write a fresh ledger at `job_dir` (built aside, renamed into place over any old one).

        The caller has checked that `job_dir` may be replaced.

        Parameters
        ----------
        job_dir : str or pathlib.Path
            The job directory.
        identity : dict
            What decides the job's results (model, plan, settings).
        n_obs : int
            Rows of the job.
        block_rows : int
            Rows per block.
        suffix : str
            The block files' suffix.
        extra : dict or None
            More fields for the record.

        Returns
        -------
        Ledger
            The new, empty ledger.
        """
        job_dir = Path(job_dir)
        record = {"identity": identity, "block_rows": int(block_rows), "n_obs": int(n_obs), **(extra or {})}
        with staging_dir(job_dir) as staging:
            (staging / BLOCKS_DIR).mkdir()
            atomic_write_text(staging / JOB_FILE, _dump(record))
            install_dir(staging, job_dir)
        return cls(job_dir, int(n_obs), int(block_rows), suffix)

    @classmethod
    def reopen(cls, job_dir: str | Path, *, suffix: str = "") -> Ledger:
        """The existing ledger at `job_dir`, with the block size it was created with.

        Parameters
        ----------
        job_dir : str or pathlib.Path
            The job directory.
        suffix : str
            The block files' suffix.

        Returns
        -------
        Ledger
            The ledger.

        Raises
        ------
        StoreError
            No readable record at `job_dir`.
        """
        record = read_record(job_dir)
        if record is None:
            raise StoreError(f"{job_dir} has no readable {JOB_FILE}; the job record is missing or damaged")
        return cls(Path(job_dir), int(record["n_obs"]), int(record["block_rows"]), suffix)

    @classmethod
    def open(cls, job_dir: str | Path, *, identity: dict[str, Any], n_obs: int, block_rows: int,
             suffix: str = "", replace: bool = False, extra: dict[str, Any] | None = None) -> tuple[Ledger, bool]:
        """Reopen the ledger at `job_dir` when it records `identity` (and not `replace`), else create one.

        Parameters
        ----------
        job_dir : str or pathlib.Path
            The job directory.
        identity : dict
            What decides the job's results.
        n_obs : int
            Rows of the job.
        block_rows : int
            Rows per block of a new ledger.
        suffix : str
            The block files' suffix.
        replace : bool
            Replace a ledger recorded for another identity.
        extra : dict or None
            More fields for a new record.

        Returns
        -------
        ledger : Ledger
            The ledger.
        resumed : bool
            Whether an earlier ledger of the same job was reopened.

        Raises
        ------
        StoreError
            A ledger recorded for another identity, without `replace` (the caller's message says what
            to do).
        """
        record = read_record(job_dir)
        if record is not None and record.get("identity") == identity and not replace:
            return cls.reopen(job_dir, suffix=suffix), True
        if record is not None and not replace:
            raise StoreError(f"{job_dir} belongs to a job with a different model, input or settings")
        return cls.create(job_dir, identity=identity, n_obs=n_obs, block_rows=block_rows, suffix=suffix,
                          extra=extra), False

    # -- the record ----------------------------------------------------------------------------
    @property
    def record(self) -> dict[str, Any]:
        """The job record (identity, sizes and extra fields).

        Raises
        ------
        StoreError
            The record is missing or damaged.
        """
        record = read_record(self.path)
        if record is None:
            raise StoreError(f"{self.path / JOB_FILE} is missing or damaged; start the job afresh")
        return record

    def matches(self, identity: dict[str, Any]) -> bool:
        """Whether the ledger was created for `identity`.

        Parameters
        ----------
        identity : dict
            A job's identity.

        Returns
        -------
        bool
            True when it is the recorded one.
        """
        return self.record.get("identity") == identity

    def update_record(self, fields: dict[str, Any]) -> None:
        """Add or change fields of the record (atomically; the identity itself cannot change).

        Parameters
        ----------
        fields : dict
            Field -> value.
        """
        if "identity" in fields:
            raise StoreError("a ledger's identity is fixed when the job is created")
        atomic_write_text(self.path / JOB_FILE, _dump({**self.record, **fields}))

    # -- blocks --------------------------------------------------------------------------------
    def blocks(self) -> list[tuple[int, int]]:
        """Row range of each block, by block index.

        Returns
        -------
        list of tuple of int
            ``[start, stop)`` per block.
        """
        return block_ranges(self.n_obs, self.block_rows)

    def block_file(self, index: int) -> Path:
        """The file that marks block `index` committed.

        Parameters
        ----------
        index : int
            The block.

        Returns
        -------
        pathlib.Path
            Its path (it may not exist).
        """
        return self.path / BLOCKS_DIR / f"{index:09d}{self.suffix}"

    def committed(self) -> set[int]:
        """Indices of the committed blocks (temporary files, hidden by a leading dot, are ignored).

        Returns
        -------
        set of int
            Block indices.
        """
        done = set()
        for name in os.listdir(self.path / BLOCKS_DIR):
            stem = name[: len(name) - len(self.suffix)] if self.suffix and name.endswith(self.suffix) else name
            if stem.isdigit():
                done.add(int(stem))
        return done

    def pending(self) -> list[int]:
        """Indices of the blocks still to compute, in order.

        Returns
        -------
        list of int
            Block indices.
        """
        done = self.committed()
        return [i for i in range(len(self.blocks())) if i not in done]

    def commit(self, index: int, write: Callable[[BinaryIO], None] | None = None) -> Path:
        """Mark block `index` done: its file holds ``write(handle)``'s bytes, or a "start stop" marker.

        Parameters
        ----------
        index : int
            The block.
        write : callable or None
            Writes the block's stored result to a binary handle; None writes the marker.

        Returns
        -------
        pathlib.Path
            The block's file.

        Raises
        ------
        OutputWriteError
            The file cannot be written.
        """
        if write is None:
            start, stop = self.blocks()[index]
            text = f"{start} {stop}\n".encode()

            def write(handle: BinaryIO) -> None:
                handle.write(text)

        return atomic_write(self.block_file(index), write)

    def require_complete(self, what: str) -> None:
        """Refuse an unfinished job, naming the first missing blocks.

        Parameters
        ----------
        what : str
            Names the job in the message.

        Raises
        ------
        StoreError
            Some block is not committed.
        """
        missing = self.pending()
        if missing:
            raise StoreError(f"{what}: blocks {missing[:10]} are not committed; re-run the same command")
