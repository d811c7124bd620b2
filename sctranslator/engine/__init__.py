"""The engine: sources -> plan -> streaming pipeline -> backends -> sinks."""

from sctranslator.engine.translate import translate

__all__ = ["translate"]
