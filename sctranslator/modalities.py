"""Which MuData modality holds measured proteins: one rule for evaluate, finetune and protein lists."""

from __future__ import annotations

from typing import Any

from sctranslator.errors import InputDataError

# Compared with the modality name stripped and lower-cased: 'ADT', 'Prot', 10x's 'Antibody Capture'.
PROTEIN_MODALITIES = ("prot", "protein", "proteins", "adt", "cite", "antibody", "antibodies", "antibody capture",
                      "antibody_capture")


def is_protein_modality(name: Any) -> bool:
    """Whether a modality is named like measured proteins (case-insensitive).

    Parameters
    ----------
    name : object
        A modality name.

    Returns
    -------
    bool
        True for prot, protein, adt, cite, antibody, Antibody Capture, ...
    """
    return str(name).strip().lower() in PROTEIN_MODALITIES


def pick_protein_modality(names: Any, requested: str | None, what: str,
                          option: str = "--truth-modality (truth_modality=)") -> str:
    """The MuData modality holding measured proteins.

    Parameters
    ----------
    names : iterable of str
        The MuData's modalities.
    requested : str or None
        The modality asked for; None: the one named like proteins (prot, protein, adt, cite,
        antibody, Antibody Capture, ..., any case).
    what : str
        Names the data in messages.
    option : str
        The option that chooses it, for messages.

    Returns
    -------
    str
        The modality.

    Raises
    ------
    InputDataError
        `requested` is absent, or no single modality is named like proteins (the message lists them).
    """
    names = [str(name) for name in names]
    if requested is not None:
        if requested not in names:
            raise InputDataError(f"{what} has no modality {requested!r}; its modalities are {names}")
        return requested
    candidates = [name for name in names if is_protein_modality(name)]
    if len(candidates) != 1:
        raise InputDataError(f"{what} is a MuData with modalities {names}; say which one holds the proteins with "
                             f"{option}")
    return candidates[0]
