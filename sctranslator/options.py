"""Typed options shared by the Python API and the command line, each declared once.

Every choice is a `Literal` type; its tuple of values (`typing.get_args`) is the one list that the
API checks and the CLI offers. Options come in groups (dataclasses); each field carries its type,
default, choices and help text, and `add_cli_args` / `from_cli_args` turn a group into argparse
arguments and back, as vLLM's EngineArgs does. A command picks the fields it supports (`only`) and
may give its own default for a field (`defaults`).

This module is a leaf (standard library and `sctranslator.errors` only): the CLI imports it at
start-up, so it must not load torch, anndata or numba.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, get_args, get_origin

from sctranslator.errors import InputDataError, OptionError, SctranslatorError, StoreError
from sctranslator.util.storage import parse_storage_options

# -- choices -------------------------------------------------------------------------------------------

Normalize = Literal["none", "log1p", "total", "total_log1p"]
IdType = Literal["auto", "symbol", "entrez", "ensembl", "mouse_symbol", "mouse_ensembl"]
BackendName = Literal["auto", "torch", "onnxruntime", "triton"]
Precision = Literal["fp32", "fp16", "bf16"]
TrainPrecision = Literal["fp32", "bf16"]
TritonProtocol = Literal["grpc", "http"]
TargetScaling = Literal["minmax", "clr", "log1p"]
KnockoutSemantics = Literal["drop", "zero"]
Decay = Literal["cosine", "linear", "constant"]
Freezable = Literal["embeddings", "encoder", "translator", "decoder"]
MissingChunks = Literal["error", "zeros"]
GeneMappingMode = Literal["original", "extended"]
Preset = Literal["published", "small", "tiny"]
ServingBackend = Literal["onnxruntime", "tensorrt", "python"]
InstanceKind = Literal["gpu", "cpu"]

NORMALIZE_MODES: tuple[str, ...] = get_args(Normalize)
ID_TYPES: tuple[str, ...] = get_args(IdType)  # "auto" first: detect the kind from the identifiers
BACKENDS: tuple[str, ...] = get_args(BackendName)
PRECISIONS: tuple[str, ...] = get_args(Precision)
TRAIN_PRECISIONS: tuple[str, ...] = get_args(TrainPrecision)
TRITON_PROTOCOLS: tuple[str, ...] = get_args(TritonProtocol)
TARGET_SCALINGS: tuple[str, ...] = get_args(TargetScaling)
KNOCKOUT_SEMANTICS: tuple[str, ...] = get_args(KnockoutSemantics)
DECAYS: tuple[str, ...] = get_args(Decay)
FREEZABLE: tuple[str, ...] = get_args(Freezable)
MISSING_CHUNKS: tuple[str, ...] = get_args(MissingChunks)
GENE_MAPPINGS: tuple[str, ...] = get_args(GeneMappingMode)
PRESETS: tuple[str, ...] = get_args(Preset)
SERVING_BACKENDS: tuple[str, ...] = get_args(ServingBackend)
INSTANCE_KINDS: tuple[str, ...] = get_args(InstanceKind)

DEFAULT_MIN_COVERAGE = 0.5
DEFAULT_TARGET_SUM = 1e4


def check_choice(name: str, value: Any, choices: Any, *, optional: bool = False,
                 error: type[SctranslatorError] = OptionError) -> None:
    """Refuse a value that is not one of its choices, naming the option, the value and the choices.

    Parameters
    ----------
    name : str
        The option's name, for the message.
    value : object
        The value given.
    choices : Literal type or tuple
        The allowed values.
    optional : bool
        Accept None as well.
    error : type
        The error raised.

    Raises
    ------
    OptionError
        (or `error`) `value` is not one of the choices.
    """
    allowed = get_args(choices) if get_origin(choices) is Literal else tuple(choices)
    if value is None and optional:
        return
    if value not in allowed:
        raise error(f"unknown {name} {value!r}; choose one of {', '.join(map(str, allowed))}")


# The first bytes of the binary files people point @FILE at by mistake: HDF5 (.h5ad, .h5mu, .h5), zip, gzip.
_BINARY_SIGNATURES = (b"\x89HDF\r\n\x1a\n", b"PK\x03\x04", b"\x1f\x8b")


def parse_names(spec: str) -> list[str]:
    """Names from a command-line list: 'A,B,C' or '@file' (UTF-8 text: one name per line, '#' comments).

    Parameters
    ----------
    spec : str
        The list as typed.

    Returns
    -------
    list of str
        The names, in order, blanks dropped.

    Raises
    ------
    OptionError
        The @file does not exist, is a directory (a Zarr store), is not UTF-8 text (an .h5ad / .h5mu,
        a zip or gzip file) or lists no name.
    """
    if not spec.startswith("@"):
        return [name.strip() for name in spec.split(",") if name.strip()]
    path = Path(spec[1:]).expanduser()
    fix = ("@FILE takes a text file with one name per line; for the names of an AnnData's var, write them out "
           "first, e.g. `python -c \"import anndata; print(*anndata.read_h5ad('protein.h5ad').var_names, "
           "sep='\\n')\" > names.txt`, or give them comma-separated")
    if path.is_dir():
        raise OptionError(f"{spec}: {path} is a directory (a Zarr store?), not a text file; {fix}")
    if not path.is_file():
        raise OptionError(f"{spec}: name list file not found: {path}")
    raw = path.read_bytes()
    try:
        if raw.startswith(_BINARY_SIGNATURES) or b"\0" in raw[:65536]:
            raise UnicodeDecodeError("utf-8", raw[:1], 0, 1, "binary data")
        text = raw.decode("utf-8-sig")  # a BOM from Windows editors is not part of the first name
    except UnicodeDecodeError:
        raise OptionError(f"{spec}: {path} is not a text file (an .h5ad / .h5mu or other binary file?); "
                          f"{fix}") from None
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    names = [line for line in lines if line]
    if not names:
        raise OptionError(f"{spec}: {path} lists no names (one name per line; '#' starts a comment)")
    return names


_INPUT_KINDS = (".h5ad, AnnData .zarr store (v2/v3), .h5mu / MuData zarr (the RNA modality), a TileDB-SOMA "
                "experiment (see --measurement), or one of these files or stores at an s3://, gs:// or "
                "http(s):// URL")


def add_data_and_model_args(parser: argparse.ArgumentParser, *, several: bool = False) -> None:
    """Add INPUT, --model and --proteins, as translate, knockout and attention take them.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The command's parser.
    several : bool
        INPUT may be repeated or a glob, and --inputs @list.txt names more (translate's collections).
    """
    if several:
        parser.add_argument("input", nargs="*", help=f"{_INPUT_KINDS}; several, or a quoted glob, translate each "
                            "into its own store in --out DIR (a collection)")
        parser.add_argument("--inputs", metavar="@LIST", help="a text file of inputs, one path per line (blank "
                            "lines and '#' comments ignored), translated as a collection into --out DIR")
    else:
        parser.add_argument("input", help=_INPUT_KINDS)
    parser.add_argument("--model", required=True, help="bundle directory, official .pt checkpoint, or a model name "
                        "(demo, or one added by `sctranslator convert --name`; `sctranslator models` lists them)")
    parser.add_argument("--proteins", help="comma-separated antibody or gene names, or @file "
                        "(default: the model's protein panel, when it has one)")


# -- declarations --------------------------------------------------------------------------------------

def option(default: Any = None, help: str = "", *, none_means: str | None = None, flag: str | None = None,
           aliases: tuple[str, ...] = (), metavar: str | None = None, cli: bool = True,
           parse: Callable[[str], Any] | None = None) -> Any:
    """Declare a dataclass field together with its command-line form.

    Parameters
    ----------
    default : object
        The default value (lists, dicts and sets become a default factory).
    help : str
        What the option does; the command line appends the default and the choices.
    none_means : str or None
        What a None default stands for ("the model's own setting"), shown as the default.
    flag : str or None
        The option string; None: ``--field-name``. A True boolean needs a ``--no-...`` flag.
    aliases : tuple of str
        Further option strings.
    metavar : str or None
        The value's name in ``--help``.
    cli : bool
        False keeps the option in the Python API only.
    parse : callable or None
        Converts the command-line string (e.g. a name list) into the API's value.

    Returns
    -------
    dataclasses.Field
        The field, its declaration in ``metadata``.
    """
    metadata = {"help": help, "none_means": none_means, "flag": flag, "aliases": aliases, "metavar": metavar,
                "cli": cli, "parse": parse}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _names_tuple(spec: str) -> tuple[str, ...]:
    return tuple(parse_names(spec))


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """(the type inside Optional[...], whether None is allowed)."""
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        return (args[0] if len(args) == 1 else hint), len(args) < len(get_args(hint))
    return hint, False


def _help(text: str, default: Any, choices: tuple[str, ...] | None, none_means: str | None,
          is_flag: bool) -> str:
    notes = []
    if choices:
        notes.append("one of %(choices)s")
    if is_flag:
        # add_cli_args always makes the flag the departure from the default, so leaving it out is "off"
        # (also for a `--no-...` flag that turns a True field off).
        notes.append("default: off")
    else:
        if default is None or default == [] or default == ():
            if none_means:
                notes.append(f"default: {none_means}")
        else:
            notes.append("default: %(default)s")
    return f"{text} ({'; '.join(notes)})" if notes else text


G = TypeVar("G", bound="OptionGroup")


class OptionGroup:
    """Base of the option groups: command-line arguments from the fields, values back from a namespace."""

    @classmethod
    def _hints(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls)

    @classmethod
    def cli_fields(cls, only: Iterable[str] | None = None) -> list[dataclasses.Field]:
        """The fields offered on the command line.

        Parameters
        ----------
        only : iterable of str or None
            These fields, in this order; None: every field declared for the command line.

        Returns
        -------
        list of dataclasses.Field
            The fields.

        Raises
        ------
        KeyError
            A name in `only` that is not a field.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        names = list(only) if only is not None else [n for n, f in fields.items() if f.metadata.get("cli", True)]
        unknown = [n for n in names if n not in fields]
        if unknown:
            raise KeyError(f"{cls.__name__} has no option {unknown}")
        return [fields[n] for n in names]

    @classmethod
    def add_cli_args(cls, parser: argparse.ArgumentParser | Any, *, only: Iterable[str] | None = None,
                     defaults: Mapping[str, Any] | None = None, helps: Mapping[str, str] | None = None) -> None:
        """Add one argument per field to `parser` (or an argument group).

        Parameters
        ----------
        parser : argparse.ArgumentParser or argument group
            Where the arguments go.
        only : iterable of str or None
            The fields to add; None: every field declared for the command line.
        defaults : mapping or None
            This command's default for some fields.
        helps : mapping or None
            This command's help text for some fields.
        """
        hints = cls._hints()
        for f in cls.cli_fields(only):
            meta = f.metadata
            default = (defaults or {}).get(f.name, _field_default(f))
            inner, _ = _unwrap(hints[f.name])
            choices = get_args(inner) if get_origin(inner) is Literal else None
            flag = meta.get("flag") or "--" + f.name.replace("_", "-")
            kwargs: dict[str, Any] = {"dest": f.name, "default": default}
            is_flag = inner is bool
            if is_flag:
                if meta.get("flag") and bool(default) != bool(_field_default(f)):
                    # a declared flag such as --no-plots names one direction; flipping its default would
                    # make it do the opposite of its name
                    raise ValueError(f"{cls.__name__}.{f.name}: {meta['flag']} cannot take the default {default!r}")
                kwargs["action"] = "store_false" if default else "store_true"
            else:
                kwargs["type"] = meta.get("parse") or _scalar_type(inner)
                if choices:
                    kwargs["choices"] = choices
                if meta.get("metavar"):
                    kwargs["metavar"] = meta["metavar"]
            text = (helps or {}).get(f.name, meta.get("help", ""))
            kwargs["help"] = _help(text, default, choices, meta.get("none_means"), is_flag)
            parser.add_argument(flag, *meta.get("aliases", ()), **kwargs)

    @classmethod
    def from_cli_args(cls: type[G], namespace: argparse.Namespace, **extra: Any) -> G:
        """The group from a parsed namespace: fields the command did not offer keep their defaults.

        Parameters
        ----------
        namespace : argparse.Namespace
            The parsed arguments.
        **extra
            Values that replace the namespace's.

        Returns
        -------
        OptionGroup
            An instance of the group's class, not yet checked.
        """
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        values = {n: getattr(namespace, n) for n in names if hasattr(namespace, n)}
        values.update(extra)
        return cls(**values)

    def check(self) -> None:
        """Raise OptionError for any Literal-typed field whose value is not one of its choices."""
        for name, hint in self._hints().items():
            inner, optional = _unwrap(hint)
            if get_origin(inner) is Literal:
                check_choice(name, getattr(self, name), inner, optional=optional)

    def as_kwargs(self, only: Iterable[str] | None = None, skip: Iterable[str] = ()) -> dict[str, Any]:
        """The fields as keyword arguments.

        Parameters
        ----------
        only : iterable of str or None
            These fields; None: all.
        skip : iterable of str
            Fields left out.

        Returns
        -------
        dict
            Field name -> value.
        """
        names = list(only) if only is not None else [f.name for f in dataclasses.fields(self)]  # type: ignore
        return {n: getattr(self, n) for n in names if n not in set(skip)}


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _scalar_type(hint: Any) -> Callable[[str], Any]:
    if get_origin(hint) is Literal:
        return str
    if hint in (int, float, str):
        return hint
    if hint is Path:
        return Path
    return str


def check_choices(**values: Any) -> None:
    """Check keyword values against the declared choices of the options of the same names.

    Parameters
    ----------
    **values
        Option name -> value, e.g. ``check_choices(backend=backend, normalize=normalize)``.

    Raises
    ------
    OptionError
        A value outside its option's choices (the message lists them).
    """
    for name, value in values.items():
        hint = _CHOICE_HINTS[name]
        inner, optional = _unwrap(hint)
        check_choice(name, value, inner, optional=optional)


# -- groups --------------------------------------------------------------------------------------------

@dataclass
class InputOptions(OptionGroup):
    """How the input matrix is read and aligned to the model (translate, knockout, attention)."""

    layer: str | None = option(None, "read this layer instead of X (a SOMA experiment: the X layer)",
                               none_means="X; a SOMA experiment: raw when present, else its only layer")
    gene_column: str | None = option(None, "var column holding the gene identifiers",
                                     none_means="the var index; a SOMA experiment: feature_name")
    id_type: IdType = option("auto", "kind of gene identifier; auto detects it from the identifiers")
    normalize: Normalize | None = option(
        None, "library-size normalisation and/or log1p before the per-cell scaling",
        none_means="as the model was trained (recorded in a bundle); X as stored for published checkpoints")
    target_sum: float | None = option(None, "library size for --normalize total / total_log1p",
                                      none_means="the model's recorded value, else 10000")
    min_coverage: float = option(DEFAULT_MIN_COVERAGE, "minimum gene coverage, 0.5 = 50%%: the fraction of the "
                                 "model's gene panel found in the data (published checkpoints: of the dataset's "
                                 "genes that map onto the vocabulary)")
    allow_low_coverage: bool = option(False, "go on (with a warning) below --min-coverage")
    allow_empty_cells: bool = option(False, "predict cells with no counts in any gene the model reads (all-zero "
                                     "cells included) instead of refusing them; their number is recorded")
    use_raw: bool = option(False, "read adata.raw (its X and var) instead of X")
    modality: str | None = option(None, "MuData (.h5mu) modality holding the RNA",
                                  none_means="'rna', else the one RNA-like modality (RNA, gex, 'Gene Expression')")
    measurement: str | None = option(None, "TileDB-SOMA experiment: the measurement holding the RNA",
                                     none_means="RNA")
    missing_chunks: MissingChunks = option(
        "error", "a chunk of X absent from a Zarr store: error refuses; zeros reads it as zeros (stores written "
        "with write_empty_chunks=False)")
    gene_mapping: GeneMappingMode | None = option(
        None, "how gene identifiers become model tokens: original = the published scTranslator tables only; "
        "extended = also through the wider identifier tables", none_means="the model's own setting")
    cells: tuple[str, ...] | None = option(None, "only these cells (obs names: A,B or @file), in the input's "
                                           "order", none_means="all cells", parse=_names_tuple)
    obs_query: str | None = option(None, "only the cells where this pandas expression over obs holds, e.g. "
                                   "\"cell_type == 'B cell'\" (a SOMA experiment: a SOMA value_filter, evaluated "
                                   "by TileDB)", none_means="all cells")
    obs_columns: tuple[str, ...] | None = option(None, "only these obs columns travel into the output's obs (A,B or "
                                                 "@file; a SOMA experiment's soma_joinid always does)",
                                                 none_means="all of them", parse=_names_tuple)
    max_cells: int | None = option(None, "only the first N cells (of the selection): try a model on a few cells",
                                   none_means="all cells")


# The input options each command offers (and passes to its API function).
TRANSLATE_INPUTS = tuple(f.name for f in dataclasses.fields(InputOptions))
# Only translate writes obs into its output; knockout and attention take the cell selection
# (--cells / --obs-query / --max-cells) too, and summarise over the selected cells.
_SOURCE_ONLY = ("obs_columns",)
ANALYSIS_INPUTS = tuple(name for name in TRANSLATE_INPUTS if name not in _SOURCE_ONLY)  # knockout and attention


@dataclass
class EngineOptions(OptionGroup):
    """Where and how the model runs (translate; knockout and attention take device and sizes)."""

    backend: BackendName = option("auto", "inference backend: auto (the fastest exact path for the device and model; "
                              "the choice and its reason go into the provenance), torch (in process), onnxruntime "
                              "(exported ONNX graphs), triton (a Triton server at --url)")
    device: str = option("cpu", "cpu, cuda or cuda:N")
    precision: Precision = option("fp32", "compute dtype: fp32 is exact; bf16 / fp16 (opt-in) run the dense layers in "
                                  "that dtype and keep the attention features, maxima and sums in fp32 (torch on "
                                  "CPUs with native bf16/fp16 and on CUDA; the graphs onnxruntime exports); not "
                                  "with triton: a server runs the graph it was exported with")
    batch_size: int | None = option(None, "cells per model call",
                                    none_means="on CUDA (torch) from free device memory; else from the model "
                                    "size, 1 for the full-size model on CPU")
    block_cells: int | None = option(None, "cells per block, the unit of work and resume",
                                     none_means="from the model size and the number of cells")
    workers: int | None = option(None, "concurrent blocks on the local scheduler",
                                 none_means="from the cores this process may use (affinity, cgroup quota) and the "
                                 "model size, so that blocks x intra-op threads never exceed them; recorded in "
                                 "the provenance")
    scheduler: str | None = option(None, "address of an existing dask.distributed scheduler",
                                   none_means="a local scheduler; with --device cuda and several GPUs, a local "
                                   "cluster of one worker per GPU")
    onnx_path: str | None = option(None, "ONNX file for --backend onnxruntime", flag="--onnx", metavar="FILE",
                                   none_means="exported on demand and cached")
    compile: bool = option(False, "torch backend: run the model's blocks through torch.compile (the first "
                           "batches are slower while it compiles)")


@dataclass
class TritonOptions(OptionGroup):
    """The Triton server used by `--backend triton` (passed to translate as `backend_options`).

    Every default is None, so that what the user gave can be told from what was left alone: a
    given option is refused with a backend that does not use it (engine.backends.capabilities).
    """

    url: str | None = option(None, "Triton server HOST:PORT (needed for --backend triton)", none_means="none")
    model_name: str | None = option(None, "model name on the Triton server",
                                     none_means="sctranslator with --backend triton")
    protocol: TritonProtocol | None = option(None, "Triton protocol", none_means="grpc with --backend triton")
    timeout_s: float | None = option(None, "seconds one request to the server may take before it is retried",
                                     flag="--timeout", metavar="SECONDS", none_means="60 s with --backend triton")
    ready_timeout_s: float | None = option(None, "seconds to wait for the server and model to report ready",
                                           flag="--ready-timeout", metavar="SECONDS",
                                           none_means="60 s with --backend triton")

    def given(self) -> dict[str, Any]:
        """The options the user set, to pass on as translate's `backend_options`.

        Returns
        -------
        dict
            Option name -> value, for every field that is not None.
        """
        return {name: value for name, value in self.as_kwargs().items() if value is not None}


@dataclass
class OutputOptions(OptionGroup):
    """What is written besides the predictions, and how the run reports."""

    write_h5ad: str | None = option(None, "also write a copy of the input with the predictions in obsm[KEY] "
                                    "(a DataFrame), provenance in uns[KEY]", metavar="PATH")
    write_mudata: str | None = option(None, "also write a MuData (.h5mu): the input's modalities (an AnnData as "
                                      "'rna') and the predictions as a new modality KEY", metavar="PATH")
    key: str | None = option(None, "where --write-h5ad / --write-mudata (inplace=True) put the predictions: the "
                             "obsm key of an AnnData, the modality of a MuData; an existing one is refused",
                             metavar="KEY", none_means="protein_predicted (AnnData), prot_predicted (MuData)")
    replace_key: bool = option(False, "replace what the input already holds under --key KEY (needs --key; "
                               "e.g. an earlier prediction). Without it nothing there is ever replaced")
    embeddings: bool = option(False, "also write obsm['X_sctranslator']: the mean encoder output over the "
                              "cell's genes (torch backend)")
    overwrite: bool = option(False, "replace an earlier sctranslator output of the same kind at the output path "
                             "(never anything else, never an input)")
    wait: bool = option(False, "when another job is writing the same output, wait for it to finish (then the "
                        "output is checked afresh) instead of refusing")
    quiet: bool = option(False, "no progress bar")
    storage_options: dict[str, Any] | None = option(
        None, "fsspec options for s3://, gs:// and http(s):// inputs and outputs, as a JSON object (credentials, "
        "endpoint_url, anon, ...)", metavar="JSON", parse=parse_storage_options,
        none_means="the standard environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...)")


@dataclass
class AnalysisOptions(OptionGroup):
    """Knockout and attention settings."""

    groupby: str | None = option(None, "obs column: also report each group of cells separately",
                                 none_means="all cells together")
    semantics: KnockoutSemantics | None = option(
        None, "knockout: drop removes the gene's column as the original does; zero sets its expression to 0",
        none_means="drop for published checkpoints, zero for fixed-panel models")
    per_cell: bool = option(False, "knockout: also write every cell's changes")
    top_k: int = option(20, "attention: genes listed per protein in top_genes.csv, and partners listed per "
                        "gene / protein in top_gene_pairs.csv / top_protein_pairs.csv")
    as_published: bool = option(False, "attention: take each layer's attention from the post-residual state, "
                                "as the original script did")
    row_block: int = option(2048, "attention: genes at a time through the translator", cli=False)


@dataclass
class EvaluateOptions(OptionGroup):
    """How predictions are scored."""

    scaling: TargetScaling | None = option(None, "per-cell scaling of the measured counts",
                                           none_means="the scale translate recorded for the model's outputs, else "
                                           "minmax (the original's training target)")
    baseline: str | None = option(None, "a second predictions store to score side by side (e.g. the ridge "
                                  "baseline)", none_means="none")
    cosine_batch_size: int | None = option(None, "cells per batch for the cosine score", flag="--cosine-batch",
                                           none_means="all cells at once")
    plots: bool = option(True, "write report.json only, no figures", flag="--no-plots")
    min_matched: float = option(0.5, "least fraction of the smaller side's cells (predicted or measured) that "
                                "must match by name; fewer is refused as a mix-up of datasets (0 accepts any)")
    truth_modality: str | None = option(None, "MuData modality (or SOMA measurement) of --truth holding the "
                                        "measured proteins",
                                        none_means="'prot', else the one modality named like proteins (protein, "
                                        "adt, cite, antibody)")
    model: str | None = option(None, "the model bundle that made the predictions, to tell training cells from "
                               "held-out ones", none_means="the bundle translate recorded, if it is still there")


@dataclass
class TrainDataOptions(OptionGroup):
    """finetune: which data, how it is split, and how inputs and targets are scaled."""

    proteins: tuple[str, ...] | None = option(None, "train on these protein columns only (A,B or @file)",
                                              none_means="all but isotype controls", parse=_names_tuple)
    genes: tuple[str, ...] | None = option(None, "gene panel from these genes only", cli=False)
    protein_key: str = option("protein_expression", "obsm key of an embedded protein table, or the MuData "
                              "modality or SOMA measurement holding the proteins (by default the one named like "
                              "proteins: prot, protein, ADT, Antibody Capture..., any case)")
    layer: str | None = option(None, "RNA layer to read instead of X", none_means="X")
    use_raw: bool = option(False, "read the RNA from adata.raw (its X and var) instead of X")
    modality: str | None = option(None, "MuData modality holding the RNA", none_means="'rna', else the one "
                                  "RNA-like modality")
    measurement: str | None = option(None, "TileDB-SOMA experiment: the measurement holding the RNA (the proteins: "
                                     "--protein-key, else the one named like proteins)", none_means="RNA")
    missing_chunks: MissingChunks = option(
        "error", "a chunk of X absent from a Zarr store: error refuses; zeros reads it as zeros")
    gene_column: str | None = option(None, "var column holding the gene identifiers", none_means="the var index")
    id_type: IdType = option("auto", "kind of gene identifier; auto detects it from the identifiers")
    gene_mapping: GeneMappingMode | None = option(
        None, "how gene identifiers become model tokens (recorded in the bundle): original = the published "
        "scTranslator tables only; extended = also through the wider identifier tables",
        none_means="the --init bundle's, else extended")
    normalize: Normalize | None = option(None, "library-size normalisation and/or log1p of the RNA (recorded "
                                         "in the bundle, so translate repeats it)",
                                         none_means="the --init bundle's, else total_log1p")
    target_sum: float | None = option(None, "library size for --normalize total / total_log1p",
                                      none_means=f"the --init bundle's, else {DEFAULT_TARGET_SUM:g}")
    target_scaling: TargetScaling | None = option(None, "per-cell scaling of the protein targets (recorded in the "
                                                  "bundle)", none_means="the --init bundle's, else minmax")
    val_fraction: float = option(0.1, "fraction of cells held out for validation (seeded)")
    val_count: int | None = option(None, "number of cells held out (seeded; overrides the fraction)",
                                   none_means="from --val-fraction")
    split_column: str | None = option(None, "obs column to split by (e.g. donor, batch)",
                                      none_means="random cells")
    val_values: tuple[str, ...] | None = option(None, "values of --split-column held out (A,B)",
                                                none_means="none", parse=_names_tuple)
    allow_low_coverage: bool = option(False, "go on (with a warning) when few genes map")
    allow_empty_cells: bool = option(False, "train on paired cells with no counts in any panel gene (as constant "
                                     "cells; their number goes in the model card)")


@dataclass
class TrainOptions(OptionGroup):
    """finetune: how to train. `steps` (optimizer steps) or `epochs` sets the length; batch_size is per process."""

    steps: int | None = option(None, "optimizer steps", none_means="from --epochs")
    epochs: float | None = option(None, "passes over the training cells", none_means="1 when --steps is not given")
    batch_size: int = option(16, "cells per process per micro-batch")
    accumulation: int = option(1, "micro-batches per optimizer step")
    lr: float = option(1e-3, "peak learning rate (AdamW)")
    weight_decay: float = option(0.01, "AdamW weight decay")
    warmup_steps: int | None = option(None, "linear warm-up steps", none_means="5%% of the steps")
    decay: Decay = option("cosine", "learning-rate decay after the warm-up")
    min_lr_ratio: float = option(0.0, "final learning rate as a fraction of the peak", cli=False)
    clip_norm: float | None = option(1.0, "gradient clipping norm (0 = off)")
    precision: TrainPrecision = option("fp32", "training compute dtype (bf16: autocast on CUDA)")
    freeze: tuple[str, ...] = option((), "parts to freeze: embeddings,encoder,translator,decoder",
                                     none_means="none", parse=_names_tuple)
    seed: int = option(0, "seed of the split, the data order and new weights")
    block_cells: int = option(1024, "paired cells per block read from each dataset (the unit of the shuffled order)")
    shuffle_blocks: int = option(16, "blocks per shuffle window: cells are shuffled within a window; at most two "
                                 "windows of raw blocks are held")
    gene_subset: int | None = option(None, "train each cell on N panel genes drawn at random (the original's "
                                     "random gene sampling)", none_means="all panel genes")
    val_every: int | None = option(None, "validate every N steps", none_means="10 times per run")
    patience: int | None = option(None, "stop after N validations without improvement", none_means="never")
    val_batch_size: int = option(64, "cells per validation batch", cli=False)
    checkpoint_every: int | None = option(None, "checkpoint every N steps", none_means="at each validation")
    keep_best: bool = option(True, "save the last weights, not the best validated", flag="--last-weights")
    stop_after: int | None = option(None, "stop (resumably) after this many steps, as if interrupted", cli=False)
    device: str = option("cpu", "cpu, cuda, cuda:1 (under torchrun: each rank's GPU)")
    quiet: bool = option(False, "no progress bar")

    def check(self) -> None:
        """Raise InputDataError (OptionError for a bad choice) when the settings cannot train."""
        super().check()
        self.freeze = tuple(self.freeze or ())
        for part in self.freeze:
            check_choice("part to freeze", part, Freezable)
        check_sizes(batch_size=self.batch_size, accumulation=self.accumulation, block_cells=self.block_cells,
                    shuffle_blocks=self.shuffle_blocks, gene_subset=self.gene_subset)
        if self.steps is None and self.epochs is None:
            raise InputDataError("say how long to train: steps=... or epochs=...")



# -- reference documentation, from the same declarations -----------------------------------------------

def _type_text(hint: Any) -> str:
    """A field's type as numpydoc writes it: ``{'a', 'b'}`` for a choice, ``str or None`` for an optional."""
    inner, optional = _unwrap(hint)
    if get_origin(inner) is Literal:
        text = "{" + ", ".join(repr(value) for value in get_args(inner)) + "}"
    elif isinstance(inner, type) and get_origin(inner) is None:
        text = inner.__name__
    else:
        text = str(inner).replace("typing.", "")
    return f"{text} or None" if optional else text


def _literal_flags(text: str) -> str:
    """Command-line flags in help text as literals (``--flag``), so the reference shows them as typed."""
    return re.sub(r"(?<![`\w-])(--[a-z][\w-]*)", r"``\1``", text)


def _field_entry(f: dataclasses.Field, hint: Any) -> str:
    """One numpydoc Parameters entry: type, the help text, its default and its command-line flag."""
    meta = f.metadata
    text = _literal_flags(meta.get("help", "").replace("%%", "%").strip().rstrip(".") + ".")
    default = _field_default(f)
    flag = meta.get("flag") or "--" + f.name.replace("_", "-")
    if default is True and meta.get("cli", True):
        # the declared flag (e.g. --no-plots) turns the field off, and its help says what that does
        return f"{f.name} : {_type_text(hint)}\n    Default: ``True``. False (command line ``{flag}``): {text}"
    if default is None or default == () or default == {}:
        if meta.get("none_means"):
            text += f" Default (None): {_literal_flags(meta['none_means'].replace('%%', '%'))}."
    else:
        text += f" Default: ``{default!r}``."
    if meta.get("cli", True):
        text += f" Command line: ``{flag}``."
    else:
        text += " Python only."
    return f"{f.name} : {_type_text(hint)}\n    {text}"


def document_fields(group: type[OptionGroup]) -> type[OptionGroup]:
    """Append a numpydoc Parameters section, built from the fields' declarations, to a group's docstring.

    The help texts the command line shows are the one source of each option's documentation, so the
    API reference and ``--help`` cannot disagree.

    Parameters
    ----------
    group : type
        An option group (a dataclass whose fields are declared with `option`).

    Returns
    -------
    type
        The same class, its ``__doc__`` extended.
    """
    hints = typing.get_type_hints(group)
    entries = [_field_entry(f, hints[f.name]) for f in dataclasses.fields(group)]  # type: ignore[arg-type]
    section = "Parameters\n----------\n" + "\n".join(entries)
    group.__doc__ = inspect.cleandoc(group.__doc__ or "") + "\n\n" + section + "\n"
    return group


for _group in (InputOptions, EngineOptions, TritonOptions, OutputOptions, AnalysisOptions, EvaluateOptions,
               TrainDataOptions, TrainOptions):
    document_fields(_group)
del _group

# Option name -> type, for check_choices() in API functions (one table, built from the groups).
_CHOICE_HINTS: dict[str, Any] = {}
for _group in (InputOptions, EngineOptions, TritonOptions, AnalysisOptions, EvaluateOptions):
    _CHOICE_HINTS.update(typing.get_type_hints(_group))
_CHOICE_HINTS["target_scaling"] = TargetScaling
_CHOICE_HINTS["decay"] = Decay
del _group

GROUPS: tuple[type[OptionGroup], ...] = (InputOptions, EngineOptions, TritonOptions, OutputOptions, AnalysisOptions,
                                         EvaluateOptions, TrainDataOptions, TrainOptions)


def cli_flag(name: str) -> str:
    """The command-line spelling of an option, for messages (e.g. timeout_s -> --timeout).

    Parameters
    ----------
    name : str
        The option's field name.

    Returns
    -------
    str
        Its flag, or "backend option 'name'" for an option the command line does not offer.
    """
    for group in GROUPS:
        for f in dataclasses.fields(group):  # type: ignore[arg-type]
            if f.name == name and f.metadata.get("cli", True):
                return f.metadata.get("flag") or "--" + name.replace("_", "-")
    return f"backend option {name!r}"


def check_sizes(**sizes: int | None) -> None:
    """Refuse the first size below 1, naming its flag (e.g. "--batch-size must be >= 1").

    Parameters
    ----------
    **sizes
        Option name -> value; None means not given (a default applies).

    Raises
    ------
    OptionError
        A size below 1. Options without a command-line flag are named by keyword.
    """
    for name, value in sizes.items():
        if value is not None and value < 1:
            flag = cli_flag(name)
            spelled = flag if flag.startswith("--") else f"{name}="
            raise OptionError(f"{spelled} must be >= 1, got {value}: give a positive whole number "
                              f"(or leave {spelled.rstrip('=')} out for its default)")


def check_device(device: str) -> None:
    """Refuse a device that is not cpu, cuda or cuda:N.

    Parameters
    ----------
    device : str
        The device asked for.

    Raises
    ------
    OptionError
        Any other value.
    """
    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise OptionError(f"unknown device {device!r}; use cpu, cuda or cuda:N (for example cuda:1)")


_HDF5_SUFFIXES = (".h5ad", ".h5mu", ".h5", ".hdf5", ".loom")


def check_out_path(out: str | Path | None) -> None:
    """Refuse an `out` of translate that names an HDF5 file: translate writes a resumable Zarr directory.

    Parameters
    ----------
    out : str, pathlib.Path or None
        translate's `out`.

    Raises
    ------
    StoreError
        `out` ends in .h5ad, .h5mu, .h5, .hdf5 or .loom (the message names the write-back flag to use).
    """
    if out is None or Path(out).suffix.lower() not in _HDF5_SUFFIXES:
        return
    stem = Path(out).with_suffix(".zarr")
    if Path(out).suffix.lower() == ".h5mu":
        also = f"--write-mudata {out} for a MuData with the predictions as a modality 'prot_predicted'"
    else:
        also = f"--write-h5ad {out} for a copy of the input with the predictions in obsm['protein_predicted']"
    raise StoreError(f"--out {out}: the output of translate is a resumable AnnData Zarr store (a directory), not "
                     f"an HDF5 file. Use --out {stem}, and add {also}; the Zarr store itself reads with "
                     f"anndata.read_zarr('{stem}').")


# -- one options object per job kind -------------------------------------------------------------------

class JobOptions:
    """Base of the per-job options objects: option groups plus the job's own fields.

    Built from the API's keywords (`from_kwargs`) or from the command's parsed arguments
    (`from_cli_args`) alike. A subclass names the API function (``job``), the fields of each group the
    job takes (``takes``; absent: all) and the job's own defaults for some of them (``defaults``).
    """

    job: ClassVar[str] = "job"
    takes: ClassVar[dict[str, tuple[str, ...]]] = {}
    defaults: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def groups(cls) -> dict[str, type[OptionGroup]]:
        """Attribute -> option group class, for the fields that are option groups."""
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                if isinstance(hints[f.name], type) and issubclass(hints[f.name], OptionGroup)}

    @classmethod
    def taken(cls, attribute: str) -> tuple[str, ...]:
        """The fields of the group at `attribute` that this job takes.

        Parameters
        ----------
        attribute : str
            The group's attribute ("engine", "input", ...).

        Returns
        -------
        tuple of str
            Field names.
        """
        group = cls.groups()[attribute]
        return cls.takes.get(attribute) or tuple(f.name for f in dataclasses.fields(group))  # type: ignore[arg-type]

    @classmethod
    def from_kwargs(cls: type[J], **kwargs: Any) -> J:
        """The options from the API function's keyword arguments (any subset; the rest keep their defaults).

        Parameters
        ----------
        **kwargs
            The job's keywords.

        Returns
        -------
        JobOptions
            An instance of the subclass, not yet checked.

        Raises
        ------
        TypeError
            A keyword the job does not take, as a Python call would.
        """
        groups = cls.groups()
        values = {attribute: dict(cls.defaults.get(attribute, {})) for attribute in groups}
        own_names = {f.name for f in dataclasses.fields(cls)} - set(groups)  # type: ignore[arg-type]
        own: dict[str, Any] = {}
        for name, value in kwargs.items():
            where = next((attribute for attribute in groups if name in cls.taken(attribute)), None)
            if where is not None:
                values[where][name] = value
            elif name in own_names:
                own[name] = value
            else:
                raise TypeError(f"{cls.job}() got an unexpected keyword argument {name!r}")
        return cls(**{a: group(**values[a]) for a, group in groups.items()}, **own)

    def as_kwargs(self) -> dict[str, Any]:
        """The API function's keywords that build this object again (``from_kwargs(**o.as_kwargs()) == o``).

        Returns
        -------
        dict
            Keyword -> value.
        """
        groups = self.groups()
        kwargs = {name: getattr(getattr(self, attribute), name)
                  for attribute in groups for name in self.taken(attribute)}
        kwargs.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self)  # type: ignore[arg-type]
                       if f.name not in groups})
        return kwargs

    @classmethod
    def from_cli_args(cls: type[J], namespace: argparse.Namespace, **own: Any) -> J:
        """The options from the command's parsed arguments: the same object the API builds.

        Parameters
        ----------
        namespace : argparse.Namespace
            The parsed arguments; each group takes its fields from it.
        **own
            The job's own fields; by default the namespace's attributes of the same names (a name list
            such as --proteins parsed).

        Returns
        -------
        JobOptions
            An instance of the subclass, not yet checked.
        """
        groups = cls.groups()
        values = {attribute: {**cls.defaults.get(attribute, {}),
                              **{n: getattr(namespace, n) for n in cls.taken(attribute) if hasattr(namespace, n)}}
                  for attribute in groups}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name not in groups and f.name not in own and hasattr(namespace, f.name):
                value = getattr(namespace, f.name)
                own[f.name] = parse_names(value) if f.name in _NAME_LISTS and isinstance(value, str) else value
        return cls(**{a: group(**values[a]) for a, group in groups.items()}, **own)


