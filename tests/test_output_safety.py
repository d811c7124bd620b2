"""Output safety beyond one path: no output inside another, --overwrite replaces only what we wrote,
stale ledgers of deleted outputs, and refusals that are one line and create nothing.

Real demo data (40 cells), the real command line (in process, or in a fresh interpreter where the
log lines matter) and the Python API.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import pytest

import sctranslator
from sctranslator.cli.entry import main
from sctranslator.engine.block_results import job_dir_for
from sctranslator.engine.gpus import require_device
from sctranslator.engine.ledger import JOB_FILE, Ledger, read_record
from sctranslator.errors import BackendError, OptionError, OutputConflictError, StoreError
from sctranslator.options import AttentionOptions
from sctranslator.outputs import KINDS, claim_output, write_identity
from sctranslator.util.folder_contents import foreign_entry

DEMO = Path(sctranslator.__file__).parent / "data" / "demo"
N_CELLS = 40
PROTEINS = ["CD3", "CD4"]


def checksums(path: Path) -> dict[str, str]:
    """sha256 of every file under `path`, keyed by relative path (the names of empty folders too)."""
    found = {}
    for p in sorted(path.rglob("*")):
        key = str(p.relative_to(path))
        found[key] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return found


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """40 demo cells, a copy of the demo model and a finished translate store of them."""
    root = tmp_path_factory.mktemp("safety")
    inputs = root / "inputs"
    inputs.mkdir()
    ad.read_h5ad(DEMO / "rna.h5ad")[:N_CELLS].copy().write_h5ad(inputs / "rna.h5ad")
    model = shutil.copytree(DEMO / "model", root / "model")
    pred = root / "pred.zarr"
    sctranslator.translate(inputs / "rna.h5ad", model, out=pred, workers=1, quiet=True)
    return {"root": root, "rna": inputs / "rna.h5ad", "model": model, "pred": pred}


def _translate(w: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["translate", str(w["rna"]), "--model", str(w["model"]), "--out", str(out), "--workers", "1", "--quiet",
            *extra]


def _knockout(w: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["knockout", str(w["rna"]), "--model", str(w["model"]), "--genes", "HES4", "--proteins",
            ",".join(PROTEINS), "--out", str(out), "--workers", "1", *extra]


def _attention(w: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["attention", str(w["rna"]), "--model", str(w["model"]), "--proteins", ",".join(PROTEINS),
            "--batch-size", "8", "--top-k", "3", "--out", str(out), *extra]


def _refused(capsys: pytest.CaptureFixture[str], rc: int, error: str = "OutputConflictError") -> str:
    err = capsys.readouterr().err
    assert rc == 2 and error in err, err
    return err


def _fresh(args: list[str]) -> subprocess.CompletedProcess:
    """The command in a fresh interpreter, so that its log configuration is the command line's own."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "sctranslator", *args], capture_output=True, text=True, env=env,
                          timeout=600)


# -- A: no output inside another ----------------------------------------------------------------


