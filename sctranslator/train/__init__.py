"""The slim trainer: paired RNA + protein data -> a fine-tuned (or from-scratch) model bundle."""

from sctranslator.train.finetune import DataOptions, Validation, finetune
from sctranslator.train.loop import TrainOptions
from sctranslator.train.paired import PairedData, load_paired
from sctranslator.train.split import Split, split_cells

__all__ = ["DataOptions", "PairedData", "Split", "TrainOptions", "Validation", "finetune", "load_paired",
           "split_cells"]
