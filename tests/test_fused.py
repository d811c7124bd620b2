"""The chunked inference block (sctranslator.model.fused) against the eager Performer block."""

from __future__ import annotations

import pytest
import torch

from sctranslator.model import fused
from sctranslator.model.performer_blocks import PerformerBlock


def _block(seed: int = 0) -> PerformerBlock:
    torch.manual_seed(seed)
    return PerformerBlock(dim=32, heads=4, dim_head=16, nb_features=44).eval()


def _inputs(batch: int, length: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    # Token scales that grow along the sequence: the key maximum of a (cell, head) is reached late,
    # so the running sums of the early chunks must be rescaled (the online-softmax step).
    scale = torch.linspace(0.2, 3.0, length)[None, :, None]
    h = torch.randn(batch, length, 32, generator=generator) * scale
    mask = torch.rand(batch, length, generator=generator) > 0.2
    mask[:, -1] = False  # a padding token standing for many (padding collapse)
    counts = torch.ones(length)
    counts[-1] = 500.0
    return h, mask, counts


@pytest.mark.parametrize("chunk", [7, 64, 1000])
@pytest.mark.parametrize("with_counts", [False, True])
def test_chunked_block_equals_the_eager_block(chunk: int, with_counts: bool) -> None:
    block = _block()
    h, mask, counts = _inputs(batch=3, length=301)
    key_counts = counts if with_counts else None
    with torch.no_grad():
        expected = block(h, mask, key_counts)  # eager: no inference mode
    with torch.inference_mode():
        got = fused.fused_block(block, h, mask, key_counts, chunk=chunk)
    scale = expected.abs().max()
    assert (got - expected).abs().max() <= 1e-5 * scale
    # and the pad count is honoured: a different count gives a different answer
    if with_counts:
        with torch.inference_mode():
            other = fused.fused_block(block, h, mask, torch.ones(301), chunk=chunk)
        assert (other - got).abs().max() > 1e-3 * scale


def test_block_forward_takes_the_chunked_path_only_in_inference_mode() -> None:
    block = _block()
    h, mask, _ = _inputs(batch=1, length=fused.MIN_TOKENS)
    with torch.inference_mode():
        assert not fused.applies(block, h[:, :-1])  # short sequences stay eager
    with torch.no_grad():
        assert not fused.applies(block, h)
    with torch.inference_mode():
        assert fused.applies(block, h)
        with fused.eager_blocks():
            assert not fused.applies(block, h)
        block.attn.capture = lambda q, k: None  # analysis needs the eager features
        assert not fused.applies(block, h)
        block.attn.capture = None
        handle = block.attn.register_forward_hook(lambda *_: None)  # hooks see only eager calls
        assert not fused.applies(block, h)
        handle.remove()
        assert fused.applies(block, h)
        block.train()
        assert not fused.applies(block, h)
