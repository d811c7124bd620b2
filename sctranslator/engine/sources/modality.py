"""Which MuData modality holds the RNA: named, else `rna`, else the one RNA-like name."""

from __future__ import annotations

from collections.abc import Iterable

from sctranslator.errors import InputDataError

# Names under which tools store gene expression (mudata/muon use "rna"; 10x calls it "Gene Expression").
RNA_LIKE = frozenset({"rna", "gex", "gene expression", "gene_expression", "geneexpression", "expression"})


def pick_modality(names: Iterable[str], requested: str | None, *, where: str) -> str:
    """The MuData modality to read among `names`.

    Parameters
    ----------
    names : iterable of str
        The modalities.
    requested : str or None
        Used as given; None: "rna" if present, else the unique modality whose name is RNA-like (rna,
        RNA, gex, GEX, 'Gene Expression', ...).
    where : str
        Names the input in messages.

    Returns
    -------
    str
        The modality.

    Raises
    ------
    InputDataError
        `requested` is absent, or no single RNA-like modality (the message lists them and names the
        option).
    """
    names = [str(n) for n in names]
    listed = ", ".join(sorted(names)) or "none"
    if requested is not None:
        if requested not in names:
            raise InputDataError(f"{where} has no modality '{requested}' (it has: {listed})")
        return requested
    if "rna" in names:
        return "rna"
    candidates = [n for n in names if n.strip().lower() in RNA_LIKE]
    if len(candidates) == 1:
        return candidates[0]
    why = "several RNA-like modalities" if candidates else "no RNA-like modality (rna, gex, 'Gene Expression')"
    raise InputDataError(f"{where} has {why} (it has: {listed}); choose one with --modality NAME "
                         "(modality= in Python)")
