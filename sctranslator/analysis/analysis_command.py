"""Command-line definitions for `sctranslator knockout` and `sctranslator attention`.

Each `define_*` fills a sub-command parser and returns its handler; `sctranslator.cli` registers them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

Handler = Callable[[argparse.Namespace], int]


def _names(spec: str | None) -> list[str] | None:
    if not spec:
        return None
    from sctranslator.cli import read_name_list  # the one parser of 'A,B' / '@file' lists

    return read_name_list(spec)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help=".h5ad, AnnData .zarr store (v2/v3), or .h5mu (rna modality)")
    parser.add_argument("--model", required=True, help="bundle directory or official .pt checkpoint")
    parser.add_argument("--proteins", help="comma-separated antibody or gene names, or @file "
                        "(default: the model's protein panel, when it has one)")
    parser.add_argument("--groupby", help="obs column: also report each group of cells separately")
    parser.add_argument("--normalize", choices=["none", "log1p", "total", "total_log1p"],
                        help="normalisation before per-cell scaling (default: as the model was trained)")
    parser.add_argument("--gene-column", help="var column with gene identifiers (default: var index)")
    parser.add_argument("--id-type", default="auto",
                        choices=["auto", "symbol", "entrez", "ensembl", "mouse_symbol", "mouse_ensembl"])
    parser.add_argument("--gene-mapping", choices=["original", "extended"],
                        help="gene mapping (default: as the model was trained; original for published checkpoints)")
    parser.add_argument("--layer", help="read this layer instead of X")
    parser.add_argument("--allow-low-coverage", action="store_true", help="go on when few genes map")
    parser.add_argument("--allow-empty-cells", action="store_true",
                        help="include cells with no counts in any gene the model reads (as constant cells)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def define_knockout(parser: argparse.ArgumentParser) -> Handler:
    """`sctranslator knockout INPUT --model M --genes TP53,CD4 --out OUT.h5ad [...]`."""
    _common(parser)
    parser.add_argument("--genes", required=True, help="genes to knock out: comma-separated names or @file")
    parser.add_argument("--out", required=True, help="output .h5ad or .zarr (genes x proteins); CSVs and a PNG "
                        "are written beside it; re-running the same command resumes")
    parser.add_argument("--semantics", choices=["drop", "zero"],
                        help="drop: remove the gene's column as the original does (default for published "
                             "checkpoints); zero: set its expression to 0 (default for fixed-panel models)")
    parser.add_argument("--per-cell", action="store_true", help="also write every cell's changes")
    parser.add_argument("--block-cells", type=int, default=1024, help="cells per block (unit of work and resume)")
    parser.add_argument("--batch-size", type=int, default=8, help="cells per model call")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--overwrite", action="store_true", help="replace an output written with other settings")

    def run(args: argparse.Namespace) -> int:
        from sctranslator.analysis.knockout import knockout

        result = knockout(args.input, args.model, _names(args.genes) or [], _names(args.proteins), out=args.out,
                          semantics=args.semantics, block_cells=args.block_cells, batch_size=args.batch_size,
                          groupby=args.groupby, per_cell=args.per_cell, normalize=args.normalize,
                          gene_column=args.gene_column, id_type=args.id_type, layer=args.layer,
                          allow_low_coverage=args.allow_low_coverage, allow_empty_cells=args.allow_empty_cells,
                          device=args.device, overwrite=args.overwrite, quiet=args.quiet,
                          gene_mapping=args.gene_mapping)
        print(f"Knocked out {result.mean.shape[0]} gene(s) ({result.semantics}) in {result.n_cells['all']} cells; "
              f"{result.mean.shape[1]} proteins")
        strongest = result.mean.abs().stack().sort_values(ascending=False).head(5)
        for gene, protein in strongest.index:
            print(f"  {gene:>12s} -> {protein:<12s} mean change {result.mean.at[gene, protein]:+.4g}")
        for name, path in result.files.items():
            print(f"  {name:10s} {path}")
        return 0

    return run


def define_attention(parser: argparse.ArgumentParser) -> Handler:
    """`sctranslator attention INPUT --model M --proteins ... --out DIR [--top-k K] [--groupby COL]`."""
    _common(parser)
    parser.add_argument("--out", required=True, help="output directory (h5ad, CSV tables, PNG)")
    parser.add_argument("--top-k", type=int, default=20, help="genes listed per protein")
    parser.add_argument("--block-cells", type=int, default=256, help="cells read and prepared at a time")
    parser.add_argument("--batch-size", type=int, default=1, help="cells traced together (memory grows with it)")
    parser.add_argument("--as-published", action="store_true",
                        help="take each layer's attention from the post-residual state, as the original script did")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier attention output at --out")

    def run(args: argparse.Namespace) -> int:
        from sctranslator.analysis.attention import interactions

        result = interactions(args.input, args.model, _names(args.proteins), out=args.out, top_k=args.top_k,
                              groupby=args.groupby, block_cells=args.block_cells, batch_size=args.batch_size,
                              normalize=args.normalize, gene_column=args.gene_column, id_type=args.id_type,
                              layer=args.layer, allow_low_coverage=args.allow_low_coverage,
                              allow_empty_cells=args.allow_empty_cells, as_published=args.as_published,
                              overwrite=args.overwrite, quiet=args.quiet, gene_mapping=args.gene_mapping)
        print(f"Attention over {result.n_cells['all']} cells: {result.gene_to_protein.shape[0]} genes x "
              f"{result.gene_to_protein.shape[1]} proteins")
        best = result.top_genes[result.top_genes["rank"] == 1].head(10)
        for row in best.itertuples():
            print(f"  {row.protein:<12s} top gene {row.gene:<12s} score {row.score:.4g}")
        for name, path in result.files.items():
            print(f"  {name:18s} {path}")
        return 0

    return run
