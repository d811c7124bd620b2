"""A block's batches as single-thread streams on CPU: one call per core, side by side, results in order.

One full-size forward split over every core by PyTorch's intra-op threads synchronises those threads
at the end of every operator (a few thousand per cell in the chunked encoder), and on a machine whose
cores are shared with other processes a thread that waits for a descheduled sibling spins: on 2 busy
cores two threads per call ran several times slower than one. Independent single-thread calls never
wait for each other, so a block of several batches runs them `streams` at a time, each on its own
pool thread with one intra-op thread, and yields the results in the batches' order. The arithmetic
of each call is the same as with more threads (PyTorch's CPU kernels do not change their sums with
the thread count), so the predictions are unchanged. A block of one batch has nothing to run beside
it: that call gets all the block's threads.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from sctranslator.engine.backends.base import Batch
from sctranslator.engine.backends.cuda_staging import Results

# run(batch, embeddings, threads) -> (predictions, embeddings or None) as numpy arrays
Call = Callable[[Batch, bool, int], Results]


class StreamPool:
    """Pool threads (started on first use) that run one batch each with one intra-op thread.

    Parameters
    ----------
    streams : int
        Threads in the pool (at least 1).
    """

    def __init__(self, streams: int):
        self.streams = max(1, int(streams))
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.streams, thread_name_prefix="sctranslator-stream")
            return self._pool

    def run(self, call: Call, batches: Iterable[Batch], embeddings: bool) -> Iterator[Results]:
        """Run each batch, in order, at most `streams` computing at once.

        Parameters
        ----------
        call : callable
            ``call(batch, embeddings, threads)`` runs one batch on `threads` intra-op threads.
        batches : iterable of Batch
            The block's batches (read lazily: a batch is taken when a stream is free for it).
        embeddings : bool
            Whether each call also returns cell embeddings.

        Yields
        ------
        tuple of (numpy.ndarray, numpy.ndarray or None)
            Predictions ``(B, outputs)`` and embeddings ``(B, dim)`` or None, in the batches' order.
        """
        source = iter(batches)
        first = list(itertools.islice(source, 2))
        if len(first) < 2 or self.streams == 1:
            # One batch: nothing runs beside it, it gets every thread of the block.
            for batch in itertools.chain(first, source):
                yield call(batch, embeddings, self.streams)
            return
        pool = self._executor()
        pending: deque[Future[Results]] = deque()
        try:
            for batch in itertools.chain(first, source):
                while len(pending) >= self.streams:
                    yield pending.popleft().result()
                pending.append(pool.submit(call, batch, embeddings, 1))
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:  # the consumer stopped early (an error downstream): drop the queued calls
                future.cancel()

    def close(self) -> None:
        """Stop the pool threads (after the calls already running)."""
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None