J = TypeVar("J", bound=JobOptions)
_NAME_LISTS = ("proteins", "genes")  # a job's own fields given as 'A,B' or @file on the command line


@dataclass
class TranslateOptions(JobOptions):
    """Everything `translate` takes besides the data and the model: built once, checked once, passed down.

    Built from `translate()`'s keywords (`from_kwargs`) or from the `translate` command's parsed
    arguments (`from_cli_args`); both then run the same path (`engine.translate.run_translate`), so a
    bad value gives the same named error from Python and from the command line. As vLLM's
    `EngineArgs -> config`: this object holds what the user said, `check` refuses what can be told
    wrong from the values alone, and the engine resolves the rest (the backend and its declared
    capabilities) once.

    Parameters
    ----------
    engine : EngineOptions
        Where and how the model runs: backend, device, precision, batch and block sizes, workers.
    input : InputOptions
        How the input matrix is read, selected and mapped onto the model's genes.
    output : OutputOptions
        Write-backs, embeddings, overwrite, wait, progress and storage options.
    proteins : sequence of str or None
        Antibody or gene names to predict; None predicts the model's protein panel.
    out : str or pathlib.Path or None
        The output Zarr store (a directory or an s3:// / gs:// URL); None writes a temporary one.
    backend_options : dict
        Per-backend settings, for the triton backend its connection (url, model_name, protocol,
        timeout_s, ready_timeout_s, max_in_flight, ...).
    inplace : bool
        Also set the predictions on the input AnnData / MuData object.

    Examples
    --------
    >>> from sctranslator.options import TranslateOptions
    >>> options = TranslateOptions.from_kwargs(device="cpu", batch_size=8, normalize="log1p")
    >>> options.engine.batch_size, options.input.normalize
    (8, 'log1p')
    >>> options.check()
    """

    job: ClassVar[str] = "translate"

    engine: EngineOptions = field(default_factory=EngineOptions)
    input: InputOptions = field(default_factory=InputOptions)
    output: OutputOptions = field(default_factory=OutputOptions)
    proteins: Sequence[str] | None = None
    out: str | Path | None = None
    backend_options: dict[str, Any] = field(default_factory=dict)
    inplace: bool = False

    def __post_init__(self) -> None:
        self.backend_options = dict(self.backend_options or {})

    @classmethod
    def from_cli_args(cls, namespace: argparse.Namespace, **own: Any) -> TranslateOptions:
        """The options from the `translate` command's parsed arguments: the same object the API builds.

        The Triton flags (``--url``, ``--model-name``, ...) become `backend_options`.

        Parameters
        ----------
        namespace : argparse.Namespace
            The parsed arguments of ``sctranslator translate``.
        **own
            Values for the job's own fields (proteins, out, ...) that replace the namespace's.

        Returns
        -------
        TranslateOptions
            The options, not yet checked (call `check`).
        """
        own.setdefault("backend_options", TritonOptions.from_cli_args(namespace).given())
        return super().from_cli_args(namespace, **own)

    def check(self) -> None:
        """Refuse, before anything is read, what is wrong in the values alone.

        Raises
        ------
        OptionError
            A choice (backend, normalize, id_type, precision) outside its choices; a device that is
            not cpu, cuda or cuda:N; batch_size or block_cells < 1 (named).
        InputDataError
            A cell selection with a write-back or inplace.
        StoreError
            `out` names an HDF5 file.
        """
        engine, given = self.engine, self.input
        check_choices(backend=engine.backend, normalize=given.normalize, id_type=given.id_type,
                      precision=engine.precision)
        check_device(engine.device)
        check_sizes(batch_size=engine.batch_size, block_cells=engine.block_cells)
        check_out_path(self.out)
        if self.selecting and self.writes_back:
            raise InputDataError("a cell selection (--cells / --obs-query / --max-cells) cannot be combined with "
                                 "--write-h5ad, --write-mudata or inplace=True: those write the whole input; "
                                 "translate the selection into --out and join it yourself, or translate every cell")

    @property
    def selecting(self) -> bool:
        """Whether only some cells are translated (cells, obs_query or max_cells)."""
        given = self.input
        return given.cells is not None or given.obs_query is not None or given.max_cells is not None

    @property
    def writes_back(self) -> bool:
        """Whether the input is also written with the predictions (a write-back file or inplace)."""
        return bool(self.output.write_h5ad or self.output.write_mudata or self.inplace)


