"""Work the first block of a run needs, started in the background while the run is still being set up.

A local run builds its backend before it creates the output store. Two things the first block would
otherwise do first are started here, beside the store's creation: the backend's preparation of the
plan's gene layout (for the torch backend the padding collapse, about 0.4 s for the full-size model),
and loading the machine code of the Numba kernels that check and prepare this input's rows (about
0.4 s), by reading, checking and preparing its first row. The results are caches (the backend's,
Numba's), so nothing computed differs; a warm-up that fails is dropped, and the first block does the
work (and reports any error) itself.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from sctranslator.engine.block_runner import BlockRunner
from sctranslator.engine.sources import Source
from sctranslator.plan import Plan


def warm_up_in_background(backend: Any, plan: Plan) -> threading.Thread | None:
    """Start the backend's preparation of the plan's gene layout in a daemon thread.

    Parameters
    ----------
    backend : object
        A built backend; one without ``prepare_layout`` needs no warm-up.
    plan : Plan
        The job's plan: every batch of the run has its gene layout (``gene_ids``, ``position_real``).

    Returns
    -------
    threading.Thread or None
        The started thread, or None when there is nothing to prepare.
    """
    prepare = getattr(backend, "prepare_layout", None)
    if prepare is None:
        return None

    def run() -> None:
        with contextlib.suppress(Exception):  # the first batch builds it again and raises there
            prepare(plan.gene_ids, plan.position_real)

    thread = threading.Thread(target=run, name="sctranslator-warm-up", daemon=True)
    thread.start()
    return thread


def warm_kernels_in_background(source: Source, plan: Plan) -> threading.Thread | None:
    """Read, check and prepare the input's first row in a daemon thread, so the kernels are loaded early.

    Parameters
    ----------
    source : Source
        The opened input (its reads are thread-safe).
    plan : Plan
        The job's plan.

    Returns
    -------
    threading.Thread or None
        The started thread, or None for an input without cells.
    """
    if not source.n_obs:
        return None
    runner = BlockRunner(source, plan, allow_empty_cells=True)  # an empty first row still loads prepare's code

    def run() -> None:
        with contextlib.suppress(Exception):  # the first block reads the row again and raises there
            runner.read_prepared(0, 1)

    thread = threading.Thread(target=run, name="sctranslator-kernels", daemon=True)
    thread.start()
    return thread
