"""The exported encoder and decoder graphs in onnxruntime against the uncollapsed PyTorch model.

Padded, unpadded and padded-looking-but-valued layouts, several protein windows, tiny models of
the reference fixtures and real cells; the encoder graph runs once per batch whatever the windows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pytest
from datafiles import FIXTURES, PBMC, data_file

import sctranslator
from sctranslator.engine.backends import Batch, OnnxRuntimeBackend, TorchBackend
from sctranslator.errors import BackendError
from sctranslator.export import export_onnx
from sctranslator.export.onnx_format import graph_files
from sctranslator.graph.token_layout import TokenLayout
from sctranslator.model import TranslatorModel

PROTEINS = ["CD3", "CD4", "CD8a", "CD14", "CD16", "CD19", "CD45RA", "PD-1", "TIGIT", "CD127", "CD25", "CD56",
            "CD45RO", "CD28", "CD27", "CD11c", "HLA-DR", "CD15", "CD34", "CD86"]  # two windows of P=16


@pytest.fixture(scope="module", params=["a", "b"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[TranslatorModel, Path]:
    model = sctranslator.load_model(data_file(FIXTURES / f"tiny_{request.param}_official.pt"))
    path = tmp_path_factory.mktemp(f"split_{request.param}") / "model.onnx"
    export_onnx(model, path, validation_batch_sizes=(1,))
    return model, path


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual.astype(np.float64) - expected).max() / np.abs(expected).max())


def layout_batch(model: TranslatorModel, kind: str, cells: int = 3, windows: int = 3, seed: int = 0) -> Batch:
    """A batch of `kind`: "padded" (a third of L real, the rest padding), "unpadded", "valued" (padded-
    looking positions, id 0 and mask False, of which one holds a value in one cell), "single pad"."""
    rng = np.random.default_rng(seed)
    L, P = model.config.max_genes, model.config.max_proteins
    real = {"padded": L // 3, "unpadded": L, "valued": L // 3, "single pad": L - 1}[kind]
    gene_ids = np.zeros(L, dtype=np.int64)
    gene_ids[:real] = rng.choice(np.arange(1, 2000), size=real, replace=False)
    values = np.where(gene_ids > 0, rng.uniform(0, 3, (cells, L)), 0).astype(np.float32)
    if kind == "valued":
        values[1, L - 2] = 0.7  # id 0, mask False, but a value: a token of its own, not padding
    protein_ids = rng.integers(1, 2000, (windows, P))
    protein_mask = np.ones((windows, P), dtype=bool)
    protein_mask[-1, P // 2:] = False  # the last window padded, as the engine pads it
    protein_ids[~protein_mask] = 0
    return Batch(values=values, gene_ids=gene_ids, gene_mask=gene_ids > 0, protein_ids=protein_ids,
                 protein_mask=protein_mask)


@pytest.mark.parametrize("kind", ["padded", "unpadded", "valued", "single pad"])
def test_split_graphs_match_the_uncollapsed_model(exported: tuple[TranslatorModel, Path], kind: str) -> None:
    model, path = exported
    backend = OnnxRuntimeBackend(str(path), genes=model.config.max_genes, proteins=model.config.max_proteins)
    batch = layout_batch(model, kind)
    layout = backend.layout_for(batch)
    expected_tokens = {"padded": model.config.max_genes // 3 + 1, "unpadded": model.config.max_genes,
                       "valued": model.config.max_genes // 3 + 2, "single pad": model.config.max_genes}[kind]
    assert layout.tokens == expected_tokens  # the collapse really happened (or rightly did not)
    got = backend.predict(batch)
    want = TorchBackend(model, collapse_padding=False).predict(batch)
    assert got.shape == want.shape == (3, 3 * model.config.max_proteins)
    assert relative_error(got, want) <= 1e-5


class CountingSession:
    """Wraps an onnxruntime session and counts its runs."""

    def __init__(self, session: Any):
        self.session, self.runs = session, 0

    def run(self, *args: Any, **kwargs: Any) -> Any:
        self.runs += 1
        return self.session.run(*args, **kwargs)


@pytest.mark.parametrize("windows", [1, 4])
def test_the_encoder_runs_once_per_batch_whatever_the_windows(exported: tuple[TranslatorModel, Path],
                                                              windows: int) -> None:
    model, path = exported
    backend = OnnxRuntimeBackend(str(path))
    backend.graphs.encoder = encoder = CountingSession(backend.graphs.encoder)
    backend.graphs.decoder = decoder = CountingSession(backend.graphs.decoder)
    for seed in range(2):
        predictions = backend.predict(layout_batch(model, "padded", windows=windows, seed=seed))
        assert predictions.shape == (3, windows * model.config.max_proteins)
    assert (encoder.runs, decoder.runs) == (2, 2 * windows)


def test_real_cells_through_onnxruntime_match_the_uncollapsed_torch_model(exported: tuple[TranslatorModel, Path],
                                                                           tmp_path: Path) -> None:
    model, path = exported
    rna = ad.read_h5ad(data_file(PBMC / "rna.h5ad"))[:120].copy()
    rna_path = tmp_path / "rna.h5ad"
    rna.write_h5ad(rna_path)
    common = {"allow_empty_cells": True, "block_cells": 60, "batch_size": 16}
    reference = sctranslator.translate(rna_path, model, PROTEINS, backend="torch",
                                       backend_options={"collapse_padding": False}, **common)
    served = sctranslator.translate(rna_path, model, PROTEINS, backend="onnxruntime", onnx_path=str(path), **common)
    assert served.shape == reference.shape == (120, len(PROTEINS))
    assert relative_error(np.asarray(served.X), np.asarray(reference.X)) <= 1e-5


def test_layouts_collapse_exactly_the_padding() -> None:
    gene_ids = np.array([5, 0, 7, 0, 0, 9])
    mask = gene_ids > 0
    layout = TokenLayout.for_layout(gene_ids, mask)
    assert layout.positions.tolist() == [0, 2, 5, 1] and layout.counts.tolist() == [1, 1, 1, 3]
    assert layout.represented.tolist() == [1, 3, 4] and layout.collapsed
    values = np.array([[1, 0, 2, 0, 0, 3], [1, 0, 2, 0, 4, 3]], dtype=np.float32)
    assert not layout.fits(values)  # position 4 holds a value in the second cell
    valued = TokenLayout.for_layout(gene_ids, mask, values)
    assert valued.positions.tolist() == [0, 2, 4, 5, 1] and valued.counts.tolist() == [1, 1, 1, 1, 2]
    full = TokenLayout.for_layout(np.arange(1, 5), np.ones(4, dtype=bool))
    assert full.positions.tolist() == [0, 1, 2, 3] and full.counts.tolist() == [1, 1, 1, 1] and not full.collapsed
    per_cell = TokenLayout.for_batch(np.array([[5, 0], [5, 6]]), np.array([[True, False], [True, True]]),
                                     np.ones((2, 2), dtype=np.float32))
    assert per_cell.positions.tolist() == [0, 1] and not per_cell.collapsed
    feed = layout.encoder_inputs(values[:1], gene_ids, mask)
    assert feed["values"].tolist() == [[1, 2, 3, 0]] and feed["gene_ids"].tolist() == [[5, 7, 9, 0]]
    assert feed["gene_mask"].dtype == np.bool_ and feed["token_positions"].dtype == np.int64


def test_a_missing_decoder_and_an_old_single_graph_file_are_named(exported: tuple[TranslatorModel, Path],
                                                                  tmp_path: Path) -> None:
    model, path = exported
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(path.read_bytes())  # the encoder without its decoder beside it
    with pytest.raises(BackendError, match="names its decoder graph model.decoder.onnx, which is not beside it"):
        OnnxRuntimeBackend(str(lonely))
    decoder = graph_files(path)[1]
    with pytest.raises(BackendError, match="is not the encoder graph"):
        OnnxRuntimeBackend(str(decoder))
