"""Real cells as Triton perf_analyzer `--input-data` JSON, for the models an export serves.

perf_analyzer's random inputs do not work for sctranslator models: the protein axis is
variable-length (k x P) and random token ids fall outside the vocabulary. This module prepares
real cells exactly as `translate` does (the plan's gene layout, normalisation and scaling, protein
windows) and writes them in perf_analyzer's JSON format, one entry per cell (the models batch
cells, so perf_analyzer's `-b N` sends N cells per request and the JSON gives one):

- the prepared-input (client-facing) model `<name>`: `values`, `gene_ids`, `gene_mask` (L,) and
  `protein_ids`, `protein_mask` (k x P,);
- the names-in model `<name>_counts`, when the repository has one: `counts` (the raw counts of
  the cell's genes), `gene_names` and `protein_names` (BYTES), shaped as its config declares.

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
    """Real cells prepared for a model, and the raw counts and names they came from."""

    batch: Batch  # values (B, L); gene_ids, gene_mask (L,); protein windows (W, P)
    counts: np.ndarray  # float32 (B, G): the raw counts as read
    gene_names: list[str]  # (G,) the input's gene identifiers
    protein_names: list[str]  # the proteins asked, in output order

    @property
    def cells(self) -> int:
        return int(self.batch.values.shape[0])

    def client_inputs(self) -> dict[str, np.ndarray]:
        """The client-facing model's five inputs for every cell: (B, L) genes, (B, W * P) proteins."""
        return self.batch.all_windows()


def prepare_cells(data: str | Path, model: TranslatorModel, cells: int,
                  proteins: Sequence[str] | None = None) -> PreparedCells:
    """The first `cells` cells of the AnnData at `data`, prepared for `model` as `translate` prepares them
    (its gene mapping, normalisation, scaling and protein windows; cells without counts in the model's
    genes are kept)."""
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
    """perf_analyzer JSON for the client-facing model: one entry per cell (the model batches cells)."""
    inputs = prepared.client_inputs()
    return {"data": [{name: _entry(array[cell]) for name, array in inputs.items()} for cell in range(prepared.cells)]}


def counts_input_data(prepared: PreparedCells, config: dict[str, Any]) -> dict[str, Any]:
    """perf_analyzer JSON for the names-in model `<name>_counts` from its configuration (Triton's JSON
    form of config.pbtxt): with max_batch_size > 0 one entry per cell, else one entry of all cells."""
    batched = int(config.get("max_batch_size") or 0) > 0
    arrays = {"counts": prepared.counts, "gene_names": np.array(prepared.gene_names, dtype=object),
              "protein_names": np.array(prepared.protein_names, dtype=object)}
    declared = {tensor["name"]: [int(d) for d in tensor.get("dims", [])] for tensor in config.get("input") or []}
    unknown = sorted(set(declared) - set(arrays))
    if unknown:
        raise ValueError(f"the names-in model takes inputs {unknown} this benchmark does not know how to fill")

    def shaped(name: str, array: np.ndarray, cell: int | None) -> dict[str, Any]:
        per_cell = array.ndim == 2
        if cell is not None and per_cell:
            array = array[cell]
        elif cell is not None:  # a per-request input repeated for each batch element
            array = array.reshape([1] * (len(declared[name]) - 1) + [-1]) if len(declared[name]) > 1 else array
        return _entry(array) if array.dtype != object else {"content": array.reshape(-1).tolist(),
                                                           "shape": list(array.shape)}

    if batched:
        return {"data": [{name: shaped(name, arrays[name], cell) for name in declared}
                         for cell in range(prepared.cells)]}
    return {"data": [{name: shaped(name, arrays[name], None) for name in declared}]}


def write_input_data(path: str | Path, data: dict[str, Any]) -> Path:
    """Write perf_analyzer JSON to `path` (float32 values rounded to what float32 holds)."""
    path = Path(path)
    path.write_text(json.dumps(data))
    return path
