"""The `sctranslator` command: each sub-command is a thin wrapper over the Python API."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from sctranslator.errors import SctranslatorError

Handler = Callable[[argparse.Namespace], int]
Definer = Callable[[argparse.ArgumentParser], Handler]
_COMMANDS: dict[str, tuple[str, Definer]] = {}


def command(name: str, help_text: str) -> Callable[[Definer], Definer]:
    """Register a sub-command: the decorated function fills its parser and returns the handler."""

    def register(define: Definer) -> Definer:
        _COMMANDS[name] = (help_text, define)
        return define

    return register


def _format_size(n_bytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.1f} {unit}" if unit != "B" else f"{n_bytes} B"
        n_bytes /= 1024
    return f"{n_bytes} B"


@command("convert", "convert a published scTranslator .pt checkpoint into a safe model bundle")
def _convert(parser: argparse.ArgumentParser) -> Handler:
    parser.add_argument("checkpoint", type=Path, help="official .pt file (read without executing it)")
    parser.add_argument("bundle", type=Path, help="output bundle directory")

    def run(args: argparse.Namespace) -> int:
        from sctranslator.model import load_model, save_model

        model = load_model(args.checkpoint)
        save_model(model, args.bundle)
        config = model.config.to_dict()
        print(f"Read {args.checkpoint} ({_format_size(args.checkpoint.stat().st_size)}) without executing it.")
        print("Inferred configuration:")
        for key, value in config.items():
            print(f"  {key:24s} {value}")
        counts = {
            "encoder": sum(p.numel() for p in model.enc.parameters()),
            "translator": sum(p.numel() for p in model.translator.parameters()),
            "decoder": sum(p.numel() for p in model.dec.parameters()),
        }
        print("Parameters:")
        for part, n in counts.items():
            print(f"  {part:24s} {n:,}")
        print(f"  {'total':24s} {model.n_parameters():,}")
        size = sum(f.stat().st_size for f in args.bundle.iterdir() if f.is_file())
        print(f"Wrote bundle {args.bundle} ({_format_size(size)})")
        return 0

    return run


@command("vocab", "report how a dataset's genes (and proteins) map onto model tokens")
def _vocab(parser: argparse.ArgumentParser) -> Handler:
    parser.add_argument("input", type=Path, help="RNA .h5ad (genes in var)")
    parser.add_argument("--column", help="var column holding the gene identifiers (default: var index)")
    parser.add_argument("--id-type", default="auto",
                        choices=["auto", "symbol", "entrez", "ensembl", "mouse_symbol", "mouse_ensembl"])
    parser.add_argument("--gene-mapping", default="original", choices=["original", "extended"],
                        help="original: scTranslator's own table, as published checkpoints see it; extended: wider")
    parser.add_argument("--proteins", help="protein .h5ad, or comma-separated antibody names, or @file")

    def run(args: argparse.Namespace) -> int:
        from sctranslator.vocab import mapping_report_for_file

        proteins = args.proteins
        if proteins and not proteins.endswith(".h5ad"):
            proteins = read_name_list(proteins)
        print(mapping_report_for_file(args.input, column=args.column, id_type=args.id_type, proteins=proteins,
                                      gene_mapping=args.gene_mapping))
        return 0

    return run


@command("translate", "predict protein abundance for every cell of a dataset")
def _translate(parser: argparse.ArgumentParser) -> Handler:
    parser.add_argument("input", help=".h5ad, AnnData .zarr store (v2/v3), or .h5mu (see --modality)")
    parser.add_argument("--model", required=True, help="bundle directory or official .pt checkpoint")
    parser.add_argument("--proteins", help="comma-separated antibody or gene names, or @file "
                        "(default: the model's protein panel, when it has one)")
    parser.add_argument("--out", required=True, help="output AnnData Zarr store (resumable)")
    parser.add_argument("--backend", default="torch", choices=["torch", "onnxruntime", "triton"])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int,
                        help="cells per backend call (default: from the model size; 1 for the full model on CPU)")
    parser.add_argument("--block-cells", type=int,
                        help="cells per block, the unit of work and resume (default: from the model size)")
    parser.add_argument("--workers", type=int, help="concurrent blocks on the local scheduler")
    parser.add_argument("--scheduler", help="address of an existing dask.distributed scheduler")
    parser.add_argument("--normalize", choices=["none", "log1p", "total", "total_log1p"],
                        help="library-size normalisation / log1p before per-cell scaling "
                             "(default: as the model was trained; X as stored for published checkpoints)")
    parser.add_argument("--target-sum", type=float, help="library size for --normalize total* (default 1e4)")
    parser.add_argument("--gene-column", help="var column with gene identifiers (default: var index)")
    parser.add_argument("--id-type", default="auto",
                        choices=["auto", "symbol", "entrez", "ensembl", "mouse_symbol", "mouse_ensembl"])
    parser.add_argument("--gene-mapping", choices=["original", "extended"],
                        help="original: exactly the published pipeline's gene mapping (default for published "
                             "checkpoints); extended: also HGNC/MGI names (default: as the model was trained)")
    parser.add_argument("--layer", help="read this layer instead of X")
    parser.add_argument("--use-raw", action="store_true", help="read .raw.X with .raw.var instead of X")
    parser.add_argument("--modality", help="MuData modality holding the RNA (default: 'rna', else the one "
                        "RNA-like modality such as RNA, gex or 'Gene Expression')")
    parser.add_argument("--missing-chunks", default="error", choices=["error", "zeros"],
                        help="an absent chunk of a dense zarr X: error (default), or read it as zeros "
                             "(stores written with write_empty_chunks=False)")
    parser.add_argument("--min-coverage", type=float, default=0.5, help="minimum fraction of genes that must map")
    parser.add_argument("--allow-low-coverage", action="store_true", help="go on below --min-coverage")
    parser.add_argument("--allow-empty-cells", action="store_true", help="predict cells with no expression")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier translate output at --out (never anything else)")
    parser.add_argument("--onnx", help="ONNX file for --backend onnxruntime (default: exported on demand)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--url", help="Triton server HOST:PORT for --backend triton")
    parser.add_argument("--model-name", default="sctranslator", help="model name on the Triton server")
    parser.add_argument("--protocol", default="grpc", choices=["grpc", "http"], help="Triton protocol")
    parser.add_argument("--write-h5ad", help="also write a copy of the input with obsm['protein_expression']")
    parser.add_argument("--write-mudata", help="also write a MuData (.h5mu) with 'rna' and 'prot' modalities")
    parser.add_argument("--embeddings", action="store_true",
                        help="also write obsm['X_sctranslator']: mean encoder output over the cell's genes")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")

    def run(args: argparse.Namespace) -> int:
        from sctranslator.engine.translate import translate

        options = {}
        if args.backend == "triton":
            if not args.url:
                raise SctranslatorError("--backend triton needs --url HOST:PORT")
            options = {"url": args.url, "model_name": args.model_name, "protocol": args.protocol}
        result = translate(
            args.input, args.model, read_name_list(args.proteins) if args.proteins else None, out=args.out,
            backend=args.backend, device=args.device, batch_size=args.batch_size, block_cells=args.block_cells,
            workers=args.workers, scheduler=args.scheduler, normalize=args.normalize, target_sum=args.target_sum,
            gene_column=args.gene_column, id_type=args.id_type, layer=args.layer, use_raw=args.use_raw,
            modality=args.modality, missing_chunks=args.missing_chunks, min_coverage=args.min_coverage,
            allow_low_coverage=args.allow_low_coverage, allow_empty_cells=args.allow_empty_cells,
            overwrite=args.overwrite, onnx_path=args.onnx, precision=args.precision, backend_options=options,
            write_h5ad=args.write_h5ad, write_mudata=args.write_mudata, embeddings=args.embeddings,
            quiet=args.quiet, gene_mapping=args.gene_mapping)
        run_stats = result.uns["sctranslator"]["run"]
        coverage = result.uns["sctranslator"]["plan"]["coverage"]
        print(f"Wrote {result.n_obs} cells x {result.n_vars} proteins to {args.out}")
        print(f"  computed {run_stats['cells_computed']} cells in {run_stats['seconds']:.1f} s "
              f"({run_stats['cells_per_second']:.1f} cells/s); {run_stats['blocks_skipped']} blocks were already done")
        print(f"  gene coverage: {float(coverage['fraction']):.1%} of {coverage['basis']}")
        return 0

    return run


def read_name_list(spec: str) -> list[str]:
    """'A,B,C' or '@file' (one name per line, '#' comments) -> names."""
    if spec.startswith("@"):
        path = Path(spec[1:])
        if not path.is_file():
            raise SctranslatorError(f"name list file not found: {path}")
        lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
        return [line for line in lines if line]
    return [name.strip() for name in spec.split(",") if name.strip()]


# Sub-commands whose definitions live beside the API they wrap: (name, help, module, definer).
_EXTERNAL_COMMANDS = [
    ("evaluate", "score predictions against measured proteins (JSON report + plots)",
     "sctranslator.analysis.command", "define_evaluate"),
    ("knockout", "in-silico gene knockout: change of each protein per knocked-out gene",
     "sctranslator.analysis.analysis_command", "define_knockout"),
    ("attention", "attention-derived gene-gene, protein-protein and gene-protein interaction scores",
     "sctranslator.analysis.analysis_command", "define_attention"),
    ("export", "export a model to ONNX or a Triton model repository",
     "sctranslator.export.command", "define_export"),
    ("serve", "serve a model with a local Triton server (or print the container command)",
     "sctranslator.export.command", "define_serve"),
    ("finetune", "train or fine-tune a model on paired RNA + protein data into a bundle",
     "sctranslator.train.command", "define_finetune"),
    ("demo", "translate the bundled 500 held-out PBMCs and compare with the measured protein and a baseline",
     "sctranslator.train.command", "define_demo"),
]


def _register_external() -> None:
    for name, help_text, module, definer in _EXTERNAL_COMMANDS:
        if name not in _COMMANDS:
            _COMMANDS[name] = (help_text, getattr(importlib.import_module(module), definer))


def build_parser() -> argparse.ArgumentParser:
    _register_external()
    parser = argparse.ArgumentParser(prog="sctranslator", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, define) in _COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(handler=define(sub_parser))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except SctranslatorError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; committed work is kept and a re-run resumes", file=sys.stderr)
        return 130


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
