"""Command-line definitions: `sctranslator finetune` and `sctranslator demo` (registered by the CLI)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

Handler = Callable[[argparse.Namespace], int]


def _names(text: str | None) -> list[str] | None:
    """'A,B' -> ['A', 'B']; '@file' -> one name a line."""
    if not text:
        return None
    if text.startswith("@"):
        return [line.strip() for line in Path(text[1:]).read_text().splitlines() if line.strip()]
    return [part.strip() for part in text.split(",") if part.strip()]


def _redraw(text: str) -> int | None | str:
    if text.lower() in ("none", "fixed", "off"):
        return None
    if text.lower() == "model":
        return "model"
    return int(text)


def _overrides(pairs: list[str]) -> dict[str, Any]:
    """--set dim=16 --set enc_depth=1 -> {'dim': 16, 'enc_depth': 1} (numbers parsed, 'none' -> None)."""
    found: dict[str, Any] = {}
    for pair in pairs or []:
        key, _, value = pair.partition("=")
        if not key or not value:
            raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {pair!r}")
        parsed: Any = value
        for cast in (int, float):
            try:
                parsed = cast(value)
                break
            except ValueError:
                continue
        found[key.strip()] = None if value.lower() == "none" else parsed
    return found


def define_finetune(parser: argparse.ArgumentParser) -> Handler:
    """`sctranslator finetune --rna R [--protein P] (--init MODEL | --config NAME) --out BUNDLE ...`."""
    data = parser.add_argument_group("data")
    data.add_argument("--rna", required=True, help="RNA: .h5ad, .h5mu (MuData with 'rna' + 'prot') or zarr store")
    data.add_argument("--protein", help="protein counts (.h5ad or zarr) for the same cells; omit when they are "
                      "in the RNA file (MuData 'prot' modality or obsm[--protein-key])")
    data.add_argument("--protein-key", default="protein_expression", help="obsm key of an embedded protein table")
    data.add_argument("--proteins", help="train on these protein columns only (A,B or @file; default: all but "
                      "isotype controls)")
    data.add_argument("--layer", help="RNA layer to read instead of X")
    data.add_argument("--gene-column", help="var column holding gene identifiers (default: var index)")
    data.add_argument("--id-type", default="auto")
    data.add_argument("--gene-mapping", choices=["original", "extended"],
                      help="gene mapping (default: the --init bundle's, else extended); the bundle records it")
    data.add_argument("--normalize", default="total_log1p", choices=["none", "log1p", "total", "total_log1p"])
    data.add_argument("--target-sum", type=float, default=1e4)
    data.add_argument("--target-scaling", default="minmax", choices=["minmax", "clr", "log1p"])
    data.add_argument("--allow-low-coverage", action="store_true")
    data.add_argument("--allow-empty-cells", action="store_true",
                      help="train on cells with no counts in any panel gene (as constant cells)")
    split = parser.add_argument_group("held-out split")
    split.add_argument("--val-fraction", type=float, default=0.1, help="fraction of cells held out (seeded)")
    split.add_argument("--val-count", type=int, help="number of cells held out (seeded; overrides the fraction)")
    split.add_argument("--split-column", help="obs column to split by (e.g. donor, batch)")
    split.add_argument("--val-values", help="values of --split-column held out (A,B)")
    model = parser.add_argument_group("model")
    start = model.add_mutually_exclusive_group(required=True)
    start.add_argument("--init", help="start from a published .pt checkpoint or a bundle")
    start.add_argument("--config", help="train from scratch with a preset: published, small, tiny")
    model.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a configuration setting (with --config), e.g. --set dim=16")
    model.add_argument("--freeze", help="parts to freeze: embeddings,encoder,translator,decoder")
    model.add_argument("--redraw-interval", type=_redraw, default="model",
                       help="random-feature redraw every N training forward calls; 'none' = fixed features; "
                       "default: the starting model's setting")
    loop = parser.add_argument_group("training")
    length = loop.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimizer steps")
    length.add_argument("--epochs", type=float, help="passes over the training cells (default 1)")
    loop.add_argument("--lr", type=float, default=1e-3)
    loop.add_argument("--weight-decay", type=float, default=0.01)
    loop.add_argument("--warmup-steps", type=int, help="default: 5%% of the steps")
    loop.add_argument("--decay", default="cosine", choices=["cosine", "linear", "constant"])
    loop.add_argument("--batch-size", type=int, default=16, help="cells per process per micro-batch")
    loop.add_argument("--accumulation", type=int, default=1, help="micro-batches per optimizer step")
    loop.add_argument("--clip-norm", type=float, default=1.0, help="gradient clipping (0 = off)")
    loop.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    loop.add_argument("--seed", type=int, default=0)
    loop.add_argument("--val-every", type=int, help="validate every N steps (default: 10 times per run)")
    loop.add_argument("--patience", type=int, help="stop after N validations without improvement")
    loop.add_argument("--last-weights", action="store_true", help="save the last weights, not the best validated")
    loop.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (under torchrun: each rank's GPU)")
    loop.add_argument("--workers", type=int, help="CPU threads per process")
    run = parser.add_argument_group("run")
    run.add_argument("--out", required=True, type=Path, help="output bundle directory")
    run.add_argument("--work-dir", type=Path, help="checkpoints (default: OUT.training)")
    run.add_argument("--metrics-log", type=Path, help="metrics log (.csv or .jsonl; default WORK_DIR/metrics.jsonl)")
    run.add_argument("--checkpoint-every", type=int, help="default: at each validation")
    run.add_argument("--resume", action="store_true", help="continue the run saved in the work directory")
    run.add_argument("--overwrite", action="store_true",
                     help="replace an earlier finetune bundle at --out and its checkpoint folder (nothing else)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")

    def handle(args: argparse.Namespace) -> int:
        from sctranslator.train import finetune

        options: dict[str, Any] = {
            "proteins": _names(args.proteins), "protein_key": args.protein_key, "layer": args.layer,
            "gene_column": args.gene_column, "id_type": args.id_type, "gene_mapping": args.gene_mapping,
            "normalize": args.normalize,
            "target_sum": args.target_sum, "target_scaling": args.target_scaling,
            "allow_low_coverage": args.allow_low_coverage, "allow_empty_cells": args.allow_empty_cells,
            "val_fraction": args.val_fraction,
            "val_count": args.val_count, "split_column": args.split_column, "val_values": _names(args.val_values),
            "steps": args.steps, "epochs": args.epochs if args.steps is None else None, "lr": args.lr,
            "weight_decay": args.weight_decay, "warmup_steps": args.warmup_steps, "decay": args.decay,
            "batch_size": args.batch_size, "accumulation": args.accumulation, "clip_norm": args.clip_norm or None,
            "precision": args.precision, "seed": args.seed, "val_every": args.val_every, "patience": args.patience,
            "keep_best": not args.last_weights, "checkpoint_every": args.checkpoint_every, "device": args.device,
            "quiet": args.quiet, "freeze": tuple(_names(args.freeze) or ()),
        }
        if options["steps"] is None and options["epochs"] is None:
            options["epochs"] = 1.0
        model = finetune(args.rna, args.protein, init=args.init, config=args.config, out=args.out,
                         config_overrides=_overrides(args.set), feature_redraw_interval=args.redraw_interval,
                         work_dir=args.work_dir, metrics_log=args.metrics_log, resume=args.resume,
                         workers=args.workers, overwrite=args.overwrite, **options)
        outcome = model.training_outcome
        if outcome.interrupted:
            print(f"stopped at step {outcome.steps_done}; run again with --resume to finish")
            return 0
        if model.validation is not None:
            print(f"held-out mean per-protein Pearson r: {model.validation.metrics['val_pearson']:.4f} "
                  f"({len(model.validation.obs_names)} cells)")
        print(f"wrote bundle {args.out} ({outcome.steps_done} steps, {outcome.seconds:.0f} s)")
        return 0

    return handle


def define_demo(parser: argparse.ArgumentParser) -> Handler:
    """`sctranslator demo [--out DIR]`: the bundled model on 500 held-out PBMCs, against the baseline."""
    parser.add_argument("--out", type=Path, default=Path("sctranslator-demo"),
                        help="where predictions and the metrics table go (default: ./sctranslator-demo)")
    parser.add_argument("--workers", type=int, help="concurrent blocks for translate")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier demo output at --out")

    def handle(args: argparse.Namespace) -> int:
        from sctranslator.demo import format_table, run_demo

        report = run_demo(args.out, workers=args.workers, overwrite=args.overwrite)
        print(format_table(report))
        print(f"predictions: {report['predictions']}\nmetrics: {report['metrics_file']}")
        return 0

    return handle
