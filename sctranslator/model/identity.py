"""A stable fingerprint of a model's weights and configuration (for resume checks and caches)."""

from __future__ import annotations

import hashlib
import json

import torch

from sctranslator.model.network import TranslatorModel


def model_fingerprint(model: TranslatorModel) -> str:
    """sha256 over the configuration and every tensor's bytes, in key order (about 1 s per 0.5 GB)."""
    digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    digest.update(json.dumps(model.panel, sort_keys=True, default=str).encode())
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        data = tensor.detach().to("cpu").contiguous()
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()
