"""The engine: sources -> plan -> streaming pipeline -> backends -> sinks.

Nothing is imported here, so a torch-free part of the engine (`engine.backends.base` for a
Triton client) can be imported without the model and torch. The job itself is
`sctranslator.engine.translate.translate` (also `sctranslator.translate`).
"""
