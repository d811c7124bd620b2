"""Sizes and parallelism of a local block job that is not translate (knockout, attention).

The same rules translate applies (`engine.translate.default_batch_size`, `default_block_cells` and the
`engine.threads` rule), so a knockout or attention forward runs with the batch size and intra-op threads
a translate forward of the same model gets. `passes` is how many forwards each cell costs (a knockout
of G genes: G + 1): blocks shrink by as much, so a block stays about as long a unit of work (and of
resume) as translate's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sctranslator.engine.backends.base import BackendSpec
from sctranslator.engine.backends.selection import backend_capabilities
from sctranslator.engine.threads import Parallelism, available_cpus, cell_flop, choose_parallelism
from sctranslator.engine.translate import default_batch_size, default_block_cells, encoder_tokens
from sctranslator.model import TranslatorModel
from sctranslator.plan import Plan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalExecution:
    """How a local block job runs: the backend spec (threads set), sizes and the parallelism rule.

    Parameters
    ----------
    spec : BackendSpec
        What each worker builds.
    batch_size : int
        Cells per backend call.
    auto_batch : bool
        The backend sizes its calls from free device memory (torch on CUDA), as translate's.
    block_cells : int
        Cells per block.
    rule : Parallelism
        Blocks in flight and threads.
    flop_per_cell : float
        The arithmetic of one cell's forward.
    """

    spec: BackendSpec
    batch_size: int
    auto_batch: bool  # the backend sizes its calls from free device memory (torch on CUDA), as translate's
    block_cells: int
    rule: Parallelism
    flop_per_cell: float

    def announce(self) -> None:
        """Log the parallelism chosen (at INFO).

        The job calls it once its input and output checks have passed, so that a refusal stays the
        only line it prints.
        """
        log.info("parallelism: %s", self.rule.why)


def local_execution(model: TranslatorModel, plan: Plan, n_obs: int, *, device: str = "cpu",
                    batch_size: int | None = None, block_cells: int | None = None, workers: int | None = None,
                    passes: int = 1) -> LocalExecution:
    """The torch backend spec, sizes and parallelism of a local job over `n_obs` cells.

    Parameters
    ----------
    model
        The model (an in-memory TranslatorModel: local jobs ship it as an object).
    plan
        The plan of (input, model); its layout sets the encoder tokens and so the work per cell.
    n_obs
        Cells in the job (small jobs get smaller blocks, so every worker has one).
    device
        cpu, cuda or cuda:N.
    batch_size
        Cells per model call (None: translate's default for the model and device; on CUDA the backend
        sizes its calls from free device memory, as translate's).
    block_cells
        Cells per block (None: translate's default divided by `passes`).
    workers
        Concurrent blocks (None: the `engine.threads` rule).
    passes
        Forwards per cell (>= 1).

    Returns
    -------
    LocalExecution
        Not yet announced (see `LocalExecution.announce`).
    """
    spec = BackendSpec(kind="torch", model=model, device=device)
    tokens = encoder_tokens(plan, backend_capabilities("torch"), spec)
    flop = cell_flop(model.config, tokens)
    cpus, cpu_source = available_cpus()
    # Threads follow one call's arithmetic, which is a translate call's: the same rule, the same threads.
    rule = choose_parallelism(device=device, flop_per_cell=flop, cpus=cpus, cpu_source=cpu_source, workers=workers)
    spec.threads = rule.threads
    if block_cells is None:
        block_cells = max(1, default_block_cells(model) // max(1, passes))
        block_cells = min(block_cells, max(4, -(-n_obs // (4 * rule.workers))))
    return LocalExecution(spec=spec, batch_size=batch_size or default_batch_size(model, device),
                          auto_batch=batch_size is None and device.startswith("cuda"), block_cells=block_cells,
                          rule=rule, flop_per_cell=flop)
