"""A per-thread off switch: a context manager that turns a fast path off in the calling thread only.

Backends run several model calls side by side in threads; turning a path off for one call (to compare
against it, or where it does not apply) must not turn it off for the others.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class ThreadSwitch:
    """On by default in every thread; `off()` turns it off inside a ``with`` block of one thread."""

    def __init__(self) -> None:
        self._state = threading.local()

    @property
    def is_off(self) -> bool:
        """Whether the calling thread is inside `off()`."""
        return getattr(self._state, "off", False)

    @contextlib.contextmanager
    def off(self) -> Iterator[None]:
        """Turn the switch off in this thread until the block ends (nested blocks restore the outer state).

        Yields
        ------
        None
            Inside the block.
        """
        previous = self.is_off
        self._state.off = True
        try:
            yield
        finally:
            self._state.off = previous
