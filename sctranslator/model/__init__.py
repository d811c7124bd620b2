"""The scTranslator model: configuration, network, and checkpoint I/O."""

from sctranslator.model.bundle import load_bundle, save_model
from sctranslator.model.config import ModelConfig
from sctranslator.model.loading import load_model
from sctranslator.model.network import TranslatorModel
from sctranslator.model.official import OfficialCheckpoint, load_official_checkpoint

__all__ = ["ModelConfig", "OfficialCheckpoint", "TranslatorModel", "load_bundle", "load_model",
           "load_official_checkpoint", "save_model"]
