"""The analysis sub-commands: `evaluate`, `knockout` and `attention`.

Each `define_*` fills a sub-command parser from the option groups of `sctranslator.options` and
returns its handler; `sctranslator.cli.entry` registers them. Heavy modules load inside the handlers.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from sctranslator.analysis.find_predictions import cap_names  # numpy only: cheap for the CLI
from sctranslator.options import (
    ANALYSIS_INPUTS,
    AnalysisOptions,
    AttentionOptions,
    EngineOptions,
    EvaluateOptions,
    InputOptions,
    KnockoutOptions,
    OutputOptions,
    add_data_and_model_args,
)

Handler = Callable[[argparse.Namespace], int]


def _number(value: float | None, width: int = 8) -> str:
    return f"{value:{width}.3f}" if value is not None else f"{'n/a':>{width}}"


def format_report(report: dict[str, Any]) -> str:
    """A per-protein table and the summary lines, as printed by the evaluate command.

    Parameters
    ----------
    report : dict
        `evaluate`'s report.

    Returns
    -------
    str
        The text.
    """
    model = report["model"]
    base = report.get("baseline")
    header = f"{'protein':16s} {'truth name':18s} {'gene':9s} {'pearson':>8s} {'spearman':>8s} {'rmse':>8s}"
    if base:
        header += f" {'base r':>8s}"
    lines = [header, "-" * len(header)]
    if (report.get("training_cells") or {}).get("in_training"):
        lines.insert(0, f"*** {report['training_cells']['label']} ***")
    base_rows = {row["protein"]: row for row in base["per_protein"]} if base else {}
    for row in model["per_protein"]:
        line = (f"{row['protein'][:16]:16s} {row['truth_name'][:18]:18s} {str(row['gene'] or '')[:9]:9s} "
                f"{_number(row['pearson'])} {_number(row['spearman'])} {_number(row['rmse'])}")
        if base:
            line += f" {_number(base_rows[row['protein']]['pearson'])}"
        lines.append(line)
    cells = report["cells"]
    lines.append("")
    lines.append(f"cells: {cells['matched']} matched of {cells['pred']} predicted / {cells['truth']} measured; "
                 f"{cells['evaluated']} evaluated; measured counts scaled per cell by {report['scaling']} "
                 f"({report.get('scaling_source', 'asked')})")
    if report.get("predictions_from"):
        lines.append(f"predictions read from {report['predictions_from']}")
    seen = report.get("training_cells") or {}
    if seen.get("checked"):
        lines.append(f"training cells: {seen['label']} ({seen['in_training']} in training, {seen['in_validation']} "
                     f"held out in validation, {seen['unseen']} never seen; bundle {seen['bundle']})")
    elif seen.get("note"):
        lines.append(f"training cells: {seen['note']}")
    for label, metrics in (("model", model), ("baseline", base)):
        if not metrics:
            continue
        s = metrics["summary"]
        lines.append(f"{label:9s} mean protein r {_number(s['mean_protein_pearson'], 0)}, "
                     f"median {_number(s['median_protein_pearson'], 0)}, "
                     f"mean spearman {_number(s['mean_protein_spearman'], 0)}, "
                     f"mean cell r {_number(s['mean_cell_pearson'], 0)}, cosine {_number(s['cosine'], 0)}, "
                     f"rmse {_number(s['rmse'], 0)}")
        if s["undefined_proteins"]:
            lines.append(f"          undefined (constant) proteins, left out of the means: "
                         f"{cap_names(list(s['undefined_proteins']))}")
    skipped = report["proteins"]
    if skipped["ambiguous"]:
        lines.append("ambiguous (several antibodies for one gene, not compared): "
                     + "; ".join(f"{a['pred']} vs {a['truth']}" for a in skipped["ambiguous"]))
    if skipped["unmatched_pred"]:
        lines.append(f"predicted but not measured: {cap_names(list(skipped['unmatched_pred']))}")
    return "\n".join(lines)


def define_evaluate(parser: argparse.ArgumentParser) -> Handler:
    """Declare ``sctranslator evaluate --pred P --truth T [--out DIR] [--scaling S] [--baseline B]``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The command's parser.

    Returns
    -------
    callable
        The handler: parsed arguments -> exit status.
    """
    parser.add_argument("--pred", required=True, help="predictions: translate's Zarr store, its --write-h5ad / "
                        "--write-mudata file, or any cells x proteins .h5ad; local or at an s3://, gs:// or "
                        "http(s):// URL")
    parser.add_argument("--truth", required=True, help="measured proteins (cells x proteins, raw counts): .h5ad, "
                        ".zarr, a CITE-seq .h5mu (see --truth-modality), any of these at a URL, or a TileDB-SOMA "
                        "experiment (its protein measurement)")
    parser.add_argument("--out", help="local directory for report.json and the PNG figures (default: print only)")
    EvaluateOptions.add_cli_args(parser)
    OutputOptions.add_cli_args(parser, only=("overwrite", "quiet", "storage_options"))

    def run(args: argparse.Namespace) -> int:
        from sctranslator.analysis.evaluate import evaluate

        report = evaluate(args.pred, args.truth, out=args.out, **EvaluateOptions.from_cli_args(args).as_kwargs(),
                          **OutputOptions.from_cli_args(args).as_kwargs(("overwrite", "storage_options", "quiet")))
        print(format_report(report))
        for path in report.get("files", []):
            print(f"wrote {path}")
        return 0

    return run


def _common(parser: argparse.ArgumentParser) -> None:
    add_data_and_model_args(parser)
    AnalysisOptions.add_cli_args(parser, only=("groupby",))
    InputOptions.add_cli_args(parser.add_argument_group("input"), only=ANALYSIS_INPUTS)
    OutputOptions.add_cli_args(parser, only=("quiet",))


def define_knockout(parser: argparse.ArgumentParser) -> Handler:
    """`sctranslator knockout INPUT --model M --genes TP53,CD4 --out OUT.h5ad [...]`.

    Parameters
    ----------
    parser
        The sub-command's parser, filled from `KnockoutOptions`' groups.

    Returns
    -------
    Handler
        Builds `KnockoutOptions` from the parsed arguments and runs `run_knockout`; returns 0.
    """
    _common(parser)
    parser.add_argument("--genes", required=True, help="genes to knock out: comma-separated names or @file")
    parser.add_argument("--out", required=True, help="output .h5ad or .zarr (genes x proteins); CSVs and a PNG "
                        "are written beside it; re-running the same command resumes")
    AnalysisOptions.add_cli_args(parser, only=("semantics", "per_cell"))
    EngineOptions.add_cli_args(parser, only=KnockoutOptions.takes["engine"], helps={
        "block_cells": "cells per block, the unit of work and resume; by default translate's block size divided "
                       "by the forwards per cell (genes + 1)",
        "batch_size": "cells per model call, as translate's"})
    OutputOptions.add_cli_args(parser, only=("overwrite", "wait"))

    def run(args: argparse.Namespace) -> int:
        from sctranslator.analysis.knockout import run_knockout

        result = run_knockout(args.input, args.model, KnockoutOptions.from_cli_args(args))
        print(f"Knocked out {result.mean.shape[0]} gene(s) ({result.semantics}) in {result.n_cells['all']} cells; "
              f"{result.mean.shape[1]} proteins")
        strongest = result.mean.abs().stack().sort_values(ascending=False).head(5)
        for gene, protein in strongest.index:
            print(f"  {gene:>12s} -> {protein:<12s} mean change {result.mean.at[gene, protein]:+.4g}")
        for name, path in result.files.items():
            print(f"  {name:10s} {path}")
        if result.run.get("blocks_skipped"):
            print(f"  resumed: {result.run['blocks_skipped']} block(s) committed by an earlier run were kept, "
                  f"{result.run['blocks_computed']} computed")
        return 0

    return run


def define_attention(parser: argparse.ArgumentParser) -> Handler:
    """`sctranslator attention INPUT --model M --proteins ... --out DIR [--kind K,...] [--genes G,...] [--top-k K]`.

    Parameters
    ----------
    parser
        The sub-command's parser, filled from `AttentionOptions`' groups.

    Returns
    -------
    Handler
        Builds `AttentionOptions` from the parsed arguments and runs `run_interactions`; returns 0.
    """
    _common(parser)
    parser.add_argument("--out", required=True, help="output directory (h5ad, CSV tables, PNG); re-running the "
                        "same command resumes")
    parser.add_argument("--kind", default="gene-protein,protein-protein",
                        help="which attention, comma-separated: gene-protein (translated encoder attention times "
                             "decoder attention), protein-protein (decoder self-attention, per window of P), "
                             "gene-gene (encoder self-attention; slow over all genes: O(L^2) per cell) "
                             "(default: %(default)s)")
    parser.add_argument("--genes", default=None,
                        help="gene-gene attention for these query genes only (comma-separated or @file; implies "
                             "gene-gene); without it gene-gene keeps every gene's --top-k partners")
    AnalysisOptions.add_cli_args(parser, only=("top_k",))
    EngineOptions.add_cli_args(parser, only=AttentionOptions.takes["engine"],
                               defaults=AttentionOptions.defaults["engine"],
                               helps={"block_cells": "cells per block, the unit of work and resume",
                                      "batch_size": "cells traced together (memory grows with it)"})
    AnalysisOptions.add_cli_args(parser, only=("as_published",))
    OutputOptions.add_cli_args(parser, only=("overwrite", "wait"))

    def run(args: argparse.Namespace) -> int:
        from sctranslator.analysis.attention import run_interactions

        result = run_interactions(args.input, args.model, AttentionOptions.from_cli_args(args, kinds=args.kind))
        print(f"Attention over {result.n_cells['all']} cells: {result.gene_attention.shape[0]} genes x "
              f"{result.protein_attention.shape[0]} proteins ({', '.join(result.kinds)})")
        if result.top_genes is not None:
            best = result.top_genes[result.top_genes["rank"] == 1].head(10)
            for row in best.itertuples():
                print(f"  {row.protein:<12s} top gene {row.gene:<12s} score {row.score:.4g}")
        for name, path in result.files.items():
            print(f"  {name:18s} {path}")
        if result.run.get("blocks_skipped"):
            print(f"  resumed: {result.run['blocks_skipped']} block(s) committed by an earlier run were kept, "
                  f"{result.run['blocks_computed']} computed")
        return 0

    return run
