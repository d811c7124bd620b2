"""Padding collapse equals the uncollapsed model (float reassociation aside), and only collapses padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sctranslator.model import ModelConfig, TranslatorModel
from sctranslator.model.collapse import PaddingCollapse

L, P = 96, 12


@pytest.fixture(scope="module")
def model() -> TranslatorModel:
    torch.manual_seed(0)
    config = ModelConfig.sized(dim=16, enc_depth=2, enc_heads=2, enc_dim_head=8, dec_depth=1, dec_heads=2,
                               dec_dim_head=8, max_genes=L, max_proteins=P, translator_depth=2, vocab_size=500)
    model = TranslatorModel(config).eval()
    with torch.no_grad():  # trained-looking biases, so the pad token is not trivially zero
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0, 0.5)
    return model


def _layout(n_real: int, rng: np.random.Generator, scattered: bool = False):
    ids = np.zeros(L, dtype=np.int64)
    mask = np.zeros(L, dtype=bool)
    positions = np.sort(rng.choice(L, n_real, replace=False)) if scattered else np.arange(n_real)
    ids[positions] = rng.integers(1, 500, n_real)
    mask[positions] = True
    values = np.zeros((5, L), dtype=np.float32)
    values[:, positions] = rng.random((5, n_real), dtype=np.float32)
    return ids, mask, values


def _full(model, ids, mask, values, proteins):
    with torch.inference_mode():
        v = torch.from_numpy(values)
        g = torch.from_numpy(ids).expand(len(values), -1)
        m = torch.from_numpy(mask).expand(len(values), -1)
        enc = model.encode(v, g, m)
        out = model.decode(model.translate_sequence(enc), proteins, torch.ones_like(proteins, dtype=torch.bool))
        return out, enc


def _collapsed(model, collapse, values, proteins):
    with torch.inference_mode():
        enc = collapse.encode(model, torch.from_numpy(values))
        out = model.decode(collapse.translate(model, enc), proteins, torch.ones_like(proteins, dtype=torch.bool))
        return out, enc


@pytest.mark.parametrize(("n_real", "scattered"), [(10, False), (60, False), (30, True)])
def test_collapse_is_exact(model, n_real, scattered) -> None:
    rng = np.random.default_rng(n_real)
    ids, mask, values = _layout(n_real, rng, scattered)
    proteins = torch.from_numpy(rng.integers(1, 500, (5, P)))
    collapse = PaddingCollapse.for_layout(model, ids, mask, values)
    assert collapse is not None and collapse.pad_count == L - n_real and collapse.tokens == n_real + 1
    want, enc_full = _full(model, ids, mask, values, proteins)
    got, enc_collapsed = _collapsed(model, collapse, values, proteins)
    scale = want.abs().max()
    assert float((got - want).abs().max() / scale) <= 1e-5
    # Real tokens' encodings agree, and the pad token equals every padded position's encoding.
    real = torch.from_numpy(np.flatnonzero(mask))
    torch.testing.assert_close(enc_collapsed[:, :-1], enc_full[:, real], rtol=1e-5, atol=1e-5)
    pads = torch.from_numpy(np.flatnonzero(~mask))
    torch.testing.assert_close(enc_full[:, pads], enc_collapsed[:, -1:].expand(-1, len(pads), -1),
                               rtol=1e-5, atol=1e-5)


def test_the_pad_count_matters(model) -> None:
    # Counting the shared pad token once (a naive "drop the padding") gives another answer.
    rng = np.random.default_rng(3)
    ids, mask, values = _layout(20, rng)
    proteins = torch.from_numpy(rng.integers(1, 500, (5, P)))
    collapse = PaddingCollapse.for_layout(model, ids, mask, values)
    wrong = PaddingCollapse(collapse.real_positions, collapse.gene_ids, collapse.gene_mask, 1, collapse.first_weight,
                            torch.ones_like(collapse.key_counts), collapse.pad_positions)
    want, _ = _full(model, ids, mask, values, proteins)
    got, _ = _collapsed(model, wrong, values, proteins)
    assert float((got - want).abs().max() / want.abs().max()) > 1e-3


def test_what_is_not_padding_is_not_collapsed(model) -> None:
    rng = np.random.default_rng(4)
    ids, mask, values = _layout(20, rng)
    assert PaddingCollapse.for_layout(model, ids, np.ones(L, dtype=bool), values) is None  # panel zeros: real
    nonzero = values.copy()
    nonzero[0, -1] = 1.0  # a value at a masked position: tokens differ
    assert PaddingCollapse.for_layout(model, ids, mask, nonzero) is None
    full_ids, full_mask, full_values = _layout(L, rng)
    assert PaddingCollapse.for_layout(model, full_ids, full_mask, full_values) is None  # nothing padded
