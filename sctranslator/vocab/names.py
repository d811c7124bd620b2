"""Spelling-insensitive keys for antibody/marker names, and the rules that recognise controls.

Used both at run time and by `scripts/build_vocab.py`, so a name in a user's panel and a name in the
HGNC tables meet on the same key ("PD-1", "pd1" and "PD 1" all become "PD1").
"""

from __future__ import annotations

import re
import unicodedata

# Greek letters as antibody panels use them (TCR Vδ2, IFN-γ, CD8α, IL-1β) -> the Latin letter the same
# marker is spelled with in ASCII panels and in HGNC ("TCR_Vd2", "IFNg", "CD8a", "IL1b").
_GREEK = {"α": "a", "β": "b", "γ": "g", "δ": "d", "ε": "e", "ζ": "z", "η": "h", "θ": "q", "ι": "i", "κ": "k",
          "λ": "l", "ν": "n", "ξ": "x", "π": "p", "ρ": "r", "σ": "s", "ς": "s", "τ": "t", "φ": "f", "ϕ": "f",
          "χ": "c", "ψ": "y", "ω": "w", "ϵ": "e"}
# μ is written "m" (Igμ = IgM) or "u" (µ-opioid, micro): both are tried, see `ascii_spellings`.
_MU = ("m", "u")
# Dashes, minus signs and hyphens NFKC leaves alone, and other punctuation look-alikes.
_LOOK_ALIKES = {**dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2043\u2212\u2e3a\u2e3b\ufe58\ufe63"
                                "\u02d7\u1680", "-"),
                "\u00ad": "", "\u200b": "", "\u200c": "", "\u200d": "", "\u2060": "", "\ufeff": "",
                "\u2044": "/", "\u2215": "/", "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u2032": "'",
                "\u00b7": ".", "\u2024": ".", "\u2219": "."}


def ascii_spellings(name: str) -> tuple[list[str], str]:
    """ASCII spellings of a name written with Unicode look-alikes, and what could not be spelled.

    NFKC first (fullwidth "ＣＤ４" -> "CD4", the micro sign -> μ, superscripts), then dashes and minus
    signs -> "-", Greek letters -> their Latin letter (either case), accents dropped. An ASCII name
    comes back unchanged.

    Parameters
    ----------
    name : str
        A marker or gene name.

    Returns
    -------
    spellings : list of str
        μ gives two spellings ("m" and "u"); every other name one.
    unspelled : str
        The characters left without an ASCII equivalent ("" when none): such a name must not be
        matched by its ASCII part alone.
    """
    if name.isascii():
        return [name], ""
    text = unicodedata.normalize("NFKC", name)
    text = "".join(_LOOK_ALIKES.get(char, char) for char in text)
    spellings = [""]
    for char in text:
        lower = char.lower()
        if lower == "μ":
            spellings = [spelling + letter for spelling in spellings for letter in _MU]
            continue
        letter = _GREEK.get(lower)
        if letter is not None:
            char = letter.upper() if char != lower else letter
        spellings = [spelling + char for spelling in spellings]
    # Accents and other combining marks: "é" -> "e".
    spellings = ["".join(c for c in unicodedata.normalize("NFKD", spelling) if not unicodedata.combining(c))
                 for spelling in spellings]
    left = "".join(dict.fromkeys(c for c in spellings[0] if not c.isascii()))
    return list(dict.fromkeys(spellings)), left


def ascii_name(name: str) -> str:
    """The first ASCII spelling of `name` (see `ascii_spellings`); characters without one are kept.

    Parameters
    ----------
    name : str
        A marker or gene name.

    Returns
    -------
    str
        The spelling.
    """
    return ascii_spellings(name)[0][0]


_SEPARATORS = r"[\s\-_.,/:;+|'’]+"
_SEPARATOR_RUN = re.compile(_SEPARATORS)


def _separator_to_key(match: re.Match[str]) -> str:
    # Between two digits a separator carries meaning ("CD4-1" is not CD41, "TCRVa7.2" is not Va72),
    # so it survives as one canonical '.'; anywhere else it is just spelling and disappears.
    text = match.string
    start, end = match.start(), match.end()
    between_digits = start > 0 and end < len(text) and text[start - 1].isdigit() and text[end].isdigit()
    return "." if between_digits else ""


def name_key(name: str) -> str:
    """The lookup key of a marker or gene name.

    Unicode look-alikes are spelled in ASCII (see `ascii_spellings`), the name upper-cased and
    separators dropped except between digits.

    Parameters
    ----------
    name : str
        A marker or gene name.

    Returns
    -------
    str
        The key.
    """
    return _SEPARATOR_RUN.sub(_separator_to_key, ascii_name(name).strip().upper())


