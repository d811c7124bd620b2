"""`--compile`: the model's Performer blocks and translator run through `torch.compile`.

Compiling the blocks (not one whole-model function) covers every way the torch backend calls the
model: the collapsed and the full encoder, the translator with or without the collapse's first
weight, and the decoder per protein window. Blocks of the same shape share one compiled graph
(PyTorch inlines module parameters as inputs). The batch dimension becomes dynamic after its first
change, so a block's shorter last batch costs one recompilation, not one per size. CUDA graphs
are not used: batches vary in size and several worker threads share one backend.
"""

from __future__ import annotations

import copy

from sctranslator.model import TranslatorModel


def compiled_model(model: TranslatorModel, *, owned: bool = False) -> TranslatorModel:
    """The model with its Performer blocks and sequence translator compiled by torch.compile.

    Compilation itself happens on the first call of each block (the first batch is slow).

    Parameters
    ----------
    model : TranslatorModel
        The model.
    owned : bool
        Compile `model` itself; otherwise a copy (compiling changes modules in place).

    Returns
    -------
    TranslatorModel
        The compiled model.
    """
    target = model if owned else copy.deepcopy(model)
    for stack in (target.enc, target.dec):
        for block in stack.layers:
            block.compile()
    target.translator.compile()
    return target.eval()


def is_compiled(model: TranslatorModel) -> bool:
    """Whether `model`'s blocks go through torch.compile.

    Parameters
    ----------
    model : TranslatorModel
        The model.

    Returns
    -------
    bool
        True when compiled.
    """
    return getattr(model.enc.layers[0], "_compiled_call_impl", None) is not None


__all__ = ["compiled_model", "is_compiled"]
