"""Pair the cells and proteins of a prediction with those of a measured panel.

Cells are paired by obs_names. Proteins are paired in three passes, each only among the names
still unpaired, so an exact name always wins over a looser rule:

1. the same name;
2. the same spelling-insensitive key ("PD-1" = "PD1" = "pd 1");
3. the same encoding gene (`map_proteins`: truth "CD8a" and prediction "CD8" are both CD8A), but
   only where the gene is unique among the remaining names on both sides. Several antibodies for
   one gene (CD45RA / CD45RO / CD45 are all PTPRC; ECCITE has two anti-PD-1 clones) are not
   guessed between: they are reported as ambiguous and left out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from sctranslator.errors import InputDataError
from sctranslator.vocab import map_proteins
from sctranslator.vocab.names import name_key


@dataclass(frozen=True)
class CellMatch:
    """Positions of the shared cells in each table, in the prediction's order.

    Parameters
    ----------
    pred : numpy.ndarray
        int64 rows of the shared cells in the predictions.
    truth : numpy.ndarray
        int64 rows of the same cells in the measured table.
    n_pred : int
        Cells in the predictions.
    n_truth : int
        Cells in the measured table.
    """

    pred: np.ndarray
    truth: np.ndarray
    n_pred: int
    n_truth: int

    @property
    def n_matched(self) -> int:
        """Number of shared cells."""
        return int(self.pred.size)


@dataclass(frozen=True)
class ProteinPair:
    """One predicted protein paired with one measured protein.

    Parameters
    ----------
    pred : str
        The predicted protein's name.
    truth : str
        The measured protein's name.
    pred_index : int
        Its column in the predictions.
    truth_index : int
        Its column in the measured table.
    gene : str or None
        The encoding gene both map to.
    by : {'name', 'key', 'gene'}
        What paired them: the same name, the same spelling key, or the one encoding gene.
    """
    pred: str
    truth: str
    pred_index: int
    truth_index: int
    gene: str | None
    by: str  # "name" | "key" | "gene"


@dataclass(frozen=True)
class ProteinMatch:
    """How the predicted and measured proteins were paired.

    Parameters
    ----------
    pairs : list of ProteinPair
        The pairs.
    unmatched_pred : list of str
        Predicted proteins without a partner.
    unmatched_truth : list of str
        Measured proteins without a partner.
    ambiguous : list of dict
        Proteins left unpaired because several partners fit.
    """
    pairs: list[ProteinPair]
    unmatched_pred: list[str]
    unmatched_truth: list[str]
    ambiguous: list[dict[str, object]] = field(default_factory=list)

    def report(self) -> dict[str, object]:
        """JSON-able description of how every protein was (or was not) paired.

        Returns
        -------
        dict
            Pairs, unmatched and ambiguous proteins.
        """
        return {
            "matched": [{"pred": p.pred, "truth": p.truth, "gene": p.gene, "by": p.by} for p in self.pairs],
            "unmatched_pred": self.unmatched_pred,
            "unmatched_truth": self.unmatched_truth,
            "ambiguous": self.ambiguous,
        }


def _unique_names(names: pd.Index, what: str, fix: str = "make them unique") -> None:
    if not names.is_unique:
        repeated = names[names.duplicated()].unique()
        raise InputDataError(f"{what} repeat {len(repeated)} name(s) (e.g. {repeated[:5].tolist()}), so those entries "
                             f"cannot be paired by name; {fix}")


# Renaming one side on its own (obs_names_make_unique) would pair different cells, so the fix names both.
_CELL_FIX = ("give every cell a unique name the same way in both files, e.g. prefix each sample's barcodes with "
             "its sample (obs_names = sample + '_' + barcode), then translate again")


def match_cells(pred_names: Sequence[str], truth_names: Sequence[str]) -> CellMatch:
    """The cells present on both sides, by name.

    Parameters
    ----------
    pred_names : sequence of str
        The predictions' cell names.
    truth_names : sequence of str
        The measured table's cell names.

    Returns
    -------
    CellMatch
        Positions of the shared cells.

    Raises
    ------
    InputDataError
        No shared cell, or repeated names.
    """
    pred_index, truth_index = pd.Index(pred_names).astype(str), pd.Index(truth_names).astype(str)
    _unique_names(pred_index, "the prediction's obs_names", _CELL_FIX)
    _unique_names(truth_index, "the truth's obs_names", _CELL_FIX)
    where = truth_index.get_indexer(pred_index)
    shared = np.flatnonzero(where >= 0)
    if shared.size == 0:
        raise InputDataError(
            f"no cell names are shared between the predictions ({len(pred_index)} cells, e.g. "
            f"{pred_index[:3].tolist()}) and the truth ({len(truth_index)} cells, e.g. {truth_index[:3].tolist()}); "
            "the obs_names must identify the same cells")
    return CellMatch(pred=shared, truth=where[shared], n_pred=len(pred_index), n_truth=len(truth_index))


def _pair_unique(left: dict[int, str], right: dict[int, str], key_of: dict[str, str | None]
                 ) -> tuple[list[tuple[int, int, str]], list[dict[str, object]]]:
    """Pair left/right positions whose key is equal and unique on both sides; report the others."""
    by_key_left: dict[str, list[int]] = defaultdict(list)
    by_key_right: dict[str, list[int]] = defaultdict(list)
    for i, name in left.items():
        if key_of[name]:
            by_key_left[key_of[name]].append(i)
    for j, name in right.items():
        if key_of[name]:
            by_key_right[key_of[name]].append(j)
    pairs, ambiguous = [], []
    for key, lefts in by_key_left.items():
        rights = by_key_right.get(key, [])
        if len(lefts) == 1 and len(rights) == 1:
            pairs.append((lefts[0], rights[0], key))
        elif rights:
            ambiguous.append({"key": key, "pred": [left[i] for i in lefts], "truth": [right[j] for j in rights]})
    return pairs, ambiguous


def match_proteins(pred_names: Sequence[str], truth_names: Sequence[str]) -> ProteinMatch:
    """Pair prediction and truth proteins by name, then spelling key, then unique encoding gene.

    Parameters
    ----------
    pred_names : sequence of str
        The predictions' protein names.
    truth_names : sequence of str
        The measured table's protein names.

    Returns
    -------
    ProteinMatch
        The pairs and the proteins left over.
    """
    pred_names, truth_names = [str(n) for n in pred_names], [str(n) for n in truth_names]
    _unique_names(pd.Index(pred_names), "the prediction's protein names", "rename or drop the repeated columns")
    _unique_names(pd.Index(truth_names), "the truth's protein names", "rename or drop the repeated columns")
    genes = dict(zip(pred_names + truth_names, map_proteins(pred_names + truth_names).genes, strict=True))
    left = dict(enumerate(pred_names))
    right = dict(enumerate(truth_names))
    found: list[tuple[int, int, str]] = []
    ambiguous: list[dict[str, object]] = []
    for rule, key_of in (("name", {n: n for n in genes}), ("key", {n: name_key(n) for n in genes}),
                         ("gene", genes)):
        pairs, unsure = _pair_unique(left, right, key_of)
        for i, j, _ in pairs:
            found.append((i, j, rule))
            left.pop(i)
            right.pop(j)
        if rule == "gene":
            ambiguous = [dict(item, gene=item.pop("key")) for item in unsure]
    found.sort()
    pairs = [ProteinPair(pred=pred_names[i], truth=truth_names[j], pred_index=i, truth_index=j,
                         gene=genes[pred_names[i]] or genes[truth_names[j]], by=rule) for i, j, rule in found]
    return ProteinMatch(pairs=pairs, unmatched_pred=list(left.values()), unmatched_truth=list(right.values()),
                        ambiguous=ambiguous)
