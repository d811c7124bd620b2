"""Command-line definition of `sctranslator finetune` (registered by the CLI), built from the option groups."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sctranslator.options import PRESETS, OutputOptions, TrainDataOptions, TrainOptions

Handler = Callable[[argparse.Namespace], int]
KEEP = "model"  # --redraw-interval: keep the starting model's setting (train.api.KEEP)


def _redraw(text: str) -> int | None | str:
    if text.lower() in ("none", "fixed", "off"):
        return None
    if text.lower() == KEEP:
        return KEEP
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
    """Declare ``sctranslator finetune --rna R [--protein P] (--init MODEL | --config NAME) --out BUNDLE ...``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The ``finetune`` command's parser.

    Returns
    -------
    callable
        The handler: parsed arguments -> exit status.
    """
    data = parser.add_argument_group("data")
    data.add_argument("--rna", required=True, nargs="+", metavar="RNA",
                      help="RNA: .h5ad, .h5mu (MuData with 'rna' + 'prot'), zarr store, TileDB-SOMA experiment (see "
                      "--measurement), or one of these files or stores at an s3://, gs:// or http(s):// URL; several "
                      "datasets (each with its own genes and proteins) are trained on together, their blocks mixed "
                      "at random")
    data.add_argument("--protein", nargs="+", metavar="PROTEIN",
                      help="protein counts (.h5ad, zarr, a SOMA experiment, or a URL) for the same cells, one per "
                      "--rna input in its order; a MuData (.h5mu or zarr) is read through its protein modality; '-': "
                      "that dataset's proteins are in its RNA input (default: in the RNA file, as a MuData protein "
                      "modality or SOMA measurement (prot, ADT, Antibody Capture..., or --protein-key) or "
                      "obsm[--protein-key])")
    OutputOptions.add_cli_args(data, only=("storage_options",))
    TrainDataOptions.add_cli_args(data, only=("protein_key", "proteins", "layer", "use_raw", "modality",
                                              "measurement", "missing_chunks", "gene_column", "id_type",
                                              "gene_mapping", "normalize", "target_sum", "target_scaling",
                                              "allow_low_coverage", "allow_empty_cells"))
    split = parser.add_argument_group("held-out split")
    TrainDataOptions.add_cli_args(split, only=("val_fraction", "val_count", "split_column", "val_values"))
    model = parser.add_argument_group("model")
    start = model.add_mutually_exclusive_group(required=True)
    start.add_argument("--init", help="start from a published .pt checkpoint or a bundle")
    start.add_argument("--config", choices=PRESETS, help="train from scratch with a preset (one of %(choices)s)")
    model.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a configuration setting (with --config), e.g. --set dim=16 (default: none)")
    TrainOptions.add_cli_args(model, only=("freeze",))
    model.add_argument("--redraw-interval", type=_redraw, default=KEEP,
                       help="random-feature redraw every N training forward calls; 'none' = fixed features; "
                       "'model' = the starting model's setting (default: %(default)s)")
    loop = parser.add_argument_group("training")
    TrainOptions.add_cli_args(loop.add_mutually_exclusive_group(), only=("steps", "epochs"))
    TrainOptions.add_cli_args(loop, only=("lr", "weight_decay", "warmup_steps", "decay", "batch_size",
                                          "accumulation", "clip_norm", "precision", "seed", "val_every", "patience",
                                          "keep_best", "device", "gene_subset", "block_cells", "shuffle_blocks"))
    loop.add_argument("--workers", type=int, help="CPU threads per process (default: PyTorch's)")
    run = parser.add_argument_group("run")
    run.add_argument("--out", required=True, type=Path, help="output bundle directory")
    run.add_argument("--work-dir", type=Path, help="checkpoints (default: OUT.training)")
    run.add_argument("--metrics-log", type=Path, help="metrics log (.csv or .jsonl; default: WORK_DIR/metrics.jsonl)")
    TrainOptions.add_cli_args(run, only=("checkpoint_every",))
    run.add_argument("--resume", action="store_true", help="continue the run saved in the work directory")
    run.add_argument("--overwrite", action="store_true",
                     help="replace an earlier finetune bundle at --out and its checkpoint folder (nothing else)")
    TrainOptions.add_cli_args(run, only=("quiet",))

    def handle(args: argparse.Namespace) -> int:
        from sctranslator.train import finetune

        train = TrainOptions.from_cli_args(args)
        train.clip_norm = train.clip_norm or None  # 0 = off
        if train.steps is None and train.epochs is None:
            train.epochs = 1.0
        options = {**TrainDataOptions.from_cli_args(args).as_kwargs(), **train.as_kwargs()}
        rna = args.rna[0] if len(args.rna) == 1 else args.rna
        protein = args.protein[0] if args.protein and len(args.protein) == 1 else args.protein
        model = finetune(rna, protein, init=args.init, config=args.config, out=args.out,
                         config_overrides=_overrides(args.set), feature_redraw_interval=args.redraw_interval,
                         work_dir=args.work_dir, metrics_log=args.metrics_log, resume=args.resume,
                         workers=args.workers, overwrite=args.overwrite,
                         storage_options=OutputOptions.from_cli_args(args).storage_options, **options)
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
