"""Work the first block of a run needs, started in the background while the run is still being set up.

A local run builds its backend before it creates the output store; what the backend would otherwise
do inside the first batch (for the torch backend: the padding collapse of the plan's gene layout,
about 0.4 s for the full-size model) is started here, beside the store's creation. The results are
the backend's own caches, so nothing computed differs; a warm-up that fails is dropped and the first
batch does the work (and reports any error) itself.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

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
