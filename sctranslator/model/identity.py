"""A stable fingerprint of a model's weights and configuration (for resume checks and caches)."""

from __future__ import annotations

import hashlib
import json

import torch

from sctranslator.model.network import TranslatorModel


def model_fingerprint(model: TranslatorModel) -> str:
    """sha256 over the configuration and every tensor's bytes, in key order (about 1 s per 0.5 GB).

    Computed once per model object and state: the cache is keyed by each tensor's storage and version
    counter (which in-place updates, such as an optimiser step, increment), so changed weights are
    hashed again.

    Parameters
    ----------
    model : TranslatorModel
        The model.

    Returns
    -------
    str
        A hex digest.
    """
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
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    fingerprint = digest.hexdigest()
    model._fingerprint_cache = (key, fingerprint)
    return fingerprint
