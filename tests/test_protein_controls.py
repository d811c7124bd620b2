"""A real HGNC symbol is never taken for a control unless the name also carries a control word."""

from __future__ import annotations

import pytest

from sctranslator.vocab.proteins import resolve_protein_name


@pytest.mark.parametrize(("name", "gene"), [
    ("LMO4", "LMO4"),  # LIM-domain transcription factor, shaped like a MULTI-seq "LMO" hashtag
    ("LMO2", "LMO2"),
    ("LMO4_TotalSeqB", "LMO4"),
    ("CTRL", "CTRL"),  # chymotrypsin-like elastase
    ("MIGA1", "MIGA1"),  # shaped like "mouse IgA1"
    ("CD4", "CD4"),
])
def test_gene_symbols_are_proteins(name, gene) -> None:
    match = resolve_protein_name(name)
    assert match.status in ("mapped", "ambiguous") and match.gene == gene


@pytest.mark.parametrize("name", [
    "Mouse IgG1", "Rat IgG2b", "IgG2a", "Ms IgM", "Mouse IgG1 isotype Ctrl", "CTRL isotype",
    "Blank-2", "HTO1", "HTO_4", "Hashtag_3", "CMO301",
])
def test_controls_stay_controls(name) -> None:
    assert resolve_protein_name(name).status == "control"
