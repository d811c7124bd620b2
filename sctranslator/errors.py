"""The named errors a user can cause.

This module is a leaf: it imports nothing of ours, so every layer (vocab and kernels included)
may raise these without breaking the downward-only dependency rule.
Every message says what was wrong, where, and what to do about it.
"""

from __future__ import annotations


class SctranslatorError(Exception):
    """Base of every error that sctranslator raises on purpose."""


class CheckpointError(SctranslatorError):
    """A model file or bundle is missing, malformed, or does not describe a scTranslator model."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint's pickle names a global outside the allow-list; it was not executed."""


class VocabularyError(SctranslatorError):
    """Identifiers could not be mapped onto model tokens as asked."""


class UnknownProteinError(VocabularyError):
    """A requested protein name maps to no gene, or is outside a model's protein panel."""


class InputDataError(SctranslatorError):
    """The input matrix is unusable as given (NaN/Inf/negative values, empty cells, duplicates...)."""


class BadCellsError(InputDataError):
    """Cells hold NaN/Inf/negative values, or no counts in any gene the model uses (empty cells).

    Parameters
    ----------
    message : str
        What was wrong and what to do.
    first_row : int
        The input row of the first bad cell named in the message, so that a job whose blocks run
        concurrently can report the lowest one whichever block failed first.
    """

    def __init__(self, message: str, first_row: int):
        super().__init__(message, first_row)
        self.message = message
        self.first_row = int(first_row)

    def __str__(self) -> str:
        return self.message


class OptionError(InputDataError):
    """An option was given a value outside its choices (the message lists them)."""


class CoverageError(InputDataError):
    """Too few of the dataset's genes map onto the model's vocabulary or panel."""


class StoreError(SctranslatorError):
    """An input or output store is missing, truncated, corrupted, or belongs to another job."""


class OutputConflictError(StoreError):
    """An output path is an input, lies in or around one, or holds something sctranslator did not write.

    Something that is not an sctranslator output of the same kind is never replaced; nothing was
    written or deleted.
    """


class OutputLockedError(StoreError):
    """Another live sctranslator job is writing the same output.

    The message names its host, PID and start time; wait for it with ``--wait`` / ``wait=True``, or
    choose another output path.
    """


class OutputWriteError(StoreError):
    """The operating system refused a write (full disk or quota, read-only file system, no permission).

    The message names the path and, for a full disk, about how much more space is needed. Temporary
    files were removed and nothing incomplete was committed: re-run once the cause is fixed.
    """


class DiskFullError(OutputWriteError):
    """No space left on the device, or the disk quota is exhausted (ENOSPC, EDQUOT)."""


class UnsupportedStorageError(StoreError):
    """A location names a URL scheme that sctranslator cannot read or write, refused before any work.

    Also a read-only scheme, such as http(s)://, given as an output; the message lists the
    supported ones.
    """


class BackendError(SctranslatorError):
    """An inference backend could not be created or failed while serving a batch."""


class BackendOptionError(OptionError, BackendError):
    """An option was given that the chosen backend does not use (e.g. --url without --backend triton)."""


class ServerError(BackendError):
    """A remote inference server is unreachable, not ready, or serves a different model."""


class PortInUseError(ServerError):
    """A port `serve` was asked to listen on is held by another process (the message names it)."""


class ExportError(SctranslatorError):
    """A model could not be exported to another format (ONNX) as asked."""


class ExportValidationError(ExportError):
    """An exported model's predictions differ from PyTorch's by more than the stated tolerance."""


class MissingExtraError(SctranslatorError, ImportError):
    """An optional dependency (a pip extra such as `triton` or `distributed`) is not installed."""


class KeyConflictError(SctranslatorError):
    """A write-back would replace an entry the data already holds (an obsm key, a uns entry, a modality).

    Refused unless that key is named explicitly together with the replace flag (``--key KEY
    --replace-key``, ``key=..., replace_key=True``).
    """


class ClusterError(SctranslatorError):
    """A dask.distributed cluster could not run the job.

    Its scheduler is unreachable or was lost, it has no workers, or workers died running the same
    block; committed blocks are kept and the same command resumes.
    """


class CollectionMismatchError(StoreError):
    """A collection's output directory holds the collection of another input list, model or settings.

    Nothing was written: re-run the command that made it, choose another ``--out``, or pass
    ``--overwrite``.
    """


class CollectionError(SctranslatorError):
    """Some inputs of a collection failed; the others are complete.

    Each failed input's named error is recorded in DIR/collection.json.

    Parameters
    ----------
    message : str
        Which inputs failed and why.
    entries : list or None
        Every input's record (input, store, cells, status, error), kept as ``error.entries``.
    record : object
        The path of collection.json, kept as ``error.record``.
    """

    def __init__(self, message: str, entries: list | None = None, record: object = None):
        super().__init__(message)
        self.entries = list(entries or [])
        self.record = record
