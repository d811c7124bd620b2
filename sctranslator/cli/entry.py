"""The `sctranslator` command: each sub-command is a thin wrapper over the Python API."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from sctranslator.errors import SctranslatorError
from sctranslator.options import (
    TRANSLATE_INPUTS,
    EngineOptions,
    InputOptions,
    OutputOptions,
    TranslateOptions,
    TritonOptions,
    add_data_and_model_args,
    parse_names,
)
from sctranslator.outputs import writing

Handler = Callable[[argparse.Namespace], int]
Definer = Callable[[argparse.ArgumentParser], Handler]
_COMMANDS: dict[str, tuple[str, Definer]] = {}


def command(name: str, help_text: str) -> Callable[[Definer], Definer]:
    """Register a sub-command: the decorated function fills its parser and returns the handler.

    Parameters
    ----------
    name : str
        The sub-command.
    help_text : str
        Its one-line help.

    Returns
    -------
    callable
        The decorator.
    """

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
    parser.add_argument("bundle", type=Path, nargs="?", help="output bundle directory (default: none; give it "
                        "or --name)")
    parser.add_argument("--name", help="also a model name: the bundle goes into the model home "
                        "($SCTRANSLATOR_MODELS, default ~/.local/share/sctranslator/models) and --model NAME "
                        "finds it (default: none)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier converted bundle at the output (nothing else; default: off)")

    def run(args: argparse.Namespace) -> int:
        from sctranslator.model import load_model, save_model
        from sctranslator.model.registry import BUNDLED, check_model_name, model_home
        from sctranslator.outputs import claim_output, write_identity
        from sctranslator.util.atomic import install_dir, staging_dir

        if (args.bundle is None) == (args.name is None):
            raise SctranslatorError("say where the bundle goes: a BUNDLE directory or --name NAME (one of them)")
        if args.name is not None:
            if check_model_name(args.name) in BUNDLED:
                raise SctranslatorError(f"{args.name!r} is the name of a bundled model; choose another name")
            target = model_home() / args.name
        else:
            target = args.bundle
        claim_output(target, "bundle", inputs=(args.checkpoint,), overwrite=args.overwrite)
        model = load_model(args.checkpoint)
        target.parent.mkdir(parents=True, exist_ok=True)
        with staging_dir(target) as staging:
            save_model(model, staging)
            write_identity(staging, "bundle")
            install_dir(staging, target)
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
        size = sum(f.stat().st_size for f in target.iterdir() if f.is_file())
        print(f"Wrote bundle {target} ({_format_size(size)})" + (f"; use it as --model {args.name}" if args.name
                                                                   else ""))
        return 0

    return run


@command("models", "list the models available by name: the bundled demo and converted bundles")
def _models(parser: argparse.ArgumentParser) -> Handler:
    parser.add_argument("--json", action="store_true", help="print the list as JSON instead of a table (default: off)")

    def run(args: argparse.Namespace) -> int:
        from sctranslator.model.registry import list_models, model_home

        entries = list_models()
        if args.json:
            print(json.dumps([entry.as_dict() for entry in entries], indent=2))
            return 0
        print(f"{'name':20s} {'origin':9s} {'parameters':>12s} {'L':>6s} {'gene panel':>10s} {'proteins':>9s} "
              f"{'size':>9s}  path")
        for entry in entries:
            def count(value: int | None, open_text: str) -> str:
                return f"{value:,}" if value is not None else open_text
            print(f"{entry.name:20s} {entry.origin:9s} {count(entry.parameters, '?'):>12s} "
                  f"{count(entry.max_genes, '?'):>6s} {count(entry.genes_in_panel, 'any'):>10s} "
                  f"{count(entry.proteins_in_panel, 'any'):>9s} {_format_size(entry.size_bytes):>9s}  {entry.path}")
            if entry.note:
                print(f"{'':20s} {entry.note}")
        print(f"converted models live in {model_home()} (sctranslator convert CHECKPOINT --name NAME)")
        return 0

    return run


@command("vocab", "report how a dataset's genes (and proteins) map onto model tokens")
def _vocab(parser: argparse.ArgumentParser) -> Handler:
    parser.add_argument("input", type=Path, help="RNA data, any input translate reads: .h5ad, AnnData .zarr store, "
                        ".h5mu (its RNA modality, see --modality)")
    InputOptions.add_cli_args(parser, only=("gene_column", "id_type", "gene_mapping", "modality", "layer",
                                            "use_raw"),
                              defaults={"gene_mapping": "original"})  # no model here: the published tables
    parser.add_argument("--column", dest="gene_column", help="the older spelling of --gene-column")
    parser.add_argument("--proteins", help="protein names: comma-separated, @file, or a data file whose var names "
                        "are the panel (.h5ad, .zarr, or an .h5mu's protein modality) (default: genes only)")

    def run(args: argparse.Namespace) -> int:
        from types import SimpleNamespace

        from sctranslator.engine.sources import open_source
        from sctranslator.vocab import mapping_report_for_file

        source = open_source(args.input, modality=args.modality, layer=args.layer, use_raw=args.use_raw)
        modality = getattr(source, "modality", None)
        data = SimpleNamespace(var=source.var, label=f"{args.input}" + (f" (modality '{modality}')"
                                                                       if modality else ""))
        proteins = args.proteins
        if proteins and _is_data_path(proteins):
            proteins = _protein_table(Path(proteins))
        elif proteins:
            proteins = read_name_list(proteins)
        print(mapping_report_for_file(data, column=args.gene_column, id_type=args.id_type, proteins=proteins,
                                      gene_mapping=args.gene_mapping or "original"))
        return 0

    return run


def _is_data_path(spec: str) -> bool:
    return spec.endswith((".h5ad", ".h5mu", ".zarr", ".zarr/")) or Path(spec).is_dir()


def _protein_table(path: Path) -> object:
    """The var table of a protein data file (an AnnData's, or a MuData's protein modality's), read
    without its matrix."""
    from types import SimpleNamespace

    from sctranslator.analysis.evaluate import pick_protein_modality
    from sctranslator.engine.sources import open_source

    modalities = _modalities(path)
    modality = pick_protein_modality(modalities, None, str(path), "a protein list") if modalities else None
    source = open_source(path, modality=modality)
    return SimpleNamespace(var=source.var, label=f"{path}" + (f" (modality '{modality}')" if modality else ""))


def _modalities(path: Path) -> list[str]:
    """The modality names of a MuData file or store ([] for an AnnData or anything unreadable here)."""
    import h5py
    import zarr

    try:
        if path.is_dir():
            group = zarr.open_group(str(path), mode="r")
            return sorted(group["mod"].group_keys()) if "mod" in group else []
        with h5py.File(path, "r") as handle:
            return sorted(handle["mod"].keys()) if "mod" in handle else []
    except (OSError, KeyError, ValueError, zarr.errors.GroupNotFoundError):
        return []  # open_source names what is wrong with the file


@command("translate", "predict protein abundance for every cell of a dataset")
def _translate(parser: argparse.ArgumentParser) -> Handler:
    add_data_and_model_args(parser, several=True)
    parser.add_argument("--out", required=True, help="output AnnData Zarr store (resumable); with several inputs, "
                        "a directory of one store per input plus collection.json")
    EngineOptions.add_cli_args(parser.add_argument_group("engine"))
    TritonOptions.add_cli_args(parser.add_argument_group("triton backend"))
    InputOptions.add_cli_args(parser.add_argument_group("input"), only=TRANSLATE_INPUTS)
    OutputOptions.add_cli_args(parser.add_argument_group("output"))

    def run(args: argparse.Namespace) -> int:
        from sctranslator.engine.translate import run_translate

        # The same options object translate() builds from its keywords, on the same path.
        options = TranslateOptions.from_cli_args(args)
        data = _translate_inputs(args)
        if isinstance(data, list):
            return _translate_collection(data, args, options)
        result = run_translate(data, args.model, options)
        run_stats = result.uns["sctranslator"]["run"]
        coverage = result.uns["sctranslator"]["plan"]["coverage"]
        print(f"Wrote {result.n_obs} cells x {result.n_vars} proteins to {args.out}")
        print(f"  computed {run_stats['cells_computed']} cells in {run_stats['seconds']:.1f} s "
              f"({run_stats['cells_per_second']:.1f} cells/s); {run_stats['blocks_skipped']} blocks were already done")
        print(f"  gene coverage: {float(coverage['fraction']):.1%} of {coverage['basis']}")
        return 0

    return run


def _translate_inputs(args: argparse.Namespace) -> str | list[str]:
    """translate's input: one path, or a list (several paths, a glob, --inputs @list.txt) for a collection."""
    from sctranslator.engine.collection import is_collection, read_input_list
    from sctranslator.errors import OptionError

    given = list(args.input) + (read_input_list(args.inputs) if args.inputs else [])
    if not given:
        raise OptionError("translate needs an INPUT (one or more paths, or a quoted glob) or --inputs @LIST")
    if len(given) == 1 and not args.inputs and not is_collection(given[0]):
        return given[0]
    return given


def _translate_collection(data: list[str], args: argparse.Namespace, options: TranslateOptions) -> int:
    """Run a collection and print one line per input; CollectionError (exit 2) when some failed."""
    from sctranslator.engine.collection import read_collection, summary_lines
    from sctranslator.engine.translate import translate
    from sctranslator.errors import CollectionError

    try:
        translate(data, args.model, **options.as_kwargs())
    except CollectionError as error:
        print("\n".join(summary_lines(error.entries)))
        raise
    entries = (read_collection(args.out, options.output.storage_options) or {}).get("inputs", [])
    print(f"Wrote {len(entries)} stores ({sum(int(e['cells']) for e in entries)} cells) to {args.out}:")
    print("\n".join(summary_lines(entries)))
    return 0


def define_demo(parser: argparse.ArgumentParser) -> Handler:
    """Declare ``sctranslator demo [--out DIR]``: the bundled model on 500 held-out PBMCs, against the baseline.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The ``demo`` command's parser.

    Returns
    -------
    callable
        The handler: parsed arguments -> exit status.
    """
    parser.add_argument("--out", type=Path, default=Path("sctranslator-demo"),
                        help="where predictions and the metrics table go (default: %(default)s)")
    parser.add_argument("--workers", type=int, help="concurrent blocks for translate (default: from the cores "
                        "and the model size, never oversubscribed; see docs/howto/clusters.md)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier demo output at --out (nothing else; default: off)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no INFO messages, no library "
                        "warnings (default: off)")

    def run(args: argparse.Namespace) -> int:
        from sctranslator.cli.demo import format_table, run_demo

        report = run_demo(args.out, workers=args.workers, overwrite=args.overwrite, quiet=args.quiet)
        print(format_table(report))
        print(f"predictions: {report['predictions']}\nmetrics: {report['metrics_file']}")
        return 0

    return run


read_name_list = parse_names  # 'A,B,C' or '@file' -> names (the one parser of name lists)


# Sub-commands whose definitions live beside the API they wrap: (name, help, module, definer).
_EXTERNAL_COMMANDS = [
    ("evaluate", "score predictions against measured proteins (JSON report + plots)",
     "sctranslator.analysis.commands", "define_evaluate"),
    ("knockout", "in-silico gene knockout: change of each protein per knocked-out gene",
     "sctranslator.analysis.commands", "define_knockout"),
    ("attention", "attention-derived gene-gene, protein-protein and gene-protein interaction scores",
     "sctranslator.analysis.commands", "define_attention"),
    ("export", "export a model to ONNX or a Triton model repository",
     "sctranslator.export.command", "define_export"),
    ("serve", "serve a model with a local Triton server (or print the container command)",
     "sctranslator.export.command", "define_serve"),
    ("finetune", "train or fine-tune a model on paired RNA + protein data into a bundle",
     "sctranslator.train.command", "define_finetune"),
    ("demo", "translate the bundled 500 held-out PBMCs and compare with the measured protein and a baseline",
     "sctranslator.cli.entry", "define_demo"),
]


def _register_external() -> None:
    for name, help_text, module, definer in _EXTERNAL_COMMANDS:
        if name not in _COMMANDS:
            _COMMANDS[name] = (help_text, getattr(importlib.import_module(module), definer))


class _Parser(argparse.ArgumentParser):
    """argparse with the one error format of the command line: `error: ...` on stderr, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"error: UsageError: {message} (see `{self.prog} --help`)\n")


class _TqdmHandler(logging.Handler):
    """Log records written around a progress bar (tqdm.write), never through the middle of it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never raise
            self.handleError(record)


def _configure_output(args: argparse.Namespace) -> None:
    """INFO logs (DEBUG with -v) routed around progress bars; with --quiet only our warnings and errors,
    and no library warnings (anndata's 'storing as categorical', mudata's, numba's ...)."""
    quiet = bool(getattr(args, "quiet", False))
    verbose = _verbosity(args)
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    # Libraries speak at WARNING and above (zarr, numcodecs, fsspec and asyncio log hundreds of DEBUG lines,
    # mudata and matplotlib INFO chatter) unless -vv; the package at INFO (DEBUG with -v, WARNING with --quiet).
    logging.basicConfig(level=logging.DEBUG if verbose >= 2 else logging.WARNING, handlers=[handler], force=True)
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.getLogger("sctranslator").setLevel(level)
    if quiet:
        warnings.simplefilter("ignore")  # the package reports through logging, not the warnings module


def _state_defaults(parser: argparse.ArgumentParser) -> None:
    """Every option's help says its default: on/off flags "(default: off)", unset values "(default: none)"."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _state_defaults(sub)
            continue
        optional_positional = not action.option_strings and action.nargs in ("?", "*")
        if ((not action.option_strings and not optional_positional) or action.help in (None, argparse.SUPPRESS)
                or "default" in action.help or action.default == argparse.SUPPRESS):  # --help, --version: not settings
            continue
        if action.nargs == 0:
            # A flag's help says what giving it does, so its default is "on" only when leaving it out already
            # gives that value (never, for store_true / store_false / count): a `--no-...` flag is off too.
            on = action.const is not None and action.default == action.const
            action.help += f" (default: {'on' if on else 'off'})"
        elif action.default is None and not action.required:
            action.help += " (default: none)"


_VERBOSE_HELP = ("-v: sctranslator's own debug messages; -vv: also the libraries' (zarr, numcodecs, fsspec, "
                 "asyncio, numba ...), which otherwise stay at warnings")


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    """`-v` after the sub-command too (its own dest: a sub-parser's namespace would replace the top-level count),
    also on nested sub-commands such as `export onnx`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _add_verbose(sub)
    if "-v" not in parser._option_string_actions:
        parser.add_argument("-v", "--verbose", action="count", default=0,
                            dest="verbose_" + parser.prog.replace(" ", "_"), help=_VERBOSE_HELP)


def _verbosity(args: argparse.Namespace) -> int:
    """The number of -v given before and after the sub-command(s)."""
    return sum(value for key, value in vars(args).items()
               if (key == "verbose" or key.startswith("verbose_")) and isinstance(value, int))


WAIT_HELP = ("when another job is writing the same output, wait for it to finish (then the output is checked "
             "afresh) instead of refusing (default: off)")


def _add_wait(parser: argparse.ArgumentParser) -> None:
    """Every sub-command that writes an output (it has --overwrite) also takes --wait."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _add_wait(sub)
    options = {flag for action in parser._actions for flag in action.option_strings}
    if "--overwrite" in options and "--wait" not in options:
        parser.add_argument("--wait", action="store_true", help=WAIT_HELP)


def build_parser() -> argparse.ArgumentParser:
    """The ``sctranslator`` command line with every sub-command.

    Returns
    -------
    argparse.ArgumentParser
        The parser.
    """
    _register_external()
    from sctranslator import __version__

    parser = _Parser(prog="sctranslator", description=__doc__)
    parser.add_argument("--version", action="version", version=f"sctranslator {__version__}",
                        help="print the package version and exit")
    parser.add_argument("-v", "--verbose", action="count", default=0, help=_VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, define) in _COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)  # inherits _Parser
        sub_parser.set_defaults(handler=define(sub_parser))
        _add_verbose(sub_parser)
    _add_wait(parser)
    _state_defaults(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line: a named error is one line on stderr and exit status 2.

    Parameters
    ----------
    argv : sequence of str or None
        The arguments; None: ``sys.argv[1:]``.

    Returns
    -------
    int
        The exit status: the handler's (0 on success), 2 for an error a user can fix, 130 when
        interrupted (committed work is kept).
    """
    try:
        # option values are converted while parsing (e.g. `--cells @names.txt` reads the file)
        args = build_parser().parse_args(argv)
    except SctranslatorError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    _configure_output(args)
    try:
        # One scope per command: every output it claims stays locked until it ends (sctranslator.outputs).
        with writing(bool(getattr(args, "wait", False))):
            return int(args.handler(args) or 0)
    except SctranslatorError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; committed work is kept and a re-run resumes", file=sys.stderr)
        return 130


def print_json(data: object) -> None:
    """Print `data` as indented JSON (what is not JSON as its str).

    Parameters
    ----------
    data : object
        JSON-able data.
    """
    print(json.dumps(data, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
