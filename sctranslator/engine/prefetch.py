"""Read ahead: the next block is read (and checked) while the current blocks compute.

Local runs give each concurrent block its own thread, but a block's read and its compute are
sequential within that thread, so with as many blocks as compute slots the CPUs idle while a block
waits on storage (an object store answers in milliseconds per request, not microseconds). A
`Prefetcher` reads, in one background thread, the next block no task has started yet, and holds
at most `ahead` such blocks: memory stays bounded by (workers + ahead) blocks.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class Prefetcher:
    """Reads row ranges one step ahead, in the order tasks will ask for them.

    Parameters
    ----------
    read : callable
        ``read(start, stop)`` reads rows ``[start, stop)``.
    ranges : sequence of tuple of int
        The ranges, in the order they will be taken.
    ahead : int
        Reads in flight ahead of the consumer.
    """

    def __init__(self, read: Any, ranges: Sequence[tuple[int, int]], ahead: int = 1) -> None:
        self._read = read
        self._ranges = [(int(a), int(b)) for a, b in ranges]
        self._ahead = max(1, int(ahead))
        self._taken: set[tuple[int, int]] = set()
        self._futures: dict[tuple[int, int], Future] = {}
        self._cursor = 0
        self._guard = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sctranslator-prefetch")

    def take(self, start: int, stop: int) -> Any:
        """Rows ``[start, stop)`` as `read` gives them: the prefetched result, or read now; the next is queued.

        Parameters
        ----------
        start : int
            First row.
        stop : int
            Row after the last.

        Returns
        -------
        object
            What `read` returns.
        """
        key = (int(start), int(stop))
        with self._guard:
            self._taken.add(key)
            future = self._futures.pop(key, None)
            self._queue()
        return future.result() if future is not None else self._read(*key)

    def _queue(self) -> None:
        while self._cursor < len(self._ranges) and len(self._futures) < self._ahead:
            key = self._ranges[self._cursor]
            self._cursor += 1
            if key not in self._taken and key not in self._futures:
                self._futures[key] = self._pool.submit(self._read, *key)

    def close(self) -> None:
        """Drop what was read ahead and never asked for (after a failure), and stop the thread."""
        with self._guard:
            for future in self._futures.values():
                future.cancel()
            self._futures.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def prefetching(runner: Any, ranges: Sequence[tuple[int, int]], ahead: int = 1) -> Iterator[None]:
    """Let a block runner serve whole-block reads of `ranges` through a `Prefetcher` in this scope.

    Parameters
    ----------
    runner : BlockRunner
        The runner whose reads are prefetched.
    ranges : sequence of tuple of int
        The blocks' row ranges, in the order they will run.
    ahead : int
        Reads in flight ahead.

    Yields
    ------
    None
        Inside the scope.
    """
    prefetcher = Prefetcher(runner.read_unprefetched, ranges, ahead)
    runner.prefetcher = prefetcher
    try:
        yield
    finally:
        runner.prefetcher = None
        prefetcher.close()