@dataclass
class KnockoutOptions(JobOptions):
    """Everything `knockout` takes besides the data and the model, from its keywords or its command.

    Built once (`from_kwargs` / `from_cli_args`), checked once, passed down to
    `analysis.knockout.run_knockout`.

    Parameters
    ----------
    genes : sequence of str
        The genes to knock out, one at a time.
    proteins : sequence of str or None
        Proteins to predict; None: the model's panel.
    out : str or pathlib.Path or None
        The output .h5ad or .zarr.
    engine : EngineOptions
        Of the engine options knockout takes block_cells, batch_size, workers and device (None:
        translate's rules for the model).
    input : InputOptions
        As translate's, the cell selection included, without obs_columns.
    analysis : AnalysisOptions
        Of the analysis options knockout takes semantics, groupby and per_cell.
    output : OutputOptions
        Of the output options knockout takes overwrite, quiet and wait.
    """

    job: ClassVar[str] = "knockout"
    takes: ClassVar[dict[str, tuple[str, ...]]] = {
        "engine": ("block_cells", "batch_size", "workers", "device"), "input": ANALYSIS_INPUTS,
        "analysis": ("semantics", "groupby", "per_cell"), "output": ("overwrite", "quiet", "wait")}

    genes: Sequence[str] = ()
    proteins: Sequence[str] | None = None
    out: str | Path | None = None
    engine: EngineOptions = field(default_factory=EngineOptions)
    input: InputOptions = field(default_factory=InputOptions)
    analysis: AnalysisOptions = field(default_factory=AnalysisOptions)
    output: OutputOptions = field(default_factory=OutputOptions)

    def check(self) -> None:
        """Refuse, before anything is read, what is wrong in the values alone.

        Raises
        ------
        OptionError
            semantics, normalize or id_type outside its choices; a device that is not cpu, cuda or
            cuda:N; block_cells, batch_size or workers < 1 (named).
        """
        check_choices(semantics=self.analysis.semantics, normalize=self.input.normalize, id_type=self.input.id_type)
        check_device(self.engine.device)
        check_sizes(batch_size=self.engine.batch_size, block_cells=self.engine.block_cells,
                    workers=self.engine.workers)


