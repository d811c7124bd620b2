"""The plan: computed once per (dataset, model), read by everything downstream.

It says which input column feeds which model position, which token sits at each position,
how the requested proteins are grouped into windows of P, and how well the data covers the
model's vocabulary or gene panel.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from sctranslator import options
from sctranslator.errors import CoverageError, InputDataError, UnknownProteinError
from sctranslator.model import TranslatorModel
from sctranslator.vocab import map_genes, map_proteins, token_symbols

log = logging.getLogger(__name__)

UNMAPPED_SLOT = -1  # column ignored
TRUNCATED_SLOT = -2  # mapped gene beyond L: enters the per-cell min/max only
DEFAULT_MIN_COVERAGE = options.DEFAULT_MIN_COVERAGE


@dataclass
class Plan:
    mode: str  # "reference" (published checkpoint) or "panel" (bundle with a fixed gene panel)
    column_slot: np.ndarray  # int64 (n_vars,)
    position_real: np.ndarray  # bool (L,)
    gene_ids: np.ndarray  # int64 (L,)
    protein_windows: np.ndarray  # int64 (W, P)
    protein_window_mask: np.ndarray  # bool (W, P)
    output_index: np.ndarray  # int64 (n_out,): flat index into the (W * P) window predictions
    proteins: pd.DataFrame  # one row per output protein: name, gene, token_id, window, position
    normalize: str = "none"
    target_sum: float = 1e4
    coverage: dict[str, Any] = field(default_factory=dict)

    @property
    def max_genes(self) -> int:
        return int(self.position_real.shape[0])

    @property
    def n_windows(self) -> int:
        return int(self.protein_windows.shape[0])

    def fingerprint(self) -> str:
        """Identity of everything that decides the numbers written (not how fast they are made)."""
        digest = hashlib.sha256()
        for array in (self.column_slot, self.position_real, self.gene_ids, self.protein_windows,
                      self.protein_window_mask, self.output_index):
            digest.update(np.ascontiguousarray(array).tobytes())
            digest.update(str(array.shape).encode())
        digest.update(json.dumps([self.mode, self.normalize, float(self.target_sum),
                                  list(self.proteins["name"])]).encode())
        return digest.hexdigest()

    def summary(self) -> dict[str, Any]:
        """JSON-able record for the output's provenance."""
        return {
            "mode": self.mode,
            "normalize": self.normalize,
            "target_sum": float(self.target_sum),
            "max_genes": self.max_genes,
            "n_positions_used": int(self.position_real.sum()),
            "n_windows": self.n_windows,
            "window_size": int(self.protein_windows.shape[1]),
            "protein_windows": self.protein_windows.tolist(),
            "coverage": self.coverage,
            "fingerprint": self.fingerprint(),
        }


def gene_identifiers(var: pd.DataFrame, column: str | None) -> pd.Index:
    if column is None:
        return pd.Index(var.index.astype(str))
    if column not in var.columns:
        raise InputDataError(f"var has no column {column!r}; available: {list(var.columns)}")
    return pd.Index(var[column].astype(str))


def _check_unique(identifiers: pd.Index) -> None:
    duplicated = identifiers[identifiers.duplicated()].unique()
    if len(duplicated):
        raise InputDataError(
            f"{len(duplicated)} gene identifiers occur more than once in var (e.g. {list(duplicated[:5])}); "
            "the model cannot tell them apart. Make them unique (adata.var_names_make_unique()) "
            "or choose another var column with --gene-column."
        )


def _coverage_table(coverage: dict[str, Any]) -> str:
    return "\n".join(f"  {key:28s} {value}" for key, value in coverage.items())


def _enforce_coverage(coverage: dict[str, Any], min_coverage: float, allow_low: bool) -> None:
    fraction = coverage["fraction"]
    if fraction < min_coverage and not allow_low:
        what = ("of the model's gene panel is present in the data" if coverage["basis"] == "the model's gene panel"
                else "of the dataset's genes map onto the model's vocabulary")
        raise CoverageError(
            f"only {fraction:.1%} {what} (minimum {min_coverage:.0%}):\n"
            f"{_coverage_table(coverage)}\n"
            "Check the identifier type (--id-type / --gene-column), or pass --allow-low-coverage to go on."
        )
    if fraction < min_coverage:
        log.warning("low gene coverage (%.1f%%), continuing as asked", 100 * fraction)


