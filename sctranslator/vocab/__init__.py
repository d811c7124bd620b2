"""Gene and protein vocabulary of scTranslator: identifiers -> model token ids, with a report.

Tables are package data made by `scripts/build_vocab.py` and loaded lazily on first use.
"""

from __future__ import annotations

from sctranslator.vocab.detect import detect_id_type
from sctranslator.vocab.file_report import mapping_report, mapping_report_for_file
from sctranslator.vocab.genes import GeneMapping, map_genes
from sctranslator.vocab.identifiers import ID_TYPES
from sctranslator.vocab.proteins import ProteinMapping, map_proteins, resolve_protein_name
from sctranslator.vocab.report import MappingReport
from sctranslator.vocab.tokens import token_entrez_ids, token_symbols, vocabulary_size

__all__ = [
    "ID_TYPES",
    "GeneMapping",
    "MappingReport",
    "ProteinMapping",
    "detect_id_type",
    "map_genes",
    "map_proteins",
    "mapping_report",
    "mapping_report_for_file",
    "resolve_protein_name",
    "token_entrez_ids",
    "token_symbols",
    "vocabulary_size",
]
