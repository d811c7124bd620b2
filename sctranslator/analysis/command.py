"""The `sctranslator evaluate` sub-command: fill its parser and return the handler (registered by cli.py)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def cap_names(names: list[str], limit: int = 20) -> str:
    from sctranslator.analysis.predictions import cap_names as cap

    return cap(names, limit)


def _number(value: float | None, width: int = 8) -> str:
    return f"{value:{width}.3f}" if value is not None else f"{'n/a':>{width}}"


def format_report(report: dict[str, Any]) -> str:
    """A per-protein table and the summary lines, as printed by the command."""
    model = report["model"]
    base = report.get("baseline")
    header = f"{'protein':16s} {'truth name':18s} {'gene':9s} {'pearson':>8s} {'spearman':>8s} {'rmse':>8s}"
    if base:
        header += f" {'base r':>8s}"
    lines = [header, "-" * len(header)]
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


def define_evaluate(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """Add the evaluate options to `parser`; return the handler."""
    parser.add_argument("--pred", required=True, help="predictions: Zarr store written by translate (or .h5ad)")
    parser.add_argument("--truth", required=True, help="measured proteins .h5ad (cells x proteins, raw counts)")
    parser.add_argument("--out", help="directory for report.json and the PNG figures")
    parser.add_argument("--scaling", default=None, choices=["minmax", "clr", "log1p"],
                        help="per-cell scaling of the measured counts (default: the scale translate recorded for "
                             "the model's outputs, else minmax, the original's target)")
    parser.add_argument("--baseline", help="a second predictions store to score side by side (e.g. the ridge baseline)")
    parser.add_argument("--cosine-batch", type=int, help="cells per batch for the cosine score (default: all)")
    parser.add_argument("--no-plots", action="store_true", help="write report.json only")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier evaluate report at --out")

    def run(args: argparse.Namespace) -> int:
        from sctranslator.analysis.evaluate import evaluate

        report = evaluate(args.pred, args.truth, out=args.out, scaling=args.scaling, plots=not args.no_plots,
                          baseline=args.baseline, cosine_batch_size=args.cosine_batch, overwrite=args.overwrite)
        print(format_report(report))
        for path in report.get("files", []):
            print(f"wrote {path}")
        return 0

    return run
