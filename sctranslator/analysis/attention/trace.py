"""Capture each attention layer's FAVOR+ features while the model's own forward pass runs.

No copy of the forward pass: inside `capture_features(stack, on_layer)`, every call of the
model's encoder or decoder (`TranslatorModel.encode` / `decode`) hands each layer's query and key
features to `on_layer`, through the attention module's `capture` hook, which receives the very
tensors the layer attends with. Tracing therefore costs about one forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch

from sctranslator.model.favor_attention import key_features, query_features
from sctranslator.model.performer_blocks import PerformerBlock, PerformerStack

# (layer index, q' (B, H, N, nb), k' (B, H, N, nb)) -> None; must not modify the tensors.
LayerCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


@contextmanager
def capture_features(stack: PerformerStack, on_layer: LayerCallback, *, as_published: bool = False) -> Iterator[None]:
    """While active, each forward pass through `stack` calls ``on_layer(index, q', k')`` per layer.

    `as_published` reproduces a quirk of the original attention script: it records each layer's
    attention from a second call made on the hidden state after that layer's attention residual,
    ``LN(h + Attn(LN(h)))``, rather than from the attention's actual input ``LN(h)``.

    Parameters
    ----------
    stack : PerformerStack
        The encoder or decoder.
    on_layer : callable
        ``on_layer(index, q', k')``.
    as_published : bool
        Reproduce the original script's choice of hidden state.

    Yields
    ------
    None
        Inside the context.
    """
    handles: list[torch.utils.hooks.RemovableHandle] = []
    layers = list(stack.layers)
    if any(block.attn.capture is not None for block in layers):
        raise RuntimeError("attention features of this stack are already being captured")
    try:
        for index, block in enumerate(layers):
            if as_published:
                handles += _post_residual_hooks(index, block, on_layer)
            else:
                block.attn.capture = partial(on_layer, index)
        yield
    finally:
        for block in layers:
            block.attn.capture = None
        for handle in handles:
            handle.remove()


def _post_residual_hooks(index: int, block: PerformerBlock,
                         on_layer: LayerCallback) -> list[torch.utils.hooks.RemovableHandle]:
    """Hooks that hand `on_layer` the features of LN(h + Attn(LN(h))) for block `index`."""
    inputs: dict[str, torch.Tensor] = {}

    def keep_block_input(_: Any, args: tuple[Any, ...]) -> None:  # the block is called as block(h, mask)
        inputs["h"] = args[0]

    def after_attention(attn: Any, args: tuple[Any, ...], output: torch.Tensor) -> None:
        mask = args[1]  # called as attn(LN(h), mask, key_counts); output = Attn(LN(h)) (eval: no dropout)
        q, k, _ = attn.project(block.attn_norm(inputs.pop("h") + output), mask)
        projection = attn.projection_matrix
        on_layer(index, query_features(q, projection), key_features(k, projection))

    return [block.register_forward_pre_hook(keep_block_input), block.attn.register_forward_hook(after_attention)]
