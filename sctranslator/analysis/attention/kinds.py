"""Which attention matrices `attention` computes, and the gene-gene / protein-protein sums over cells.

`PairSums` plugs into the per-batch trace (`_batch_interactions`): the encoder hands it each
layer's features (gene-gene rows, a block at a time), the decoder passes their window features
(protein-protein). See `sctranslator.analysis.attention.pairs` for the definitions.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

from sctranslator.analysis.attention.pairs import (
    MIN_SCALED_WINDOW,
    attention_rows,
    protein_pair_matrix,
    scale_block,
    scale_windows,
    top_partners,
    window_attention,
)
from sctranslator.analysis.attention.trace import LayerCallback
from sctranslator.errors import OptionError, VocabularyError

log = logging.getLogger(__name__)

GENE_PROTEIN = "gene-protein"
GENE_GENE = "gene-gene"
PROTEIN_PROTEIN = "protein-protein"
KINDS = (GENE_PROTEIN, GENE_GENE, PROTEIN_PROTEIN)
# gene-gene over every gene costs O(L^2) per cell (as the original's dense matrix): asked for only.
DEFAULT_KINDS = (GENE_PROTEIN, PROTEIN_PROTEIN)
# The all-genes gene-gene figure shows this many of the strongest edges (at most 2x as many genes).
PLOTTED_EDGES = 40
# Gene-gene sums larger than this live in a temporary file (np.memmap), so RAM holds one block.
IN_MEMORY_BYTES = 256 * 2**20


def parse_kinds(kinds: str | Sequence[str] | None, genes: Sequence[str] | None) -> tuple[str, ...]:
    """The selected attention kinds in canonical order.

    Parameters
    ----------
    kinds : str, sequence of str or None
        Any of gene-protein, gene-gene, protein-protein (comma-separated or a list); None: the
        defaults.
    genes : sequence of str or None
        Query genes; given, they add gene-gene.

    Returns
    -------
    tuple of str
        The kinds.

    Raises
    ------
    OptionError
        Unknown or no names.
    """
    if kinds is None:
        chosen = list(DEFAULT_KINDS)
    else:
        items = kinds.split(",") if isinstance(kinds, str) else list(kinds)
        chosen = [str(k).strip() for k in items if str(k).strip()]
        unknown = [k for k in chosen if k not in KINDS]
        if unknown or not chosen:
            raise OptionError(f"unknown attention kind(s) {unknown or chosen}: choose from {', '.join(KINDS)} "
                              "(comma-separated)")
    if genes:
        chosen.append(GENE_GENE)
    return tuple(k for k in KINDS if k in chosen)


def query_rows(genes: Sequence[str] | None, gene_index: pd.Index) -> np.ndarray:
    """The rows (indices into the model's real positions) of the ``--genes`` list.

    Parameters
    ----------
    genes : sequence of str or None
        The query genes; None: all positions.
    gene_index : pandas.Index
        The name of each real position.

    Returns
    -------
    numpy.ndarray
        int64 rows.

    Raises
    ------
    VocabularyError
        A gene the model does not read, or one listed twice.
    """
    if not genes:
        return np.arange(len(gene_index), dtype=np.int64)
    names = [str(g) for g in genes]
    lookup = pd.Series(np.arange(len(gene_index)), index=gene_index.astype(str))
    lookup = lookup[~lookup.index.duplicated()]
    missing = [g for g in names if g not in lookup.index]
    if missing:
        raise VocabularyError(f"{len(missing)} gene(s) for gene-gene attention are not read by the model: "
                              f"{missing[:10]}. Name genes as in the input's var names (the rows of "
                              "gene_attention.csv); genes outside the model's vocabulary or gene panel have no "
                              "attention.")
    rows = lookup.reindex(names).to_numpy(dtype=np.int64)
    if len(set(rows.tolist())) < len(rows):
        raise VocabularyError("--genes lists a gene more than once; list each gene once")
    return rows


@dataclass
class PairSums:
    """Sums over cells of the encoder rows ``A_enc[query, :]`` and the decoder windows' ``A_dec``.

    Parameters
    ----------
    kinds : tuple of str
        The kinds computed.
    positions : numpy.ndarray
        Real model positions (columns of gene-gene).
    query : numpy.ndarray
        Rows: indices into `positions`.
    all_genes : bool
        Gene-gene over every gene (no ``--genes``).
    windows : int
        Decoder windows, W.
    window_size : int
        P.
    row_block : int
        Rows at a time through the translator.
    count : int
        Cells summed so far.
    gene_sums : numpy.ndarray or None
        Gene-gene sums, ``(n_query, n_positions)`` (a memory map when large).
    protein_sums : numpy.ndarray or None
        Protein-protein sums, ``(W, P, P)``.
    _spill : tempfile.TemporaryDirectory or None
        Where large gene-gene sums spill to (set by the object itself).
    """

    kinds: tuple[str, ...]
    positions: np.ndarray  # real model positions (columns of gene-gene)
    query: np.ndarray  # rows: indices into `positions`
    all_genes: bool
    windows: int
    window_size: int
    row_block: int = 2048
    count: int = 0
    gene_sums: np.ndarray | None = None
    protein_sums: np.ndarray | None = None
    _spill: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if GENE_GENE in self.kinds:
            shape = (self.query.shape[0], self.positions.shape[0])
            if shape[0] * shape[1] * 8 > IN_MEMORY_BYTES:
                self._spill = tempfile.TemporaryDirectory(prefix="sctranslator-gene-gene-")
                self.gene_sums = np.memmap(Path(self._spill.name) / "sums.f32", dtype=np.float32, mode="w+",
                                           shape=shape)
            else:
                self.gene_sums = np.zeros(shape)
        if PROTEIN_PROTEIN in self.kinds:
            self.protein_sums = np.zeros((self.windows, self.window_size, self.window_size))

    def encoder_callback(self, n_heads: int, n_layers: int) -> LayerCallback | None:
        """The per-layer hook for ``encoder_pass(also=...)``, or None when gene-gene is not wanted.

        Parameters
        ----------
        n_heads : int
            Encoder heads.
        n_layers : int
            Encoder layers.

        Returns
        -------
        callable or None
            ``hook(layer, q', k')``.
        """
        if self.gene_sums is None:
            return None
        sums = self.gene_sums
        columns = torch.from_numpy(self.positions)
        rows = torch.from_numpy(self.positions[self.query])
        scale = 1.0 / (n_heads * max(1, n_layers))

        def add(_: int, q_feat: torch.Tensor, k_feat: torch.Tensor) -> None:
            on = q_feat.device  # the model's (the sums stay on the CPU)
            here, wanted = rows.to(on), columns.to(on)
            for lo in range(0, here.shape[0], self.row_block):
                block = attention_rows(q_feat, k_feat, here[lo:lo + self.row_block], wanted).sum(dim=0)
                sums[lo:lo + block.shape[0]] += (block.double() * scale).cpu().numpy().astype(sums.dtype, copy=False)

        return add

    def add_decoders(self, queries: list[torch.Tensor], keys: list[torch.Tensor]) -> None:
        """Add one batch's decoder windows (the `DecoderPass` features, already scaled to the mean).

        Parameters
        ----------
        queries : list of torch.Tensor
            Per window, ``(B, P, layers * H * nb)``.
        keys : list of torch.Tensor
            Per window, likewise.
        """
        if self.protein_sums is None:
            return
        for w, (q, k) in enumerate(zip(queries, keys, strict=True)):
            self.protein_sums[w] += window_attention(q, k).sum(dim=0).double().cpu().numpy()

    def close(self) -> None:
        """Remove the temporary file that large gene-gene sums spill to."""
        if self._spill is not None:
            self.gene_sums = None
            self._spill.cleanup()
            self._spill = None


@dataclass
class PairTables:
    """Mean gene-gene / protein-protein attention and the tables the original's tutorials derive.

    Parameters
    ----------
    gene_to_gene : pandas.DataFrame or None
        Query genes x genes (with ``--genes``; None over all genes).
    gene_pairs : pandas.DataFrame or None
        gene, partner, rank, score, scaled (the original's GRN table).
    protein_to_protein : pandas.DataFrame or None
        Proteins x proteins, NaN across decoder windows.
    protein_scaled : pandas.DataFrame or None
        The same, scaled per window.
    protein_pairs : pandas.DataFrame or None
        protein, partner, rank, score, scaled (the original's PPI table).
    unscaled_proteins : list of str
        Proteins in windows too small to scale (NaN).
    """

    gene_to_gene: pd.DataFrame | None  # query genes x genes (the `--genes` rows; None over all genes)
    gene_pairs: pd.DataFrame | None  # gene, partner, rank, score, scaled (the original's GRN table)
    protein_to_protein: pd.DataFrame | None  # proteins x proteins, NaN across decoder windows
    protein_scaled: pd.DataFrame | None
    protein_pairs: pd.DataFrame | None  # protein, partner, rank, score, scaled (the original's PPI table)
    unscaled_proteins: list[str] = field(default_factory=list)  # in windows too small to scale (NaN)


def pair_tables(sums: PairSums, gene_index: pd.Index, protein_index: pd.Index, output_index: np.ndarray,
                top_k: int, window_mask: np.ndarray | None = None) -> PairTables:
    """Means over the summed cells, scaled and ranked as the original does.

    Protein-protein scores are scaled over each decoder window the model ran, then the requested
    proteins reported.

    Parameters
    ----------
    sums : PairSums
        The sums.
    gene_index : pandas.Index
        The name of each real position.
    protein_index : pandas.Index
        The output proteins.
    output_index : numpy.ndarray
        int64 flat index of each output protein into the ``(W * P)`` windows.
    top_k : int
        Partners listed per gene / protein.
    window_mask : numpy.ndarray or None
        bool ``(W, P)``, the plan's protein_window_mask; None: every position real.

    Returns
    -------
    PairTables
        The tables.
    """
    n = max(1, sums.count)
    gene_frame = gene_pairs = protein_frame = protein_scaled = protein_pairs = None
    unscaled: list[str] = []
    if sums.gene_sums is not None:
        matrix = sums.gene_sums
        for lo in range(0, matrix.shape[0], sums.row_block):  # in place, a block at a time (may be on disk)
            matrix[lo:lo + sums.row_block] /= n
        names = [str(g) for g in gene_index]
        query_names = [names[i] for i in sums.query]
        gene_pairs = top_partners(matrix, query_names, names, sums.query, top_k, scale_columns=sums.all_genes,
                                  block_rows=sums.row_block, label="gene")
        if not sums.all_genes:
            gene_frame = pd.DataFrame(np.asarray(matrix, dtype=np.float64), index=pd.Index(query_names, name="gene"),
                                      columns=gene_index)
    if sums.protein_sums is not None:
        means = sums.protein_sums / n
        mask = np.ones(means.shape[:2], dtype=bool) if window_mask is None else np.asarray(window_mask, dtype=bool)
        window_scaled, degenerate = scale_windows(means, mask)
        values = protein_pair_matrix(means, output_index, sums.window_size)
        scaled = protein_pair_matrix(window_scaled, output_index, sums.window_size)
        protein_frame = pd.DataFrame(values, index=protein_index, columns=protein_index)
        protein_scaled = pd.DataFrame(scaled, index=protein_index, columns=protein_index)
        names = [str(p) for p in protein_index]
        protein_pairs = top_partners(values, names, names, np.arange(len(names)), top_k, label="protein",
                                     scaled_matrix=scaled)
        unscaled = [names[i] for i in np.flatnonzero(np.isin(output_index // sums.window_size, degenerate))]
        if unscaled:
            log.warning("protein-protein: %d protein(s) (%s) sit in a decoder window of fewer than %d proteins, where "
                        "min-max scaling is undefined: their scaled scores are NaN and they are left out of "
                        "top_protein_pairs.csv; ask for more proteins (or use the raw protein_to_protein.csv)",
                        len(unscaled), ", ".join(unscaled[:10]), MIN_SCALED_WINDOW)
    return PairTables(gene_frame, gene_pairs, protein_frame, protein_scaled, protein_pairs, unscaled)


def annotate(adata: ad.AnnData, tables: PairTables, kinds: tuple[str, ...]) -> None:
    """Put the pair matrices into the interactions AnnData: varp for protein pairs, obsm for gene rows.

    Parameters
    ----------
    adata : AnnData
        Genes x proteins, changed in place.
    tables : PairTables
        The tables.
    kinds : tuple of str
        The kinds computed.
    """
    if tables.protein_to_protein is not None:
        adata.varp["protein_to_protein"] = tables.protein_to_protein.to_numpy(dtype=np.float32)
        adata.varp["protein_to_protein_scaled"] = tables.protein_scaled.to_numpy(dtype=np.float32)
    if tables.gene_to_gene is not None:
        # obs = genes: column g of obsm['gene_to_gene'] is the attention gene g pays to each obs gene.
        frame = tables.gene_to_gene.T.astype(np.float32)
        frame.index = adata.obs_names
        frame.columns = [str(c) for c in frame.columns]
        adata.obsm["gene_to_gene"] = frame
    adata.uns["sctranslator_attention"]["kinds"] = list(kinds)


def top_edge_matrix(gene_pairs: pd.DataFrame, n_edges: int = PLOTTED_EDGES) -> pd.DataFrame:
    """The `n_edges` rows of top_gene_pairs with the highest raw score, as a gene x partner matrix.

    Ranked by raw score, not scaled: every gene's first partner scales to 1, so the scaled score cannot
    order edges across genes.

    Parameters
    ----------
    gene_pairs : pandas.DataFrame
        The top_gene_pairs table.
    n_edges : int
        Edges kept.

    Returns
    -------
    pandas.DataFrame
        The genes those edges involve, both ways; an entry is the edge's mean attention, NaN where the
        table lists no such edge.
    """
    edges = gene_pairs.dropna(subset=["score"]).sort_values(["score", "scaled"], ascending=False, kind="stable")
    edges = edges.head(n_edges)
    genes = list(dict.fromkeys(np.column_stack([edges["gene"], edges["partner"]]).ravel().tolist()))
    matrix = pd.DataFrame(np.nan, index=pd.Index(genes, name="gene"), columns=pd.Index(genes, name="partner"))
    matrix.values[matrix.index.get_indexer(edges["gene"]), matrix.columns.get_indexer(edges["partner"])] = (
        edges["score"].to_numpy(dtype=np.float64))
    return matrix


def write_pair_files(staging: Path, tables: PairTables, top_k: int) -> dict[str, str]:
    """Write gene_to_gene.csv, top_gene_pairs.csv, protein_to_protein.csv, top_protein_pairs.csv and heatmaps.

    Parameters
    ----------
    staging : pathlib.Path
        The staged output folder.
    tables : PairTables
        The tables.
    top_k : int
        Partners listed.

    Returns
    -------
    dict of str to str
        Key -> file name, for the files written.
    """
    from sctranslator.analysis.plots import save_heatmap

    names: dict[str, str] = {}
    if tables.gene_pairs is not None:
        names["top_gene_pairs"] = "top_gene_pairs.csv"
        tables.gene_pairs.to_csv(staging / names["top_gene_pairs"], index=False)
    if tables.gene_to_gene is not None:
        names["gene_to_gene"] = "gene_to_gene.csv"
        tables.gene_to_gene.to_csv(staging / names["gene_to_gene"], index_label="gene")
        shown = list(dict.fromkeys(tables.gene_pairs.loc[tables.gene_pairs["rank"] <= min(top_k, 10), "partner"]))
        if shown:
            names["gene_to_gene_heatmap"] = "gene_to_gene.png"
            rows = tables.gene_to_gene.iloc[:60]
            scaled = pd.DataFrame(scale_block(rows.to_numpy(), None, None), index=rows.index, columns=rows.columns)
            save_heatmap(scaled[shown[:60]], staging / names["gene_to_gene_heatmap"],
                         title="gene-gene attention (row min-max scaled)", colorbar="scaled score")
    elif tables.gene_pairs is not None and tables.gene_pairs["score"].notna().any():
        # Over all genes there is no matrix to show: plot the table's strongest edges among their genes.
        names["top_gene_pairs_heatmap"] = "top_gene_pairs.png"
        save_heatmap(top_edge_matrix(tables.gene_pairs), staging / names["top_gene_pairs_heatmap"],
                     title=f"gene-gene attention: the {PLOTTED_EDGES} strongest edges of top_gene_pairs.csv "
                           "(row gene -> partner; blank: not among them)", colorbar="mean attention (score)")
    if tables.protein_to_protein is not None:
        names["protein_to_protein"] = "protein_to_protein.csv"
        names["top_protein_pairs"] = "top_protein_pairs.csv"
        names["protein_to_protein_heatmap"] = "protein_to_protein.png"
        tables.protein_to_protein.to_csv(staging / names["protein_to_protein"], index_label="protein")
        tables.protein_pairs.to_csv(staging / names["top_protein_pairs"], index=False)
        if tables.protein_scaled.notna().to_numpy().any():
            save_heatmap(tables.protein_scaled.iloc[:60, :60], staging / names["protein_to_protein_heatmap"],
                         title="protein-protein attention (min-max scaled per decoder window; blank: other window "
                               "or scaling undefined)", colorbar="scaled score")
        else:  # nothing could be scaled: show the raw means and say why, not a flat colour
            save_heatmap(tables.protein_to_protein.iloc[:60, :60], staging / names["protein_to_protein_heatmap"],
                         title=f"protein-protein mean attention, unscaled: min-max scaling is undefined in a "
                               f"window of fewer than {MIN_SCALED_WINDOW} proteins", colorbar="mean attention")
    return names