@dataclass
class AttentionOptions(JobOptions):
    """Everything `interactions` (the attention command) takes besides the data and the model.

    Built once (`from_kwargs` / `from_cli_args`), checked once, passed down to
    `analysis.attention.run_interactions`.

    Parameters
    ----------
    proteins : sequence of str or None
        Proteins to predict; None: the model's panel.
    out : str or pathlib.Path or None
        The output directory; None: nothing written.
    engine : EngineOptions
        Of the engine options attention takes block_cells, batch_size, workers and device.
    input : InputOptions
        As knockout's.
    analysis : AnalysisOptions
        Of the analysis options attention takes top_k, groupby, as_published and row_block.
    output : OutputOptions
        Of the output options attention takes overwrite, quiet and wait.
    kinds : str or sequence of str or None
        gene-protein, gene-gene and/or protein-protein (`sctranslator.analysis.attention.kinds`);
        None: the default kinds.
    genes : sequence of str or None
        The query genes of gene-gene attention.
    """

    job: ClassVar[str] = "interactions"
    takes: ClassVar[dict[str, tuple[str, ...]]] = {
        "engine": ("block_cells", "batch_size", "workers", "device"), "input": ANALYSIS_INPUTS,
        "analysis": ("top_k", "groupby", "as_published", "row_block"), "output": ("overwrite", "quiet", "wait")}
    defaults: ClassVar[dict[str, dict[str, Any]]] = {"engine": {"block_cells": 256, "batch_size": 1}}

    proteins: Sequence[str] | None = None
    out: str | Path | None = None
    engine: EngineOptions = field(default_factory=lambda: EngineOptions(block_cells=256, batch_size=1))
    input: InputOptions = field(default_factory=InputOptions)
    analysis: AnalysisOptions = field(default_factory=AnalysisOptions)
    output: OutputOptions = field(default_factory=OutputOptions)
    kinds: str | Sequence[str] | None = None  # gene-protein, gene-gene, protein-protein (analysis.attention.kinds)
    genes: Sequence[str] | None = None  # the query genes of gene-gene attention

    def check(self) -> None:
        """Refuse, before anything is read, what is wrong in the values alone.

        Raises
        ------
        OptionError
            normalize or id_type outside its choices; a device that is not cpu, cuda or cuda:N;
            block_cells, batch_size, workers, row_block or top_k < 1 (named).
        """
        check_choices(normalize=self.input.normalize, id_type=self.input.id_type)
        check_device(self.engine.device)
        check_sizes(batch_size=self.engine.batch_size, block_cells=self.engine.block_cells,
                    workers=self.engine.workers, row_block=self.analysis.row_block, top_k=self.analysis.top_k)
