"""Collections: several real h5ad files (different gene subsets of one real dataset) in one translate job."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

import sctranslator
from sctranslator.cli.entry import main
from sctranslator.engine import collection as collection_module
from sctranslator.engine.backends import selection
from sctranslator.engine.collection import read_collection, store_names
from sctranslator.errors import CollectionMismatchError, OptionError
from sctranslator.model import ModelConfig, TranslatorModel, save_model

PROTEINS = ["CD3", "CD4", "CD8a", "CD14", "CD16", "CD19"]
OPTIONS = {"allow_empty_cells": True, "block_cells": 16, "batch_size": 8, "quiet": True}
RECORD = "collection.json"
CLI_OPTIONS = ["--proteins", ",".join(PROTEINS), "--allow-empty-cells", "--block-cells", "16", "--batch-size", "8"]


@pytest.fixture(scope="module")
def real(data_dir: Path) -> ad.AnnData:
    return ad.read_h5ad(data_dir / "pbmc10k_cite_10x" / "rna.h5ad")


@pytest.fixture(scope="module")
def inputs(real: ad.AnnData, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three files with different cells and different gene subsets; two share the name x.h5ad."""
    root = tmp_path_factory.mktemp("collection")
    parts = [(root / "a" / "x.h5ad", real[:40, :3000]), (root / "b" / "x.h5ad", real[40:70, 1000:]),
             (root / "b" / "y.h5ad", real[70:100, ::2])]
    for path, part in parts:
        path.parent.mkdir(exist_ok=True)
        part.copy().write_h5ad(path)
    return [path for path, _ in parts]


@pytest.fixture(scope="module")
def model_path(fixtures_dir: Path) -> Path:
    return fixtures_dir / "tiny_a_official.pt"


