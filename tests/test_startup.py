"""What a translate run does before its first cell: weights loaded, not drawn; the fingerprint hashed once,
beside the planning; the first gene layout prepared ahead; no dask.distributed for a local run."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datafiles import PBMC, data_file

from sctranslator.engine.backends.base import Batch
from sctranslator.engine.backends.torch_backend import TorchBackend
from sctranslator.model import ModelConfig, TranslatorModel, load_model, save_model
from sctranslator.model.identity import fingerprint_in_background, model_fingerprint

ROOT = Path(__file__).resolve().parents[1]
L, P = 64, 6


def _small_model() -> TranslatorModel:
    torch.manual_seed(0)
    config = ModelConfig.sized(dim=16, enc_depth=1, enc_heads=2, enc_dim_head=8, dec_depth=1, dec_heads=2,
                               dec_dim_head=8, max_genes=L, max_proteins=P, translator_depth=2, vocab_size=300)
    model = TranslatorModel(config).eval()
    with torch.no_grad():  # non-zero biases, so the padding token is not trivially zero
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0, 0.5)
    return model


def _hash_as_documented(model: TranslatorModel) -> str:
    """sha256 of the config and panel JSON, then each tensor's name and bytes in key order (a copy of each)."""
    digest = hashlib.sha256((json.dumps(model.config.to_dict(), sort_keys=True)
                             + json.dumps(model.panel, sort_keys=True, default=str)).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def test_skeleton_holds_shapes_and_no_data() -> None:
    model = TranslatorModel.skeleton(_small_model().config)
    tensors = model.state_dict()
    assert tensors and all(t.is_meta for t in tensors.values())
    assert tensors["enc.pos_emb.weight"].shape == (300, 16)
    assert tensors["enc.layers.0.attn.projection_matrix"].shape[1] == 8
    assert not model.training


def test_a_bundle_loads_its_weights_without_drawing_any(tmp_path: Path) -> None:
    model = _small_model()
    bundle = save_model(model, tmp_path / "bundle")
    torch.manual_seed(1)
    before = torch.random.get_rng_state()
    loaded = load_model(bundle)
    # Building the network used to initialise every weight (drawing from the global generator) first.
    assert torch.equal(torch.random.get_rng_state(), before)
    state, saved = loaded.state_dict(), model.state_dict()
    assert sorted(state) == sorted(saved)
    assert all(not t.is_meta and torch.equal(t, saved[k]) for k, t in state.items())
    # in PyTorch's own (64-byte aligned) memory, not read in place from the file: matmul results depend on it
    assert all(t.is_contiguous() and t.data_ptr() % 64 == 0 for t in state.values())
    assert all(p.requires_grad for p in loaded.parameters()) and not loaded.training
    with torch.no_grad():  # the loaded weights are the model's own: writable, as training needs them
        loaded.dec.to_out.bias.add_(1.0)
    assert torch.equal(loaded.dec.to_out.bias, saved["dec.to_out.bias"] + 1.0)


def test_an_official_checkpoint_loads_without_drawing_weights(fixtures_dir: Path) -> None:
    torch.manual_seed(2)
    before = torch.random.get_rng_state()
    model = load_model(fixtures_dir / "tiny_a_official.pt")
    assert torch.equal(torch.random.get_rng_state(), before)
    assert not any(t.is_meta for t in model.state_dict().values())


def test_fingerprint_of_a_loaded_bundle_is_the_documented_hash(tmp_path: Path) -> None:
    loaded = load_model(save_model(_small_model(), tmp_path / "bundle"))
    assert model_fingerprint(loaded) == _hash_as_documented(loaded)


def test_fingerprint_in_background_leaves_the_value_for_the_caller() -> None:
    model = _small_model()
    fingerprint_in_background(model).join(timeout=60)
    expected = _hash_as_documented(model)
    assert model._fingerprint_cache[1] == expected  # computed in the thread
    assert model_fingerprint(model) == expected


def _batch(rng: np.random.Generator, cells: int = 3) -> Batch:
    ids = np.zeros(L, dtype=np.int64)
    mask = np.zeros(L, dtype=bool)
    ids[:20] = rng.integers(1, 300, 20)
    mask[:20] = True
    values = np.zeros((cells, L), dtype=np.float32)
    values[:, :20] = rng.random((cells, 20), dtype=np.float32)
    proteins = rng.integers(1, 300, (1, P)).astype(np.int64)
    return Batch(values, ids, mask, proteins, np.ones((1, P), dtype=bool))


def test_prepare_layout_builds_the_collapse_the_batches_then_use() -> None:
    model = _small_model()
    batch = _batch(np.random.default_rng(0))
    cold = TorchBackend(model).predict(batch)
    warm = TorchBackend(model)
    warm.prepare_layout(batch.gene_ids, batch.gene_mask)
    assert len(warm._collapses) == 1
    prepared = next(iter(warm._collapses.values()))
    assert prepared is not None and prepared.pad_count == L - 20
    np.testing.assert_array_equal(warm.predict(batch), cold)
    assert list(warm._collapses.values()) == [prepared]  # used, not built again
    off = TorchBackend(model, collapse_padding=False)
    off.prepare_layout(batch.gene_ids, batch.gene_mask)
    assert off._collapses == {}  # nothing to prepare without the collapse


def test_a_local_translate_never_imports_dask_distributed(tmp_path: Path) -> None:
    pytest.importorskip("distributed")  # without it there is nothing to avoid
    code = ("import sys\nfrom sctranslator.cli.entry import main\n"
            f"rc = main(['translate', {str(data_file(PBMC / 'rna.h5ad'))!r}, '--model', 'demo', '--out', "
            f"{str(tmp_path / 'out.zarr')!r}, '--max-cells', '8', '--quiet'])\n"
            "print(rc, 'distributed' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "0 False"


WARM_KERNELS = """
import sys
from sctranslator.engine.translate import prepare_translate
from sctranslator.kernels import _preprocess_numba as pre, scan
from sctranslator.options import TranslateOptions
from sctranslator.outputs import writing

kernels = (scan._scan_csr_kernel, scan._scan_dense_kernel, pre.scale_align_csr_kernel, pre.scale_align_dense_kernel)
before = sum(len(k.signatures) for k in kernels)
with writing(False):
    prepared = prepare_translate(sys.argv[1], "demo", TranslateOptions.from_kwargs(out=sys.argv[2], quiet=True))
    prepared.warming.join(timeout=120)
    after = sum(len(k.signatures) for k in kernels)
    prepared.close()
print(before, after, prepared.source._handle is None)
"""


def test_the_first_rows_kernels_are_loaded_before_the_run_and_the_source_closes(tmp_path: Path) -> None:
    """prepare_translate reads, checks and prepares the first row in the background (scan + scale/align
    kernels loaded), and closing the prepared input waits for that read, so the file is not reopened."""
    result = subprocess.run([sys.executable, "-c", WARM_KERNELS, str(data_file(PBMC / "rna.h5ad")),
                             str(tmp_path / "out.zarr")], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    before, after, closed = result.stdout.split()
    assert before == "0" and int(after) >= 2 and closed == "True"
