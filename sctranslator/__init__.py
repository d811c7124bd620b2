"""sctranslator: batch inference for scTranslator (single-cell RNA -> protein abundance).

The public API is re-exported here lazily, so `import sctranslator` stays cheap and the
command-line tool starts fast.
"""

from __future__ import annotations

from sctranslator.util.lazy import lazy_getattr

__version__ = "0.1.0"

_EXPORTS = {
    "TranslatorModel": "sctranslator.model",
    "ModelConfig": "sctranslator.model",
    "load_model": "sctranslator.model",
    "save_model": "sctranslator.model",
    "load_official_checkpoint": "sctranslator.model",
    "translate": "sctranslator.engine.translate",
    "knockout": "sctranslator.analysis.knockout",
    "interactions": "sctranslator.analysis.attention",
    "evaluate": "sctranslator.analysis.evaluate",
    "finetune": "sctranslator.train.api",
}

__all__ = ["__version__", *_EXPORTS]


__getattr__ = lazy_getattr("sctranslator", _EXPORTS)
