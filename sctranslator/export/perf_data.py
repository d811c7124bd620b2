"""Real cells as Triton perf_analyzer `--input-data` JSON, for the models an export serves.

perf_analyzer's random inputs do not work for sctranslator models: the protein axis is
variable-length (k x P) and random token ids fall outside the vocabulary. This module prepares
real cells exactly as `translate` does (the plan's gene layout, normalisation and scaling, protein
windows) and writes them in perf_analyzer's JSON format:

- the prepared-input (client-facing) model `<name>`, one entry per cell (its batch axis is cells,
  so perf_analyzer's `-b N` sends N cells per request): `values`, `gene_ids`, `gene_mask` (L,) and
  `protein_ids`, `protein_mask` (k x P,);
- the names-in model `<name>_counts`, when the repository has one: one entry per request of N
  cells, `counts` [N, genes] (raw counts), `gene_names` [genes] and `protein_names` [proteins]
  (BYTES); a request is one item of its batch axis, so perf_analyzer sends it with `-b 1`.

Used by benchmarks/perf_analyzer.py (and its smoke test).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sctranslator.engine.backends.base import Batch
from sctranslator.model import TranslatorModel


@dataclass(frozen=True)
class PreparedCells:
    """Real cells prepared for a model, and the raw counts and names they came from.

    Parameters
    ----------
    batch : Batch
        The model inputs.
    counts : numpy.ndarray
        float32 raw counts, ``(n_cells, n_genes)``.
    gene_names : list of str
        The counts' genes.
    protein_names : list of str
        The requested proteins.
    """

    batch: Batch  # values (B, L); gene_ids, gene_mask (L,); protein windows (W, P)
    counts: np.ndarray  # float32 (B, G): the raw counts as read
    gene_names: list[str]  # (G,) the input's gene identifiers
    protein_names: list[str]  # the proteins asked, in output order

    @property
    def cells(self) -> int:
        """Number of cells."""
        return int(self.batch.values.shape[0])

    def client_inputs(self) -> dict[str, np.ndarray]:
        """The client-facing model's five inputs for every cell.

        Returns
        -------
        dict of str to numpy.ndarray
            ``(B, L)`` gene inputs, ``(B, W * P)`` protein inputs.
        """
        return self.batch.all_windows()


def prepare_cells(data: str | Path, model: TranslatorModel, cells: int,
                  proteins: Sequence[str] | None = None) -> PreparedCells:
    """The first `cells` cells of an AnnData, prepared for `model` as `translate` prepares them.

    Its gene mapping, normalisation, scaling and protein windows; cells without counts in the
    model's genes are kept.

    Parameters
    ----------
    data : str or pathlib.Path
        An .h5ad file.
    model : TranslatorModel
        The model.
    cells : int
        How many cells.
    proteins : sequence of str or None
        Proteins to predict; None: the model's panel.

    Returns
    -------
    PreparedCells
        The prepared cells.

    Raises
    ------
    SctranslatorError
        As `translate`'s planning (coverage, unknown proteins, unreadable input).
    """
    from sctranslator.engine.block_runner import BlockRunner
    from sctranslator.engine.sources import open_source
    from sctranslator.plan import build_plan

    source = open_source(str(data))
    cells = min(cells, int(source.n_obs))
    plan = build_plan(source.var, model, proteins, allow_low_coverage=True)
    runner = BlockRunner(source, plan, allow_empty_cells=True)
    block, values = runner.read_prepared(0, cells)
    counts = block.data
    counts = counts.toarray() if hasattr(counts, "toarray") else np.asarray(counts)
    batch = Batch(values, plan.gene_ids, plan.position_real, plan.protein_windows, plan.protein_window_mask)
    return PreparedCells(batch=batch, counts=np.asarray(counts, dtype=np.float32),
                         gene_names=[str(name) for name in source.var.index],
                         protein_names=[str(name) for name in plan.proteins["name"]])


def _entry(array: np.ndarray) -> dict[str, Any]:
    array = np.asarray(array)
    content = array.reshape(-1).tolist()
    return {"content": content, "shape": list(array.shape)}


def client_input_data(prepared: PreparedCells) -> dict[str, Any]:
    """perf_analyzer JSON for the client-facing model: one entry per cell (the model batches cells).

    Parameters
    ----------
    prepared : PreparedCells
        The cells.

    Returns
    -------
    dict
        perf_analyzer's ``--input-data`` JSON.
    """
    inputs = prepared.client_inputs()
    return {"data": [{name: _entry(array[cell]) for name, array in inputs.items()} for cell in range(prepared.cells)]}


def counts_input_data(prepared: PreparedCells, config: dict[str, Any], cells_per_request: int = 1) -> dict[str, Any]:
    """perf_analyzer JSON for the names-in model ``<name>_counts``: one entry per request.

    Each entry has explicit shapes: counts ``[cells_per_request, genes]``, gene_names ``[genes]``,
    protein_names ``[proteins]``. Each request is one item of the model's batch axis, so perf_analyzer
    runs it with ``-b 1``. For a model declared without a batch axis (max_batch_size 0) each shape gets
    its leading 1.

    Parameters
    ----------
    prepared : PreparedCells
        The cells.
    config : dict
        Triton's JSON form of the model's config.pbtxt.
    cells_per_request : int
        Cells per request.

    Returns
    -------
    dict
        perf_analyzer's ``--input-data`` JSON.
    """
    if cells_per_request < 1:
        raise ValueError(f"cells_per_request must be >= 1, got {cells_per_request}")
    unbatched = int(config.get("max_batch_size") or 0) == 0
    declared = {tensor["name"]: len(tensor.get("dims", [])) for tensor in config.get("input") or []}
    fill = {"counts", "gene_names", "protein_names"}
    unknown = sorted(set(declared) - fill)
    if unknown:
        raise ValueError(f"the names-in model takes inputs {unknown} this benchmark does not know how to fill")
    lead = [1] if unbatched else []
    names = {"gene_names": list(prepared.gene_names), "protein_names": list(prepared.protein_names)}
    data = []
    for lo in range(0, prepared.cells - cells_per_request + 1, cells_per_request) or [0]:
        counts = prepared.counts[lo:lo + cells_per_request]
        entry = {"counts": {"content": counts.reshape(-1).tolist(), "shape": [*lead, *counts.shape]}}
        entry.update({name: {"content": items, "shape": [*lead, len(items)]} for name, items in names.items()})
        data.append({name: entry[name] for name in declared})
    return {"data": data}


def write_input_data(path: str | Path, data: dict[str, Any]) -> Path:
    """Write perf_analyzer JSON to `path` (float32 values rounded to what float32 holds).

    Parameters
    ----------
    path : str or pathlib.Path
        The file.
    data : dict
        The JSON.

    Returns
    -------
    pathlib.Path
        `path`.
    """
    path = Path(path)
    path.write_text(json.dumps(data))
    return path
