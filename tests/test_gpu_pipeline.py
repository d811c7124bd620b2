"""The GPU-ready pipeline: batch sizing from a memory model, pinned staging and overlap, --compile, one
worker per GPU. The arithmetic, the CPU fallbacks and the worker assignment run on CPU; the CUDA
paths are `gpu`-marked and skip without a device."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

import sctranslator
from sctranslator.engine import pipeline
from sctranslator.engine import translate as translate_module
from sctranslator.engine.backends.base import Batch
from sctranslator.engine.backends.compiled import is_compiled
from sctranslator.engine.backends.cuda_staging import HostStager, Pending, pipelined
from sctranslator.engine.backends.device_memory import (
    BYTES_PER_ELEMENT,
    cells_per_call,
    forward_memory,
)
from sctranslator.engine.backends.torch_backend import TorchBackend
from sctranslator.engine.gpus import threads_per_gpu, visible_gpus, worker_specs
from sctranslator.errors import BackendError, InputDataError
from sctranslator.model import ModelConfig, TranslatorModel

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to PyTorch")
PROTEINS = ["CD3", "CD4", "CD8a", "CD14", "CD16", "CD19", "CD45RA", "PD-1", "TIGIT", "CD127"]


# -- helpers -------------------------------------------------------------------------------------------

def small_model(seed: int = 0) -> TranslatorModel:
    torch.manual_seed(seed)
    config = ModelConfig.sized(dim=32, enc_depth=1, enc_heads=4, enc_dim_head=16, dec_depth=1, dec_heads=4,
                               dec_dim_head=16, max_genes=512, max_proteins=32, vocab_size=1000)
    return TranslatorModel(config)


def layout_batch(model: TranslatorModel, cells: int, real: int, seed: int = 0, windows: int = 1) -> Batch:
    """`cells` cells whose first `real` of L positions are genes and the rest padding (value 0, id 0);
    the gene layout depends on `real` only, the values and proteins on `seed`."""
    length, proteins = model.config.max_genes, model.config.max_proteins
    gene_ids = np.zeros(length, np.int64)
    gene_ids[:real] = np.random.default_rng(real).permutation(np.arange(1, model.config.vocab_size))[:real]
    rng = np.random.default_rng(seed)
    values = np.zeros((cells, length), np.float32)
    values[:, :real] = rng.random((cells, real), dtype=np.float32)
    protein_ids = rng.integers(1, model.config.vocab_size, (windows, proteins))
    return Batch(values, gene_ids, np.arange(length) < real, protein_ids, np.ones((windows, proteins), bool))


def live_peak_bytes(run) -> int:
    """Peak bytes of live tensor storage while `run()` runs, from the PyTorch profiler's memory timeline
    (every allocation and free of the process's tensors, in order)."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action, MemoryProfileTimeline

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        run()
    live = peak = 0
    for _time, action, _key, size in MemoryProfileTimeline(prof._memory_profile()).timeline:
        if action in (Action.CREATE, Action.PREEXISTING):
            live += size
        elif action == Action.DESTROY:
            live -= size
        peak = max(peak, live)
    return peak


# -- the memory model ----------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("real", [512, 200])  # every position a gene (no collapse) / 312 padded positions
def test_memory_model_matches_the_measured_peak_per_cell(precision: str, real: int) -> None:
    model = small_model()
    backend = TorchBackend(model, precision=precision)
    small, large = layout_batch(model, 8, real, seed=1), layout_batch(model, 16, real, seed=2)
    backend.predict(small)  # first-call allocations (collapse, caches) out of the measurement
    per_cell = (live_peak_bytes(lambda: backend.predict(large)) - live_peak_bytes(lambda: backend.predict(small))) / 8
    tokens = real + 1 if real < model.config.max_genes else model.config.max_genes
    modelled = forward_memory(model.config, tokens, precision).per_cell
    # An upper bound (within float-allocation noise) that is not loose: the batch sizes depend on it.
    assert 0.98 * per_cell <= modelled <= 1.10 * per_cell, (modelled, per_cell)


def test_cells_per_call_arithmetic() -> None:
    config = ModelConfig()  # the full-size model
    full, collapsed = forward_memory(config, 20_000), forward_memory(config, 16_201)
    assert collapsed.per_cell < full.per_cell
    # The encoder block dominates the full-size model; reduced precision keeps fp32 activations.
    assert full.per_cell == full.encoder_block + full.inputs
    assert forward_memory(config, 16_201, "bf16") == collapsed
    reserve, margin = 1 << 30, 0.8
    step = collapsed.per_cell + config.max_genes * 4  # a cell in compute + a cell staged
    for cells in (1, 7, 300):
        available = reserve + int(np.ceil(cells * step / margin))
        assert cells_per_call(config, 16_201, "fp32", available, margin=margin, reserve_bytes=reserve) == cells
        assert cells_per_call(config, 16_201, "fp32", available - 4096, margin=margin, reserve_bytes=reserve) \
            == max(1, cells - 1)
    assert cells_per_call(config, 16_201, "fp32", 0) == 1  # never zero: the call fails loudly instead
    assert cells_per_call(config, 10, "fp32", 1 << 50, limit=64) == 64
    assert set(BYTES_PER_ELEMENT) == {"fp32", "fp16", "bf16"}
    with pytest.raises(InputDataError, match="precision"):
        forward_memory(config, 100, "int8")
    with pytest.raises(InputDataError, match="tokens"):
        forward_memory(config, 20_001)


class RecordingBackend:
    """A backend that records its batch sizes and offers a size of its own."""

    name = "recording"
    supports_embeddings = False

    def __init__(self, offered: int | None):
        self.offered = offered
        self.sizes: list[int] = []

    def cells_per_call(self, batch: Batch) -> int | None:
        return self.offered

    def predict(self, batch: Batch) -> np.ndarray:
        self.sizes.append(batch.values.shape[0])
        return np.repeat(batch.values[:, :1], batch.protein_ids.size, axis=1)


@pytest.mark.parametrize(("auto", "offered", "expected"), [(True, 7, 7), (True, None, 5), (False, 7, 5)])
def test_blocks_take_the_backends_batch_size_only_when_auto(monkeypatch: pytest.MonkeyPatch, data_dir: Path,
                                                            fixtures_dir: Path, auto: bool, offered: int | None,
                                                            expected: int) -> None:
    from sctranslator.engine.sources import open_source
    from sctranslator.plan import build_plan

    model = sctranslator.load_model(fixtures_dir / "tiny_a_official.pt")
    source = open_source(str(data_dir / "pbmc10k_cite_10x" / "rna.h5ad"))
    plan = build_plan(source.var, model, PROTEINS)
    backend = RecordingBackend(offered)
    monkeypatch.setattr(pipeline, "get_backend", lambda spec: backend)
    job = pipeline.BlockJob(source=source, plan=plan, backend=None, sink=None, batch_size=5,  # type: ignore[arg-type]
                            allow_empty_cells=True, auto_batch_size=auto)
    predictions, _, _ = pipeline.predict_block(job, 0, 23)
    assert backend.sizes == [expected] * (23 // expected) + ([23 % expected] if 23 % expected else [])
    assert predictions.shape == (23, len(PROTEINS))


def test_torch_backend_sizes_nothing_off_cuda() -> None:
    model = small_model()
    assert TorchBackend(model).cells_per_call(layout_batch(model, 1, 100)) is None


# -- staging and the pipelined loop --------------------------------------------------------------------

def test_pipelined_batches_equal_one_call_per_batch_on_cpu() -> None:
    model = small_model()
    backend = TorchBackend(model)
    assert isinstance(backend.stager, HostStager)
    batches = [layout_batch(model, cells, 300, seed=cells, windows=2) for cells in (3, 5, 1, 4)]
    streamed = list(backend.predict_batches(iter(batches), embeddings=True))
    assert len(streamed) == len(batches)
    for batch, (predictions, embedding) in zip(batches, streamed, strict=True):
        expected, expected_embedding = backend.predict_with_embeddings(batch)
        assert predictions.shape == (batch.values.shape[0], 2 * model.config.max_proteins)
        np.testing.assert_array_equal(predictions, expected)
        np.testing.assert_array_equal(embedding, expected_embedding)
    assert all(e is None for _, e in backend.predict_batches(batches, embeddings=False))
    assert list(backend.predict_batches(iter([]))) == []


def test_pipeline_stages_the_next_batch_before_waiting_for_the_current_one() -> None:
    events: list[str] = []

    class Recorder(HostStager):
        def stage(self, batch):
            if batch is not None:
                events.append(f"stage {batch}")
            return batch

        def fetch(self, outputs):
            tag = outputs[1]
            events.append(f"fetch {tag}")
            pending = Pending((torch.zeros(1, 1), None))
            original = pending.result

            def result():
                events.append(f"wait {tag}")
                return original()

            pending.result = result  # type: ignore[method-assign]
            return pending

    def forward(batch, embeddings):
        events.append(f"launch {batch}")
        return torch.zeros(1, 1), batch

    for _ in pipelined(forward, ["a", "b", "c"], False, Recorder()):  # type: ignore[arg-type]
        pass
    assert events == ["stage a", "launch a", "fetch a", "stage b", "launch b", "fetch b", "stage c", "wait a",
                      "launch c", "fetch c", "wait b", "wait c"]


# -- torch.compile -------------------------------------------------------------------------------------

def test_compiled_backend_agrees_with_eager_and_leaves_the_callers_model_alone(fixtures_dir: Path) -> None:
    model = sctranslator.load_model(fixtures_dir / "tiny_b_official.pt")
    eager, compiled = TorchBackend(model), TorchBackend(model, compile=True)
    assert is_compiled(compiled.model) and not is_compiled(model) and compiled.model is not model
    for cells, real in ((4, 60), (3, 60)):  # then a shorter batch (a dynamic batch dimension)
        batch = layout_batch(model, cells, real, seed=cells + real, windows=2)
        expected, expected_embedding = eager.predict_with_embeddings(batch)
        got, embedding = compiled.predict_with_embeddings(batch)
        scale = np.abs(expected).max()
        assert np.abs(got - expected).max() <= 1e-5 * scale
        assert np.abs(embedding - expected_embedding).max() <= 1e-5 * np.abs(expected_embedding).max()


def test_compile_is_a_torch_option(data_dir: Path, fixtures_dir: Path) -> None:
    with pytest.raises(BackendError, match="--compile applies to --backend torch, not onnxruntime"):
        sctranslator.translate(data_dir / "pbmc10k_cite_10x" / "rna.h5ad", fixtures_dir / "tiny_a_official.pt",
                               PROTEINS, backend="onnxruntime", compile=True)


# -- one worker per GPU --------------------------------------------------------------------------------

def test_visible_gpus_from_a_device_count_and_cuda_visible_devices() -> None:
    assert visible_gpus("cuda", count=4, visible=None) == ["0", "1", "2", "3"]
    assert visible_gpus("cuda", count=2, visible="2,5") == ["2", "5"]  # physical ids handed on
    assert visible_gpus("cuda", count=2, visible="GPU-aa, GPU-bb,") == ["GPU-aa", "GPU-bb"]
    assert visible_gpus("cuda", count=1, visible="3,4") == []  # what torch sees bounds the list
    assert visible_gpus("cuda", count=1, visible=None) == []  # one GPU: local threads as before
    assert visible_gpus("cuda:1", count=4, visible=None) == []  # an index pins one GPU
    assert visible_gpus("cpu", count=4, visible=None) == []
    assert visible_gpus("cuda", count=0, visible="") == []


def test_each_gpu_worker_is_started_with_its_own_gpu() -> None:
    specs = worker_specs(["2", "5"], threads=3)
    assert sorted(specs) == ["gpu-2", "gpu-5"]
    for gpu in ("2", "5"):
        options = specs[f"gpu-{gpu}"]["options"]
        assert options["env"] == {"CUDA_VISIBLE_DEVICES": gpu} and options["nthreads"] == 3
    assert threads_per_gpu(4, workers=None, cpus=16) == 4
    assert threads_per_gpu(8, workers=None, cpus=4) == 2
    assert threads_per_gpu(2, workers=10) == 5


def test_blocks_spread_over_one_worker_process_per_gpu(monkeypatch: pytest.MonkeyPatch, data_dir: Path,
                                                       fixtures_dir: Path, tmp_path: Path) -> None:
    """The multi-GPU path on CPU: two fake GPUs -> two worker processes, each started with its own
    CUDA_VISIBLE_DEVICES; every block runs on one of them; predictions as on local threads."""
    from distributed import Client

    rna = ad.read_h5ad(data_dir / "pbmc10k_cite_10x" / "rna.h5ad")[:160].copy()
    path = tmp_path / "rna.h5ad"
    rna.write_h5ad(path)
    model = fixtures_dir / "tiny_a_official.pt"
    local = sctranslator.translate(path, model, PROTEINS, block_cells=20, allow_empty_cells=True)

    seen: dict[str, str] = {}
    real_cluster = pipeline.gpu_cluster

    @contextlib.contextmanager
    def observed_cluster(gpus, threads):
        with real_cluster(gpus, threads) as cluster, Client(cluster) as client:
            # A lambda travels by value; os.environ.get would carry this process's environment along.
            seen.update(client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES")))
            yield cluster

    monkeypatch.setattr(translate_module, "visible_gpus", lambda device: ["0", "1"])
    monkeypatch.setattr(pipeline, "gpu_cluster", observed_cluster)
    spread = sctranslator.translate(path, model, PROTEINS, block_cells=20, allow_empty_cells=True, workers=2,
                                    out=tmp_path / "spread.zarr")
    assert sorted(seen.values()) == ["0", "1"]
    run = spread.uns["sctranslator"]["run"]
    assert sum(run["blocks_per_worker"].values()) == run["blocks_computed"] == 8
    assert set(run["blocks_per_worker"]) <= {"gpu-0", "gpu-1"}
    assert spread.uns["sctranslator"]["settings"]["gpus"] == "0,1"
    np.testing.assert_array_equal(np.asarray(spread.X), np.asarray(local.X))


# -- CUDA (skipped without a device) -------------------------------------------------------------------

@pytest.mark.gpu
@needs_cuda
def test_cuda_pipelined_batches_equal_the_plain_path() -> None:
    model = small_model()
    backend = TorchBackend(model, device="cuda")
    batches = [layout_batch(model, cells, 300, seed=cells, windows=2) for cells in (16, 9, 31)]
    streamed = list(backend.predict_batches(batches, embeddings=True))
    plain = TorchBackend(model, device="cpu")
    for batch, (predictions, embedding) in zip(batches, streamed, strict=True):
        expected, expected_embedding = backend.predict_with_embeddings(batch)  # one sync per batch
        np.testing.assert_allclose(predictions, expected, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(embedding, expected_embedding, rtol=1e-6, atol=1e-7)
        on_cpu, _ = plain.predict_with_embeddings(batch)
        assert np.abs(predictions - on_cpu).max() <= 1e-4 * np.abs(on_cpu).max()


@pytest.mark.gpu
@needs_cuda
def test_cuda_batch_size_from_free_memory_holds_its_memory_model() -> None:
    model = small_model()
    backend = TorchBackend(model, device="cuda")
    batch = layout_batch(model, 1, 300)
    cells = backend.cells_per_call(batch)
    assert cells is not None and cells >= 1
    sized = layout_batch(model, min(cells, 256), 300)
    backend.predict(sized)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    backend.predict(sized)
    torch.cuda.synchronize()
    used = torch.cuda.max_memory_allocated() - base
    modelled = forward_memory(model.config, 301).per_cell * sized.values.shape[0]
    assert used <= 1.15 * modelled, (used, modelled)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_half_precision_keeps_per_protein_pearson(data_dir: Path, precision: str) -> None:
    """--precision fp16 / bf16 against fp32 on CUDA, on real cells with the trained demo model."""
    from sctranslator.engine.block_runner import BlockRunner
    from sctranslator.engine.sources import open_source
    from sctranslator.plan import build_plan

    model = sctranslator.load_model("demo")
    source = open_source(str(data_dir / "pbmc10k_cite_10x" / "rna.h5ad"))
    plan = build_plan(source.var, model, None)
    _, values = BlockRunner(source, plan, allow_empty_cells=True).read_prepared(0, 400)
    batch = Batch(values, plan.gene_ids, plan.position_real, plan.protein_windows, plan.protein_window_mask)
    reference = TorchBackend(model, device="cuda").predict(batch)[:, plan.output_index]
    reduced = TorchBackend(model, device="cuda", precision=precision).predict(batch)[:, plan.output_index]
    r = [np.corrcoef(reference[:, j], reduced[:, j])[0, 1] for j in range(reference.shape[1])]
    assert min(r) >= 0.999, r


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpus_run_one_worker_each(data_dir: Path, fixtures_dir: Path, tmp_path: Path) -> None:
    rna_path = data_dir / "pbmc10k_cite_10x" / "rna.h5ad"
    model = fixtures_dir / "tiny_a_official.pt"
    one = sctranslator.translate(rna_path, model, PROTEINS, device="cuda:0", block_cells=100, allow_empty_cells=True)
    spread = sctranslator.translate(rna_path, model, PROTEINS, device="cuda", block_cells=100,
                                    allow_empty_cells=True, out=tmp_path / "spread.zarr")
    assert len(spread.uns["sctranslator"]["run"]["blocks_per_worker"]) >= 2
    np.testing.assert_allclose(np.asarray(spread.X), np.asarray(one.X), rtol=1e-5, atol=1e-6)