def reference_alignment(tokens: np.ndarray, max_genes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Published checkpoints: mapped genes in the dataset's order, unmapped dropped, first L kept."""
    mapped_columns = np.flatnonzero(tokens > 0)
    kept = mapped_columns[:max_genes]
    column_slot = np.full(tokens.shape[0], UNMAPPED_SLOT, dtype=np.int64)
    column_slot[mapped_columns[max_genes:]] = TRUNCATED_SLOT
    column_slot[kept] = np.arange(kept.shape[0])
    gene_ids = np.zeros(max_genes, dtype=np.int64)
    gene_ids[: kept.shape[0]] = tokens[kept]
    position_real = np.zeros(max_genes, dtype=bool)
    position_real[: kept.shape[0]] = True
    return column_slot, position_real, gene_ids


def panel_alignment(tokens: np.ndarray, panel_tokens: np.ndarray,
                     max_genes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed-panel bundles: each input column goes to its gene's panel position (first occurrence)."""
    lookup = pd.Series(np.arange(panel_tokens.shape[0]), index=panel_tokens)
    lookup = lookup[~lookup.index.duplicated()]
    column_slot = lookup.reindex(tokens).fillna(UNMAPPED_SLOT).to_numpy(dtype=np.int64)
    column_slot[tokens == 0] = UNMAPPED_SLOT
    # Two input columns on one panel gene: the first one feeds the position, the rest are ignored.
    repeated = pd.Series(column_slot).duplicated().to_numpy() & (column_slot >= 0)
    column_slot[repeated] = UNMAPPED_SLOT
    gene_ids = np.zeros(max_genes, dtype=np.int64)
    gene_ids[: panel_tokens.shape[0]] = panel_tokens
    position_real = np.zeros(max_genes, dtype=bool)
    position_real[: panel_tokens.shape[0]] = True
    return column_slot, position_real, gene_ids


def _protein_request(proteins: Sequence[str]) -> tuple[list[str], np.ndarray, list[str | None]]:
    names = [str(p) for p in proteins]
    if not names:
        raise UnknownProteinError("no proteins requested: pass antibody or gene names (--proteins CD3,CD19 or @file)")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise UnknownProteinError(f"proteins requested more than once: {duplicated}")
    mapping = map_proteins(names)
    problems = [(n, s) for n, s in zip(names, mapping.status, strict=True) if s in ("control", "unmapped")]
    if problems:
        details = ", ".join(f"{n!r} ({'an isotype control / blank, not a protein' if s == 'control' else 'no gene'})"
                            for n, s in problems)
        raise UnknownProteinError(
            f"{len(problems)} requested protein(s) cannot be predicted: {details}. Remove them, or name the gene "
            "that encodes the protein (e.g. PTPRC for CD45)."
        )
    return names, np.asarray(mapping.token_ids, dtype=np.int64), list(mapping.genes)


def _windows(tokens: np.ndarray, window_size: int) -> tuple[np.ndarray, np.ndarray]:
    n_windows = max(1, -(-tokens.shape[0] // window_size))
    windows = np.zeros(n_windows * window_size, dtype=np.int64)
    windows[: tokens.shape[0]] = tokens
    mask = np.zeros(n_windows * window_size, dtype=bool)
    mask[: tokens.shape[0]] = True
    return windows.reshape(n_windows, window_size), mask.reshape(n_windows, window_size)


def _reference_proteins(proteins: Sequence[str] | None, window_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                                  pd.DataFrame]:
    if proteins is None:
        raise UnknownProteinError("this model has no protein panel: name the proteins to predict (--proteins)")
    names, tokens, genes = _protein_request(proteins)
    windows, mask = _windows(tokens, window_size)
    order = np.arange(len(names))
    table = pd.DataFrame({"name": names, "gene": [g or "" for g in genes], "token_id": tokens,
                          "window": order // window_size, "position": order % window_size})
    return windows, mask, order.astype(np.int64), table


def _panel_proteins(proteins: Sequence[str] | None, panel: dict[str, Any],
                    window_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.DataFrame]:
    """Models trained on a protein panel always run the whole panel in trained order; requests select."""
    panel_names = [str(n) for n in panel["names"]]
    panel_tokens = np.asarray(panel["token_ids"], dtype=np.int64)
    panel_genes = list(panel.get("genes") or token_symbols(panel_tokens))
    if len(panel_names) > window_size:
        raise UnknownProteinError(f"the model's protein panel has {len(panel_names)} proteins but P={window_size}")
    windows, mask = _windows(panel_tokens, window_size)
    if proteins is None:
        selected = list(range(len(panel_names)))
    else:
        by_name = {n: i for i, n in enumerate(panel_names)}
        by_token = {int(t): i for i, t in reversed(list(enumerate(panel_tokens)))}
        requested = [str(p) for p in proteins]
        mapped = map_proteins(requested)
        selected, missing = [], []
        for name, token in zip(requested, mapped.token_ids, strict=True):
            index = by_name.get(name, by_token.get(int(token)) if token else None)
            (selected if index is not None else missing).append(index if index is not None else name)
        if missing:
            raise UnknownProteinError(
                f"{missing} are not in this model's protein panel; it predicts only: {panel_names}"
            )
    chosen = np.asarray(selected, dtype=np.int64)
    table = pd.DataFrame({
        "name": [panel_names[i] for i in chosen], "gene": [panel_genes[i] or "" for i in chosen],
        "token_id": panel_tokens[chosen], "window": np.zeros(len(chosen), dtype=np.int64), "position": chosen,
    })
    return windows, mask, chosen, table


def build_plan(var: pd.DataFrame, model: TranslatorModel, proteins: Sequence[str] | None = None, *,
               gene_column: str | None = None, id_type: str = "auto", normalize: str | None = None,
               target_sum: float | None = None, min_coverage: float = DEFAULT_MIN_COVERAGE,
               allow_low_coverage: bool = False) -> Plan:
    """Align a dataset's genes and a protein request to `model`."""
    config = model.config
    identifiers = gene_identifiers(var, gene_column)
    _check_unique(identifiers)
    genes = map_genes(identifiers, id_type=id_type)
    tokens = np.asarray(genes.token_ids, dtype=np.int64)
    panel = model.panel or {}
    gene_panel = panel.get("genes")
    if gene_panel:
        panel_tokens = np.asarray(gene_panel["token_ids"], dtype=np.int64)
        column_slot, position_real, gene_ids = panel_alignment(tokens, panel_tokens, config.max_genes)
        present = int((column_slot >= 0).sum())
        coverage = {"basis": "the model's gene panel", "panel_genes": int(panel_tokens.shape[0]),
                    "panel_genes_in_data": present, "fraction": present / max(1, panel_tokens.shape[0]),
                    "input_genes": int(tokens.shape[0]), "input_genes_mapped": int((tokens > 0).sum()),
                    "id_type": genes.id_type}
        mode = "panel"
    else:
        column_slot, position_real, gene_ids = reference_alignment(tokens, config.max_genes)
        mapped = int((tokens > 0).sum())
        coverage = {"basis": "the dataset's genes", "input_genes": int(tokens.shape[0]), "mapped": mapped,
                    "fraction": mapped / max(1, tokens.shape[0]), "used_positions": int(position_real.sum()),
                    "truncated": int((column_slot == TRUNCATED_SLOT).sum()), "max_genes": config.max_genes,
                    "id_type": genes.id_type}
        mode = "reference"
    _enforce_coverage(coverage, min_coverage, allow_low_coverage)
    if panel.get("proteins"):
        windows, window_mask, output_index, table = _panel_proteins(proteins, panel["proteins"], config.max_proteins)
    else:
        windows, window_mask, output_index, table = _reference_proteins(proteins, config.max_proteins)
    recorded = getattr(model, "preprocessing", None) or {}
    chosen_normalize = normalize or recorded.get("normalize") or "none"
    if normalize and recorded.get("normalize") and normalize != recorded["normalize"]:
        log.warning("model was trained with normalize=%s but %s was asked", recorded["normalize"], normalize)
    return Plan(mode=mode, column_slot=column_slot, position_real=position_real, gene_ids=gene_ids,
                protein_windows=windows, protein_window_mask=window_mask, output_index=output_index,
                proteins=table, normalize=chosen_normalize,
                target_sum=float(target_sum or recorded.get("target_sum") or 1e4), coverage=coverage)