def test_knockout_inside_a_translate_store_is_refused_before_any_work(
        world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = Path(shutil.copytree(world["pred"], tmp_path / "pbmc.zarr"))
    before = checksums(store)
    err = _refused(capsys, main(_knockout(world, store / "ko.h5ad", "--quiet")))
    assert "lies inside" in err and "translate prediction store" in err, err
    assert checksums(store) == before  # no output, ledger, lock or sibling inside it
    # ... so a later --overwrite of the store has nothing of another job's to delete.
    assert main(_translate(world, store, "--overwrite")) == 0, capsys.readouterr().err


@pytest.mark.parametrize("kind", sorted(set(KINDS) - {"translate-collection"}))
def test_no_output_may_lie_inside_an_output_of_any_kind(kind: str, tmp_path: Path) -> None:
    folder = tmp_path / "output"
    folder.mkdir()
    write_identity(folder, kind)
    before = checksums(folder)
    for inner, path in (("translate", folder / "p.zarr"), ("knockout", folder / "deeper" / "ko.h5ad"),
                        ("evaluate", folder / "report")):
        with pytest.raises(OutputConflictError, match="lies inside"):
            claim_output(path, inner, overwrite=True)
    assert checksums(folder) == before


def test_a_collection_folder_holds_its_own_translate_stores_and_nothing_else(tmp_path: Path) -> None:
    collection = tmp_path / "atlas"
    collection.mkdir()
    write_identity(collection, "translate-collection")
    assert claim_output(collection / "donor1.zarr", "translate") is False  # the intended case
    with pytest.raises(OutputConflictError, match="lies inside"):
        claim_output(collection / "ko.h5ad", "knockout")
    with pytest.raises(OutputConflictError, match="lies inside"):
        claim_output(collection / "sub" / "donor1.zarr", "translate")


def test_no_output_may_lie_inside_a_job_ledger(tmp_path: Path) -> None:
    ledger = job_dir_for(tmp_path / "ko.h5ad", "knockout")
    Ledger.create(ledger, identity={"job": 1}, n_obs=4, block_rows=2)
    with pytest.raises(OutputConflictError, match="job ledger of a sctranslator knockout"):
        claim_output(ledger / "blocks" / "x.h5ad", "knockout")
    assert sorted(p.name for p in ledger.iterdir()) == ["blocks", JOB_FILE]


# -- C: --overwrite replaces only what we wrote -----------------------------------------------------


def test_our_finished_outputs_hold_only_our_entries(world: dict[str, Path]) -> None:
    assert foreign_entry(world["pred"], markers=(".sctranslator-output.json", ".sctranslator-job")) is None


@pytest.mark.filterwarnings("ignore:Consolidated metadata:UserWarning")  # zarr's note on v3 consolidation
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_zarr_store_is_judged_by_its_own_metadata(zarr_format: int, tmp_path: Path) -> None:
    import numpy as np
    import zarr

    store = tmp_path / "store.zarr"
    root = zarr.open_group(str(store), mode="w", zarr_format=zarr_format)
    root.create_group("obs").create_array("codes", shape=(6,), chunks=(2,), dtype="int64")[:] = np.arange(6)
    root.create_array("X", shape=(6, 3), chunks=(2, 3), dtype="float32")[:] = 1.0
    zarr.consolidate_metadata(str(store))
    assert foreign_entry(store) is None
    # Another store copied in is not named by this one's metadata, though it looks like a zarr group.
    zarr.open_group(str(store / "copied"), mode="w", zarr_format=zarr_format).create_array(
        "y", shape=(2,), dtype="int64")[:] = 1
    assert foreign_entry(store) == store / "copied"
    shutil.rmtree(store / "copied")
    (store / "obs" / "codes" / "notes").write_text("mine")
    assert foreign_entry(store) == store / "obs" / "codes" / "notes"


def test_overwrite_of_a_translate_store_deletes_nothing_it_did_not_write(
        world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = Path(shutil.copytree(world["pred"], tmp_path / "pbmc.zarr"))
    planted = [  # (file written, the entry the refusal names)
        ("notes.txt", "notes.txt"),  # beside the store's groups
        ("X/readme", "X/readme"),  # inside an array, not a chunk
        ("obs/extra/table.csv", "obs/extra"),  # a folder the store's metadata does not name
    ]
    for written, named in planted:
        path = store / written
        path.parent.mkdir(exist_ok=True)
        path.write_text("the user's")
        before = checksums(store)
        err = _refused(capsys, main(_translate(world, store, "--overwrite")))
        assert f"holds {named}," in err and "nothing was changed" in err, err
        assert checksums(store) == before
        if path.parent.name == "extra":
            shutil.rmtree(path.parent)
        else:
            path.unlink()
    # An output of another job moved inside (as older versions allowed) is named as such.
    other = store / "ko.h5ad"
    ad.read_h5ad(world["rna"]).write_h5ad(other)
    write_identity(other, "knockout")
    err = _refused(capsys, main(_translate(world, store, "--overwrite")))
    assert "sctranslator knockout output of another job" in err, err
    assert other.is_file()
    other.unlink()
    # zarr's own leftover of an interrupted chunk write is the store's: replaced with it.
    (store / "X" / f"0.0.{'ab' * 16}.partial").write_bytes(b"half a chunk")
    assert main(_translate(world, store, "--overwrite")) == 0, capsys.readouterr().err
    assert not (store / "X" / f"0.0.{'ab' * 16}.partial").exists()


def test_a_knockout_rerun_does_not_delete_a_file_put_inside_its_zarr_output(
        world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ko.zarr"
    assert main(_knockout(world, out, "--quiet")) == 0, capsys.readouterr().err
    assert foreign_entry(out, markers=(".sctranslator-output.json",)) is None
    (out / "mine.txt").write_text("kept")
    # The same command resumes and rebuilds its output: refused, since that would delete mine.txt.
    err = _refused(capsys, main(_knockout(world, out, "--quiet")))
    assert "mine.txt" in err
    assert (out / "mine.txt").read_text() == "kept"


def test_a_collection_overwrite_does_not_delete_a_users_file_inside_a_store_it_drops(
        world: dict[str, Path], tmp_path: Path) -> None:
    rna = ad.read_h5ad(world["rna"])
    first, second = tmp_path / "first.h5ad", tmp_path / "second.h5ad"
    rna[:20].copy().write_h5ad(first)
    rna[20:].copy().write_h5ad(second)
    atlas = tmp_path / "atlas"
    sctranslator.translate([first, second], world["model"], PROTEINS, out=atlas, workers=1, quiet=True)
    notes = atlas / "first.zarr" / "notes.txt"
    notes.write_text("mine")
    # --overwrite with the second input only drops first.zarr, but not with a file of someone's inside it.
    with pytest.raises(OutputConflictError, match="notes.txt"):
        sctranslator.translate([second], world["model"], PROTEINS, out=atlas, overwrite=True, workers=1, quiet=True)
    assert notes.read_text() == "mine"
    notes.unlink()
    sctranslator.translate([second], world["model"], PROTEINS, out=atlas, overwrite=True, workers=1, quiet=True)
    assert sorted(p.name for p in atlas.glob("*.zarr")) == ["second.zarr"]


# -- B: the ledger of a deleted output ------------------------------------------------------------


def _interactions(world: dict[str, Path], out: Path, kinds: str) -> sctranslator.analysis.attention.InteractionResult:
    return sctranslator.interactions(world["rna"], world["model"], PROTEINS, out=out, kinds=kinds, batch_size=8,
                                     top_k=3, workers=1, quiet=True)


def test_a_deleted_attention_output_leaves_no_stale_ledger_in_the_way(world: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "attention"
    ledger = job_dir_for(out, "attention")
    _interactions(world, out, "gene-protein,protein-protein")
    assert read_record(ledger)["finished"] is True
    shutil.rmtree(out)
    # Other settings: nothing to protect once the output is gone, so the ledger is started afresh.
    result = _interactions(world, out, "gene-protein")
    assert (out / "interactions.h5ad").is_file() and read_record(ledger)["identity"]["kinds"] == ["gene-protein"]
    shutil.rmtree(out)
    # The same settings: computed afresh, not resumed from the deleted output's blocks.
    result = _interactions(world, out, "gene-protein")
    assert result.run["blocks_skipped"] == 0 and result.run["blocks_computed"] > 0


def test_a_deleted_knockout_output_and_its_tables_leave_no_stale_ledger(
        world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ko.zarr"
    assert main(_knockout(world, out, "--quiet")) == 0, capsys.readouterr().err
    for path in tmp_path.glob("ko*"):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert read_record(job_dir_for(out, "knockout"))["identity"]["semantics"] == "zero"  # the default here
    assert main(_knockout(world, out, "--quiet", "--semantics", "drop")) == 0, capsys.readouterr().err
    assert read_record(job_dir_for(out, "knockout"))["identity"]["semantics"] == "drop"


def test_an_unfinished_ledger_or_one_holding_foreign_files_is_kept(world: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "attention"
    ledger = job_dir_for(out, "attention")
    _interactions(world, out, "gene-protein")
    shutil.rmtree(out)
    # A ledger with a file that is not ours: never deleted.
    (ledger / "notes.txt").write_text("mine")
    with pytest.raises(OutputConflictError, match="notes.txt"):
        _interactions(world, out, "protein-protein")
    assert (ledger / "notes.txt").read_text() == "mine"
    (ledger / "notes.txt").unlink()
    # An unfinished job (interrupted before its output was written) keeps its blocks from other settings.
    record = read_record(ledger)
    del record["finished"]
    (ledger / JOB_FILE).write_text(json.dumps(record))
    blocks = sorted(p.name for p in (ledger / "blocks").iterdir())
    with pytest.raises(StoreError, match="unfinished attention job"):
        _interactions(world, out, "protein-protein")
    assert sorted(p.name for p in (ledger / "blocks").iterdir()) == blocks
    # ... and the same settings resume it.
    assert _interactions(world, out, "gene-protein").run["blocks_computed"] == 0
    # A complete ledger of an older version (no kind, no mark) whose output is gone counts as finished.
    shutil.rmtree(out)
    record = read_record(ledger)
    del record["finished"], record["kind"]
    (ledger / JOB_FILE).write_text(json.dumps(record))
    assert _interactions(world, out, "protein-protein").run["blocks_skipped"] == 0


# -- D: refusals are one line and create nothing; attention's --device -------------------------------


def _only_the_error(stderr: str, error: str) -> None:
    """The error is the last line, and no progress or INFO line came before it (the plan's warnings about
    the data itself may: they are about the input, whatever happens to the output)."""
    lines = stderr.strip().splitlines()
    assert lines and lines[-1].startswith(f"error: {error}: "), stderr
    assert all(line.startswith("WARNING sctranslator.plan") for line in lines[:-1]), stderr


def test_a_refusal_after_planning_prints_no_parallelism_line(world: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ko.zarr"
    sctranslator.knockout(world["rna"], world["model"], ["HES4"], PROTEINS, out=out, semantics="zero", workers=1,
                          quiet=True)
    done = _fresh(_knockout(world, out, "--semantics", "drop"))  # other settings, no --quiet
    assert done.returncode == 2, done.stderr
    _only_the_error(done.stderr, "StoreError")
    done = _fresh(["translate", str(world["rna"]), "--model", str(world["model"]), "--out", str(world["pred"]),
                   "--proteins", "CD3", "--workers", "1"])
    assert done.returncode == 2, done.stderr
    _only_the_error(done.stderr, "StoreError")


@pytest.mark.parametrize("command", ["knockout", "attention"])
def test_a_cuda_device_that_is_not_there_is_refused_before_anything_is_created(
        command: str, world: dict[str, Path], tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    build = _knockout if command == "knockout" else _attention
    done = _fresh(build(world, tmp_path / ("ko.h5ad" if command == "knockout" else "att"), "--device", "cuda:7"))
    assert done.returncode == 2 and "BackendError" in done.stderr and "cuda:7" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_attention_takes_a_device_as_knockout_does(world: dict[str, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert AttentionOptions.from_kwargs(device="cuda:1").engine.device == "cuda:1"
    with pytest.raises(OptionError, match="unknown device"):
        sctranslator.interactions(world["rna"], world["model"], PROTEINS, device="gpu")
    assert main(_attention(world, tmp_path / "att", "--device", "cpu", "--quiet")) == 0, capsys.readouterr().err
    assert (tmp_path / "att" / "interactions.h5ad").is_file()


def test_require_device_counts_the_devices() -> None:
    require_device("cpu", count=0)
    require_device("cuda:1", count=2)
    with pytest.raises(BackendError, match="no CUDA device"):
        require_device("cuda", count=0)
    with pytest.raises(BackendError, match="sees 2 CUDA device"):
        require_device("cuda:2", count=2)
