"""Attention / interaction analysis: against dense N x N attention, bounded memory, outputs."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import sctranslator
from sctranslator.analysis.attention import interactions
from sctranslator.analysis.attention.kinds import PairSums
from sctranslator.analysis.attention.math import received_attention
from sctranslator.analysis.attention.trace import capture_features
from sctranslator.kernels import prepare_values
from sctranslator.model import ModelConfig, TranslatorModel
from sctranslator.model.favor_attention import key_features, query_features
from sctranslator.plan import build_plan

PROTEINS = ["CD3", "CD4", "CD8a", "CD14", "CD16", "CD19", "CD45RA", "HLA-DR", "CD11c", "CD56",
            "CD25", "CD127", "CD38", "CD34", "CD69", "CD86", "CD2", "CD7"]  # 18 > P = 16: two windows


@pytest.fixture(scope="module")
def bmmc(data_dir: Path) -> ad.AnnData:
    rna = ad.read_h5ad(data_dir / "bmmc_cite_neurips2021" / "rna.h5ad")
    cells = np.r_[0:12, 300:312]  # two batches of cell types
    return rna[cells].copy()


@pytest.fixture(scope="module")
def tiny(fixtures_dir: Path) -> TranslatorModel:
    return sctranslator.load_model(fixtures_dir / "tiny_a_official.pt")


class _Recorder:
    """Forward hooks that record each attention layer's dense (head-mean) attention matrix."""

    def __init__(self, stack: torch.nn.Module):
        self.matrices: list[torch.Tensor] = []
        self.handles = [block.attn.register_forward_hook(self._hook) for block in stack.layers]

    def _hook(self, module, inputs, _output) -> None:
        x, mask = inputs[:2]
        q, k, _ = module.project(x, mask)
        q_feat = query_features(q, module.projection_matrix)
        k_feat = key_features(k, module.projection_matrix)
        scores = q_feat @ k_feat.transpose(-1, -2)  # explicit (B, H, N, N) softmax-kernel attention
        dense = scores / scores.sum(dim=-1, keepdim=True)
        self.matrices.append(dense.mean(dim=1).double())

    def mean(self) -> torch.Tensor:
        for handle in self.handles:
            handle.remove()
        return torch.stack(self.matrices).mean(dim=0)


def dense_reference(model: TranslatorModel, rna: ad.AnnData, proteins: list[str]) -> dict[str, np.ndarray]:
    """The original script's quantities from explicit N x N matrices, summed over cells."""
    plan = build_plan(rna.var, model, proteins)
    values = torch.from_numpy(prepare_values(rna.X, plan.column_slot, plan.position_real))
    n = values.shape[0]
    genes = torch.from_numpy(plan.gene_ids).expand(n, -1)
    gene_mask = torch.from_numpy(plan.position_real).expand(n, -1)
    real = np.flatnonzero(plan.position_real)
    with torch.no_grad():
        recorder = _Recorder(model.enc)
        encodings = model.encode(values, genes, gene_mask)
        enc_attention = recorder.mean()  # (B, L, L)
        translated = model.translate_sequence(encodings)
        g2p, dec_received = [], []
        for ids, mask in zip(plan.protein_windows, plan.protein_window_mask, strict=True):
            recorder = _Recorder(model.dec)
            model.decode(translated, torch.from_numpy(ids).expand(n, -1), torch.from_numpy(mask).expand(n, -1))
            dec_attention = recorder.mean()  # (B, P, P)
            dec_received.append(dec_attention[:, torch.from_numpy(mask)].sum(dim=1))
            # The original: einsum('...ik,...kj->...ij', translator(enc_weights), dec_weights)
            g2p.append(torch.einsum("bik,bkj->bij", model.translator(enc_attention.float()).double(), dec_attention))
    received = enc_attention[:, torch.from_numpy(plan.position_real)].sum(dim=1)
    g2p_all = torch.cat(g2p, dim=2)[:, :, torch.from_numpy(plan.output_index)]
    return {"gene_received": received[:, real].sum(0).numpy(),
            "protein_received": torch.cat(dec_received, dim=1)[:, plan.output_index].sum(0).numpy(),
            "gene_to_protein": g2p_all[:, real].sum(0).numpy()}


