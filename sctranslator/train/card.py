"""The model card (card.md) of a trained bundle: data, settings and held-out accuracy."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from sctranslator import __version__
from sctranslator.model import TranslatorModel
from sctranslator.train.loop import Outcome, TrainOptions


def _number(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4f}"
    return str(value)


def _inputs(data: dict[str, Any]) -> list[str]:
    """The card's RNA and protein input lines; several datasets give their gene and protein counts one
    per dataset (the panels, their unions, have lines of their own)."""
    if int(data.get("datasets", 1)) > 1:
        return [f"- RNA: {data.get('rna')} ({data.get('rna_cells')} cells in {data.get('datasets')} datasets; "
                f"input genes per dataset: {data.get('genes')})",
                f"- proteins: {data.get('protein')} (measured per dataset: {data.get('proteins')})"]
    return [f"- RNA: {data.get('rna')} ({data.get('rna_cells')} cells x {data.get('genes')} input genes)",
            f"- proteins: {data.get('protein')} ({data.get('proteins')} measured)"]


def model_card(model: TranslatorModel, *, init: str, data: dict[str, Any], split: str, n_train: int, n_val: int,
               options: TrainOptions, outcome: Outcome, world: int, inherited: dict[str, str] | None = None) -> str:
    """The model card (markdown) of a fine-tuned bundle.

    Parameters
    ----------
    model : TranslatorModel
        The trained model.
    init : str
        What training started from (a model or a preset).
    data : dict
        Where the data came from and how many cells paired.
    split : str
        How the held-out cells were chosen.
    n_train : int
        Training cells.
    n_val : int
        Held-out cells.
    options : TrainOptions
        How it was trained.
    outcome : Outcome
        What the run left behind.
    world : int
        Processes.
    inherited : dict of str to str or None
        Preprocessing settings not asked for, and where they came from.

    Returns
    -------
    str
        Markdown.
    """
    panel = model.panel or {}
    proteins = panel.get("proteins", {})
    genes = panel.get("genes", {})
    pre = model.preprocessing or {}
    lines = [
        "# sctranslator model card", "",
        f"Trained with sctranslator {__version__}, starting from {init}.", "",
        "## Data",
        *_inputs(data),
        f"- paired cells: {data.get('paired_cells')}; training {n_train}, held out {n_val} ({split}); "
        f"empty cells (no counts in any panel gene, trained on as constant cells): {data.get('empty_cells', 0)}",
        f"- gene panel: {len(genes.get('token_ids', []))} genes at positions 0.. of L={model.config.max_genes}",
        f"- protein panel ({len(proteins.get('names', []))}, in trained order): {', '.join(proteins.get('names', []))}",
        "- proteins outside this panel are answered untrained, as the original does (the decoder takes any "
        "protein token; a warning names them and provenance records them): those predictions come from the "
        f"starting weights ({init}) through a model not tuned on them, and the accuracy below does not cover them",
        "",
        "## Preprocessing",
        f"- input: normalize={pre.get('normalize')}, target_sum={pre.get('target_sum')}, then per-cell min-max "
        "over the panel genes (the engine's prepare step)",
        f"- targets: per-cell {pre.get('target_scaling')} scaling of the measured counts "
        "(predictions are on that scale)",
        *(["- not asked for: " + ", ".join(f"{k} taken from {v}" for k, v in inherited.items())]
          if inherited else []),
        "",
        "## Training",
        f"- processes: {world}; steps done: {outcome.steps_done}; stopped early: {outcome.stopped_early}; "
        f"weights from step {outcome.best_step if options.keep_best and outcome.best_step else outcome.steps_done}",
        f"- time: {outcome.seconds:.0f} s",
        "- settings: " + ", ".join(f"{k}={v}" for k, v in asdict(options).items() if k not in ("quiet", "stop_after")),
        "",
    ]
    metrics = outcome.val_metrics
    if metrics:
        lines += ["## Held-out accuracy", "",
                  f"Mean per-protein Pearson r: {_number(metrics.get('val_pearson'))}; "
                  f"MSE: {_number(metrics.get('val_loss'))}", "",
                  "| protein | gene | Pearson r |", "| --- | --- | --- |"]
        for name, gene, r in zip(proteins.get("names", []), proteins.get("genes", []),
                                 metrics.get("val_pearson_per_protein", []), strict=False):
            lines.append(f"| {name} | {gene} | {_number(r)} |")
        lines.append("")
    return "\n".join(lines)
