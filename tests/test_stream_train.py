"""Streaming training: the streamed batches and weights equal in-memory training on the same order,
exact resume mid-window, several datasets with their own genes and proteins, random gene subsets."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch
from datafiles import PBMC, TINY_A, data_file

from sctranslator.train.stream import Batch

N_CELLS = 240
SEED = 3
BLOCK, WINDOW = 16, 3  # small blocks and windows: batches span windows and epochs within a few steps


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict:
    rna = ad.read_h5ad(data_file(PBMC / "rna.h5ad"))[:N_CELLS].copy()
    protein = ad.read_h5ad(PBMC / "protein.h5ad")[:N_CELLS].copy()
    folder = tmp_path_factory.mktemp("stream")
    rna.write_h5ad(folder / "rna.h5ad")
    protein.write_h5ad(folder / "protein.h5ad")
    return {"rna": rna, "protein": protein, "rna_path": folder / "rna.h5ad", "protein_path": folder / "protein.h5ad"}


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _setup(pair: dict, **train: object) -> dict:
    """The pieces finetune builds (panels on TINY_A, split, stream) and the in-memory arrays of the old trainer."""
    from sctranslator.model import load_model
    from sctranslator.options import TrainDataOptions, TrainOptions
    from sctranslator.train.datasets import build_stream, union_protein_panel
    from sctranslator.train.inputs import attach_panels, data_gene_tokens, gene_panel_from_data, prepare_arrays
    from sctranslator.train.loop import apply_freeze
    from sctranslator.train.paired import load_paired
    from sctranslator.train.split import split_cells

    paired = load_paired(pair["rna_path"], pair["protein_path"])
    assert paired.protein_table is None and paired.protein_source is not None  # proteins read in blocks
    split = split_cells(paired.obs, val_count=40, seed=SEED)
    model = load_model(TINY_A)
    genes = gene_panel_from_data(data_gene_tokens(paired.source.var), model.config.max_genes)
    proteins, columns, slots = union_protein_panel([paired.protein_names], None)
    attach_panels(model, genes, proteins, {"normalize": "total_log1p", "target_sum": 1e4, "target_scaling": "minmax"})
    apply_freeze(model, ())
    data = TrainDataOptions(normalize="total_log1p", target_sum=1e4, target_scaling="minmax")
    options = TrainOptions(**{"steps": 8, "batch_size": 16, "accumulation": 2, "seed": SEED, "quiet": True,
                              "val_every": 4, "block_cells": BLOCK, "shuffle_blocks": WINDOW, **train})
    stream = build_stream([paired], [split], model, columns, slots, data, options, gene_mapping=genes["mapping"])
    arrays = prepare_arrays(paired, model, columns[0])
    return {"paired": paired, "split": split, "model": model, "stream": stream, "arrays": arrays,
            "options": options}


class MemoryStream:
    """The old trainer's way, as a reference: every cell prepared up front and held, served in the
    order README documents (blocks in rng([seed, epoch]) order, cells permuted per window of blocks)."""

    def __init__(self, stream, arrays, split, seed: int) -> None:
        self.gene_ids, self.gene_mask = stream.gene_ids, stream.gene_mask
        self.protein_ids, self.protein_mask = stream.protein_ids, stream.protein_mask
        self.n_proteins = stream.n_proteins
        self.values, self.targets = arrays.values, arrays.targets
        self.train, self.val, self.seed = split.train, split.val, seed
        self.n_train, self.n_val = split.train.size, split.val.size
        self.epoch = self.offset = 0

    def order(self, epoch: int) -> np.ndarray:
        n_blocks = math.ceil((self.n_train + self.n_val) / BLOCK)
        blocks = [b for b in (self.train[(self.train >= k * BLOCK) & (self.train < (k + 1) * BLOCK)]
                              for k in range(n_blocks)) if b.size]
        shuffled = np.random.default_rng([self.seed, epoch]).permutation(len(blocks))
        cells = []
        for w in range(math.ceil(len(blocks) / WINDOW)):
            window = np.concatenate([blocks[b] for b in shuffled[w * WINDOW:(w + 1) * WINDOW]])
            cells.append(window[np.random.default_rng([self.seed, epoch, w]).permutation(window.size)])
        return np.concatenate(cells)

    def _batch(self, cells: np.ndarray) -> Batch:
        values = np.zeros((cells.size, self.gene_ids.size), dtype=np.float32)
        values[:, :self.values.shape[1]] = self.values[cells]
        targets = np.zeros((cells.size, self.protein_ids.size), dtype=np.float32)
        targets[:, :self.n_proteins] = self.targets[cells]
        mask = np.zeros(targets.shape, dtype=bool)
        mask[:, :self.n_proteins] = True
        return Batch(values, targets, mask)

    def take(self, count: int, lo: int, hi: int, rng: object = None) -> Batch:
        if self.offset + count > self.n_train:
            self.epoch, self.offset = self.epoch + 1, 0
        cells = self.order(self.epoch)[self.offset + lo:self.offset + hi]
        self.offset += count
        return self._batch(cells)

    def val_batches(self, size: int):
        for lo in range(0, self.n_val, size):
            yield self._batch(self.val[lo:lo + size])

    def state(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def restore(self, state: dict) -> None:
        self.epoch, self.offset = state["epoch"], state["offset"]


def _train(model, stream, options, work: Path):
    from sctranslator.train.distributed import Processes
    from sctranslator.train.loop import Trainer
    from sctranslator.train.metrics_log import MetricsLog

    trainer = Trainer(copy.deepcopy(model), stream, options, Processes(), work, MetricsLog(None), "test")
    outcome = trainer.run()
    return trainer.model, outcome


def test_streaming_equals_in_memory_training_on_the_same_order(pair, tmp_path):
    parts = _setup(pair)
    stream, options = parts["stream"], parts["options"]
    memory = MemoryStream(stream, parts["arrays"], parts["split"], SEED)
    # 8 steps x 2 x 16 cells = 256 > 200 training cells: the run crosses an epoch and many windows.
    for _ in range(16):
        got, want = stream.take(16, 0, 16), memory.take(16, 0, 16)
        np.testing.assert_array_equal(got.values, want.values)
        np.testing.assert_array_equal(got.targets, want.targets)
        np.testing.assert_array_equal(got.protein_mask, want.protein_mask)
    assert stream.epoch == memory.epoch == 1
    stream.restore({"epoch": 0, "offset": 0})
    memory.restore({"epoch": 0, "offset": 0})
    streamed, a = _train(parts["model"], stream, options, tmp_path / "a")
    held, b = _train(parts["model"], memory, options, tmp_path / "b")
    assert _same_weights(streamed, held)
    # Held-out cells are batched by block when streamed (other batch sizes: float rounding only).
    np.testing.assert_allclose(a.val_predictions, b.val_predictions, rtol=1e-5, atol=1e-5)
    assert not _same_weights(streamed, parts["model"])  # it did train


def test_gene_subset_draws_panel_genes_per_cell(pair):
    parts = _setup(pair, gene_subset=20)
    stream = parts["stream"]
    full = MemoryStream(stream, parts["arrays"], parts["split"], SEED).take(16, 0, 16)
    batch = stream.take(16, 0, 16, np.random.default_rng(0))
    length = stream.gene_ids.size
    assert batch.values.shape == batch.gene_ids.shape == batch.gene_mask.shape == (16, length)
    assert batch.gene_mask[:, :20].all() and not batch.gene_mask[:, 20:].any()  # padded as the original pads
    assert (batch.gene_ids[:, 20:] == 0).all() and (batch.values[:, 20:] == 0).all()
    lookup = {int(t): i for i, t in enumerate(stream.gene_ids) if stream.gene_mask[i]}
    positions = np.vectorize(lookup.__getitem__)(batch.gene_ids[:, :20])
    assert all(len(set(row)) == 20 for row in positions.tolist())  # without replacement
    assert len({tuple(row) for row in positions.tolist()}) > 1  # each cell its own draw
    np.testing.assert_array_equal(batch.values[:, :20], np.take_along_axis(full.values, positions, axis=1))


def test_resume_mid_window_is_exact_with_gene_subsets(pair, tmp_path):
    from sctranslator.model import load_model
    from sctranslator.train import finetune

    settings = {"init": TINY_A, "steps": 8, "batch_size": 16, "accumulation": 2, "val_count": 40, "seed": SEED,
                "block_cells": BLOCK, "shuffle_blocks": WINDOW, "gene_subset": 24, "val_every": 4,
                "quiet": True, "workers": 1}
    whole = finetune(pair["rna_path"], pair["protein_path"], out=tmp_path / "whole", **settings)
    stopped = finetune(pair["rna_path"], pair["protein_path"], out=tmp_path / "parts", stop_after=5, **settings)
    assert stopped.training_outcome.interrupted
    state = torch.load(tmp_path / "parts.training" / "state.pt", weights_only=True)
    assert state["data_order"] == {"epoch": 0, "offset": 160}  # 5 steps x 2 x 16 cells, mid-epoch
    resumed = finetune(pair["rna_path"], pair["protein_path"], out=tmp_path / "parts", resume=True, **settings)
    assert resumed.training_outcome.steps_done == 8
    assert _same_weights(whole, resumed)
    assert _same_weights(load_model(tmp_path / "whole"), load_model(tmp_path / "parts"))
    record = json.loads((tmp_path / "whole" / "config.json").read_text())
    assert record["training_data"]["gene_subset"] == 24
    assert "gene_subset=24" in (tmp_path / "whole" / "card.md").read_text()


def test_several_datasets_with_their_own_genes_and_proteins(pair, tmp_path, capsys):
    import argparse

    from sctranslator.model import load_model
    from sctranslator.train.command import define_finetune

    rna, protein = pair["rna"], pair["protein"]
    first, second = slice(0, 120), slice(120, N_CELLS)
    paths = {"a": tmp_path / "a.h5ad", "b": tmp_path / "b.h5ad", "pa": tmp_path / "pa.h5ad", "pb": tmp_path / "pb.h5ad"}
    rna[first, :100].copy().write_h5ad(paths["a"])
    rna[second, 50:150][:, ::-1].copy().write_h5ad(paths["b"])  # other genes, in another order
    protein[first, :10].copy().write_h5ad(paths["pa"])
    protein[second, 4:].copy().write_h5ad(paths["pb"])
    parser = argparse.ArgumentParser()
    handler = define_finetune(parser)
    args = parser.parse_args(["--rna", str(paths["a"]), str(paths["b"]), "--protein", str(paths["pa"]),
                              str(paths["pb"]), "--config", "tiny", "--out", str(tmp_path / "mixed"),
                              "--steps", "4", "--batch-size", "8", "--val-count", "20", "--block-cells", "32",
                              "--quiet"])
    assert handler(args) == 0
    assert "held-out mean per-protein Pearson r" in capsys.readouterr().out
    model = load_model(tmp_path / "mixed")
    names = list(protein.var_names)
    assert model.panel["proteins"]["names"] == names  # the union, in order of first appearance
    tokens = model.panel["genes"]["token_ids"]
    assert len(tokens) == len(set(tokens)) > 100  # genes of both datasets
    card = (tmp_path / "mixed" / "card.md").read_text()
    assert str(paths["a"]) in card and str(paths["b"]) in card
    record = json.loads((tmp_path / "mixed" / "config.json").read_text())["training_data"]
    assert [d["paired_cells"] for d in record["datasets"]] == [120, 120]


def test_several_datasets_validation_skips_unmeasured_proteins(pair, tmp_path):
    from sctranslator.train import finetune

    rna, protein = pair["rna"], pair["protein"]
    a, b = rna[:120].copy(), rna[120:].copy()
    pa, pb = protein[:120, :10].copy(), protein[120:, 4:].copy()
    model = finetune([a, b], [pa, pb], init=TINY_A, out=tmp_path / "m", steps=2, batch_size=8, val_count=10,
                     quiet=True, workers=1)
    truth = model.validation.targets
    assert truth.shape == (20, 14)
    assert np.isnan(truth[:10, 10:]).all() and np.isfinite(truth[:10, :10]).all()  # dataset a: 10 proteins
    assert np.isnan(truth[10:, :4]).all() and np.isfinite(truth[10:, 4:]).all()  # dataset b: the last 10
    assert np.isfinite(model.validation.metrics["val_loss"])


def test_unmatched_inputs_and_bad_stream_settings_are_named_errors(pair, tmp_path):
    from sctranslator.errors import InputDataError, OptionError
    from sctranslator.train import finetune

    with pytest.raises(InputDataError, match="2 RNA inputs but 1 protein inputs"):
        finetune([pair["rna_path"], pair["rna_path"]], [pair["protein_path"]], init=TINY_A, out=tmp_path / "x",
                 steps=1)
    with pytest.raises(OptionError, match="^--gene-subset must be >= 1, got 0"):
        finetune(pair["rna_path"], pair["protein_path"], init=TINY_A, out=tmp_path / "y", steps=1, gene_subset=0)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_mudata_given_as_protein_input_is_read_through_its_protein_modality(pair, tmp_path):
    import argparse

    import mudata

    from sctranslator.errors import InputDataError
    from sctranslator.train import finetune
    from sctranslator.train.command import define_finetune

    rna, protein = pair["rna"], pair["protein"]
    paths = {"a": tmp_path / "a.h5ad", "pa": tmp_path / "pa.h5ad", "c": tmp_path / "c.h5mu"}
    rna[:120, :100].copy().write_h5ad(paths["a"])
    protein[:120, :10].copy().write_h5ad(paths["pa"])
    mudata.MuData({"rna": rna[120:, 50:150].copy(), "prot": protein[120:, 4:].copy()}).write(str(paths["c"]))
    parser = argparse.ArgumentParser()
    handler = define_finetune(parser)
    common = ["--config", "tiny", "--steps", "1", "--batch-size", "8", "--val-count", "10", "--block-cells", "32",
              "--workers", "1", "--quiet"]
    # The .h5mu as its own --protein entry, and as "-" (its proteins are in the RNA input).
    for name, entry in (("given", str(paths["c"])), ("dash", "-")):
        args = parser.parse_args(["--rna", str(paths["a"]), str(paths["c"]), "--protein", str(paths["pa"]), entry,
                                  "--out", str(tmp_path / name), *common])
        assert handler(args) == 0
        record = json.loads((tmp_path / name / "config.json").read_text())["training_data"]["datasets"]
        assert record[1]["protein"] == f"modality 'prot' of {paths['c']}"
        assert record[1]["proteins"] == 10
    card = (tmp_path / "given" / "card.md").read_text()
    # Genes and proteins are counted per dataset, not summed; the panels are their unions.
    assert "240 cells in 2 datasets; input genes per dataset: 100, 100)" in card
    assert "(measured per dataset: 10, 10)" in card
    assert "protein panel (14, in trained order)" in card
    n_genes = len(json.loads((tmp_path / "given" / "panel.json").read_text())["genes"]["token_ids"])
    assert f"gene panel: {n_genes} genes" in card and 100 < n_genes < 200
    # Two modalities named like proteins: a named error listing them, nothing written.
    mudata.MuData({"rna": rna[120:, :100].copy(), "prot": protein[120:].copy(),
                   "adt": protein[120:].copy()}).write(str(tmp_path / "two.h5mu"))
    with pytest.raises(InputDataError, match=r"modalities \['adt', 'prot', 'rna'\]|modalities \[.*'adt'.*'prot'"):
        finetune(tmp_path / "two.h5mu", tmp_path / "two.h5mu", config="tiny", out=tmp_path / "amb", steps=1)
    assert not (tmp_path / "amb").exists() and not (tmp_path / "amb.training").exists()


def test_gene_subset_beyond_the_panel_keeps_every_gene_and_records_it(pair, tmp_path, caplog):
    from sctranslator.train import finetune

    with caplog.at_level("WARNING", logger="sctranslator.train.api"):
        model = finetune(pair["rna_path"], pair["protein_path"], init=TINY_A, out=tmp_path / "m", steps=1,
                         batch_size=8, val_count=10, gene_subset=999_999, quiet=True, workers=1)
    n_panel = len(model.panel["genes"]["token_ids"])
    assert f"--gene-subset 999999 exceeds the {n_panel}-gene panel" in caplog.text
    record = json.loads((tmp_path / "m" / "config.json").read_text())["training_data"]
    assert record["gene_subset"] == n_panel
    assert f"gene_subset={n_panel}," in (tmp_path / "m" / "card.md").read_text()
