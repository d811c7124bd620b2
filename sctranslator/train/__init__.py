"""The slim trainer: paired RNA + protein data -> a fine-tuned (or from-scratch) model bundle.

Names are resolved lazily, so the command line can import `train.command` without loading torch.
"""

from __future__ import annotations

from sctranslator.util.lazy import lazy_getattr

_EXPORTS = {
    "DataOptions": "sctranslator.train.api",
    "Validation": "sctranslator.train.api",
    "finetune": "sctranslator.train.api",
    "TrainOptions": "sctranslator.train.loop",
    "PairedData": "sctranslator.train.paired",
    "load_paired": "sctranslator.train.paired",
    "Split": "sctranslator.train.split",
    "split_cells": "sctranslator.train.split",
}

__all__ = list(_EXPORTS)


__getattr__ = lazy_getattr("sctranslator.train", _EXPORTS)
