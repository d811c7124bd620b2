"""The model reproduces the original implementation's numbers; checkpoints load safely."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import sctranslator
from sctranslator.errors import CheckpointError, UnsafeCheckpointError
from sctranslator.model import ModelConfig, TranslatorModel, load_model, load_official_checkpoint, save_model
from sctranslator.model.official import normalise_official_keys

CASES = ["tiny_a", "tiny_b"]


def max_relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def run_case(model: TranslatorModel, case: dict) -> tuple[np.ndarray, np.ndarray]:
    tensors = {k: torch.from_numpy(case[k]) for k in ("values", "gene_ids", "gene_mask", "protein_ids", "protein_mask")}
    with torch.no_grad():
        encodings = model.encode(tensors["values"], tensors["gene_ids"], tensors["gene_mask"])
        predictions = model(tensors["values"], tensors["gene_ids"], tensors["protein_ids"],
                            tensors["gene_mask"], tensors["protein_mask"])
    return encodings.numpy(), predictions.numpy()


@pytest.mark.parametrize("name", CASES)
def test_fixture_encodings_and_predictions_reproduced(fixtures_dir: Path, name: str) -> None:
    model = sctranslator.load_model(fixtures_dir / f"{name}_official.pt")
    case = dict(np.load(fixtures_dir / f"{name}_case.npz"))
    # The fixtures pad both sides, so masks matter: check they really are partial.
    assert not case["gene_mask"].all() and not case["protein_mask"].all()
    encodings, predictions = run_case(model, case)
    assert encodings.shape == case["expected_encodings"].shape
    assert predictions.shape == case["expected_predictions"].shape
    assert max_relative_error(encodings, case["expected_encodings"]) <= 1e-5
    assert max_relative_error(predictions, case["expected_predictions"]) <= 1e-5


@pytest.mark.parametrize("name", CASES)
def test_inferred_config_and_shapes_match_the_original(fixtures_dir: Path, name: str) -> None:
    spec = json.loads((fixtures_dir / "fixtures.json").read_text())[name]
    kwargs = spec["constructor_kwargs"]
    checkpoint = load_official_checkpoint(fixtures_dir / f"{name}_official.pt")
    config = checkpoint.config
    assert config.dim == kwargs["dim"]
    assert config.translator_depth == kwargs["translator_depth"]
    assert config.initial_dropout == pytest.approx(kwargs["initial_dropout"])
    for side in ("enc", "dec"):
        assert getattr(config, f"{side}_depth") == kwargs[f"{side}_depth"]
        assert getattr(config, f"{side}_heads") == kwargs[f"{side}_heads"]
        assert getattr(config, f"{side}_dim_head") == kwargs[f"{side}_dim_head"]
    assert config.max_genes == kwargs["enc_max_seq_len"]
    assert config.max_proteins == kwargs["dec_max_seq_len"]
    # A model built from scratch with the same settings has the original's parameter count and
    # exactly the original's tensors (after renaming, shared duplicates dropped).
    fresh = TranslatorModel(ModelConfig.sized(
        dim=kwargs["dim"], translator_depth=kwargs["translator_depth"],
        enc_depth=kwargs["enc_depth"], enc_heads=kwargs["enc_heads"], enc_dim_head=kwargs["enc_dim_head"],
        dec_depth=kwargs["dec_depth"], dec_heads=kwargs["dec_heads"], dec_dim_head=kwargs["dec_dim_head"],
        max_genes=kwargs["enc_max_seq_len"], max_proteins=kwargs["dec_max_seq_len"]))
    assert fresh.config == config
    assert fresh.n_parameters() == spec["n_parameters"]
    renamed, _ = normalise_official_keys({k: torch.empty(v) for k, v in spec["state_dict_shapes"].items()})
    assert {k: tuple(v.shape) for k, v in renamed.items()} == {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    # The pickle also holds the projection updater's shared copies of every block: dropped.
    assert checkpoint.dropped_keys and all(".proj_updater." in k for k in checkpoint.dropped_keys)
    assert f"{'enc'}.performer.proj_updater.calls_since_last_redraw" in checkpoint.dropped_keys


def test_published_configuration_size_and_translator_widths() -> None:
    config = ModelConfig()
    assert config.translator_layer_widths == (20_000, 4_473, 1_000)
    assert config.enc_nb_features == 266 == int(64 * math.log(64))
    with torch.device("meta"):
        model = TranslatorModel(config)
    assert model.n_parameters() == 117_411_371  # 117.4 M as published
    assert sum(p.numel() for p in model.translator.parameters()) == pytest.approx(93.9e6, rel=1e-3)


def test_batch_axis_kept_and_masks_default_to_all_true(fixtures_dir: Path) -> None:
    model = load_model(fixtures_dir / "tiny_a_official.pt")
    case = np.load(fixtures_dir / "tiny_a_case.npz")
    values = torch.from_numpy(case["values"][:1])
    genes = torch.from_numpy(case["gene_ids"][:1])
    proteins = torch.from_numpy(case["protein_ids"][:1])
    with torch.no_grad():
        implicit = model(values, genes, proteins)
        explicit = model(values, genes, proteins, torch.ones_like(genes, dtype=torch.bool),
                         torch.ones_like(proteins, dtype=torch.bool))
    assert implicit.shape == (1, 16)
    torch.testing.assert_close(implicit, explicit, rtol=0, atol=0)


def test_eval_is_deterministic_and_training_redraws_features() -> None:
    torch.manual_seed(0)
    model = TranslatorModel(ModelConfig.sized(dim=8, enc_depth=1, dec_depth=1, enc_heads=2, dec_heads=2,
                                              enc_dim_head=4, dec_dim_head=4, max_genes=12, max_proteins=4,
                                              feature_redraw_interval=3, vocab_size=50))
    values, genes, proteins = torch.rand(2, 12), torch.randint(1, 50, (2, 12)), torch.randint(1, 50, (2, 4))
    with torch.no_grad():
        first = model(values, genes, proteins)
        for _ in range(5):
            again = model(values, genes, proteins)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    before = model.enc.layers[0].attn.projection_matrix.clone()
    model.train()
    for _ in range(3):
        model(values, genes, proteins)
    torch.testing.assert_close(model.enc.layers[0].attn.projection_matrix, before, rtol=0, atol=0)
    model(values, genes, proteins)  # the fourth call in training mode reaches the interval
    assert not torch.equal(model.enc.layers[0].attn.projection_matrix, before)


def test_bundle_round_trip_is_exact(tmp_path: Path, fixtures_dir: Path) -> None:
    model = load_model(fixtures_dir / "tiny_b_official.pt")
    model.panel = {"genes": {"token_ids": list(range(1, 101))}, "proteins": {"token_ids": list(range(1, 11))}}
    model.preprocessing = {"normalize": "none"}
    save_model(model, tmp_path / "bundle")
    config = json.loads((tmp_path / "bundle" / "config.json").read_text())
    assert config["format_version"] == 1 and config["model"]["translator_hidden"] == [47, 22]
    assert (tmp_path / "bundle" / "panel.json").exists()
    loaded = load_model(tmp_path / "bundle")
    assert loaded.config == model.config
    assert loaded.panel == model.panel and loaded.preprocessing == model.preprocessing
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    case = dict(np.load(fixtures_dir / "tiny_b_case.npz"))
    np.testing.assert_array_equal(run_case(model, case)[1], run_case(loaded, case)[1])


def test_bundle_without_panel_writes_no_panel_file(tmp_path: Path) -> None:
    model = TranslatorModel(ModelConfig.sized(dim=8, enc_depth=1, dec_depth=1, enc_heads=1, dec_heads=1,
                                              enc_dim_head=4, dec_dim_head=4, max_genes=8, max_proteins=2))
    save_model(model, tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["config.json", "model.safetensors"]


def test_broken_bundles_raise_named_errors(tmp_path: Path, fixtures_dir: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nowhere")
    model = load_model(fixtures_dir / "tiny_a_official.pt")
    bundle = save_model(model, tmp_path / "bundle")
    weights = bundle / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupted"):
        load_model(bundle)
    (bundle / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(bundle)


def test_state_dict_with_module_prefix_loads(tmp_path: Path, fixtures_dir: Path) -> None:
    """A fine-tuned model saved from a DDP wrapper: every key prefixed `module.`, official names."""
    checkpoint = load_official_checkpoint(fixtures_dir / "tiny_a_official.pt")
    with zipfile.ZipFile(fixtures_dir / "tiny_a_official.pt") as archive:
        assert any(n.endswith("data.pkl") for n in archive.namelist())
    official_names = json.loads((fixtures_dir / "fixtures.json").read_text())["tiny_a"]["state_dict_shapes"]
    ours_to_official = {normalise_official_keys({k: torch.empty(0)})[0].popitem()[0]: k
                        for k in official_names if ".proj_updater." not in k}
    prefixed = {f"module.{ours_to_official[k]}": v for k, v in checkpoint.state_dict.items()}
    torch.save(prefixed, tmp_path / "ddp.pt")
    loaded = load_model(tmp_path / "ddp.pt")
    reference = load_model(fixtures_dir / "tiny_a_official.pt")
    assert all(torch.equal(loaded.state_dict()[k], reference.state_dict()[k]) for k in reference.state_dict())


class _RunsACommand:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"model": _RunsACommand(marker)}, tmp_path / "evil.pt")
    with zipfile.ZipFile(tmp_path / "evil.pt") as archive:  # it really is a torch archive naming os.system
        pickled = next(archive.read(n) for n in archive.namelist() if n.endswith("data.pkl"))
    assert b"system" in pickled
    with pytest.raises(UnsafeCheckpointError, match=r"'(posix|os|nt)\.system'") as info:
        load_model(tmp_path / "evil.pt")
    assert "Nothing in the file was executed" in str(info.value)
    assert not marker.exists()


def test_global_outside_allow_list_is_named_even_if_harmless(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(2), "when": __import__("datetime").date(2024, 1, 1)}, tmp_path / "other.pt")
    with pytest.raises(UnsafeCheckpointError, match="datetime.date"):
        load_model(tmp_path / "other.pt")


def test_non_checkpoint_files_raise_checkpoint_error(tmp_path: Path) -> None:
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a torch checkpoint"):
        load_model(tmp_path / "notes.pt")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "small.pt")
    with pytest.raises(CheckpointError, match="lacks"):
        load_model(tmp_path / "small.pt")


def test_cli_convert_prints_configuration(tmp_path: Path, fixtures_dir: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "sctranslator", "convert",
                             str(fixtures_dir / "tiny_b_official.pt"), str(tmp_path / "b")],
                            capture_output=True, text=True, check=True)
    assert "translator_hidden        [47, 22]" in result.stdout
    assert "1,378,691" in result.stdout
    assert load_model(tmp_path / "b").config.translator_depth == 3


FULL_SIZE_PEAK = """
import resource, torch
from sctranslator.model import ModelConfig, TranslatorModel
torch.manual_seed(0)
model = TranslatorModel(ModelConfig())
values = torch.rand(1, 20000)
genes = torch.randint(1, 75522, (1, 20000))
proteins = torch.randint(1, 75522, (1, 1000))
with torch.inference_mode():
    out = model(values, genes, proteins)
