"""map_genes remembers its last few mappings: the same identifiers map as before, anything else afresh."""

from __future__ import annotations

import numpy as np
import pytest

from sctranslator.vocab import genes as genes_module
from sctranslator.vocab import map_genes

NAMES = ["CD4", "CD8A", "MS4A1", "CD4-1", "not-a-gene", "IL7R", "CD14"]


def fresh(names: list[str], **kwargs: str) -> genes_module.GeneMapping:
    """The mapping computed without the cache."""
    return genes_module._map_genes(genes_module.as_identifier_strings(names), kwargs.get("id_type", "auto"),
                                   kwargs.get("mapping", "extended"))


def same(left: genes_module.GeneMapping, right: genes_module.GeneMapping) -> None:
    assert np.array_equal(left.identifiers, right.identifiers)
    assert np.array_equal(left.token_ids, right.token_ids)
    assert left.id_type == right.id_type and left.mapping == right.mapping
    assert left.report == right.report
    assert (left.copy_of is None and right.copy_of is None) or np.array_equal(left.copy_of, right.copy_of)


@pytest.mark.parametrize("mapping", ["original", "extended"])
def test_repeated_identifiers_map_as_the_first_time(mapping: str) -> None:
    first = map_genes(NAMES, mapping=mapping)
    first.token_ids[:] = -1  # what a caller does to its copy does not reach the next one
    first.report.notes.append("changed by a caller")
    again = map_genes(list(NAMES), mapping=mapping)
    same(again, fresh(NAMES, mapping=mapping))


def test_other_identifiers_order_or_options_are_mapped_afresh() -> None:
    map_genes(NAMES)
    swapped = [NAMES[1], NAMES[0], *NAMES[2:]]
    same(map_genes(swapped), fresh(swapped))
    joined = ["CD4CD8A", "", *NAMES[2:]]  # the same text split differently
    same(map_genes(joined), fresh(joined))
    same(map_genes(NAMES, id_type="symbol", mapping="original"), fresh(NAMES, id_type="symbol", mapping="original"))
    assert map_genes(swapped).token_ids[0] == fresh(["CD8A"]).token_ids[0]