@pytest.fixture(scope="module")
def alone(inputs: list[Path], model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """Each input translated on its own (the reference every collection store must equal)."""
    root = tmp_path_factory.mktemp("alone")
    return [np.asarray(sctranslator.translate(path, model_path, PROTEINS, out=root / f"{i}.zarr",
                                              **OPTIONS).X.compute()) for i, path in enumerate(inputs)]


def _store(out: Path, name: str) -> ad.AnnData:
    return ad.read_zarr(out / name)


def test_python_list_equals_each_input_alone_with_one_model_load_and_one_backend(
        inputs: list[Path], model_path: Path, alone: list[np.ndarray], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    loads, builds = [], []
    real_load, real_create = collection_module.load_model, selection.create_backend

    def counting_load(*args: object, **kwargs: object) -> TranslatorModel:
        loads.append(args)
        return real_load(*args, **kwargs)

    def counting_create(spec: object) -> object:
        builds.append(spec)
        return real_create(spec)

    monkeypatch.setattr(collection_module, "load_model", counting_load)
    monkeypatch.setattr(selection, "create_backend", counting_create)
    out = tmp_path / "preds"
    results = sctranslator.translate([str(p) for p in inputs], str(model_path), PROTEINS, out=out, **OPTIONS)
    assert len(loads) == 1 and len(builds) == 1, (loads, builds)
    assert [r.n_obs for r in results] == [40, 30, 30]
    record = read_collection(out)
    assert [e["store"] for e in record["inputs"]] == ["x.zarr", "x-2.zarr", "y.zarr"]
    assert [e["status"] for e in record["inputs"]] == ["done"] * 3
    assert [e["cells"] for e in record["inputs"]] == [40, 30, 30]
    assert len({e["plan"] for e in record["inputs"]}) == 3  # each input its own gene layout
    for entry, reference, result in zip(record["inputs"], alone, results, strict=True):
        store = _store(out, entry["store"])
        np.testing.assert_allclose(store.X, reference, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(result.X.compute()), store.X)
        job = json.loads((out / entry["store"] / ".sctranslator-job" / "job.json").read_text())
        assert job["identity"]["plan"] == entry["plan"] and job["complete"] is True


def test_in_memory_anndata_list(real: ad.AnnData, model_path: Path, tmp_path: Path) -> None:
    first, second = real[:20, :2500].copy(), real[20:35, 500:].copy()
    results = sctranslator.translate([first, second], model_path, PROTEINS, out=tmp_path / "mem", **OPTIONS)
    assert sorted(p.name for p in (tmp_path / "mem").glob("*.zarr")) == ["anndata-1.zarr", "anndata-2.zarr"]
    for data, result in zip((first, second), results, strict=True):
        single = sctranslator.translate(data, model_path, PROTEINS, **OPTIONS)
        np.testing.assert_allclose(np.asarray(result.X.compute()), np.asarray(single.X.compute()), atol=1e-6)


def test_cli_several_arguments_glob_and_list_file(inputs: list[Path], model_path: Path, alone: list[np.ndarray],
                                                  tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    common = ["--model", str(model_path), *CLI_OPTIONS]
    several = tmp_path / "several"
    assert main(["translate", *map(str, inputs), "--out", str(several), *common]) == 0
    captured = capsys.readouterr()
    assert "translate 3 inputs" in captured.err and "100/100" in captured.err  # one bar over all cells
    assert "Wrote 3 stores (100 cells)" in captured.out
    for name, reference in zip(("x.zarr", "x-2.zarr", "y.zarr"), alone, strict=True):
        np.testing.assert_allclose(_store(several, name).X, reference, rtol=0, atol=1e-6)

    pattern = tmp_path / "globbed"
    assert main(["translate", str(inputs[1].parent / "*.h5ad"), "--out", str(pattern), *common, "--quiet"]) == 0
    assert [e["input"] for e in read_collection(pattern)["inputs"]] == [str(inputs[1]), str(inputs[2])]
    np.testing.assert_allclose(_store(pattern, "y.zarr").X, alone[2], rtol=0, atol=1e-6)

    listing = tmp_path / "list.txt"
    relative = os.path.relpath(inputs[2], tmp_path)
    listing.write_text(f"# the atlas\n{inputs[0]}\n\n{relative}   # relative to the current directory\n")
    monkeypatch.chdir(tmp_path)
    listed = tmp_path / "listed"
    assert main(["translate", "--inputs", f"@{listing}", "--out", str(listed), *common, "--quiet"]) == 0
    record = read_collection(listed)
    assert [(e["input"], e["store"]) for e in record["inputs"]] == [(str(inputs[0]), "x.zarr"),
                                                                    (str(inputs[2]), "y.zarr")]
    np.testing.assert_allclose(_store(listed, "x.zarr").X, alone[0], rtol=0, atol=1e-6)


def test_store_names_are_stems_with_deterministic_collisions() -> None:
    paths = [Path("/d/a/x.h5ad"), Path("/d/b/x.h5ad"), Path("/d/c/X.zarr"), Path("/d/x-2.h5ad"), Path("/d/p.h5mu")]
    assert store_names(paths) == ["x.zarr", "x-2.zarr", "X-3.zarr", "x-2-2.zarr", "p.zarr"]
    assert store_names([object(), Path("/d/anndata-1.h5ad")]) == ["anndata-1.zarr", "anndata-1-2.zarr"]


def test_failed_inputs_are_recorded_and_the_others_complete(real: ad.AnnData, inputs: list[Path], model_path: Path,
                                                            alone: list[np.ndarray], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    truncated = tmp_path / "broken.h5ad"
    truncated.write_bytes(inputs[0].read_bytes()[:2000])
    unmapped = real[:20, :400].copy()
    unmapped.var_names = [f"NOT_A_GENE_{i}" for i in range(unmapped.n_vars)]
    low = tmp_path / "low.h5ad"
    unmapped.write_h5ad(low)
    out = tmp_path / "out"
    args = ["translate", str(inputs[0]), str(truncated), str(low), str(inputs[2]), "--out", str(out),
            "--model", str(model_path), *CLI_OPTIONS, "--quiet"]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert "error: CollectionError: 2 of 4 inputs failed" in captured.err
    record = read_collection(out)
    statuses = [(e["status"], (e["error"] or {}).get("type")) for e in record["inputs"]]
    assert statuses == [("done", None), ("failed", "StoreError"), ("failed", "CoverageError"), ("done", None)]
    assert "broken.h5ad" in record["inputs"][1]["error"]["message"]
    np.testing.assert_allclose(_store(out, "x.zarr").X, alone[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(_store(out, "y.zarr").X, alone[2], rtol=0, atol=1e-6)
    finished = (out / "x.zarr" / ".sctranslator-job" / "job.json").stat().st_mtime_ns

    # Fixed inputs: the same command finishes the collection; finished inputs are not run again.
    truncated.write_bytes(inputs[1].read_bytes())
    real[:20, :3000].copy().write_h5ad(low)
    assert main(args) == 0
    assert [e["status"] for e in read_collection(out)["inputs"]] == ["done"] * 4
    assert (out / "x.zarr" / ".sctranslator-job" / "job.json").stat().st_mtime_ns == finished
    np.testing.assert_allclose(_store(out, "broken.zarr").X, alone[1], rtol=0, atol=1e-6)


def test_a_permission_retries_the_refused_input_and_keeps_the_finished_ones(
        real: ad.AnnData, inputs: list[Path], model_path: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    low = tmp_path / "low.h5ad"
    few = real[:20, :400].copy()
    few.var_names = [name if i < 100 else f"NOT_A_GENE_{i}" for i, name in enumerate(few.var_names)]
    few.write_h5ad(low)  # a quarter of its genes map: refused at the default --min-coverage
    out = tmp_path / "out"
    listing = tmp_path / "list.txt"
    listing.write_text(f"{inputs[0]}\n{low}\n")
    args = ["translate", "--inputs", f"@{listing}", "--out", str(out), "--model", str(model_path), *CLI_OPTIONS,
            "--quiet"]
    assert main(args) == 2
    assert [(e["status"], (e["error"] or {}).get("type")) for e in read_collection(out)["inputs"]] == [
        ("done", None), ("failed", "CoverageError")]
    finished = (out / "x.zarr" / ".sctranslator-job" / "job.json").stat().st_mtime_ns
    capsys.readouterr()
    # --min-coverage and --allow-low-coverage only let the refused input through: the same collection
    for extra in (["--min-coverage", "0.9"], ["--allow-low-coverage"]):
        code = main([*args, *extra])
        assert "CollectionMismatchError" not in capsys.readouterr().err
        if extra == ["--allow-low-coverage"]:
            assert code == 0
    record = read_collection(out)
    assert [e["status"] for e in record["inputs"]] == ["done", "done"]
    assert record["inputs"][1]["permissions"]["allow_low_coverage"] is True
    assert (out / "x.zarr" / ".sctranslator-job" / "job.json").stat().st_mtime_ns == finished  # kept, not redone
    reference = sctranslator.translate(low, model_path, PROTEINS, allow_low_coverage=True, **OPTIONS)
    np.testing.assert_allclose(_store(out, "low.zarr").X, np.asarray(reference.X), rtol=0, atol=1e-6)
    with pytest.raises(CollectionMismatchError, match="normalize"):  # a setting that changes numbers still refuses
        sctranslator.translate([inputs[0], low], model_path, PROTEINS, out=out, normalize="total_log1p",
                               allow_low_coverage=True, **OPTIONS)


def test_other_inputs_or_settings_refused_unless_overwrite(inputs: list[Path], model_path: Path,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "out"
    sctranslator.translate([inputs[0], inputs[2]], model_path, PROTEINS, out=out, **OPTIONS)
    before = (out / RECORD).read_text()
    with pytest.raises(CollectionMismatchError, match="1 added"):
        sctranslator.translate(inputs, model_path, PROTEINS, out=out, **OPTIONS)
    with pytest.raises(CollectionMismatchError, match="normalize"):
        sctranslator.translate([inputs[0], inputs[2]], model_path, PROTEINS, out=out, normalize="total_log1p",
                               **OPTIONS)
    assert (out / RECORD).read_text() == before
    sctranslator.translate([inputs[1]], model_path, PROTEINS, out=out, overwrite=True, **OPTIONS)
    assert sorted(p.name for p in out.glob("*.zarr")) == ["x.zarr"]  # the old y.zarr was ours: removed
    assert read_collection(out)["inputs"][0]["input"] == str(inputs[1])



def test_refusals_before_any_work(inputs: list[Path], model_path: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(OptionError, match="write one input back"):
        sctranslator.translate(inputs, model_path, PROTEINS, out=tmp_path / "o", write_h5ad=tmp_path / "w.h5ad")
    with pytest.raises(OptionError, match="matches no files"):
        sctranslator.translate(str(tmp_path / "none-*.h5ad"), model_path, PROTEINS, out=tmp_path / "o")
    with pytest.raises(OptionError, match="more than once"):
        sctranslator.translate([inputs[0], inputs[0]], model_path, PROTEINS, out=tmp_path / "o")
    from anndata.experimental import AnnCollection

    with pytest.raises(OptionError, match="pass the files"):
        sctranslator.translate([AnnCollection([ad.read_h5ad(inputs[0])])], model_path, PROTEINS, out=tmp_path / "o")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n\n")
    assert main(["translate", "--model", str(model_path), "--out", str(tmp_path / "o")]) == 2
    assert main(["translate", "--inputs", f"@{empty}", "--model", str(model_path), "--out", str(tmp_path / "o")]) == 2
    errors = capsys.readouterr().err
    assert "error: OptionError: translate needs an INPUT" in errors and "lists no inputs" in errors
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_killed_collection_resumes_where_it_stopped(real: ad.AnnData, tmp_path: Path) -> None:
    torch.manual_seed(5)
    # Big enough that the second input takes seconds, so the job can be killed inside it.
    model = TranslatorModel(ModelConfig.sized(dim=32, enc_depth=2, dec_depth=1, enc_heads=4, dec_heads=2,
                                              enc_dim_head=16, dec_dim_head=8, max_genes=1024, max_proteins=16))
    bundle = save_model(model, tmp_path / "model")
    small, big = tmp_path / "small.h5ad", tmp_path / "big.h5ad"
    real[:64, :3000].copy().write_h5ad(small)
    many = ad.concat([real[:, 500:]] * 2, index_unique="-")
    many.obs_names = [f"cell{i}" for i in range(many.n_obs)]
    many.write_h5ad(big)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "sctranslator", "translate", str(small), str(big), "--out", str(out),
               "--model", str(bundle), *CLI_OPTIONS[:2], "--allow-empty-cells", "--block-cells", "32",
               "--batch-size", "16", "--workers", "1", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    markers = out / "big.zarr" / ".sctranslator-job" / "blocks"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if markers.is_dir() and len(os.listdir(markers)) >= 3:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the job finished before it could be killed; make it bigger"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    committed = {name for name in os.listdir(markers) if name.isdigit()}
    assert [e["status"] for e in read_collection(out)["inputs"]] == ["done", "running"]
    small_done = (out / "small.zarr" / ".sctranslator-job" / "job.json").read_text()

    rerun = subprocess.run(command, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert [e["status"] for e in read_collection(out)["inputs"]] == ["done", "done"]
    assert (out / "small.zarr" / ".sctranslator-job" / "job.json").read_text() == small_done  # skipped
    job = json.loads((out / "big.zarr" / ".sctranslator-job" / "job.json").read_text())
    assert job["last_run"]["blocks_skipped"] >= len(committed) > 0
    options = {"allow_empty_cells": True, "block_cells": 32, "batch_size": 16, "workers": 1, "quiet": True}
    for name, path in (("small.zarr", small), ("big.zarr", big)):
        single = sctranslator.translate(path, bundle, PROTEINS, **options)
        np.testing.assert_allclose(_store(out, name).X, np.asarray(single.X.compute()), rtol=0, atol=1e-6)


def test_progress_total_is_the_selection_from_the_start(inputs: list[Path], model_path: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    # 40 + 30 + 30 cells, at most 12 of each: the bar counts 36 from its first frame (not 100, corrected later).
    out = tmp_path / "selected"
    assert main(["translate", *map(str, inputs), "--out", str(out), "--model", str(model_path), *CLI_OPTIONS,
                 "--max-cells", "12"]) == 0
    totals = {int(total) for total in re.findall(r"\| *\d+/(\d+) \[", capsys.readouterr().err)}
    assert totals == {36}
    assert [e["cells"] for e in read_collection(out)["inputs"]] == [12, 12, 12]


def test_store_metadata_is_zarrs_own_consolidation(tmp_path: Path) -> None:
    # finish() merges the run record into .zmetadata instead of re-reading every node: the result must be
    # what zarr's consolidate_metadata writes, and open through it (zarr groups siblings by adjacency).
    import shutil

    import zarr

    demo = Path(sctranslator.__file__).parent / "data" / "demo"  # its provenance has siblings zarr once lost
    cells = tmp_path / "demo.h5ad"
    ad.read_h5ad(demo / "rna.h5ad")[:20].copy().write_h5ad(cells)
    store = tmp_path / "one.zarr"
    sctranslator.translate(cells, demo / "model", out=store, **OPTIONS)
    merged = json.loads((store / ".zmetadata").read_text())
    copy = Path(shutil.copytree(store, tmp_path / "copy.zarr"))
    zarr.consolidate_metadata(str(copy))
    assert merged == json.loads((copy / ".zmetadata").read_text())
    run = zarr.open_group(str(store), mode="r")["uns/sctranslator/run"]  # through the consolidated metadata
    assert sorted(run.keys()) == sorted(ad.read_zarr(store).uns["sctranslator"]["run"])
