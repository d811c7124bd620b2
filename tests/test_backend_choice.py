"""Which backend a run uses, and the mistakes refused before any output exists: a foreign ONNX export,
a precision the file does not have, --onnx with another backend, an unknown device."""

from __future__ import annotations

import copy
from pathlib import Path

import anndata as ad
import pytest
import torch

import sctranslator
from sctranslator.errors import BackendError, ExportError, OptionError
from sctranslator.export import export_onnx
from sctranslator.model import TranslatorModel

PROTEINS = ["CD3", "CD4", "CD8a", "CD14"]


@pytest.fixture(scope="module")
def tiny(fixtures_dir: Path) -> TranslatorModel:
    return sctranslator.load_model(fixtures_dir / "tiny_a_official.pt")


@pytest.fixture(scope="module")
def exported(tiny: TranslatorModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(tiny, path, validation_batch_sizes=(1,))
    return path


@pytest.fixture(scope="module")
def rna_path(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rna") / "rna.h5ad"
    ad.read_h5ad(data_dir / "pbmc10k_cite_10x" / "rna.h5ad")[:40].copy().write_h5ad(path)
    return path


def run(rna_path: Path, model: object, out: Path, **options: object) -> ad.AnnData:
    return sctranslator.translate(rna_path, model, PROTEINS, out=out, allow_empty_cells=True, quiet=True, **options)


def test_an_onnx_file_makes_auto_choose_onnxruntime(rna_path: Path, tiny: TranslatorModel, exported: Path,
                                                    tmp_path: Path) -> None:
    result = run(rna_path, tiny, tmp_path / "o.zarr", onnx_path=str(exported))
    settings = result.uns["sctranslator"]["settings"]
    assert (settings["backend"], settings["backend_requested"]) == ("onnxruntime", "auto")
    assert "--onnx" in settings["backend_choice"]
    with pytest.raises(OptionError, match="--onnx applies to --backend onnxruntime"):
        run(rna_path, tiny, tmp_path / "t.zarr", backend="torch", onnx_path=str(exported))
    assert not (tmp_path / "t.zarr").exists()


def test_another_models_export_is_refused_before_any_output(rna_path: Path, tiny: TranslatorModel, exported: Path,
                                                            tmp_path: Path) -> None:
    other = copy.deepcopy(tiny)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.mul_(1.5)
    with pytest.raises(BackendError, match="exported from another model"):
        run(rna_path, other, tmp_path / "x.zarr", backend="onnxruntime", onnx_path=str(exported))
    assert not (tmp_path / "x.zarr").exists()  # no unfinished store left behind
    with pytest.raises(BackendError, match="computes in fp32, but --precision fp16"):
        run(rna_path, tiny, tmp_path / "y.zarr", backend="onnxruntime", onnx_path=str(exported), precision="fp16")
    assert not (tmp_path / "y.zarr").exists()


def test_unknown_device_and_cpu_bf16_graphs_are_refused_up_front(rna_path: Path, tiny: TranslatorModel,
                                                                 tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="unknown device 'gpu'"):
        run(rna_path, tiny, tmp_path / "g.zarr", device="gpu")
    with pytest.raises(BackendError, match="no bf16 kernels"):
        run(rna_path, tiny, tmp_path / "b.zarr", backend="onnxruntime", precision="bf16")
    assert not (tmp_path / "g.zarr").exists() and not (tmp_path / "b.zarr").exists()


def test_an_export_cannot_take_the_name_of_another_exports_decoder(tiny: TranslatorModel, exported: Path) -> None:
    decoder = exported.parent / "tiny.decoder.onnx"
    before = decoder.read_bytes()
    with pytest.raises(ExportError, match="where an export writes its decoder graph"):
        export_onnx(tiny, decoder, overwrite=True)
    assert decoder.read_bytes() == before
