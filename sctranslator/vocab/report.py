"""What happened when identifiers were mapped onto model tokens, as data and as readable text."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from sctranslator.vocab.tokens import token_symbols


@dataclass
class MappingReport:
    """Outcome of one `map_genes` / `map_proteins` call.

    Nothing is dropped here; the caller decides what to do with duplicates, copies and controls.

    Parameters
    ----------
    kind : {'genes', 'proteins'}
        What was mapped.
    id_type : str
        The identifier type used.
    n_inputs : int
        Number of identifiers given.
    n_mapped : int
        Number that got a token.
    unmapped : list of str
        The identifiers that got none.
    unmapped_reasons : dict
        Identifier -> why it is unmapped, where a reason is known.
    ambiguous : dict
        Identifier -> the chosen gene, the alternatives and a note.
    duplicates : dict
        Token id -> every input that landed on it (aliases of one gene, the same identifier twice,
        isoform antibodies).
    copies : dict
        Unmapped make_unique copy (``X-1``) -> the input it copies (``X``).
    controls : list of str
        Isotype controls, blanks and hashtags (proteins only).
    sources : dict
        Lookup table -> number of inputs it mapped.
    genes : dict
        Proteins only: panel name -> the symbol of its encoding gene.
    not_merged : dict
        Extended gene mapping: input -> why it was not added into the gene another input names.
    notes : list of str
        Free-text remarks for the report.
    """

    kind: str  # "genes" or "proteins"
    id_type: str
    n_inputs: int
    n_mapped: int
    unmapped: list[str] = field(default_factory=list)
    unmapped_reasons: dict[str, str] = field(default_factory=dict)
    ambiguous: dict[str, dict[str, Any]] = field(default_factory=dict)  # input -> chosen, alternatives, note
    duplicates: dict[int, list[str]] = field(default_factory=dict)  # token -> inputs that share it
    copies: dict[str, str] = field(default_factory=dict)  # unmapped make_unique copy "X-1" -> "X"
    controls: list[str] = field(default_factory=list)
    sources: dict[str, int] = field(default_factory=dict)  # mapped inputs per lookup source
    genes: dict[str, str] = field(default_factory=dict)  # proteins only: panel name -> encoding gene
    # extended gene mapping: input -> why it was not added into the gene another input names
    not_merged: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def n_unmapped(self) -> int:
        """Number of inputs that got no token."""
        return len(self.unmapped)

    @property
    def n_controls(self) -> int:
        """Number of inputs recognised as isotype controls, blanks or hashtags."""
        return len(self.controls)

    @property
    def coverage(self) -> float:
        """Fraction of all inputs that got a token."""
        return self.n_mapped / self.n_inputs if self.n_inputs else 0.0

    @property
    def coverage_excluding_controls(self) -> float:
        """Fraction of the inputs that are proteins (controls aside) that got a token."""
        real = self.n_inputs - self.n_controls
        return self.n_mapped / real if real else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary (duplicates keyed by token id as a string).

        Returns
        -------
        dict
            Counts, coverage, unmapped and duplicate examples, ready for `json.dumps`.
        """
        tokens = np.array(sorted(self.duplicates), dtype=np.int64)
        labels = dict(zip(tokens.tolist(), token_symbols(tokens).tolist(), strict=True))
        return {
            "kind": self.kind,
            "id_type": self.id_type,
            "n_inputs": self.n_inputs,
            "n_mapped": self.n_mapped,
            "n_unmapped": self.n_unmapped,
            "n_controls": self.n_controls,
            "coverage": self.coverage,
            "coverage_excluding_controls": self.coverage_excluding_controls,
            "unmapped": list(self.unmapped),
            "unmapped_reasons": dict(self.unmapped_reasons),
            "ambiguous": {name: dict(info) for name, info in self.ambiguous.items()},
            "duplicates": {str(token): {"symbol": labels[token], "inputs": list(self.duplicates[token])}
                           for token in labels},
            "copies": dict(self.copies),
            "controls": list(self.controls),
            "sources": dict(self.sources),
            "genes": dict(self.genes),
            "not_merged": {name: dict(info) for name, info in self.not_merged.items()},
            "notes": list(self.notes),
        }

    def to_text(self, max_items: int = 15) -> str:
        """A readable summary table, with up to `max_items` examples of each problem.

        Parameters
        ----------
        max_items : int
            Examples listed per problem (unmapped, duplicates, ...).

        Returns
        -------
        str
            The report, several lines.
        """
        title = "Gene" if self.kind == "genes" else "Protein"
        lines = [f"{title} mapping ({self.kind}, identifier type: {self.id_type})"]
        rows = [("inputs", f"{self.n_inputs:,}", ""),
                ("mapped", f"{self.n_mapped:,}", _percent(self.n_mapped, self.n_inputs))]
        if self.kind == "proteins":
            rows.append(("controls", f"{self.n_controls:,}", "not proteins: isotypes, blanks, hashtags"))
            rows.append(("mapped, controls aside", f"{self.n_mapped:,} / {self.n_inputs - self.n_controls:,}",
                         f"{100 * self.coverage_excluding_controls:.1f}%"))
        rows += [("unmapped", f"{self.n_unmapped:,}", _percent(self.n_unmapped, self.n_inputs)),
                 ("ambiguous", f"{len(self.ambiguous):,}", "mapped to a chosen gene; see below"),
                 ("shared tokens", f"{len(self.duplicates):,}",
                  f"{sum(map(len, self.duplicates.values())):,} inputs land on a token with another")]
        if self.kind == "genes":
            rows.append(("make_unique copies", f"{len(self.copies):,}", "'X-1' beside 'X' (see the notes for what "
                         "translate does with them)"))
        width = max(len(name) for name, _, _ in rows)
        lines += [f"  {name:<{width}}  {value:>15}  {comment}".rstrip() for name, value, comment in rows]
        if self.sources:
            lines.append("  by source: " + ", ".join(f"{name} {count:,}" for name, count in self.sources.items()))
        lines += [f"  note: {note}" for note in self.notes]
        if self.not_merged:
            lines.append(f"Not merged ({_shown(len(self.not_merged), max_items)}): an old symbol or alias that does "
                         "not surely name the gene it shares with another input; left unmapped, not added up")
            for name, info in list(self.not_merged.items())[:max_items]:
                lines.append(f"  {name} (not into {info['token_symbol']} with "
                             f"{', '.join(info['shares_token_with'])}): {info['why']}")
        if self.genes:
            lines.append(f"Mapped ({len(self.genes)}): name -> gene")
            lines += _wrapped([f"{name} -> {gene}" for name, gene in self.genes.items()])
        if self.unmapped:
            reasons = pd.Series(self.unmapped_reasons).reindex(self.unmapped).fillna("unknown identifier")
            lines.append(f"Unmapped ({_shown(len(self.unmapped), max_items)}):")
            for reason, names in reasons.groupby(reasons, sort=False):
                lines.append(f"  {reason} ({len(names):,}): {_clip(list(names.index), max_items)}")
        if self.controls:
            lines.append(f"Controls ({len(self.controls)}): {_clip(self.controls, max_items)}")
        if self.ambiguous:
            lines.append(f"Ambiguous ({_shown(len(self.ambiguous), max_items)}): input -> chosen gene [alternatives]")
            for name, info in list(self.ambiguous.items())[:max_items]:
                others = ", ".join(info.get("alternatives", [])) or "-"
                note = f"  ({info['note']})" if info.get("note") else ""
                lines.append(f"  {name} -> {info['chosen']} [{others}]{note}")
        if self.duplicates:
            tokens = np.array(list(self.duplicates)[:max_items], dtype=np.int64)
            lines.append(f"Shared tokens ({_shown(len(self.duplicates), max_items)}): token symbol <- inputs")
            for token, symbol in zip(tokens.tolist(), token_symbols(tokens).tolist(), strict=True):
                lines.append(f"  {token} {symbol} <- {_clip(self.duplicates[token], max_items)}")
        if self.copies:
            copies = [f"{copy} (of {base})" for copy, base in self.copies.items()]
            lines.append(f"make_unique copies ({_shown(len(copies), max_items)}): {_clip(copies, max_items)}")
        return "\n".join(lines)


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else ""


def _shown(total: int, limit: int) -> str:
    return f"{total:,}" if total <= limit else f"first {limit} of {total:,}"


def _clip(items: list[str], limit: int) -> str:
    shown = ", ".join(map(str, items[:limit]))
    return shown + (f", ... (+{len(items) - limit:,})" if len(items) > limit else "")


def _wrapped(items: list[str], width: int = 100) -> list[str]:
    """Items joined with ' | ' into indented lines of at most about `width` characters."""
    lines, current = [], ""
    for item in items:
        if current and len(current) + len(item) + 3 > width:
            lines.append(f"  {current}")
            current = item
        else:
            current = f"{current} | {item}" if current else item
    return [*lines, f"  {current}"] if current else lines
