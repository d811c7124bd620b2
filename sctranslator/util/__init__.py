"""Utilities that know nothing of the model: atomic writes, the output lock, imports, storage URLs, progress."""
