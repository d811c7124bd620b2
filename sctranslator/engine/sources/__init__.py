"""Input sources: cells x genes matrices streamed in row blocks, never loaded whole.

`open_source(data)` accepts an .h5ad file, an .h5mu file (its `rna` or RNA-like modality), an AnnData or MuData
zarr store (format 2 or 3) or an in-memory AnnData/MuData, and returns a picklable `Source`.
"""

from __future__ import annotations

from sctranslator.engine.sources.base import Source
from sctranslator.engine.sources.hdf5 import H5Source
from sctranslator.engine.sources.memory import AnnDataSource
from sctranslator.engine.sources.modality import pick_modality
from sctranslator.engine.sources.open import SUPPORTED, open_source
from sctranslator.engine.sources.zarr_store import MISSING_CHUNK_POLICIES, ZarrSource

__all__ = ["MISSING_CHUNK_POLICIES", "SUPPORTED", "AnnDataSource", "H5Source", "Source", "ZarrSource", "open_source",
           "pick_modality"]
