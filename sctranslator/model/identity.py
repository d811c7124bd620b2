"""A stable fingerprint of a model's weights and configuration (for resume checks and caches)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading

import torch

from sctranslator.model.network import TranslatorModel

# One fingerprint is computed at a time: a caller arriving while another thread hashes the same model
# waits for that result instead of hashing it again.
_HASHING = threading.Lock()


def model_fingerprint(model: TranslatorModel) -> str:
    """sha256 over the configuration and every tensor's bytes, in key order (about 1 s per 0.5 GB).

    Computed once per model object and state: the cache is keyed by each tensor's storage and version
    counter (which in-place updates, such as an optimiser step, increment), so changed weights are
    hashed again. Thread-safe; `fingerprint_in_background` starts it early.

    Parameters
    ----------
    model : TranslatorModel
        The model.

    Returns
    -------
    str
        A hex digest.
    """
    with _HASHING:
        header = (json.dumps(model.config.to_dict(), sort_keys=True)
                  + json.dumps(model.panel, sort_keys=True, default=str))
        state = sorted(model.state_dict().items())
        key = (header, tuple((name, t.data_ptr(), t._version, t.dtype, tuple(t.shape)) for name, t in state))
        cached = getattr(model, "_fingerprint_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        digest = hashlib.sha256(header.encode())
        for name, tensor in state:
            digest.update(name.encode())
            data = tensor.detach().to("cpu").contiguous()
            if data.numel():
                # The tensor's own bytes, not a copy of them (hashlib releases the GIL while it reads them)
                digest.update(memoryview(data.reshape(-1).view(torch.uint8).numpy()))
        fingerprint = digest.hexdigest()
        model._fingerprint_cache = (key, fingerprint)
        return fingerprint


def fingerprint_in_background(model: TranslatorModel) -> threading.Thread:
    """Start `model_fingerprint` in a daemon thread, so the hashing overlaps other work of the caller.

    A later `model_fingerprint(model)` waits for it and returns the same value; an error in the
    thread is dropped (the later call computes, and raises, in the caller).

    Parameters
    ----------
    model : TranslatorModel
        The model.

    Returns
    -------
    threading.Thread
        The started thread.
    """
    def run() -> None:
        with contextlib.suppress(Exception):  # the caller's own call reports it
            model_fingerprint(model)

    thread = threading.Thread(target=run, name="sctranslator-fingerprint", daemon=True)
    thread.start()
    return thread
