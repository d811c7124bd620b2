"""The `sctranslator` command: each sub-command is a thin wrapper over the Python API."""

from __future__ import annotations

import argparse
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
    parser.add_argument("--proteins", help="protein .h5ad, or comma-separated antibody names, or @file")

    def run(args: argparse.Namespace) -> int:
        from sctranslator.vocab import mapping_report_for_file

        proteins = args.proteins
        if proteins and not proteins.endswith(".h5ad"):
            proteins = read_name_list(proteins)
        print(mapping_report_for_file(args.input, column=args.column, id_type=args.id_type, proteins=proteins))
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


def build_parser() -> argparse.ArgumentParser:
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