# Decorations that panels add around the marker name (10x, BioLegend TotalSeq, REAP-seq, ECCITE-seq).
_PREFIXES = re.compile(
    r"^(?:(?:adt|ab|prot|protein|cite|antibody)[\s_\-.:]+|anti[\s\-_]+(?:human[\s\-_]+)?"
    r"|(?:hu|hums|humsrt|hurt|ms|mshu|rt)\.)",
    re.IGNORECASE,
)
_SUFFIXES = re.compile(
    r"(?:[\s_\-.]*totalseq[\s_\-]?[a-d]?"  # CD3_TotalSeqB, CD4-TotalSeqC
    r"|[\s_\-.]+(?:adt|cite|prot|protein|antibody)"  # CD19_ADT
    r"|[\s_\-.]+[ACGTN]{8,}"  # REAP-seq barcodes: CD11c_AAGTCTAGCCTTCGAA
    r"|[\s_\-.]+[abcd]\d{4})$",  # TotalSeq catalogue numbers: CD3_A0034
    re.IGNORECASE,
)


def strip_decorations(name: str) -> str:
    """Remove assay prefixes and suffixes (ADT_, _TotalSeqB, barcodes) until none is left.

    Parameters
    ----------
    name : str
        A panel name.

    Returns
    -------
    str
        The bare name.
    """
    previous = None
    text = name.strip()
    while text != previous:
        previous = text
        stripped = _SUFFIXES.sub("", _PREFIXES.sub("", text)).strip()
        # Never strip a name down to nothing: "ADT" alone stays as it is.
        text = stripped or text
    return text


_SPECIES = r"(?:MOUSE|MS|M|RAT|RT|R|HAMSTER|ARMENIANHAMSTER|AHAMSTER|SYRIANHAMSTER|RABBIT|RB|GOAT|HUMAN|HU|H)"
_LIGHT_CHAIN = r"(?:K|KAPPA|L|LAMBDA)?"
_CONTROL_WORDS = r"(?:ISOTYPE|ISO|CTRL|CONTROL|ISOTYPECTRL|ISOTYPECONTROL|ISOCTRL)?"
_CONTROL_KEY = re.compile(
    # An IgG of any subclass is an isotype control; an Ig of another class only with a species prefix
    # ("Mouse IgM") because bare IgM / IgD / IgA are real B-cell surface proteins.
    rf"^(?:{_SPECIES}?IGG(?:\d[ABC]?)?{_LIGHT_CHAIN}{_CONTROL_WORDS}\d*"
    rf"|{_SPECIES}IG[MAE]\d?{_LIGHT_CHAIN}{_CONTROL_WORDS}\d*"
    r"|.*(?:ISOTYPE|ISOCTRL).*|(?:NEG|NEGATIVE|POS|POSITIVE)?(?:CTRL|CONTROL)\d*"
    r"|BLANK\d*|EMPTY\d*|UNMAPPED\d*|UNASSIGNED\d*|UNKNOWN\d*|NOBARCODE\d*|NONE|NAN|NA"
    r"|(?:HASHTAG|HTO|CMO|LMO)\d*)$"
)


def is_control_key(key: str) -> bool:
    """Whether a key names no protein: isotype controls, blanks, unmapped barcodes and sample hashtags.

    Parameters
    ----------
    key : str
        A lookup key (see `name_key`).

    Returns
    -------
    bool
        True for a control.
    """
    return key == "" or _CONTROL_KEY.match(key) is not None


_PARENTHESISED = re.compile(r"^(?P<outer>[^()]*?)\s*\((?P<inner>[^()]+)\)\s*(?P<rest>.*)$")
_TRAILING_NUMBER = re.compile(r"[\s\-_.]\d{1,2}$")


def candidate_spellings(name: str) -> list[list[str]]:
    """Spellings to try for one panel name, most faithful first.

    Parameters
    ----------
    name : str
        A panel name.

    Returns
    -------
    list of list of str
        Groups of spellings; the spellings of one group are equally faithful (the two halves of
        "B7-H1 (PD-L1)"), and the resolver chooses between them by how trustworthy the match is.
    """
    text = strip_decorations(name)
    groups: list[list[str]] = [[text]]
    parts = _PARENTHESISED.match(text)
    if parts:
        halves = [strip_decorations(parts["inner"]), strip_decorations(parts["outer"] + parts["rest"])]
        groups.append([half for half in halves if half])
    if "_" in text:
        # A clone or vendor tag after the marker: "CD3_UCHT1" -> "CD3".
        groups.append([text.split("_", 1)[0]])
    if _TRAILING_NUMBER.search(text):
        # A replicate/clone number: "CD4-1" -> "CD4" (tried last: "PD-1" and "LOX-1" match before).
        groups.append([_TRAILING_NUMBER.sub("", text)])
    return groups