assert out.shape == (1, 1000) and torch.isfinite(out).all()
# VmHWM is this process's own peak: ru_maxrss would also count the parent's peak, inherited at exec.
peak = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")]
print(int(peak[0].split()[1]) if peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_full_size_forward_of_one_cell_fits_in_3_gib() -> None:
    result = subprocess.run([sys.executable, "-c", FULL_SIZE_PEAK], capture_output=True, text=True, check=True)
    peak_kib = int(result.stdout.strip().splitlines()[-1])
    assert peak_kib < 3 * 1024 * 1024, f"peak {peak_kib / 1024:.0f} MiB"


def test_fingerprint_is_cached_per_state_and_follows_in_place_updates() -> None:
    from sctranslator.model.identity import model_fingerprint

    torch.manual_seed(0)
    model = TranslatorModel(ModelConfig.sized(dim=16, enc_depth=1, enc_heads=2, enc_dim_head=8, dec_depth=1,
                                              dec_heads=2, dec_dim_head=8, max_genes=32, max_proteins=4,
                                              translator_depth=2, vocab_size=100))
    first = model_fingerprint(model)
    assert model._fingerprint_cache[1] == first and model_fingerprint(model) == first
    kept = model.dec.to_out.bias.detach().clone()
    with torch.no_grad():
        model.dec.to_out.bias.add_(1.0)  # an in-place update, as an optimiser step makes
    changed = model_fingerprint(model)
    assert changed != first
    with torch.no_grad():
        model.dec.to_out.bias.copy_(kept)
    assert model_fingerprint(model) == first  # same bytes, same fingerprint