def test_received_attention_equals_column_sums_of_dense_matrix() -> None:
    generator = torch.Generator().manual_seed(0)
    q_feat = torch.rand(2, 3, 50, 7, generator=generator) + 0.01
    k_feat = torch.rand(2, 3, 50, 7, generator=generator) + 0.01
    weights = (torch.arange(50) < 41).float().expand(2, 1, -1)
    scores = q_feat @ k_feat.transpose(-1, -2)
    dense = scores / scores.sum(dim=-1, keepdim=True)
    expected = (dense * weights.unsqueeze(-1)).sum(dim=-2)
    torch.testing.assert_close(received_attention(q_feat, k_feat, weights), expected, rtol=1e-5, atol=1e-6)


def reference_features(stack: torch.nn.Module, h: torch.Tensor, mask: torch.Tensor,
                       as_published: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's (q', k'), from the Performer blocks written out plainly (eval: no dropout)."""
    found = []
    for block in stack.layers:
        attn = block.attn
        attended = h + attn(block.attn_norm(h), mask)
        state = attended if as_published else h  # the original script's quirk: the post-residual state
        q, k, _ = attn.project(block.attn_norm(state), mask)
        found.append((query_features(q, attn.projection_matrix), key_features(k, attn.projection_matrix)))
        h = attended + block.ff(block.ff_norm(attended))
    return found


@pytest.mark.parametrize("as_published", [False, True])
def test_capture_gives_the_features_of_a_plain_forward(tiny: TranslatorModel, bmmc: ad.AnnData,
                                                       as_published: bool) -> None:
    plan = build_plan(bmmc.var, tiny, PROTEINS)
    values = torch.from_numpy(prepare_values(bmmc.X[:4], plan.column_slot, plan.position_real))
    genes = torch.from_numpy(plan.gene_ids).expand(4, -1)
    mask = torch.from_numpy(plan.position_real).expand(4, -1)
    proteins = torch.from_numpy(plan.protein_windows[0]).expand(4, -1)
    protein_mask = torch.from_numpy(plan.protein_window_mask[0]).expand(4, -1)
    with torch.no_grad():
        plain_encodings = tiny.encode(values, genes, mask)
        translated = tiny.translate_sequence(plain_encodings)
        plain_decoded = tiny.decode(translated, proteins, protein_mask)
        h = tiny.enc.to_vector(values.unsqueeze(-1)) + tiny.enc.pos_emb(genes)
        expected_enc = reference_features(tiny.enc, h, mask, as_published)
        expected_dec = reference_features(tiny.dec, translated + tiny.dec.pos_emb(proteins), protein_mask,
                                          as_published)
        captured: dict[str, list] = {"enc": [], "dec": []}
        with capture_features(tiny.enc, lambda i, q, k: captured["enc"].append((i, q.clone(), k.clone())),
                              as_published=as_published):
            encodings = tiny.encode(values, genes, mask)
        with capture_features(tiny.dec, lambda i, q, k: captured["dec"].append((i, q.clone(), k.clone())),
                              as_published=as_published):
            decoded = tiny.decode(translated, proteins, protein_mask)
    # Capturing does not change the model's numbers, and every layer is seen once, in order.
    torch.testing.assert_close(encodings, plain_encodings, rtol=0, atol=0)
    torch.testing.assert_close(decoded, plain_decoded, rtol=0, atol=0)
    for side, expected in (("enc", expected_enc), ("dec", expected_dec)):
        assert [i for i, _, _ in captured[side]] == list(range(len(expected)))
        for (_, q, k), (q_ref, k_ref) in zip(captured[side], expected, strict=True):
            torch.testing.assert_close(q, q_ref, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(k, k_ref, rtol=1e-6, atol=1e-7)
    # Nothing is left attached once the context closes.
    for block in list(tiny.enc.layers) + list(tiny.dec.layers):
        assert block.attn.capture is None
        assert not block._forward_pre_hooks and not block.attn._forward_hooks


def test_interactions_match_dense_attention(tiny: TranslatorModel, bmmc: ad.AnnData, tmp_path: Path) -> None:
    expected = dense_reference(tiny, bmmc, PROTEINS)
    result = interactions(bmmc, tiny, PROTEINS, out=tmp_path / "att", top_k=5, groupby="cell_type",
                          block_cells=10, batch_size=3, row_block=7)
    n = bmmc.n_obs
    assert result.n_cells["all"] == n
    np.testing.assert_allclose(result.gene_attention["all"].to_numpy(), expected["gene_received"] / n, rtol=1e-5)
    np.testing.assert_allclose(result.protein_attention["all"].to_numpy(), expected["protein_received"] / n,
                               rtol=1e-5)
    np.testing.assert_allclose(result.gene_to_protein.to_numpy(), expected["gene_to_protein"] / n,
                               rtol=1e-4, atol=1e-7)
    # Per-group means recombine into the overall mean.
    counts = pd.Series({g: c for g, c in result.n_cells.items() if g != "all"})
    weighted = sum(result.group_gene_to_protein[g].to_numpy() * c for g, c in counts.items()) / counts.sum()
    np.testing.assert_allclose(weighted, result.gene_to_protein.to_numpy(), rtol=1e-6)
    assert list(result.gene_to_protein.columns) == PROTEINS
    assert result.gene_to_protein.shape[0] == tiny.config.max_genes  # bmmc has > L mapped genes
    # Top genes are the column maxima, and every file is written.
    first = result.top_genes[(result.top_genes["protein"] == "CD4") & (result.top_genes["rank"] == 1)]
    assert first["gene"].item() == result.gene_to_protein["CD4"].idxmax()
    for path in result.files.values():
        assert path.exists() and path.stat().st_size > 0
    written = ad.read_h5ad(result.files["anndata"])
    np.testing.assert_allclose(written.X, result.gene_to_protein.to_numpy(), rtol=1e-6)
    assert {f"mean:{g}".replace("/", "_") for g in counts.index} <= set(written.layers)


def test_as_published_uses_post_residual_state(tiny: TranslatorModel, bmmc: ad.AnnData) -> None:
    default = interactions(bmmc[:3], tiny, PROTEINS[:4])
    quirk = interactions(bmmc[:3], tiny, PROTEINS[:4], as_published=True)
    assert not np.allclose(default.gene_attention.to_numpy(), quirk.gene_attention.to_numpy())


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any torch operation produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in out if isinstance(out, tuple | list) else (out,):
            if isinstance(item, torch.Tensor):
                self.largest = max(self.largest, item.numel())
        return out


def test_memory_never_reaches_l_by_l(data_dir: Path) -> None:
    length = 2000
    config = ModelConfig.sized(dim=16, enc_heads=2, enc_dim_head=8, dec_heads=2, dec_dim_head=8,
                               max_genes=length, max_proteins=16)
    torch.manual_seed(0)
    model = TranslatorModel(config)
    rna = ad.read_h5ad(data_dir / "pbmc10k_cite_10x" / "rna.h5ad")[:2].copy()
    # The dispatch mode is thread-local: one worker traces in this thread.
    with _LargestTensor() as guard:
        result = interactions(rna, model, PROTEINS[:8], batch_size=2, row_block=256, workers=1)
    assert result.gene_to_protein.shape == (length, 8)
    # The largest intermediate is the translator's first layer for the batch's gene rows, (B, L, H1):
    # linear in L, far from the (L, L) of a dense attention matrix.
    hidden = config.translator_hidden[0]
    assert 0 < guard.largest <= 2 * length * hidden < length * length // 4, guard.largest
    # Gene-gene over every gene and protein-protein: torch never holds more than a block of rows.
    with _LargestTensor() as guard:
        every = interactions(rna, model, PROTEINS[:8], batch_size=2, row_block=128,
                             kinds="gene-gene,protein-protein,gene-protein", top_k=3, workers=1)
    assert every.pairs.gene_pairs.shape[0] == 3 * length
    assert 0 < guard.largest <= max(2 * length * hidden, 2 * 128 * length) < length * length // 4, guard.largest


def test_command_line_handler(bmmc: ad.AnnData, tmp_path: Path, fixtures_dir: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from sctranslator.analysis.commands import define_attention

    data = tmp_path / "rna.h5ad"
    bmmc[:4].copy().write_h5ad(data)
    parser = argparse.ArgumentParser()
    handler = define_attention(parser)
    args = parser.parse_args([str(data), "--model", str(fixtures_dir / "tiny_a_official.pt"), "--proteins",
                              "CD3,CD4,CD19", "--out", str(tmp_path / "att"), "--top-k", "3", "--quiet"])
    assert handler(args) == 0
    assert "Attention over 4 cells: 64 genes x 3 proteins" in capsys.readouterr().out
    top = pd.read_csv(tmp_path / "att" / "top_genes.csv")
    assert len(top) == 9 and set(top["protein"]) == {"CD3", "CD4", "CD19"}


def dense_pairs(model: TranslatorModel, rna: ad.AnnData, proteins: list[str]) -> dict[str, np.ndarray]:
    """Gene-gene (real x real) and per-window protein-protein means over cells, from explicit matrices."""
    plan = build_plan(rna.var, model, proteins)
    values = torch.from_numpy(prepare_values(rna.X, plan.column_slot, plan.position_real))
    n = values.shape[0]
    real = torch.from_numpy(np.flatnonzero(plan.position_real))
    with torch.no_grad():
        recorder = _Recorder(model.enc)
        encodings = model.encode(values, torch.from_numpy(plan.gene_ids).expand(n, -1),
                                 torch.from_numpy(plan.position_real).expand(n, -1))
        enc_attention = recorder.mean()  # (B, L, L), mean over layers and heads
        translated = model.translate_sequence(encodings)
        windows = []
        for ids, mask in zip(plan.protein_windows, plan.protein_window_mask, strict=True):
            recorder = _Recorder(model.dec)
            model.decode(translated, torch.from_numpy(ids).expand(n, -1), torch.from_numpy(mask).expand(n, -1))
            windows.append(recorder.mean().mean(dim=0).numpy())  # (P, P)
    size = plan.protein_windows.shape[1]
    w, p = plan.output_index // size, plan.output_index % size
    proteins_matrix = np.stack(windows)[w[:, None], p[:, None], p[None, :]]
    proteins_matrix[w[:, None] != w[None, :]] = np.nan
    return {"gene_gene": enc_attention[:, real][:, :, real].mean(dim=0).numpy(), "protein_protein": proteins_matrix}


def _original_tables(matrix: pd.DataFrame, top_k: int) -> pd.DataFrame:
    """The original: attention_normalize (columns, then rows), then per row the top k others (fig5)."""
    values = matrix.to_numpy(dtype=np.float64)
    lo, hi = np.nanmin(values, axis=0), np.nanmax(values, axis=0)
    values = (values - lo) / np.where(hi > lo, hi - lo, 1.0)
    lo, hi = np.nanmin(values, axis=1, keepdims=True), np.nanmax(values, axis=1, keepdims=True)
    scaled = pd.DataFrame((values - lo) / np.where(hi > lo, hi - lo, 1.0), index=matrix.index, columns=matrix.columns)
    rows = []
    for name in matrix.index:
        others = scaled.loc[name].drop(index=name).dropna()
        for rank, (partner, value) in enumerate(others.nlargest(top_k).items(), start=1):
            rows.append((name, partner, rank, value))
    return pd.DataFrame(rows, columns=["name", "partner", "rank", "scaled"])


def test_three_kinds_match_dense_attention(tiny: TranslatorModel, bmmc: ad.AnnData, tmp_path: Path) -> None:
    cells = bmmc[:6].copy()
    expected = dense_pairs(tiny, cells, PROTEINS)
    every = interactions(cells, tiny, PROTEINS, kinds="gene-gene,protein-protein,gene-protein", top_k=4,
                         batch_size=2, row_block=5, out=tmp_path / "all")
    gene_names = list(every.gene_attention.index)
    dense_genes = pd.DataFrame(expected["gene_gene"], index=gene_names, columns=gene_names)
    dense_proteins = pd.DataFrame(expected["protein_protein"], index=PROTEINS, columns=PROTEINS)
    np.testing.assert_allclose(every.pairs.protein_to_protein.to_numpy(), dense_proteins.to_numpy(), rtol=1e-4,
                               atol=1e-7)
    assert np.isnan(every.pairs.protein_to_protein.loc["CD3", "CD7"])  # windows 0 and 1 never meet
    # The top-partner tables over all genes (blocked, row_block=5) equal the dense ones the original makes.
    # Window 1 holds CD2 and CD7 only: min-max scaling is undefined there (NaN), so they are in no pair.
    window0 = PROTEINS[:16]
    assert every.pairs.protein_scaled.loc[["CD2", "CD7"]].isna().all().all()
    assert every.pairs.unscaled_proteins == ["CD2", "CD7"]
    assert not set(every.pairs.protein_pairs["protein"]) & {"CD2", "CD7"}
    for table, dense, label in ((every.pairs.gene_pairs, dense_genes, "gene"),
                                (every.pairs.protein_pairs, dense_proteins.loc[window0, window0], "protein")):
        reference = _original_tables(dense, 4)
        assert table[label].tolist() == reference["name"].tolist()
        assert table["rank"].tolist() == reference["rank"].tolist()
        # Same partners up to near-ties (float32 here, float64 there): each pick scores what the dense
        # ranking has at that rank, and its raw score is the dense mean attention.
        np.testing.assert_allclose(table["scaled"].to_numpy(), reference["scaled"].to_numpy(), atol=2e-4)
        raw = dense.to_numpy()[dense.index.get_indexer(table[label]), dense.columns.get_indexer(table["partner"])]
        np.testing.assert_allclose(table["score"].to_numpy(), raw, rtol=1e-4, atol=1e-8)
        agree = (table["partner"].to_numpy() == reference["partner"].to_numpy()).mean()
        assert agree > 0.9, agree
    # A gene list: those rows of the same matrix, and the written outputs.
    chosen = gene_names[3:6]
    listed = interactions(cells, tiny, PROTEINS[:4], genes=chosen, top_k=4, batch_size=2, row_block=2,
                          kinds="gene-protein", out=tmp_path / "listed")
    np.testing.assert_allclose(listed.pairs.gene_to_gene.to_numpy(), dense_genes.loc[chosen].to_numpy(),
                               rtol=1e-4, atol=1e-8)
    assert listed.kinds == ("gene-protein", "gene-gene") and listed.pairs.protein_to_protein is None
    written = ad.read_h5ad(listed.files["anndata"])
    np.testing.assert_allclose(written.obsm["gene_to_gene"][chosen[0]].to_numpy(),
                               dense_genes.loc[chosen[0]].to_numpy(), rtol=1e-4, atol=1e-8)
    for key in ("gene_to_gene", "top_gene_pairs", "gene_to_gene_heatmap"):
        assert listed.files[key].stat().st_size > 0
    assert set(pd.read_csv(listed.files["top_gene_pairs"])["gene"]) == set(chosen)
    assert {"protein_to_protein", "top_protein_pairs", "protein_to_protein_heatmap"} <= set(every.files)
    # Over all genes the figure is of the table's strongest edges, each at its mean attention (score).
    from sctranslator.analysis.attention.kinds import PLOTTED_EDGES, top_edge_matrix

    assert every.files["top_gene_pairs_heatmap"].stat().st_size > 0
    table = pd.read_csv(every.files["top_gene_pairs"])
    shown = top_edge_matrix(table)
    edges = shown.stack().dropna()
    assert len(edges) == min(PLOTTED_EDGES, len(table))
    listed_score = table.set_index(["gene", "partner"])["score"]
    np.testing.assert_allclose(edges.to_numpy(), listed_score.loc[edges.index].to_numpy())
    assert edges.nunique() > 1  # not a flat colour
    # ... and no edge left out is stronger than the weakest shown.
    rest = listed_score.drop(index=edges.index)
    assert rest.max() <= edges.min()
    assert "protein_to_protein" in ad.read_h5ad(every.files["anndata"]).varp


def test_blocked_top_partners_equal_dense(tmp_path: Path) -> None:
    from sctranslator.analysis.attention.pairs import top_partners

    rng = np.random.default_rng(0)
    values = rng.random((23, 23))
    values[4, 9] = values[4, 10]  # a tie, broken the same way
    names = [f"g{i}" for i in range(23)]
    stored = np.lib.format.open_memmap(tmp_path / "m.npy", mode="w+", dtype=np.float64, shape=values.shape)
    stored[:] = values
    blocked = top_partners(stored, names, names, np.arange(23), 5, block_rows=4)
    dense = top_partners(values, names, names, np.arange(23), 5, block_rows=23)
    pd.testing.assert_frame_equal(blocked, dense)
    reference = _original_tables(pd.DataFrame(values, index=names, columns=names), 5)
    assert blocked["partner"].tolist() == reference["partner"].tolist()


def test_kind_option_errors(tiny: TranslatorModel, bmmc: ad.AnnData, tmp_path: Path) -> None:
    from sctranslator.errors import OptionError, VocabularyError

    with pytest.raises(OptionError, match="gene-gene"):
        interactions(bmmc[:2], tiny, PROTEINS[:2], kinds="gene-genes")
    with pytest.raises(VocabularyError, match="NOT_A_GENE"):
        interactions(bmmc[:2], tiny, PROTEINS[:2], genes=["NOT_A_GENE"])
    for sizes, named in (({"top_k": 0}, "--top-k"), ({"batch_size": -1}, "--batch-size"),
                         ({"row_block": 0}, "row_block=")):
        with pytest.raises(OptionError, match=f"^{named} must be >= 1"):
            interactions(bmmc[:2], tiny, PROTEINS[:2], **sizes)
    from sctranslator.analysis.knockout import knockout

    with pytest.raises(OptionError, match="^--block-cells must be >= 1, got 0"):
        knockout(bmmc[:2], tiny, ["CD3E"], out=tmp_path / "k.h5ad", block_cells=0)
    assert not (tmp_path / "k.h5ad").exists()
    only = interactions(bmmc[:2], tiny, PROTEINS[:2], kinds="protein-protein")
    assert only.gene_to_protein is None and only.adata.X is None and only.pairs.protein_pairs is not None


def test_command_line_kinds_and_genes(bmmc: ad.AnnData, tmp_path: Path, fixtures_dir: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from sctranslator.analysis.commands import define_attention

    data = tmp_path / "rna.h5ad"
    bmmc[:3].copy().write_h5ad(data)
    parser = argparse.ArgumentParser()
    handler = define_attention(parser)
    first = interactions(bmmc[:1], sctranslator.load_model(fixtures_dir / "tiny_a_official.pt"), ["CD3"],
                         kinds="protein-protein")
    genes = ",".join(first.gene_attention.index[:2])
    args = parser.parse_args([str(data), "--model", str(fixtures_dir / "tiny_a_official.pt"), "--proteins",
                              "CD3,CD4,CD19", "--out", str(tmp_path / "att"), "--top-k", "3", "--quiet",
                              "--kind", "protein-protein", "--genes", genes])
    assert handler(args) == 0
    assert "(gene-gene, protein-protein)" in capsys.readouterr().out
    written = {p.name for p in (tmp_path / "att").iterdir()}
    assert {"top_gene_pairs.csv", "gene_to_gene.csv", "protein_to_protein.csv", "top_protein_pairs.csv"} <= written
    assert "gene_to_protein.csv" not in written
    pairs = pd.read_csv(tmp_path / "att" / "top_protein_pairs.csv")
    assert set(pairs["protein"]) == {"CD3", "CD4", "CD19"} and (pairs["rank"] <= 2).all()


def test_gene_gene_sums_spilled_to_disk_give_the_same_table(tiny: TranslatorModel, bmmc: ad.AnnData,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from sctranslator.analysis.attention import kinds

    in_memory = interactions(bmmc[:2], tiny, PROTEINS[:2], kinds="gene-gene", top_k=3, row_block=16)
    monkeypatch.setattr(kinds, "IN_MEMORY_BYTES", 0)  # every gene-gene sum goes to a temporary np.memmap
    spills: list[Path] = []
    original_init = kinds.PairSums.__post_init__

    def record(self: PairSums) -> None:
        original_init(self)
        assert isinstance(self.gene_sums, np.memmap)
        spills.append(Path(self.gene_sums.filename))

    monkeypatch.setattr(kinds.PairSums, "__post_init__", record)
    spilled = interactions(bmmc[:2], tiny, PROTEINS[:2], kinds="gene-gene", top_k=3, row_block=16)
    # One per block (each block's sums are committed on their own) and one for the total; all removed at the end.
    assert len(spills) == 2 and not any(path.exists() for path in spills)
    pd.testing.assert_frame_equal(spilled.pairs.gene_pairs[["gene", "partner", "rank"]],
                                  in_memory.pairs.gene_pairs[["gene", "partner", "rank"]])
    np.testing.assert_allclose(spilled.pairs.gene_pairs["score"], in_memory.pairs.gene_pairs["score"], rtol=1e-5)


def test_too_small_a_window_leaves_scaling_undefined(tiny: TranslatorModel, bmmc: ad.AnnData, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    import logging

    with caplog.at_level(logging.WARNING, logger="sctranslator.analysis.attention.kinds"):
        two = interactions(bmmc[:2], tiny, ["CD3", "CD4"], kinds="protein-protein", out=tmp_path / "two")
    warnings = [r.getMessage() for r in caplog.records if "scaling is undefined" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0] and "CD3, CD4" in warnings[0]
    assert two.pairs.protein_scaled.isna().all().all()  # NaN, not a flat 0
    assert np.isfinite(two.pairs.protein_to_protein.to_numpy()).all()  # the raw means are kept
    assert two.pairs.protein_pairs.empty and pd.read_csv(two.files["top_protein_pairs"]).empty
    written = ad.read_h5ad(two.files["anndata"])
    assert np.isnan(written.varp["protein_to_protein_scaled"]).all()
    assert two.files["protein_to_protein_heatmap"].stat().st_size > 0
