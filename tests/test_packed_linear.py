"""oneDNN packed linear layers (sctranslator.model.packed_linear) against torch.nn.functional.linear."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn
from torch.nn import functional

from sctranslator.model import ModelConfig, TranslatorModel, packed_linear
from sctranslator.model.collapse import PaddingCollapse

needs_onednn = pytest.mark.skipif(not packed_linear.enabled(torch.device("cpu")),
                                  reason="this PyTorch build has no oneDNN")


@needs_onednn
def test_a_packed_layer_computes_the_linear_layer_and_its_gelu() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(96, 200)
    x = torch.randn(300, 96)
    with torch.inference_mode():
        packed = packed_linear.packed(layer)
        assert packed.weight.is_mkldnn  # the oneDNN path, not the fallback
        expected = functional.linear(x, layer.weight, layer.bias)
        scale = expected.abs().max()
        assert (packed(x) - expected).abs().max() <= 1e-6 * scale
        assert (packed(x, gelu=True) - functional.gelu(expected)).abs().max() <= 1e-6 * scale
        assert (packed(x.T.contiguous().T) - expected).abs().max() <= 1e-6 * scale  # a transposed input
        with packed_linear.plain_matmuls():
            assert torch.equal(packed(x), expected)  # the fallback is functional.linear itself


@needs_onednn
def test_the_packed_weight_follows_the_layer_when_its_weights_change() -> None:
    torch.manual_seed(1)
    layer = nn.Linear(16, 8)
    x = torch.randn(5, 16)
    with torch.inference_mode():
        first = packed_linear.packed(layer)
        assert packed_linear.packed(layer) is first  # kept between calls
    with torch.no_grad():
        layer.weight.mul_(2.0)  # in place: a new version of the same tensor
    with torch.inference_mode():
        again = packed_linear.packed(layer)
        assert again is not first
        assert torch.allclose(again(x), functional.linear(x, layer.weight, layer.bias), rtol=0, atol=1e-5)
    # the packed weights live beside the layer, not on it: the model still copies and pickles
    copied = copy.deepcopy(layer)
    assert not any(t.is_mkldnn for t in vars(copied).values() if isinstance(t, torch.Tensor))
    pickle.loads(pickle.dumps(layer))


def test_the_packed_translator_equals_the_plain_one() -> None:
    torch.manual_seed(2)
    config = ModelConfig(dim=16, enc_depth=1, dec_depth=1, enc_heads=2, dec_heads=2, enc_dim_head=8, dec_dim_head=8,
                         enc_nb_features=12, dec_nb_features=12, max_genes=300, max_proteins=20)
    model = TranslatorModel(config).eval()
    gene_ids = torch.zeros(300, dtype=torch.int64)
    gene_ids[:120] = torch.arange(1, 121)
    collapse = PaddingCollapse.for_layout(model, gene_ids.numpy(), (gene_ids != 0).numpy())
    assert collapse is not None
    encodings = torch.randn(3, collapse.tokens, 16)
    with torch.inference_mode():
        got = collapse.translate(model, encodings)
        with packed_linear.plain_matmuls():
            expected = collapse.translate(model, encodings)
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
    if packed_linear.enabled(torch.device("cpu")):
        assert collapse.packed_first  # it took the packed path


@needs_onednn
def test_a_layer_first_used_with_onednn_off_is_packed_once_it_is_on() -> None:
    layer = nn.Linear(8, 4)
    with torch.inference_mode():
        torch.backends.mkldnn.enabled = False
        try:
            assert not packed_linear.packed(layer).weight.is_mkldnn
        finally:
            torch.backends.mkldnn.enabled = True
        assert packed_linear.packed(layer).weight.is_mkldnn
